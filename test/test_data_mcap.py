"""Episodes through MCAP with ROS 2 schemas and back: the same clouds, extrinsics, poses, gripper and stamps;
the messages decode as the ROS 2 types (rclpy's own deserialiser where it is installed)."""

import importlib.util

import numpy as np
import pytest

pytest.importorskip("mcap_ros2", reason="mcap-ros2-support not installed")

from mcap.reader import make_reader  # noqa: E402

from mvvdp_core.cli import mcap_to_episodes_command as main  # noqa: E402
from mvvdp_core.data.episode import Episode  # noqa: E402
from mvvdp_core.data.mcap_episodes import McapEpisodeWriter, mcap_to_episode, ros2_schema  # noqa: E402
from mvvdp_core.rotations import euler_to_matrix  # noqa: E402
from mvvdp_core.step import CameraCloud, Step  # noqa: E402


def _steps(rng: np.random.Generator, count: int = 3) -> list[Step]:
    extrinsics = {}
    for i, camera in enumerate(("zed_front", "zed_left")):
        m = np.eye(4)
        m[:3, :3] = euler_to_matrix(np.array([0.3 * i - 0.2, 0.5, 1.0 + i]))
        m[:3, 3] = [1.2, -0.4 + i, 0.6]
        extrinsics[camera] = m
    steps = []
    for k in range(count):
        clouds = {c: CameraCloud(rng.normal(size=(50 + 7 * k, 3)).astype(np.float32),
                                 rng.integers(0, 256, (50 + 7 * k, 3), dtype=np.uint8), m)
                  for c, m in extrinsics.items()}
        steps.append(Step(clouds, rng.uniform(0.2, 0.6, 3), euler_to_matrix(rng.uniform(-1, 1, 3)),
                          float(rng.uniform(0, 0.08)), bool(k % 2), 1_700_000_000.123456789 + 0.1 * k))
    return steps


def test_episode_round_trip_through_mcap(tmp_path) -> None:
    steps = _steps(np.random.default_rng(3))
    path = tmp_path / "ep.mcap"
    with McapEpisodeWriter(path, list(steps[0].clouds), task="pick") as writer:
        for step in steps:
            writer.add_step(step)
        writer.close(success=True)
    assert main([str(path), "--out", str(tmp_path / "data")]) == 0
    episode = Episode(next((tmp_path / "data").iterdir()))
    assert len(episode) == len(steps) and episode.success is True
    assert sorted(episode.cameras) == ["zed_front", "zed_left"]
    for original, back in zip(steps, episode, strict=True):
        assert back.timestamp == pytest.approx(original.timestamp, abs=1e-9)
        np.testing.assert_allclose(back.ee_position, original.ee_position, atol=1e-12)
        np.testing.assert_allclose(back.ee_rotation, original.ee_rotation, atol=1e-9)
        assert back.gripper_width == pytest.approx(original.gripper_width, abs=1e-12)
        assert back.gripper_closed == original.gripper_closed
        for camera, cloud in original.clouds.items():
            np.testing.assert_array_equal(back.clouds[camera].points, cloud.points)
            np.testing.assert_array_equal(back.clouds[camera].colors, cloud.colors)
            np.testing.assert_allclose(back.clouds[camera].base_T_camera, cloud.base_T_camera, atol=1e-9)


def test_mcap_holds_ros2_schemas_and_messages(tmp_path) -> None:
    steps = _steps(np.random.default_rng(4), count=1)
    path = tmp_path / "ep.mcap"
    writer = McapEpisodeWriter(path, list(steps[0].clouds))
    writer.add_step(steps[0])
    writer.close(success=False)
    with open(path, "rb") as stream:
        reader = make_reader(stream)
        summary = reader.get_summary()
        schemas = {s.name: s for s in summary.schemas.values()}
        topics = {c.topic: schemas_by_id.name for c in summary.channels.values()
                  for schemas_by_id in [summary.schemas[c.schema_id]]}
        assert reader.get_header().profile == "ros2"
        assert {s.encoding for s in schemas.values()} == {"ros2msg"}
        assert {c.message_encoding for c in summary.channels.values()} == {"cdr"}
        assert topics["/mvvdp/record/zed_front/points"] == "sensor_msgs/msg/PointCloud2"
        assert topics["/tf_static"] == "tf2_msgs/msg/TFMessage"
        # Dependencies follow the main definition, each once, as rosbag2 writes them.
        text = schemas["sensor_msgs/msg/PointCloud2"].data.decode()
        assert "MSG: std_msgs/msg/Header" in text and "MSG: sensor_msgs/msg/PointField" in text
        assert text.count("MSG: builtin_interfaces/msg/Time") == 1
        raw = {c.topic: m.data for _s, c, m in reader.iter_messages()}
    if importlib.util.find_spec("rclpy") is None:
        return
    from geometry_msgs.msg import PoseStamped
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import PointCloud2

    cloud = deserialize_message(raw["/mvvdp/record/zed_left/points"], PointCloud2)
    assert cloud.width == len(steps[0].clouds["zed_left"].points) and cloud.point_step == 16
    pose = deserialize_message(raw["/mvvdp/record/ee_pose"], PoseStamped)
    np.testing.assert_allclose([pose.pose.position.x, pose.pose.position.y, pose.pose.position.z],
                               steps[0].ee_position, atol=1e-12)


def test_bad_files_are_refused(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="no interface definition"):
        ros2_schema("nonexistent_msgs/msg/Thing")
    path = tmp_path / "partial.mcap"
    steps = _steps(np.random.default_rng(5), count=1)
    writer = McapEpisodeWriter(path, ["zed_front", "zed_left", "zed_right"])  # one camera never arrives
    writer.add_step(steps[0])
    writer.close(success=True)
    with pytest.raises(ValueError, match="zed_right/points"):
        mcap_to_episode(path, tmp_path / "data")
