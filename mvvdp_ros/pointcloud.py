"""sensor_msgs/PointCloud2 <-> numpy, with the ZED wrapper's layout.

Outgoing clouds: fields x, y, z (float32) and rgb (float32 whose 4 bytes are B, G, R, A in memory, as the ZED
wrapper and PCL pack colour), point_step 16, little endian, organised H x W with NaN for no return.
Incoming clouds are decoded through a numpy structured dtype built from the message's own fields, so any
field order, padding, row_step and either endianness is read correctly.

Where sensor_msgs_py is installed (a full ROS install) its point_cloud2 module packs and reads the point
records (create_cloud, read_points); elsewhere numpy does. Validation, row padding, byte order and colour
packing are the same code either way.
"""

from __future__ import annotations

import array
import sys

import numpy as np
from builtin_interfaces.msg import Time
from sensor_msgs.msg import PointCloud2, PointField
from std_msgs.msg import Header

try:
    from sensor_msgs_py import point_cloud2
except ImportError:  # only the message wheels: numpy packs and reads the records
    point_cloud2 = None

# PointField datatype -> numpy type character and size.
_FIELD_TYPES: dict[int, tuple[str, int]] = {
    PointField.INT8: ("i1", 1),
    PointField.UINT8: ("u1", 1),
    PointField.INT16: ("i2", 2),
    PointField.UINT16: ("u2", 2),
    PointField.INT32: ("i4", 4),
    PointField.UINT32: ("u4", 4),
    PointField.FLOAT32: ("f4", 4),
    PointField.FLOAT64: ("f8", 8),
}
_POINT_STEP = 16


def pack_rgb(colors: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 RGB -> (...,) uint32 holding bytes B, G, R, A=255 in little-endian memory order."""
    c = colors.astype(np.uint32)
    return (np.uint32(255) << 24) | (c[..., 0] << 16) | (c[..., 1] << 8) | c[..., 2]


def unpack_rgb(packed: np.ndarray) -> np.ndarray:
    """(...,) uint32 packed colour -> (..., 3) uint8 RGB."""
    packed = packed.astype(np.uint32)
    return np.stack([(packed >> 16) & 255, (packed >> 8) & 255, packed & 255], axis=-1).astype(np.uint8)


def _use_library(use_library: bool | None) -> bool:
    if use_library and point_cloud2 is None:
        raise RuntimeError("sensor_msgs_py is not installed")
    return point_cloud2 is not None if use_library is None else use_library


def cloud_to_msg(points: np.ndarray, colors: np.ndarray, frame_id: str, stamp: Time, *,
                 use_library: bool | None = None) -> PointCloud2:
    """Organised (H, W, 3) float32 points (NaN = no return) and (H, W, 3) uint8 colours -> PointCloud2.

    An (N, 3) pair gives an unorganised cloud (height 1). use_library: pack the records with sensor_msgs_py
    (None: where it is installed).
    """
    points = np.asarray(points)
    colors = np.asarray(colors)
    if points.ndim == 2:
        points, colors = points[None], colors[None]
    if points.ndim != 3 or points.shape[-1] != 3:
        raise ValueError(f"points must have shape (H, W, 3) or (N, 3), got {points.shape}")
    if colors.shape != points.shape:
        raise ValueError(f"colors must match points' shape {points.shape}, got {colors.shape}")
    if points.dtype != np.float32:
        raise ValueError(f"points must be float32, got {points.dtype}")
    if colors.dtype != np.uint8:
        raise ValueError(f"colors must be uint8, got {colors.dtype}")
    if not frame_id:
        raise ValueError("frame_id must be a non-empty string")
    height, width = points.shape[:2]
    # One record per point in native byte order: x, y, z and the packed colour's bits as a float32.
    record = np.dtype({"names": ["x", "y", "z", "rgb"], "formats": ["=f4"] * 4, "offsets": [0, 4, 8, 12],
                       "itemsize": _POINT_STEP})
    words = np.empty((height * width, 4), dtype=np.uint32)  # bit-exact: no float round trip of the colour
    words[:, :3] = points.reshape(-1, 3).view(np.uint32)
    words[:, 3] = pack_rgb(colors.reshape(-1, 3))
    records = words.view(record).reshape(-1)
    fields = [PointField(name=name, offset=4 * i, datatype=PointField.FLOAT32, count=1)
              for i, name in enumerate(record.names)]
    head = Header(stamp=stamp, frame_id=frame_id)
    if _use_library(use_library):
        msg = point_cloud2.create_cloud(head, fields, records)
    else:
        msg = PointCloud2(header=head, fields=fields, is_bigendian=sys.byteorder == "big",
                          point_step=_POINT_STEP)
        data = array.array("B")
        data.frombytes(records.tobytes())
        msg.data = data
    msg.height, msg.width = height, width
    msg.row_step = _POINT_STEP * width
    msg.is_dense = bool(np.isfinite(points).all())
    return msg


def cloud_dtype(msg: PointCloud2) -> np.dtype:
    """Structured dtype of one point as the message's fields describe it (itemsize = point_step)."""
    order = ">" if msg.is_bigendian else "<"
    if msg.point_step == 0 or len({f.name for f in msg.fields}) != len(msg.fields):
        names = [f.name for f in msg.fields]
        raise ValueError(f"invalid layout: point_step {msg.point_step}, fields {names} (duplicates?)")
    names, formats, offsets = [], [], []
    for field in msg.fields:
        if field.datatype not in _FIELD_TYPES:
            raise ValueError(f"field {field.name!r} has unknown PointField datatype {field.datatype}")
        code, size = _FIELD_TYPES[field.datatype]
        count = max(int(field.count), 1)
        if field.offset + size * count > msg.point_step:
            raise ValueError(f"field {field.name!r} ends past point_step {msg.point_step}")
        names.append(field.name)
        formats.append((order + code, (count,)) if count > 1 else order + code)
        offsets.append(field.offset)
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": msg.point_step})


def cloud_from_msg(msg: PointCloud2, *, use_library: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """PointCloud2 -> points (N, 3) float32 and colours (N, 3) uint8, N = height * width in row order.

    Points without a return stay NaN (an organised cloud reshapes to (height, width, 3)). Colour comes from an
    `rgb` or `rgba` field (packed float32 or uint32). use_library: read the records with sensor_msgs_py
    (None: where it is installed).
    """
    dtype = cloud_dtype(msg)
    missing = [name for name in ("x", "y", "z") if name not in dtype.names]
    if missing:
        raise ValueError(f"PointCloud2 lacks fields {missing}; has {list(dtype.names)}")
    for name in ("x", "y", "z"):
        if dtype[name].kind != "f" or dtype[name].shape != ():
            raise ValueError(f"field {name!r} must be one float32 or float64, got {dtype[name]}")
    color_field = next((name for name in ("rgb", "rgba") if name in dtype.names), None)
    if color_field is None:
        raise ValueError(f"PointCloud2 has no rgb/rgba field; has {list(dtype.names)}")
    if dtype[color_field].itemsize != 4 or dtype[color_field].shape != ():
        raise ValueError(f"colour field {color_field!r} must be one 4-byte value, got {dtype[color_field]}")
    height, width = int(msg.height), int(msg.width)
    row_bytes = width * msg.point_step
    if msg.row_step < row_bytes:
        raise ValueError(f"row_step {msg.row_step} is smaller than width * point_step = {row_bytes}")
    raw = np.frombuffer(msg.data, dtype=np.uint8)
    if raw.size != height * msg.row_step:
        raise ValueError(
            f"PointCloud2 data has {raw.size} bytes, expected height * row_step = {height * msg.row_step}"
        )
    names = ["x", "y", "z", color_field]
    if _use_library(use_library):
        cloud = _read_with_library(msg, raw, row_bytes, names)
    else:
        rows = np.ascontiguousarray(raw.reshape(height, msg.row_step)[:, :row_bytes])
        cloud = rows.view(dtype).reshape(-1)[names]
        cloud = cloud.astype(cloud.dtype.newbyteorder("="))  # message byte order -> native
    points = np.stack([cloud["x"], cloud["y"], cloud["z"]], axis=-1).astype(np.float32)
    # The colour's 4 bytes as a native unsigned integer, whatever the field type.
    packed = np.ascontiguousarray(cloud[color_field]).view(np.uint32)
    return points, unpack_rgb(packed)


def _read_with_library(msg: PointCloud2, raw: np.ndarray, row_bytes: int, names: list[str]) -> np.ndarray:
    """sensor_msgs_py's read_points over the message's records in native byte order."""
    if msg.row_step != row_bytes or msg.is_bigendian != (sys.byteorder == "big"):
        # read_points knows no row padding and swaps bytes in place: hand it an unpadded copy.
        rows = raw.reshape(int(msg.height), msg.row_step)[:, :row_bytes]
        msg = PointCloud2(header=msg.header, height=msg.height, width=msg.width, fields=msg.fields,
                          is_bigendian=msg.is_bigendian, point_step=msg.point_step, row_step=row_bytes,
                          is_dense=msg.is_dense)
        data = array.array("B")
        data.frombytes(rows.tobytes())
        msg.data = data
    try:
        cloud = point_cloud2.read_points(msg, field_names=names)
    except (AssertionError, TypeError, ValueError, KeyError) as err:
        raise ValueError(f"sensor_msgs_py cannot read the cloud: {err}") from err
    return np.asarray(cloud).reshape(-1)


__all__ = ["cloud_to_msg", "cloud_from_msg", "cloud_dtype", "pack_rgb", "unpack_rgb"]
