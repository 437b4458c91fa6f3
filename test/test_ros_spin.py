"""`run_node` (every node's main): how a node process ends, over real rclpy in child processes."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PROBE = textwrap.dedent('''
    import sys

    from rclpy.node import Node

    from mvvdp_ros.spin import run_node

    BEHAVIOUR = sys.argv[1]


    class Probe(Node):
        def __init__(self) -> None:
            super().__init__("spin_probe")
            self.ticks = 0
            self.create_timer(0.001, self.tick)

        def tick(self) -> None:
            self.ticks += 1
            if self.ticks == 20:
                print("spinning", flush=True)
            if self.ticks == 30 and BEHAVIOUR == "error_after_shutdown":
                # what rclpy raises when a signal's shutdown lands while the executor builds its wait set
                self.context.try_shutdown()
                raise RuntimeError("failed to initialize wait set: the given context is not valid")
            if self.ticks == 30 and BEHAVIOUR == "error":
                raise RuntimeError("a real failure in a callback")


    sys.exit(run_node(Probe, sys.argv[:1]))
''')


@pytest.fixture()
def probe(tmp_path: Path):
    path = tmp_path / "spin_probe.py"
    path.write_text(PROBE)
    env = dict(os.environ, ROS_DOMAIN_ID=str(random.randint(1, 200)))

    def start(behaviour: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, str(path), behaviour], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)

    return start


def test_an_error_raised_by_a_shutdown_mid_wait_is_a_clean_stop(probe) -> None:
    proc = probe("error_after_shutdown")
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, output
    assert "Traceback" not in output, output


def test_an_error_while_the_context_is_up_is_a_crash(probe) -> None:
    proc = probe("error")
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 1, output
    assert "a real failure in a callback" in output


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signals_stop_a_spinning_node_with_status_zero(probe, sig: int) -> None:
    for _ in range(3):
        proc = probe("spin")
        assert proc.stdout.readline().strip() == "spinning"
        proc.send_signal(sig)
        output = proc.communicate(timeout=60)[0]
        assert proc.returncode == 0, output
