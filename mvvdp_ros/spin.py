"""The one `main` every node shares: init, build the node, spin until Ctrl-C or shutdown, clean up."""

from __future__ import annotations

import sys
from collections.abc import Callable

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.node import Node


def run_node(make_node: Callable[[], Node], argv: list[str] | None = None, threads: int = 1) -> int:
    """Run one node; `threads` > 1 spins it on a multi-threaded executor (for its callback groups)."""
    rclpy.init(args=sys.argv if argv is None else argv)
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
    finally:
        if node is not None:
            node.destroy_node()
        executor.shutdown()
        rclpy.try_shutdown()
    return 0
