"""Recorder node over real DDS: clouds, pose and gripper published by a test node become episode steps."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

os.environ["ROS_DOMAIN_ID"] = str(random.SystemRandom().randint(101, 200))

import rclpy  # noqa: E402
from geometry_msgs.msg import PoseStamped  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from ros_probe import stop_process  # noqa: E402
from sensor_msgs.msg import JointState, PointCloud2  # noqa: E402
from std_msgs.msg import Float64  # noqa: E402
from std_srvs.srv import SetBool, Trigger  # noqa: E402

from mvvdp_core.data.episode import list_episodes  # noqa: E402
from mvvdp_core.data.mcap_episodes import mcap_to_episode  # noqa: E402
from mvvdp_core.perception import load_cameras  # noqa: E402
from mvvdp_ros.pointcloud import cloud_to_msg  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CAMERAS_FILE = REPO / "config" / "cameras_sim.yaml"


def camera_cloud(index: int) -> tuple[np.ndarray, np.ndarray]:
    """A small organised cloud in front of the camera, one NaN pixel, colours coding the camera."""
    rows, cols = np.mgrid[0:6, 0:8].astype(np.float32)
    points = np.stack([np.full_like(rows, 1.5), (cols - 4) * 0.05, (3 - rows) * 0.05], axis=-1)
    points[0, 0] = np.nan
    colors = np.zeros((6, 8, 3), np.uint8)
    colors[..., index] = 200
    return points, colors


@pytest.fixture(params=["episodes", "mcap"])
def recorder(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[subprocess.Popen, Path]]:
    out = tmp_path / "episodes"
    cmd = [
        sys.executable, "-m", "mvvdp_ros.recorder_node", "--ros-args", "-p", f"cameras_file:={CAMERAS_FILE}",
        "-p", f"out:={out}", "-p", "task:=stack", "-p", "rate:=5.0", "-p", f"format:={request.param}",
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    log_path = tmp_path / "node.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    yield proc, out
    stop_process(proc)


def call(node: Node, client, request, done_before: str, timeout: float = 60.0, attempt: float = 5.0):
    """Call a service and return its answer. DDS can drop a response sent before the server's reply writer has
    matched the client (rmw logs "failed to send response"), so an unanswered request is sent again; an answer
    `done_before` to a repeat means the first one was carried out (the node keeps its own state)."""
    assert client.wait_for_service(timeout_sec=timeout), f"service {client.srv_name} not available"
    deadline, repeat = time.monotonic() + timeout, False
    while time.monotonic() < deadline:
        future = client.call_async(request)
        rclpy.spin_until_future_complete(node, future, timeout_sec=attempt)
        if future.done():
            answer = future.result()
            if repeat and not answer.success and answer.message.startswith(done_before):
                answer.success = True
            return answer
        client.remove_pending_request(future)
        repeat = True
    raise AssertionError(f"no answer from {client.srv_name} in {timeout:.0f} s")


def test_recorder_node_writes_synchronised_steps(recorder: tuple[subprocess.Popen, Path]) -> None:
    proc, out = recorder
    _, cameras = load_cameras(CAMERAS_FILE)
    rclpy.init()
    node = rclpy.create_node("recorder_probe")
    try:
        qos = qos_profile_sensor_data
        clouds = {c.name: node.create_publisher(PointCloud2, c.topic, qos) for c in cameras}
        pose_pub = node.create_publisher(PoseStamped, "/franka_robot_state_broadcaster/current_pose", 10)
        joint_pub = node.create_publisher(JointState, "/fr3_gripper/joint_states", 10)
        command_pub = node.create_publisher(Float64, "/mvvdp/gripper_command", 10)
        start = node.create_client(Trigger, "/recorder/start")
        stop = node.create_client(SetBool, "/recorder/stop")
        answer = call(node, start, Trigger.Request(), done_before="already recording")
        assert answer.success, answer.message
        position = np.array([0.45, -0.1, 0.3])
        deadline = time.monotonic() + 4.0
        sent = 0
        while time.monotonic() < deadline:
            stamp = node.get_clock().now().to_msg()
            for k, camera in enumerate(cameras):
                points, colors = camera_cloud(k)
                clouds[camera.name].publish(cloud_to_msg(points, colors, camera.frame_id, stamp))
            pose = PoseStamped()
            pose.header.stamp, pose.header.frame_id = stamp, "fr3_link0"
            pose.pose.position.x, pose.pose.position.y, pose.pose.position.z = position.tolist()
            pose.pose.orientation.x, pose.pose.orientation.w = 1.0, 0.0  # gripper pointing down
            pose_pub.publish(pose)
            joint_pub.publish(JointState(name=["f1", "f2"], position=[0.02, 0.02]))
            command_pub.publish(Float64(data=0.0 if sent >= 10 else 0.08))
            sent += 1
            rclpy.spin_once(node, timeout_sec=0.1)
        answer = call(node, stop, SetBool.Request(data=True), done_before="not recording")
        assert answer.success, answer.message
    finally:
        node.destroy_node()
        rclpy.shutdown()
    assert proc.poll() is None, "recorder node died"
    mcap_files = sorted(out.glob("*.mcap"))
    if mcap_files:  # format mcap: one file, converted into the episode folder the training reads
        assert [f.name for f in mcap_files] == ["episode_000000.mcap"] and not list_episodes(out)
        mcap_to_episode(mcap_files[0], out.parent / "converted")
        out = out.parent / "converted"
    (episode,) = list_episodes(out)
    assert episode.success is True and episode.meta["task"] == "stack"
    assert len(episode) >= 5, f"only {len(episode)} steps recorded"
    np.testing.assert_allclose(episode.ee_positions(), np.tile(position, (len(episode), 1)), atol=1e-9)
    np.testing.assert_allclose(episode.ee_rotations()[0], np.diag([1.0, -1.0, -1.0]), atol=1e-9)
    assert episode.records[0].gripper_width == pytest.approx(0.04)
    closed = episode.gripper_closed()
    assert closed[0] == 0 and closed[-1] == 1  # the command switched to closing half-way
    step = episode.step(len(episode) - 1)
    for k, camera in enumerate(cameras):
        cloud = step.clouds[camera.name]
        points, colors = camera_cloud(k)
        np.testing.assert_allclose(cloud.points, points.reshape(-1, 3)[1:])  # NaN pixel dropped
        np.testing.assert_array_equal(cloud.colors, colors.reshape(-1, 3)[1:])
        np.testing.assert_allclose(cloud.base_T_camera, camera.base_T_camera, atol=1e-12)  # mcap: quaternion
