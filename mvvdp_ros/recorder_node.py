"""Recorder node: three camera clouds + end-effector pose + gripper -> episodes on disk (mvvdp_core.data).

Thin adapter: clouds are checked and synchronised by mvvdp_core.perception, steps are written by
mvvdp_core.data.recorder (each step durable before the next). `~/start` (std_srvs/Trigger) opens an episode,
`~/stop` (std_srvs/SetBool, data = success) closes it. While an episode is open, every synchronised cloud set
with a fresh pose and gripper state becomes one step, at most `rate` per second. With `format: mcap` each
episode is one MCAP file with ROS 2 schemas instead (mvvdp_core.data.mcap_episodes; `mvvdp mcap-to-episodes`
turns it into the episode folder the training reads).
"""

from __future__ import annotations

import sys

import numpy as np
from geometry_msgs.msg import PoseStamped
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import JointState, PointCloud2
from std_msgs.msg import Float64
from std_srvs.srv import SetBool, Trigger

from mvvdp_core.data.mcap_episodes import McapEpisodeWriter, next_mcap_path
from mvvdp_core.data.recorder import EpisodeWriter, Recorder
from mvvdp_core.perception import CloudFrame, CloudSynchronizer, SyncConfig, load_cameras
from mvvdp_core.rotations import quaternion_to_matrix
from mvvdp_core.step import CameraCloud, Step
from mvvdp_ros.conversions import pose_from_msg, stamp_to_sec
from mvvdp_ros.guard import GuardedNode
from mvvdp_ros.params import declare_parameters
from mvvdp_ros.pointcloud import cloud_from_msg
from mvvdp_ros.spin import run_node

PARAMETERS = {
    "cameras_file": ("", "camera calibration YAML (base_T_camera per camera, topics, frames)"),
    "out": ("", "dataset folder; each episode is a new episode_NNNNNN folder in it"),
    "task": ("default", "task name stored with every episode"),
    "format": ("episodes", "episodes: a folder per episode (the training input); mcap: an MCAP file per "
                           "episode, ROS 2 schemas (ros2 bag, Foxglove; mvvdp mcap-to-episodes converts)"),
    "pose_topic": ("/franka_robot_state_broadcaster/current_pose", "end-effector pose in (PoseStamped)"),
    "gripper_state_topic": ("/fr3_gripper/joint_states", "finger joint states in (width = sum)"),
    "gripper_command_topic": ("mvvdp/gripper_command", "commanded gripper width in (Float64, m)"),
    "closed_below": (0.04, "a commanded width below this (m) records the gripper as closed"),
    "rate": (10.0, "largest number of recorded steps per second"),
    "sync_tolerance": (0.05, "largest stamp difference between the clouds of one step (s)"),
    "max_age": (0.5, "clouds older than this are not recorded (s)"),
    "state_max_age": (0.5, "pose / gripper messages older than this (wall time) block recording (s)"),
}


class RecorderNode(GuardedNode):
    def __init__(self, **kwargs) -> None:
        super().__init__("recorder", **kwargs)
        p = declare_parameters(self, PARAMETERS)
        for required in ("cameras_file", "out"):
            if not p[required]:
                raise ValueError(f"parameter {required} is required")
        if not p["rate"] > 0:
            raise ValueError(f"parameter rate must be > 0 Hz, got {p['rate']}")
        if p["format"] not in ("episodes", "mcap"):
            raise ValueError(f"parameter format must be episodes or mcap, got {p['format']!r}")
        self.params = p
        self.base_frame, cameras = load_cameras(p["cameras_file"])
        self.extrinsics = {c.name: c.base_T_camera for c in cameras}
        self.sync = CloudSynchronizer(cameras, SyncConfig(p["sync_tolerance"], p["max_age"]))
        self.recorder = Recorder(p["out"])
        self.writer: EpisodeWriter | McapEpisodeWriter | None = None
        self.pose: tuple[float, np.ndarray, np.ndarray] | None = None  # (received, position, quat xyzw)
        self.width: tuple[float, float] | None = None  # (received, metres)
        self.closed = False
        for camera in cameras:
            callback = lambda msg, name=camera.name: self._on_cloud(name, msg)  # noqa: E731
            self.create_subscription(PointCloud2, camera.topic, callback, qos_profile_sensor_data)
        self.create_subscription(PoseStamped, p["pose_topic"], self._on_pose, 10)
        self.create_subscription(JointState, p["gripper_state_topic"], self._on_gripper, 10)
        self.create_subscription(Float64, p["gripper_command_topic"], self._on_command, 10)
        self.create_service(Trigger, "~/start", self._on_start)
        self.create_service(SetBool, "~/stop", self._on_stop)
        self.create_timer(1.0 / p["rate"], self._record)
        self.get_logger().info(f"recorder ready: {len(cameras)} cameras, episodes into {p['out']}")

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_cloud(self, camera: str, msg: PointCloud2) -> None:
        try:
            points, colors = cloud_from_msg(msg)
        except ValueError as err:
            self.get_logger().warning(f"{camera}: malformed cloud ({err})", throttle_duration_sec=5.0)
            return
        frame = CloudFrame(camera, stamp_to_sec(msg.header.stamp), msg.header.frame_id, points, colors)
        reason = self.sync.add(frame, self._now())
        if reason:
            self.get_logger().warning(reason, throttle_duration_sec=5.0)

    def _on_pose(self, msg: PoseStamped) -> None:
        if msg.header.frame_id and msg.header.frame_id != self.base_frame:
            self.get_logger().warning(f"pose in {msg.header.frame_id!r}, expected {self.base_frame!r}",
                                      throttle_duration_sec=5.0)
            return
        position, quat = pose_from_msg(msg.pose)
        self.pose = (self._now(), position, quat)

    def _on_gripper(self, msg: JointState) -> None:
        if len(msg.position) < 2:
            self.get_logger().warning("gripper joint states need two finger positions",
                                      throttle_duration_sec=5.0)
            return
        self.width = (self._now(), float(msg.position[0] + msg.position[1]))

    def _on_command(self, msg: Float64) -> None:
        self.closed = bool(msg.data < self.params["closed_below"])

    def _on_start(self, _request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        if self.writer is not None:
            response.success, response.message = False, f"already recording {self.writer.root}"
            return response
        meta = {"task": self.params["task"], "base_frame": self.base_frame}
        if self.params["format"] == "mcap":
            self.writer = McapEpisodeWriter(next_mcap_path(self.recorder.root), list(self.extrinsics), **meta)
        else:
            self.writer = self.recorder.start_episode(list(self.extrinsics), **meta)
        response.success, response.message = True, str(self.writer.root)
        self.get_logger().info(f"recording {self.writer.root}")
        return response

    def _on_stop(self, request: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        if self.writer is None:
            response.success, response.message = False, "not recording"
            return response
        self.writer.close(success=bool(request.data))
        response.success = True
        response.message = f"{self.writer.root}: {self.writer.num_steps} steps"
        self.get_logger().info(response.message)
        self.writer = None
        return response

    def _record(self) -> None:
        if self.writer is None:
            return
        now = self._now()
        limit = self.params["state_max_age"]
        if self.pose is None or self.width is None or now - min(self.pose[0], self.width[0]) > limit:
            return
        frames, _waiting = self.sync.take_synced(now)
        if frames is None:
            return
        clouds = {f.camera: CameraCloud(f.points, f.colors, self.extrinsics[f.camera]) for f in frames}
        _, position, quat = self.pose
        step = Step(clouds, position, quaternion_to_matrix(quat), self.width[1], self.closed,
                    max(f.stamp for f in frames))
        self.writer.add_step(step)

    def destroy_node(self) -> None:
        if self.writer is not None:
            self.writer.close(success=None, interrupted=True)
        super().destroy_node()


def main(argv: list[str] | None = None) -> int:
    return run_node(RecorderNode, argv)


if __name__ == "__main__":
    sys.exit(main())
