"""sensor_msgs/PointCloud2 <-> numpy, with the ZED wrapper's layout.

Outgoing clouds: fields x, y, z (float32) and rgb (float32 whose 4 bytes are B, G, R, A in memory, as the ZED
wrapper and PCL pack colour), point_step 16, little endian, organised H x W with NaN for no return.
Incoming clouds are decoded through a numpy structured dtype built from the message's own fields, so any
field order, padding, row_step and either endianness is read correctly.
"""

from __future__ import annotations

import array

import numpy as np
from builtin_interfaces.msg import Time
from sensor_msgs.msg import PointCloud2, PointField

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


def cloud_to_msg(points: np.ndarray, colors: np.ndarray, frame_id: str, stamp: Time) -> PointCloud2:
    """Organised (H, W, 3) float32 points (NaN = no return) and (H, W, 3) uint8 colours -> PointCloud2.

    An (N, 3) pair gives an unorganised cloud (height 1).
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
    buf = np.empty((height, width, 4), dtype="<f4")
    buf[..., :3] = points
    buf.view("<u4")[..., 3] = pack_rgb(colors)

    msg = PointCloud2()
    msg.header.frame_id = frame_id
    msg.header.stamp = stamp
    msg.height, msg.width = height, width
    msg.fields = [
        PointField(name=name, offset=4 * i, datatype=PointField.FLOAT32, count=1)
        for i, name in enumerate(("x", "y", "z", "rgb"))
    ]
    msg.is_bigendian = False
    msg.point_step = _POINT_STEP
    msg.row_step = _POINT_STEP * width
    msg.is_dense = bool(np.isfinite(points).all())
    data = array.array("B")
    data.frombytes(buf.tobytes())
    msg.data = data
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


def cloud_from_msg(msg: PointCloud2) -> tuple[np.ndarray, np.ndarray]:
    """PointCloud2 -> points (N, 3) float32 and colours (N, 3) uint8, N = height * width in row order.

    Points without a return stay NaN (an organised cloud reshapes to (height, width, 3)). Colour comes from an
    `rgb` or `rgba` field (packed float32 or uint32).
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
    if dtype[color_field].itemsize != 4:
        raise ValueError(f"colour field {color_field!r} must be 4 bytes, got {dtype[color_field].itemsize}")
    height, width = int(msg.height), int(msg.width)
    row_bytes = width * msg.point_step
    if msg.row_step < row_bytes:
        raise ValueError(f"row_step {msg.row_step} is smaller than width * point_step = {row_bytes}")
    raw = np.frombuffer(msg.data, dtype=np.uint8)
    if raw.size != height * msg.row_step:
        raise ValueError(
            f"PointCloud2 data has {raw.size} bytes, expected height * row_step = {height * msg.row_step}"
        )
    rows = raw.reshape(height, msg.row_step)[:, :row_bytes]
    cloud = np.ascontiguousarray(rows).view(dtype).reshape(-1)
    points = np.stack([cloud["x"], cloud["y"], cloud["z"]], axis=-1).astype(np.float32)
    order = ">" if msg.is_bigendian else "<"
    # Reinterpret the colour bytes as an unsigned integer in the message byte order, whatever the field type.
    packed = np.ascontiguousarray(cloud[color_field]).view(order + "u4")
    return points, unpack_rgb(packed)


__all__ = ["cloud_to_msg", "cloud_from_msg", "cloud_dtype", "pack_rgb", "unpack_rgb"]
