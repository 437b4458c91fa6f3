"""sim_robot over real DDS: the node runs in a subprocess, a test node commands it and watches its topics."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

os.environ["ROS_DOMAIN_ID"] = str(random.SystemRandom().randint(1, 100))

import rclpy  # noqa: E402
from geometry_msgs.msg import PoseStamped, WrenchStamped  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from ros_probe import stop_process  # noqa: E402
from sensor_msgs.msg import JointState, PointCloud2  # noqa: E402
from std_msgs.msg import Float64  # noqa: E402

from mvvdp_ros.pointcloud import cloud_from_msg  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CAMERAS = ("zed_front", "zed_left", "zed_right")


@pytest.fixture(scope="module")
def sim_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[subprocess.Popen]:
    cmd = [
        sys.executable, "-m", "mvvdp_ros.sim_robot_node", "--ros-args",
        "-p", "camera_width:=64", "-p", "camera_height:=48", "-p", "cloud_rate:=2.0", "-p", "seed:=3",
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    log_path = tmp_path_factory.mktemp("sim_robot") / "node.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    proc.log_path = log_path  # read back if the node dies early
    yield proc
    assert stop_process(proc) == 0, f"sim_robot did not shut down cleanly:\n{log_path.read_text()}"


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    rclpy.init()
    test_node = rclpy.create_node("sim_robot_probe")
    yield test_node
    test_node.destroy_node()
    rclpy.shutdown()


def _spin_until(node: Node, done: Callable[[], bool], timeout: float, proc: subprocess.Popen) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sim_robot exited with {proc.returncode}:\n{proc.log_path.read_text()}")
        rclpy.spin_once(node, timeout_sec=0.05)
        if done():
            return True
    return False


def test_sim_robot_follows_commands_and_publishes_clouds(sim_process: subprocess.Popen, node: Node) -> None:
    poses: list[PoseStamped] = []
    fingers: list[JointState] = []
    clouds: dict[str, PointCloud2] = {}
    node.create_subscription(PoseStamped, "/franka_robot_state_broadcaster/current_pose", poses.append, 10)
    node.create_subscription(JointState, "/fr3_gripper/joint_states", fingers.append, 10)
    wrenches: list[WrenchStamped] = []
    node.create_subscription(WrenchStamped, "/franka_robot_state_broadcaster/external_wrench_in_base_frame",
                             wrenches.append, 10)
    for name in CAMERAS:
        node.create_subscription(
            PointCloud2,
            f"/{name}/zed_node/point_cloud/cloud_registered",
            lambda msg, name=name: clouds.__setitem__(name, msg),
            qos_profile_sensor_data,
        )
    target_pub = node.create_publisher(PoseStamped, "/cartesian_impedance_controller/target_pose", 10)
    gripper_pub = node.create_publisher(Float64, "/mvvdp/gripper_command", 10)

    assert _spin_until(node, lambda: bool(poses) and len(clouds) == 3, 60.0, sim_process), "no pose/clouds"
    start = poses[-1]
    assert start.header.frame_id == "fr3_link0"
    stamp_s = start.header.stamp.sec + start.header.stamp.nanosec * 1e-9
    assert abs(stamp_s - node.get_clock().now().nanoseconds * 1e-9) < 2.0  # stamped in ROS time
    for name, msg in clouds.items():
        assert msg.header.frame_id == f"{name}_left_camera_frame"
        assert (msg.height, msg.width) == (48, 64)
        points, _ = cloud_from_msg(msg)
        assert np.isfinite(points).all(axis=1).mean() > 0.5

    p = start.pose.position
    target = PoseStamped()
    target.header.frame_id = "fr3_link0"
    target.pose.position.x, target.pose.position.y, target.pose.position.z = p.x + 0.05, p.y - 0.05, p.z - 0.1
    target.pose.orientation = start.pose.orientation
    goal = np.array([target.pose.position.x, target.pose.position.y, target.pose.position.z])

    def reached() -> bool:
        q = poses[-1].pose.position
        return bool(np.linalg.norm(np.array([q.x, q.y, q.z]) - goal) < 0.005)

    deadline = time.monotonic() + 30.0
    while not reached() and time.monotonic() < deadline:
        target.header.stamp = node.get_clock().now().to_msg()
        target_pub.publish(target)
        gripper_pub.publish(Float64(data=0.02))
        _spin_until(node, reached, 0.2, sim_process)
    assert reached(), f"end effector at {poses[-1].pose.position}, target {goal}"

    def gripper_at_target() -> bool:
        return bool(fingers) and abs(sum(fingers[-1].position) - 0.02) < 0.002

    assert _spin_until(node, gripper_at_target, 10.0, sim_process), f"fingers at {fingers[-1].position}"
    assert list(fingers[-1].name) == ["fr3_finger_joint1", "fr3_finger_joint2"]
    # Nothing touches the arm in the air: the published contact wrench is zero, in the base frame.
    assert wrenches and wrenches[-1].header.frame_id == "fr3_link0"
    force = wrenches[-1].wrench.force
    assert (force.x, force.y, force.z) == (0.0, 0.0, 0.0)
