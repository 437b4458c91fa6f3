"""PointCloud2 <-> numpy: exact round trips, ZED colour packing, foreign layouts, bad input."""

from __future__ import annotations

import array

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from sensor_msgs.msg import PointCloud2, PointField

from mvvdp_ros.pointcloud import cloud_from_msg, cloud_to_msg


def _random_cloud(rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    points = rng.normal(size=(*shape, 3)).astype(np.float32)
    colors = rng.integers(0, 256, size=(*shape, 3), dtype=np.uint8)
    return points, colors


def test_organised_round_trip_is_exact_with_nan() -> None:
    rng = np.random.default_rng(0)
    points, colors = _random_cloud(rng, (6, 9))
    points[1, 2] = np.nan
    points[4, :] = np.nan
    msg = cloud_to_msg(points, colors, "zed_front_left_camera_frame", Time(sec=12, nanosec=34))
    assert (msg.height, msg.width, msg.point_step, msg.row_step) == (6, 9, 16, 144)
    assert [f.name for f in msg.fields] == ["x", "y", "z", "rgb"]
    assert all(f.datatype == PointField.FLOAT32 for f in msg.fields)
    assert not msg.is_dense and not msg.is_bigendian
    assert msg.header.frame_id == "zed_front_left_camera_frame" and msg.header.stamp.nanosec == 34
    out_points, out_colors = cloud_from_msg(msg)
    assert out_points.dtype == np.float32 and out_colors.dtype == np.uint8
    np.testing.assert_array_equal(out_points.reshape(6, 9, 3), points)  # NaN compare equal here
    np.testing.assert_array_equal(out_colors.reshape(6, 9, 3), colors)


def test_unorganised_round_trip() -> None:
    points, colors = _random_cloud(np.random.default_rng(1), (50,))
    msg = cloud_to_msg(points, colors, "f", Time())
    assert (msg.height, msg.width) == (1, 50) and msg.is_dense
    out_points, out_colors = cloud_from_msg(msg)
    np.testing.assert_array_equal(out_points, points)
    np.testing.assert_array_equal(out_colors, colors)


def test_rgb_bytes_follow_the_zed_layout() -> None:
    points = np.zeros((1, 1, 3), dtype=np.float32)
    colors = np.array([[[10, 20, 30]]], dtype=np.uint8)  # R, G, B
    msg = cloud_to_msg(points, colors, "f", Time())
    assert bytes(msg.data[12:16]) == bytes([30, 20, 10, 255])  # B, G, R, A in memory


def _foreign_cloud(points: np.ndarray, colors: np.ndarray, bigendian: bool, pad_row: int) -> PointCloud2:
    """A cloud laid out unlike ours: rgb first as uint32, an extra float64 field, row padding."""
    order = ">" if bigendian else "<"
    dtype = np.dtype(
        {
            "names": ["rgb", "intensity", "x", "y", "z"],
            "formats": [order + "u4", order + "f8", order + "f4", order + "f4", order + "f4"],
            "offsets": [0, 8, 16, 20, 24],
            "itemsize": 32,
        }
    )
    height, width = points.shape[:2]
    cloud = np.zeros((height, width), dtype=dtype)
    cloud["x"], cloud["y"], cloud["z"] = points[..., 0], points[..., 1], points[..., 2]
    c = colors.astype(np.uint32)
    cloud["rgb"] = (c[..., 0] << 16) | (c[..., 1] << 8) | c[..., 2]
    cloud["intensity"] = 7.0
    rows = np.zeros((height, width * 32 + pad_row), dtype=np.uint8)
    rows[:, : width * 32] = cloud.view(np.uint8).reshape(height, width * 32)
    msg = PointCloud2()
    msg.height, msg.width = height, width
    msg.fields = [
        PointField(name="rgb", offset=0, datatype=PointField.UINT32, count=1),
        PointField(name="intensity", offset=8, datatype=PointField.FLOAT64, count=1),
        PointField(name="x", offset=16, datatype=PointField.FLOAT32, count=1),
        PointField(name="y", offset=20, datatype=PointField.FLOAT32, count=1),
        PointField(name="z", offset=24, datatype=PointField.FLOAT32, count=1),
    ]
    msg.is_bigendian = bigendian
    msg.point_step = 32
    msg.row_step = width * 32 + pad_row
    data = array.array("B")
    data.frombytes(rows.tobytes())
    msg.data = data
    return msg


@pytest.mark.parametrize("bigendian", [False, True])
def test_reads_foreign_layouts_and_endianness(bigendian: bool) -> None:
    points, colors = _random_cloud(np.random.default_rng(2), (3, 5))
    points[0, 0] = np.nan
    msg = _foreign_cloud(points, colors, bigendian, pad_row=8)
    out_points, out_colors = cloud_from_msg(msg)
    np.testing.assert_array_equal(out_points.reshape(3, 5, 3), points)
    np.testing.assert_array_equal(out_colors.reshape(3, 5, 3), colors)


def test_bad_input_is_named() -> None:
    points, colors = _random_cloud(np.random.default_rng(3), (2, 2))
    with pytest.raises(ValueError, match="float32"):
        cloud_to_msg(points.astype(np.float64), colors, "f", Time())
    with pytest.raises(ValueError, match="uint8"):
        cloud_to_msg(points, colors.astype(np.int32), "f", Time())
    with pytest.raises(ValueError, match="shape"):
        cloud_to_msg(points[..., :2], colors, "f", Time())
    with pytest.raises(ValueError, match="frame_id"):
        cloud_to_msg(points, colors, "", Time())

    msg = cloud_to_msg(points, colors, "f", Time())
    truncated = cloud_to_msg(points, colors, "f", Time())
    truncated.data = msg.data[:-4]
    with pytest.raises(ValueError, match="bytes"):
        cloud_from_msg(truncated)
    no_color = cloud_to_msg(points, colors, "f", Time())
    no_color.fields = no_color.fields[:3]
    with pytest.raises(ValueError, match="rgb"):
        cloud_from_msg(no_color)
    no_z = cloud_to_msg(points, colors, "f", Time())
    no_z.fields = [f for f in no_z.fields if f.name != "z"]
    with pytest.raises(ValueError, match="lacks fields"):
        cloud_from_msg(no_z)


def _library_installed() -> bool:
    from mvvdp_ros import pointcloud

    return pointcloud.point_cloud2 is not None


def test_asking_for_a_missing_library_names_it() -> None:
    if _library_installed():
        pytest.skip("sensor_msgs_py is installed")
    points, colors = _random_cloud(np.random.default_rng(4), (2, 2))
    with pytest.raises(RuntimeError, match="sensor_msgs_py is not installed"):
        cloud_to_msg(points, colors, "f", Time(), use_library=True)
    with pytest.raises(RuntimeError, match="sensor_msgs_py is not installed"):
        cloud_from_msg(cloud_to_msg(points, colors, "f", Time()), use_library=True)


@pytest.mark.skipif(not _library_installed(), reason="sensor_msgs_py is not installed")
@pytest.mark.parametrize("bigendian", [False, True])
def test_sensor_msgs_py_and_numpy_read_alike(bigendian: bool) -> None:
    points, colors = _random_cloud(np.random.default_rng(5), (4, 6))
    points[1, 3] = np.nan
    for msg in (_foreign_cloud(points, colors, bigendian, pad_row=8),
                _foreign_cloud(points, colors, bigendian, pad_row=0),
                cloud_to_msg(points, colors, "f", Time(), use_library=False)):
        before = bytes(msg.data)
        library = cloud_from_msg(msg, use_library=True)
        assert bytes(msg.data) == before  # the received message is not swapped in place
        fallback = cloud_from_msg(msg, use_library=False)
        for a, b in zip(library, fallback, strict=True):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(library[0].reshape(4, 6, 3), points)
        np.testing.assert_array_equal(library[1].reshape(4, 6, 3), colors)


@pytest.mark.skipif(not _library_installed(), reason="sensor_msgs_py is not installed")
def test_sensor_msgs_py_and_numpy_pack_alike() -> None:
    points, colors = _random_cloud(np.random.default_rng(6), (3, 5))
    points[2, 2] = np.nan
    library = cloud_to_msg(points, colors, "f", Time(sec=3), use_library=True)
    fallback = cloud_to_msg(points, colors, "f", Time(sec=3), use_library=False)
    for field in ("height", "width", "point_step", "row_step", "is_bigendian", "is_dense", "fields",
                  "header"):
        assert getattr(library, field) == getattr(fallback, field), field
    assert bytes(library.data) == bytes(fallback.data)
