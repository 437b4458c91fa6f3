"""Message conversions: images, stamps, chunks and views round trip; bad inputs are named."""

import numpy as np
import pytest
import torch

pytest.importorskip("rclpy", reason="rclpy (ROS 2 wheels) not installed")
pytest.importorskip("mvvdp_msgs.msg", reason="mvvdp_msgs not built (scripts/build_msgs.sh)")

from scipy.spatial.transform import Rotation  # noqa: E402

from mvvdp_ros.conversions import (  # noqa: E402
    chunk_from_msg,
    chunk_to_msg,
    image_from_msg,
    image_to_msg,
    sec_to_stamp,
    stamp_to_sec,
    to_uint8_image,
    views_from_msg,
    views_to_msg,
)


def test_stamps_round_trip_to_the_nanosecond() -> None:
    stamp = sec_to_stamp(1_795_452_706.123456789)
    assert (stamp.sec, stamp.nanosec) == (1_795_452_706, pytest.approx(123456789, abs=300))
    assert stamp_to_sec(sec_to_stamp(12.5)) == 12.5
    with pytest.raises(ValueError, match="finite"):
        sec_to_stamp(float("nan"))


def test_images_round_trip() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    np.testing.assert_array_equal(image_from_msg(image_to_msg(rgb, 1.0, "f")), rgb)
    depth = np.array([[0.5, np.inf], [1.25, 0.0]], np.float32)
    msg = image_to_msg(depth, 1.0, "f")
    assert msg.encoding == "32FC1" and msg.step == 8
    np.testing.assert_array_equal(image_from_msg(msg), depth)
    chw = torch.tensor([[[0.0, 1.0]], [[0.5, 0.2]], [[1.0, 0.0]]])  # (3, 1, 2)
    np.testing.assert_array_equal(to_uint8_image(chw), [[[0, 128, 255], [255, 51, 0]]])
    with pytest.raises(ValueError, match="unsupported image array"):
        image_to_msg(np.zeros((2, 2, 4), np.uint8), 0.0, "f")
    msg.encoding = "bgr16"
    with pytest.raises(ValueError, match="bgr16"):
        image_from_msg(msg)


def test_chunk_round_trip_keeps_poses_and_times() -> None:
    from mvvdp_core.actions import ActionChunk

    rng = np.random.default_rng(1)
    steps = 6
    euler = rng.uniform(-np.pi, np.pi, (steps, 3))
    chunk = ActionChunk(positions=rng.uniform(0, 1, (steps, 3)), euler=euler,
                        gripper=np.array([1, 1, 0, 0, 1, 0.0]), time_from_start=0.1 * np.arange(1, steps + 1),
                        stamp=1234.5, confidence=0.75, step_confidence=np.linspace(0, 1, steps), chunk_id=42)
    msg = chunk_to_msg(chunk, "fr3_link0", "pending")
    assert (msg.chunk_id, msg.status, msg.header.frame_id) == (42, "pending", "fr3_link0")
    timed = chunk_from_msg(msg)
    np.testing.assert_array_equal(timed.positions, chunk.positions)
    np.testing.assert_allclose(Rotation.from_quat(timed.quaternions).as_matrix(),
                               Rotation.from_euler("xyz", euler).as_matrix(), atol=1e-12)
    np.testing.assert_allclose(timed.time_from_start, chunk.time_from_start, rtol=1e-7)
    np.testing.assert_array_equal(timed.gripper, chunk.gripper)
    assert timed.stamp == pytest.approx(1234.5) and timed.confidence == pytest.approx(0.75)
    msg.gripper = msg.gripper[:-1]
    with pytest.raises(ValueError, match="gripper values"):
        chunk_from_msg(msg)


def test_views_round_trip() -> None:
    rgb = torch.rand(3, 3, 8, 8)
    depth = torch.full((3, 8, 8), float("inf"))
    depth[:, 2:4, 2:4] = 0.3
    msg = views_to_msg(("top", "front", "side"), rgb, depth, (0.5, 0.0, 0.4), 1.0, 3.0, "fr3_link0")
    names, rgb_back, depth_back = views_from_msg(msg)
    assert names == ["top", "front", "side"] and msg.workspace_edge == 1.0
    np.testing.assert_allclose(rgb_back, rgb.numpy(), atol=0.5 / 255 + 1e-6)
    np.testing.assert_array_equal(depth_back, depth.numpy())
    with pytest.raises(ValueError, match="view names"):
        views_to_msg(("top",), rgb, depth, (0.5, 0.0, 0.4), 1.0, 3.0, "fr3_link0")


def _cv_bridge_installed() -> bool:
    from mvvdp_ros import conversions

    return conversions._BRIDGE is not None


def test_asking_for_a_missing_cv_bridge_names_it() -> None:
    if _cv_bridge_installed():
        pytest.skip("cv_bridge is installed")
    with pytest.raises(RuntimeError, match="cv_bridge is not installed"):
        image_to_msg(np.zeros((2, 2), np.uint8), 0.0, "f", use_library=True)


@pytest.mark.skipif(not _cv_bridge_installed(), reason="cv_bridge is not installed")
def test_cv_bridge_and_numpy_convert_alike() -> None:
    rng = np.random.default_rng(7)
    images = [rng.integers(0, 256, (5, 7, 3), dtype=np.uint8), rng.integers(0, 256, (4, 3), dtype=np.uint8),
              np.where(rng.random((6, 5)) < 0.2, np.inf, rng.random((6, 5))).astype(np.float32)]
    for image in images:
        library = image_to_msg(image, 2.5, "f", use_library=True)
        fallback = image_to_msg(image, 2.5, "f", use_library=False)
        for field in ("header", "height", "width", "encoding", "is_bigendian", "step"):
            assert getattr(library, field) == getattr(fallback, field), field
        assert bytes(library.data) == bytes(fallback.data)
        for msg in (library, fallback):
            a, b = image_from_msg(msg, use_library=True), image_from_msg(msg, use_library=False)
            assert a.dtype == b.dtype and a.shape == b.shape
            np.testing.assert_array_equal(a, image)
            np.testing.assert_array_equal(b, image)
    # A big-endian depth image with padded rows reads the same both ways.
    depth = images[2]
    padded = np.zeros((depth.shape[0], depth.shape[1] * 4 + 4), np.uint8)
    padded[:, :depth.shape[1] * 4] = depth.astype(">f4").view(np.uint8).reshape(depth.shape[0], -1)
    msg = image_to_msg(depth, 0.0, "f", use_library=False)
    msg.is_bigendian, msg.step, msg.data = 1, padded.shape[1], padded.tobytes()
    for use_library in (True, False):
        np.testing.assert_array_equal(image_from_msg(msg, use_library=use_library), depth)
