"""launch/bringup.launch.py under ROS 2 launch (launch_pytest): with sim:=true the simulated robot,
perception, policy and executor come up, the preview service and action exist, and a preview predicts a
chunk from the simulated cameras. Runs wherever launch, launch_ros and launch_pytest are installed (a full
ROS install); the pip wheels have none of them."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest

pytest.importorskip("rclpy", reason="rclpy (ROS 2 wheels) not installed")
pytest.importorskip("mvvdp_msgs.srv", reason="mvvdp_msgs not built (scripts/build_msgs.sh)")
launch_pytest = pytest.importorskip("launch_pytest", reason="launch is not installed")
pytest.importorskip("launch_ros", reason="launch is not installed")

import rclpy  # noqa: E402
from launch import LaunchDescription  # noqa: E402
from launch.actions import IncludeLaunchDescription  # noqa: E402
from launch.launch_description_sources import PythonLaunchDescriptionSource  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402

from mvvdp_msgs.srv import Preview  # noqa: E402

LAUNCH_FILE = Path(__file__).resolve().parents[1] / "launch" / "bringup.launch.py"
NODES = ("sim_robot", "perception", "policy", "executor")


@launch_pytest.fixture(scope="module")
def bringup():
    os.environ["ROS_DOMAIN_ID"] = str(random.randint(1, 200))  # the launched processes inherit it
    include = IncludeLaunchDescription(PythonLaunchDescriptionSource(str(LAUNCH_FILE)),
                                       launch_arguments={"sim": "true", "mode": "preview"}.items())
    return LaunchDescription([include, launch_pytest.actions.ReadyToTest()])


@pytest.fixture(scope="module")
def probe():
    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("launch_probe", context=context)
    try:
        yield node
    finally:
        node.destroy_node()
        rclpy.shutdown(context=context)


def _spin_until(node, predicate, timeout: float) -> bool:
    executor = SingleThreadedExecutor(context=node.context)
    executor.add_node(node)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.2)
            if predicate():
                return True
        return False
    finally:
        executor.remove_node(node)


@pytest.mark.launch(fixture=bringup)
def test_sim_bringup_starts_the_graph_and_serves_previews(probe) -> None:
    def graph_up() -> bool:
        names = {name for name, _namespace in probe.get_node_names_and_namespaces()}
        services = dict(probe.get_service_names_and_types())
        return set(NODES) <= names and "/mvvdp/preview" in services and "/mvvdp/execute" in services

    assert _spin_until(probe, graph_up, 180.0), sorted(probe.get_node_names())
    services = dict(probe.get_service_names_and_types())
    assert services["/mvvdp/preview"] == ["mvvdp_msgs/srv/Preview"]
    assert "/mvvdp/preview/_action/send_goal" in services  # the Preview action beside the service

    client = probe.create_client(Preview, "/mvvdp/preview")
    assert client.wait_for_service(timeout_sec=30.0)
    deadline = time.monotonic() + 240.0
    result = None
    while time.monotonic() < deadline:  # the first views need the simulated cameras and perception
        future = client.call_async(Preview.Request(task="", num_steps=1))
        assert _spin_until(probe, future.done, 120.0), "no answer from /mvvdp/preview"
        result = future.result()
        if result.success:
            break
        time.sleep(1.0)
    assert result is not None and result.success, result.message if result else "no call"
    assert result.positions and len(result.positions) == len(result.gripper) and result.chunk_id > 0
