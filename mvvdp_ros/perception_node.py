"""Perception node: three camera clouds -> checked, synchronised -> views (mvvdp_msgs/ProjectedViews).

Thin adapter over mvvdp_core.perception; a lifecycle node (mvvdp_ros.lifecycle): configure loads the
calibration and subscribes the clouds, only an active node projects and publishes views. Extrinsics come
from tf2 with use_tf (the node refuses to configure where tf2_ros is not installed), otherwise from the
calibration YAML. Rejected clouds are logged and reported on /diagnostics.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.time import Time
from sensor_msgs.msg import Image, PointCloud2

from mvvdp_core.geometry import Workspace, cpu_ext
from mvvdp_core.geometry.cloud_filter import CloudFilter, import_open3d
from mvvdp_core.perception import (
    CloudFrame,
    CloudSynchronizer,
    SyncConfig,
    load_cameras,
    pose_matrix,
    project_observation,
)
from mvvdp_msgs.msg import ProjectedViews
from mvvdp_ros.conversions import image_to_msg, stamp_to_sec, to_uint8_image, views_to_msg
from mvvdp_ros.diagnostics import OK, WARN, Diagnostics
from mvvdp_ros.lifecycle import ManagedNode
from mvvdp_ros.params import declare_parameters
from mvvdp_ros.pointcloud import cloud_from_msg
from mvvdp_ros.spin import run_node

PARAMETERS = {
    "cameras_file": ("", "camera calibration YAML (base_T_camera per camera, topics, frames)"),
    "use_tf": (True, "take extrinsics from tf2 (needs tf2_ros); false: from cameras_file"),
    "views_topic": ("mvvdp/views", "projected views out (mvvdp_msgs/ProjectedViews)"),
    "view_image_topic": ("mvvdp/views/{view}/rgb", "per-view RGB image for RViz; {view} = view name"),
    "diagnostics_topic": ("/diagnostics", "diagnostic_msgs/DiagnosticArray"),
    "sync_tolerance": (0.05, "largest stamp difference between the clouds of one set (s)"),
    "max_age": (0.5, "clouds older than this are rejected (s)"),
    "future_tolerance": (0.05, "clouds stamped further ahead of now than this are rejected (s)"),
    "camera_timeout": (1.0, "a camera silent this long is reported missing (s)"),
    "min_range": (0.05, "points nearer than this to their camera are unusable (m)"),
    "max_range": (40.0, "points farther than this from their camera are unusable (m)"),
    "min_usable_fraction": (0.5, "reject clouds with fewer usable points among the finite ones", (0.0, 1.0)),
    "max_points_per_camera": (1_000_000, "clouds with more points are rejected undecoded", (1, 100_000_000)),
    "max_rate": (10.0, "largest rate of published views (Hz)"),
    "workspace_center": ([0.5, 0.0, 0.4], "workspace cube centre in the base frame (m)"),
    "workspace_edge": (1.0, "workspace cube edge (m)"),
    "resolution": (256, "view resolution (pixels)"),
    "splat_radius": (0.008, "splatting radius of each point (m)"),
    "backend": ("auto", "projection backend: auto, cpu (compiled), torch or cuda"),
    "voxel_size": (0.0, "voxel downsampling of the merged workspace cloud, one averaged point per voxel of "
                        "this edge (m); 0 = off; needs open3d", (0.0, 0.1)),
    "outlier_neighbors": (0, "statistical outlier removal on the merged workspace cloud: neighbours "
                             "compared; 0 = off; needs open3d", (0, 1000)),
    "outlier_std_ratio": (2.0, "drop points whose mean neighbour distance is this many standard deviations "
                               "above the cloud's mean", (0.1, 100.0)),
    "torch_threads": (1, "CPU threads torch may use in this process and in each projection on the CPU; keep "
                         "it below the free cores: oversubscribed threads make the projection many times "
                         "slower", (1, 256)),
}


class PerceptionNode(ManagedNode):
    def __init__(self, **kwargs) -> None:
        super().__init__("perception", **kwargs)
        self.params = declare_parameters(self, PARAMETERS)
        self.diagnostics = Diagnostics(self, self.params["diagnostics_topic"])
        self.start()

    def configure(self) -> None:
        """Calibration, workspace, synchroniser and tf2 from the parameters; the clouds' subscriptions."""
        p = self.params
        if not p["cameras_file"]:
            raise ValueError("parameter cameras_file is required (camera calibration YAML)")
        torch.set_num_threads(p["torch_threads"])
        self.base_frame, cameras = load_cameras(p["cameras_file"])
        self.extrinsics = {c.name: c.base_T_camera for c in cameras}
        self.workspace = Workspace(center=tuple(p["workspace_center"]), edge=p["workspace_edge"],
                                   resolution=p["resolution"])
        self.sync = CloudSynchronizer(cameras, SyncConfig(
            p["sync_tolerance"], p["max_age"], p["future_tolerance"], p["camera_timeout"], p["min_range"],
            p["max_range"], p["max_points_per_camera"], p["min_usable_fraction"]))
        self.cloud_filter = CloudFilter(p["voxel_size"], p["outlier_neighbors"], p["outlier_std_ratio"])
        if self.cloud_filter.enabled:
            import_open3d()  # refuse to configure where open3d is missing, with the reason
        if p["backend"] in ("auto", "cpu"):  # build the compiled projection now, not in the first callback
            reason = cpu_ext.unavailable_reason()
            if reason is not None and p["backend"] == "cpu":
                raise RuntimeError(reason)
            self.get_logger().info(f"CPU projection: {f'torch ({reason})' if reason else 'compiled library'}")
        self.tf_buffer = self._make_tf_buffer() if p["use_tf"] else None
        self._min_period = 1.0 / p["max_rate"] if p["max_rate"] > 0 else 0.0
        self._last_publish = -np.inf

        for camera in cameras:
            callback = lambda msg, name=camera.name: self._on_cloud(name, msg)  # noqa: E731
            self.create_subscription(PointCloud2, camera.topic, callback, qos_profile_sensor_data)
        reliable = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE)
        self.views_pub = self.create_lifecycle_publisher(ProjectedViews, p["views_topic"], reliable)
        self.image_pubs = {v: self.create_lifecycle_publisher(Image, p["view_image_topic"].format(view=v),
                                                              reliable)
                           for v in self.workspace.views}
        self.create_timer(max(p["camera_timeout"], 0.1), self._check_missing)
        source = "tf2" if self.tf_buffer is not None else p["cameras_file"]
        self.get_logger().info(f"perception configured: {len(cameras)} cameras, extrinsics from {source}")

    def activate(self) -> None:
        now = self._now()  # each camera has camera_timeout from now before it counts as missing
        self.sync.last_seen = dict.fromkeys(self.sync.cameras, now)

    def cleanup(self) -> None:
        self.tf_buffer = self._tf_listener = None

    def _make_tf_buffer(self):
        try:
            import tf2_ros
        except ImportError as err:
            raise RuntimeError("use_tf is true but tf2_ros is not installed: install tf2_ros, or set "
                               "use_tf:=false to take the extrinsics from cameras_file") from err
        buffer = tf2_ros.Buffer()
        self._tf_listener = tf2_ros.TransformListener(buffer, self)
        return buffer

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _extrinsic(self, frame: CloudFrame) -> np.ndarray:
        if self.tf_buffer is None:
            return self.extrinsics[frame.camera]
        stamp = Time(nanoseconds=int(round(frame.stamp * 1e9)))
        t = self.tf_buffer.lookup_transform(self.base_frame, frame.frame_id, stamp).transform
        return pose_matrix([t.translation.x, t.translation.y, t.translation.z],
                           [t.rotation.x, t.rotation.y, t.rotation.z, t.rotation.w])

    def _on_cloud(self, camera: str, msg: PointCloud2) -> None:
        if not self.active:  # inactive: clouds are not looked at
            return
        now = self._now()
        too_big = self.sync.check_size(camera, int(msg.width) * int(msg.height))
        if too_big:
            self._reject(camera, too_big)
            return
        try:
            points, colors = cloud_from_msg(msg)
        except ValueError as err:
            self._reject(camera, f"{camera}: malformed cloud ({err})")
            return
        frame = CloudFrame(camera, stamp_to_sec(msg.header.stamp), msg.header.frame_id, points, colors)
        reason = self.sync.add(frame, now)
        if reason:
            self._reject(camera, reason)
            return
        if time.monotonic() - self._last_publish < self._min_period:
            return
        frames, _waiting = self.sync.take_synced(now)
        if frames is not None:
            self._publish_views(frames)

    def _publish_views(self, frames: list[CloudFrame]) -> None:
        try:
            extrinsics = [self._extrinsic(f) for f in frames]
            views = project_observation(frames, extrinsics, self.workspace, self.params["splat_radius"],
                                        self.params["backend"], self.cloud_filter,
                                        threads=self.params["torch_threads"])
        except Exception as err:  # noqa: BLE001 - any failure of one set is reported, the node keeps running
            self._reject("views", f"views not computed: {err}")
            return
        self._last_publish = time.monotonic()
        stamp = max(f.stamp for f in frames)
        msg = views_to_msg(self.workspace.views, views.rgb[:, :3], views.depth, self.workspace.center,
                           self.workspace.edge, stamp, self.base_frame)
        self.views_pub.publish(msg)
        for name, rgb in zip(self.workspace.views, views.rgb[:, :3], strict=True):
            image = image_to_msg(to_uint8_image(rgb), msg.header.stamp, self.base_frame)
            self.image_pubs[name].publish(image)
        for frame in frames:  # each camera's cloud was used: its status is OK again (sent with the next)
            self.diagnostics.report(frame.camera, OK, "cloud used for views", hardware_id=frame.camera,
                                    send=False)
        self.diagnostics.report("views", OK, "views published", stamp=f"{stamp:.3f}")

    def _check_missing(self) -> None:
        if not self.active:
            return
        for camera in self.sync.missing(self._now()):
            self._reject(camera, f"{camera}: no cloud for more than {self.params['camera_timeout']} s")

    def _reject(self, camera: str, reason: str) -> None:
        """A rejected cloud (or set): logged and reported as the camera's (or "views") status."""
        self.get_logger().warning(f"rejected: {reason}", throttle_duration_sec=1.0)
        self.diagnostics.report(camera, WARN, reason, hardware_id=camera if camera != "views" else "")


def main(argv: list[str] | None = None) -> int:
    return run_node(PerceptionNode, argv)


if __name__ == "__main__":
    sys.exit(main())
