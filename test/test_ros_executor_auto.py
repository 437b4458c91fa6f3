"""Executor node in auto mode over DDS: fresh auto chunks run at once on the observation's clock, stale ones
and pending ones are dropped."""

import os
import random
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy (ROS 2 wheels) not installed")
pytest.importorskip("mvvdp_msgs.msg", reason="mvvdp_msgs not built (scripts/build_msgs.sh)")

from test_ros_executor import HOME, Robot  # noqa: E402

from mvvdp_core.graph import build_graph  # noqa: E402
from mvvdp_ros.bringup import GraphProcesses  # noqa: E402


@pytest.fixture(scope="module")
def robot():
    os.environ["ROS_DOMAIN_ID"] = str(random.randint(1, 200))
    overrides = {"executor": {"max_chunk_age": 0.5}}
    specs = [s for s in build_graph(sim=False, mode="auto", overrides=overrides) if s.name == "executor"]
    with GraphProcesses(specs):
        rclpy.init()
        node = Robot()
        try:
            assert node.spin_until(lambda: len(node.states) > 0, 20.0), "executor did not start"
            node.spin_until(lambda: node.count_subscribers("/mvvdp/chunk") > 0, 5.0)
            yield node
        finally:
            node.destroy_node()
            rclpy.shutdown()


def test_stale_and_pending_chunks_are_dropped(robot: Robot) -> None:
    robot.send_chunk(1, status="auto", stamp_offset=-2.0)
    robot.send_chunk(2, status="pending")
    robot.spin_until(lambda: False, 1.0)
    assert robot.targets == []


def test_fresh_auto_chunk_runs_at_once(robot: Robot) -> None:
    sent = time.monotonic()
    robot.send_chunk(3, status="auto", dx=0.01, steps=10)
    assert robot.spin_until(lambda: bool(robot.targets), 2.0), "auto chunk not executed"
    assert robot.targets[0][0] - sent < 0.5
    robot.spin_until(lambda: any("finished" in s for _, s in robot.states), 4.0)
    moved = np.array([p for _, p, _ in robot.targets])
    # The ee stays at HOME: targets step at most 2.5 cm (0.5 m/s at 20 Hz) from the previous one and stay
    # within the 10 cm tracking bound of HOME.
    assert np.all(moved[:, 0] > HOME[0]) and np.all(moved[:, 0] <= HOME[0] + 0.10 + 1e-9)
    assert robot.largest_step_per_period(sent) <= 0.025 + 1e-9
    assert any("chunk=3" in s for _, s in robot.states)
