"""The one `main` every node shares: init, build the node, spin until Ctrl-C or shutdown, clean up."""

from __future__ import annotations

import sys
from collections.abc import Callable

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.node import Node


def run_node(make_node: Callable[[], Node], argv: list[str] | None = None, threads: int = 1) -> int:
    """Run one node; `threads` > 1 spins it on a multi-threaded executor (for its callback groups).

    Returns 0 after Ctrl-C / SIGTERM / an external shutdown, 1 when the node refuses its configuration;
    any other error while the context is still up propagates (a crash, with its traceback).
    """
    rclpy.init(args=sys.argv if argv is None else argv)
    context = rclpy.get_default_context()
    executor = MultiThreadedExecutor(num_threads=threads) if threads > 1 else SingleThreadedExecutor()
    node = None
    try:
        try:
            node = make_node()
        except (ValueError, RuntimeError, FileNotFoundError) as err:  # its configuration: one clear line
            name = getattr(make_node, "__name__", "node")
            print(f"{name} did not start: {err}", file=sys.stderr, flush=True)
            return 1
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        # A signal shuts the context down from rclpy's signal thread; when that lands while the executor
        # builds or reads its wait set, rclpy raises RCLError/InvalidHandle instead of
        # ExternalShutdownException. After a shutdown that is a requested stop; before one, a real crash.
        if context.ok():
            raise
    finally:
        _close(node, executor, context)
    return 0


def _close(node: Node | None, executor, context: rclpy.Context) -> None:
    """Destroy the node and executor and shut the context down; errors of a context already shut are moot."""
    for close in ((node.destroy_node,) if node is not None else ()) + (executor.shutdown,):
        try:
            close()
        except Exception as err:  # noqa: BLE001 - teardown: report and go on tearing down
            if context.ok():
                print(f"shutdown: {close.__qualname__} failed: {err!r}", file=sys.stderr, flush=True)
    context.try_shutdown()
