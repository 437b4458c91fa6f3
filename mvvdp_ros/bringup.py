"""`mvvdp bringup`: start the graph of mvvdp_core.graph as plain processes (where ROS 2 launch is absent).

Each node runs as `python -m <module> --ros-args ...` with its parameter files and overrides. SIGINT/SIGTERM
are forwarded to every node; when one node exits, the others are stopped too; exit status 0 only when all
nodes stopped cleanly on request.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import yaml

from mvvdp_core.graph import NodeSpec, build_graph, parse_params_files


class GraphProcesses:
    """The graph's nodes as child processes; a context manager that always stops them."""

    def __init__(self, specs: list[NodeSpec], env: dict[str, str] | None = None,
                 log_dir: str | Path | None = None) -> None:
        self.specs = {spec.name: spec for spec in specs}
        self.env = dict(os.environ if env is None else env)
        self.log_dir = Path(log_dir) if log_dir else None
        self.procs: dict[str, subprocess.Popen] = {}
        self._logs: list[IO[Any]] = []

    def start(self) -> GraphProcesses:
        for name in self.specs:
            self.start_node(name)
        return self

    def start_node(self, name: str) -> subprocess.Popen:
        spec = self.specs[name]
        out = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            out = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - closed in stop()
            self._logs.append(out)
        proc = subprocess.Popen(spec.command(), env=self.env, stdout=out,
                                stderr=subprocess.STDOUT if out else None, start_new_session=True)
        self.procs[name] = proc
        return proc

    def signal_node(self, name: str, sig: int) -> None:
        proc = self.procs[name]
        if proc.poll() is None:
            proc.send_signal(sig)

    def exited(self) -> dict[str, int]:
        return {name: code for name, proc in self.procs.items() if (code := proc.poll()) is not None}

    def stop(self, timeout: float = 10.0) -> dict[str, int]:
        """SIGINT every node, then SIGTERM and SIGKILL after `timeout`; returns the exit codes."""
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
            running = [n for n, p in self.procs.items() if p.poll() is None]
            for name in running:
                self.signal_node(name, sig)
            deadline = time.monotonic() + timeout
            while running and time.monotonic() < deadline:
                running = [n for n in running if self.procs[n].poll() is None]
                time.sleep(0.05)
            if not running:
                break
        for log in self._logs:
            log.close()
        self._logs.clear()
        return {name: proc.wait() for name, proc in self.procs.items()}

    def __enter__(self) -> GraphProcesses:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def _parse_overrides(items: list[str]) -> dict[str, dict[str, Any]]:
    overrides: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        node, dot, param = key.partition(".")
        if not (sep and dot and node and param):
            raise ValueError(f"--set expects node.parameter=value, got {item!r}")
        overrides.setdefault(node, {})[param] = yaml.safe_load(value)
    return overrides


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mvvdp bringup", description=__doc__.splitlines()[0])
    parser.add_argument("--sim", action=argparse.BooleanOptionalAction, default=True,
                        help="start the simulated robot and use its camera calibration (default: on)")
    parser.add_argument("--checkpoint", default="", help="checkpoint folder (sim default: a tiny random one)")
    parser.add_argument("--mode", choices=("preview", "auto"), default="preview")
    parser.add_argument("--out", default="", help="folder for preview GIF/PNG files and node logs")
    parser.add_argument("--config-dir", default=None, help="folder holding the node YAML files")
    parser.add_argument("--set", action="append", default=[], metavar="NODE.PARAM=VALUE",
                        help="override a node parameter (repeatable)")
    parser.add_argument("--namespace", default="", help="run every node in this namespace (e.g. robot1)")
    parser.add_argument("--remap", action="append", default=[], metavar="FROM:=TO",
                        help="remap a topic or service name in every node (repeatable)")
    parser.add_argument("--params-file", action="append", default=[], metavar="NODE=FILE",
                        help="a parameter file read after the node's default one (repeatable), e.g. "
                             "executor=config/executor_fr3.yaml")
    parser.add_argument("--autostart", action=argparse.BooleanOptionalAction, default=True,
                        help="configure and activate perception, policy and executor at start (default: on); "
                             "--no-autostart leaves them unconfigured for a lifecycle manager")
    args = parser.parse_args(argv)
    try:
        specs = build_graph(args.sim, args.mode, args.checkpoint, args.out, args.config_dir,
                            _parse_overrides(args.set), args.namespace, args.remap,
                            parse_params_files(args.params_file), args.autostart)
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    graph = GraphProcesses(specs, log_dir=Path(args.out) / "logs" if args.out else None)
    requested = []

    def on_signal(signum: int, _frame: object) -> None:
        requested.append(signum)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    graph.start()
    print(f"mvvdp bringup: started {', '.join(graph.procs)} (Ctrl-C to stop)", flush=True)
    while not requested and not graph.exited():
        time.sleep(0.1)
    early = graph.exited()
    if early and not requested:
        print(f"mvvdp bringup: {', '.join(f'{n} exited with {c}' for n, c in early.items())}; stopping",
              file=sys.stderr, flush=True)
    codes = graph.stop()
    failed = {n: c for n, c in codes.items() if c not in (0, -signal.SIGINT)}
    if failed:
        print(f"mvvdp bringup: nodes failed: {failed}", file=sys.stderr, flush=True)
    return 0 if requested and not failed else 1


if __name__ == "__main__":
    sys.exit(main())
