"""What the ROS tests' own nodes share: spinning until something holds, service calls, stopping a node."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from typing import Any

import rclpy
from rclpy.node import Node


class ProbeNode(Node):
    """A test's side of the graph, spun by the test itself."""

    def spin_for(self, seconds: float, until: Callable[[], bool] | None = None) -> bool:
        """Spin for `seconds`, or until `until()` holds (then True)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            rclpy.spin_once(self, timeout_sec=0.02)
            if until is not None and until():
                return True
        return False

    def spin_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        return self.spin_for(timeout, predicate)

    def wait(self, future, timeout: float = 120.0, what: str = "an answer") -> Any:
        assert self.spin_for(timeout, future.done), f"no {what} within {timeout:.0f} s"
        return future.result()

    def call(self, client, request, timeout: float = 60.0) -> Any:
        assert client.wait_for_service(timeout_sec=timeout), f"service {client.srv_name} not available"
        return self.wait(client.call_async(request), timeout, f"response from {client.srv_name}")


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> int | None:
    """Ctrl-C a node process, killing it after `timeout`; its exit status (None: it had to be killed)."""
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None
