"""Perception node as a process, fed synthetic clouds from this test over DDS: views of a known scene, and
rejection (with /diagnostics) of NaN-only, stale, future, wrong-frame clouds and of a silent camera."""

import os
import random
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

rclpy = pytest.importorskip("rclpy", reason="rclpy (ROS 2 wheels) not installed")
pytest.importorskip("mvvdp_msgs.msg", reason="mvvdp_msgs not built (scripts/build_msgs.sh)")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from ros_probe import ProbeNode  # noqa: E402
from sensor_msgs.msg import Image, PointCloud2  # noqa: E402

from mvvdp_core.geometry import VIEW_NAMES, Workspace  # noqa: E402
from mvvdp_core.graph import build_graph  # noqa: E402
from mvvdp_msgs.msg import ProjectedViews  # noqa: E402
from mvvdp_ros.bringup import GraphProcesses  # noqa: E402
from mvvdp_ros.conversions import image_from_msg, sec_to_stamp, views_from_msg  # noqa: E402
from mvvdp_ros.pointcloud import cloud_to_msg  # noqa: E402

CAMERAS = ("cam_a", "cam_b", "cam_c")
RESOLUTION = 64
WORKSPACE = Workspace(resolution=RESOLUTION)
# Camera i sits at OFFSETS[i] in the base frame, unrotated, so base = camera point + offset.
OFFSETS = {"cam_a": (0.0, 0.0, 0.0), "cam_b": (0.1, 0.0, 0.0), "cam_c": (0.0, 0.0, -0.1)}
PATCH = {
    "cam_a": (np.array([0.4, -0.2, 0.3]), (255, 0, 0)),
    "cam_b": (np.array([0.6, 0.2, 0.5]), (0, 255, 0)),
    "cam_c": (np.array([0.5, 0.0, 0.6]), (0, 0, 255)),
}


def patch_cloud(camera: str, nan: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A 9x9 organised cloud: a 4 cm square patch (base frame) of one colour; one row has no returns."""
    centre, color = PATCH[camera]
    offsets = np.linspace(-0.02, 0.02, 9)
    grid = np.stack(np.meshgrid(offsets, offsets, indexing="ij"), -1)
    points = np.zeros((9, 9, 3), np.float32)
    points[..., :2] = centre[:2] + grid
    points[..., 2] = centre[2]
    points -= np.asarray(OFFSETS[camera], np.float32)  # into the camera frame
    points[0] = np.nan
    if nan:
        points[:] = np.nan
    return points.astype(np.float32), np.broadcast_to(np.array(color, np.uint8), (9, 9, 3)).copy()


class Feeder(ProbeNode):
    def __init__(self) -> None:
        super().__init__("cloud_feeder")
        self.pubs = {c: self.create_publisher(PointCloud2, f"/test/{c}/cloud", qos_profile_sensor_data)
                     for c in CAMERAS}
        self.views: list[tuple[float, ProjectedViews]] = []
        self.images: list[Image] = []
        self.diagnostics: list[str] = []
        on_views = lambda m: self.views.append((time.monotonic(), m))  # noqa: E731
        self.create_subscription(ProjectedViews, "/mvvdp/views", on_views, 10)
        self.create_subscription(Image, "/mvvdp/views/top/rgb", self.images.append, 10)
        self.create_subscription(DiagnosticArray, "/diagnostics",
                                 lambda m: self.diagnostics.extend(s.message for s in m.status), 50)

    def now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def publish(self, stamp_offset: float = 0.0, nan: str = "", frame: dict | None = None,
                skip: str = "") -> None:
        stamp = sec_to_stamp(self.now() + stamp_offset)
        for camera in CAMERAS:
            if camera == skip:
                continue
            points, colors = patch_cloud(camera, nan=camera == nan)
            frame_id = (frame or {}).get(camera, f"{camera}_frame")
            self.pubs[camera].publish(cloud_to_msg(points, colors, frame_id, stamp))

@pytest.fixture(scope="module")
def feeder(tmp_path_factory):
    os.environ["ROS_DOMAIN_ID"] = str(random.randint(1, 200))
    cameras = {"base_frame": "fr3_link0", "cameras": [
        {"name": c, "topic": f"/test/{c}/cloud", "frame_id": f"{c}_frame", "translation": list(OFFSETS[c]),
         "rotation": [0.0, 0.0, 0.0, 1.0]} for c in CAMERAS]}
    path = Path(tmp_path_factory.mktemp("cams")) / "cameras.yaml"
    path.write_text(yaml.safe_dump(cameras))
    overrides = {"perception": {"cameras_file": str(path), "resolution": RESOLUTION, "use_tf": False,
                                "max_age": 0.5, "camera_timeout": 1.0, "max_rate": 50.0}}
    specs = [s for s in build_graph(sim=False, overrides=overrides) if s.name == "perception"]
    with GraphProcesses(specs):
        rclpy.init()
        node = Feeder()
        try:
            started = lambda: node.count_subscribers("/test/cam_a/cloud") > 0  # noqa: E731
            assert node.spin_for(30.0, started), "perception did not start"
            yield node
        finally:
            node.destroy_node()
            rclpy.shutdown()


def test_views_of_a_known_scene(feeder: Feeder) -> None:
    feeder.views.clear()
    for _ in range(10):
        feeder.publish()
        if feeder.spin_for(0.5, lambda: bool(feeder.views) and bool(feeder.images)):
            break
    assert feeder.views, "no views published"
    names, rgb, depth = views_from_msg(feeder.views[-1][1])
    assert names == list(VIEW_NAMES) and rgb.shape == (3, 3, RESOLUTION, RESOLUTION)
    for camera, (centre, color) in PATCH.items():
        col, row, expected_depth = WORKSPACE.to_view(torch.tensor(centre))[0].tolist()  # top view
        pixel = rgb[0, :, int(row), int(col)]
        np.testing.assert_allclose(pixel, np.array(color) / 255.0, atol=1 / 255, err_msg=camera)
        assert depth[0, int(row), int(col)] == pytest.approx(expected_depth, abs=WORKSPACE.pixel_size)
    assert np.isinf(depth[0, 2, 2]) and rgb[0, :, 2, 2].max() == 0  # empty corner
    top = image_from_msg(feeder.images[-1])
    np.testing.assert_array_equal(top, np.round(rgb[0].transpose(1, 2, 0) * 255).astype(np.uint8))


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"nan": "cam_a"}, "cam_a: cloud holds no finite point"),
        ({"stamp_offset": -3.0}, "stale cloud"),
        ({"stamp_offset": 3.0}, "in the future"),
        ({"frame": {"cam_b": "camera_optical_frame"}}, "cam_b: wrong frame_id"),
    ],
)
def test_bad_clouds_are_rejected_with_a_diagnostic(feeder: Feeder, kwargs: dict, reason: str) -> None:
    feeder.spin_for(0.3)
    feeder.views.clear()
    feeder.diagnostics.clear()
    for _ in range(3):
        feeder.publish(**kwargs)
        feeder.spin_for(0.3)
    assert any(reason in d for d in feeder.diagnostics), feeder.diagnostics
    assert feeder.views == [], "views published from a set with a rejected cloud"


def test_silent_camera_is_reported_missing(feeder: Feeder) -> None:
    feeder.diagnostics.clear()
    feeder.views.clear()
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:
        feeder.publish(skip="cam_c")
        feeder.spin_for(0.2)
    assert any("cam_c: no cloud for more than" in d for d in feeder.diagnostics), feeder.diagnostics
    assert feeder.views == []
