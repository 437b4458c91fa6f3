"""Conversions between ROS messages and the numpy/torch types of mvvdp_core (images, poses, chunks, views).

Images go through cv_bridge where it is installed (a full ROS install) and through numpy elsewhere; the
encodings accepted and the checks on the message are the same code either way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Point, Pose, PoseStamped
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from mvvdp_core.execution import TimedChunk
from mvvdp_core.safety import PoseTarget

if TYPE_CHECKING:
    import torch

    from mvvdp_core.actions import ActionChunk

_IMAGE_ENCODINGS = {"rgb8": (np.uint8, 3), "mono8": (np.uint8, 1), "32FC1": (np.float32, 1)}


def _make_bridge():
    """cv_bridge's CvBridge, or None where cv_bridge (or the OpenCV it needs) is not installed."""
    try:
        from cv_bridge import CvBridge
    except ImportError:
        return None
    return CvBridge()


_BRIDGE = _make_bridge()


def _bridge(use_library: bool | None):
    """The CvBridge to use: None for the numpy path."""
    if use_library is None:
        return _BRIDGE
    if not use_library:
        return None
    if _BRIDGE is None:
        raise RuntimeError("cv_bridge is not installed")
    return _BRIDGE


# ---- time ---------------------------------------------------------------------------------------------
def stamp_to_sec(stamp: Time) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def sec_to_stamp(seconds: float) -> Time:
    if not np.isfinite(seconds) or seconds < 0:
        raise ValueError(f"a ROS time must be finite and >= 0 seconds, got {seconds!r}")
    sec = int(seconds)
    nanosec = min(int(round((seconds - sec) * 1e9)), 999_999_999)
    return Time(sec=sec, nanosec=nanosec)


def header(stamp: float | Time, frame_id: str) -> Header:
    return Header(stamp=stamp if isinstance(stamp, Time) else sec_to_stamp(stamp), frame_id=frame_id)


# ---- images -------------------------------------------------------------------------------------------
def to_uint8_image(array: np.ndarray | torch.Tensor) -> np.ndarray:
    """(3, H, W) or (H, W, 3) float in [0, 1] or uint8 -> (H, W, 3) uint8."""
    array = np.asarray(array.detach().cpu() if hasattr(array, "detach") else array)
    if array.ndim == 3 and array.shape[0] == 3 and array.shape[-1] != 3:
        array = array.transpose(1, 2, 0)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"an RGB image must be (3,H,W) or (H,W,3), got shape {array.shape}")
    if array.dtype != np.uint8:
        array = np.round(np.clip(np.nan_to_num(array.astype(np.float32)), 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.ascontiguousarray(array)


def image_to_msg(array: np.ndarray, stamp: float | Time, frame_id: str, *,
                 use_library: bool | None = None) -> Image:
    """(H, W, 3) uint8 -> rgb8; (H, W) uint8 -> mono8; (H, W) float -> 32FC1.

    use_library: convert with cv_bridge (None: where it is installed)."""
    array = np.asarray(array)
    if array.ndim == 3 and array.dtype == np.uint8 and array.shape[2] == 3:
        encoding = "rgb8"
    elif array.ndim == 2 and array.dtype == np.uint8:
        encoding = "mono8"
    elif array.ndim == 2 and np.issubdtype(array.dtype, np.floating):
        encoding, array = "32FC1", array.astype(np.float32)
    else:
        raise ValueError(f"unsupported image array: shape {array.shape}, dtype {array.dtype}")
    array = np.ascontiguousarray(array)
    bridge = _bridge(use_library)
    if bridge is not None:
        msg = bridge.cv2_to_imgmsg(array, encoding=encoding)
        msg.header = header(stamp, frame_id)
        return msg
    height, width = array.shape[:2]
    return Image(header=header(stamp, frame_id), height=height, width=width, encoding=encoding,
                 is_bigendian=int(np.little_endian is False), step=array.strides[0], data=array.tobytes())


def image_from_msg(msg: Image, *, use_library: bool | None = None) -> np.ndarray:
    """rgb8 -> (H, W, 3) uint8; mono8 -> (H, W) uint8; 32FC1 -> (H, W) float32, in native byte order.

    use_library: convert with cv_bridge (None: where it is installed)."""
    if msg.encoding not in _IMAGE_ENCODINGS:
        raise ValueError(f"unsupported image encoding {msg.encoding!r}; expected {list(_IMAGE_ENCODINGS)}")
    dtype, channels = _IMAGE_ENCODINGS[msg.encoding]
    dtype = np.dtype(dtype).newbyteorder(">" if msg.is_bigendian else "<")
    row = msg.width * channels * dtype.itemsize
    if msg.step < row or len(msg.data) < msg.step * msg.height:
        raise ValueError(f"image data too short: {len(msg.data)} bytes for {msg.height} rows of {msg.step}")
    shape = (msg.height, msg.width, channels) if channels > 1 else (msg.height, msg.width)
    bridge = _bridge(use_library)
    if bridge is not None:
        try:
            array = np.asarray(bridge.imgmsg_to_cv2(msg, desired_encoding="passthrough"))
        except Exception as err:  # noqa: BLE001 - CvBridgeError and numpy's errors alike name a bad message
            raise ValueError(f"cv_bridge cannot read the image: {err}") from err
        if array.shape != shape:
            raise ValueError(f"cv_bridge read shape {array.shape}, expected {shape}")
        return array.astype(dtype.newbyteorder("="))
    raw = np.frombuffer(bytes(msg.data), dtype=np.uint8).reshape(msg.height, msg.step)[:, :row]
    array = np.ascontiguousarray(raw).view(dtype).astype(dtype.newbyteorder("="))
    return array.reshape(shape)


# ---- poses --------------------------------------------------------------------------------------------
def pose_to_msg(position: np.ndarray, quaternion: np.ndarray) -> Pose:
    pose = Pose()
    pose.position.x, pose.position.y, pose.position.z = (float(v) for v in position)
    o = pose.orientation
    o.x, o.y, o.z, o.w = (float(v) for v in quaternion)
    return pose


def pose_from_msg(pose: Pose) -> tuple[np.ndarray, np.ndarray]:
    """-> position (3,), quaternion xyzw (4,)."""
    p, o = pose.position, pose.orientation
    return np.array([p.x, p.y, p.z]), np.array([o.x, o.y, o.z, o.w])


def pose_stamped(target: PoseTarget, stamp: float | Time, frame_id: str) -> PoseStamped:
    return PoseStamped(header=header(stamp, frame_id), pose=pose_to_msg(target.position, target.quaternion))


# ---- action chunks ------------------------------------------------------------------------------------
def chunk_to_msg(chunk: ActionChunk, frame_id: str, status: str):
    """Core ActionChunk (absolute Euler 'xyz' extrinsic) -> mvvdp_msgs/ActionChunk."""
    from mvvdp_core.rotations import euler_to_quaternion
    from mvvdp_msgs.msg import ActionChunk as ActionChunkMsg

    positions = np.asarray(chunk.positions, dtype=np.float64)
    quaternions = euler_to_quaternion(np.asarray(chunk.euler, dtype=np.float64))
    return ActionChunkMsg(
        header=header(float(chunk.stamp), frame_id),
        chunk_id=int(chunk.chunk_id),
        poses=[pose_to_msg(p, q) for p, q in zip(positions, quaternions, strict=True)],
        gripper=[float(g) for g in np.asarray(chunk.gripper)],
        time_from_start=[float(t) for t in np.asarray(chunk.time_from_start)],
        confidence=float(chunk.confidence),
        step_confidence=[float(c) for c in np.asarray(chunk.step_confidence)],
        status=status,
    )


def chunk_from_msg(msg) -> TimedChunk:
    """mvvdp_msgs/ActionChunk -> TimedChunk (raises ValueError on inconsistent lengths)."""
    steps = len(msg.poses)
    if not (len(msg.gripper) == len(msg.time_from_start) == steps):
        raise ValueError(f"chunk {msg.chunk_id}: {steps} poses but {len(msg.gripper)} gripper values and "
                         f"{len(msg.time_from_start)} times")
    poses = [pose_from_msg(p) for p in msg.poses]
    return TimedChunk(
        chunk_id=int(msg.chunk_id),
        stamp=stamp_to_sec(msg.header.stamp),
        positions=np.array([p for p, _ in poses]).reshape(steps, 3),
        quaternions=np.array([q for _, q in poses]).reshape(steps, 4),
        gripper=np.asarray(msg.gripper, dtype=np.float64),
        time_from_start=np.asarray(msg.time_from_start, dtype=np.float64),
        confidence=float(msg.confidence),
    )


def points_to_msgs(positions: np.ndarray) -> list[Point]:
    return [Point(x=float(x), y=float(y), z=float(z)) for x, y, z in np.asarray(positions, dtype=np.float64)]


# ---- projected views ----------------------------------------------------------------------------------
def views_to_msg(view_names, rgb, depth, center, edge: float, stamp: float | Time, frame_id: str):
    """Core views (rgb (V,3,H,W) in [0,1], depth (V,H,W) metres, +inf empty) -> mvvdp_msgs/ProjectedViews."""
    from mvvdp_msgs.msg import ProjectedViews as ProjectedViewsMsg

    rgb = np.asarray(rgb.detach().cpu() if hasattr(rgb, "detach") else rgb)
    depth = np.asarray(depth.detach().cpu() if hasattr(depth, "detach") else depth, dtype=np.float32)
    if rgb.ndim != 4 or rgb.shape[1] != 3 or depth.shape != (rgb.shape[0], *rgb.shape[2:]):
        raise ValueError(f"views must be rgb (V,3,H,W) and depth (V,H,W), got {rgb.shape} and {depth.shape}")
    if len(view_names) != rgb.shape[0]:
        raise ValueError(f"{len(view_names)} view names for {rgb.shape[0]} views")
    head = header(stamp, frame_id)
    return ProjectedViewsMsg(
        header=head,
        view_names=list(view_names),
        rgb=[image_to_msg(to_uint8_image(v), head.stamp, frame_id) for v in rgb],
        depth=[image_to_msg(d, head.stamp, frame_id) for d in depth],
        workspace_center=Point(x=float(center[0]), y=float(center[1]), z=float(center[2])),
        workspace_edge=float(edge),
    )


def views_from_msg(msg) -> tuple[list[str], np.ndarray, np.ndarray]:
    """-> view names, rgb (V,3,H,W) float32 in [0,1], depth (V,H,W) float32."""
    if not (len(msg.view_names) == len(msg.rgb) == len(msg.depth)) or not msg.rgb:
        raise ValueError(f"views message has {len(msg.view_names)} names, {len(msg.rgb)} rgb and "
                         f"{len(msg.depth)} depth images")
    rgb = np.stack([image_from_msg(m) for m in msg.rgb]).astype(np.float32).transpose(0, 3, 1, 2) / 255.0
    depth = np.stack([image_from_msg(m) for m in msg.depth])
    return list(msg.view_names), rgb, depth
