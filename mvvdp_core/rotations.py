"""Every rotation conversion of the project, through scipy's Rotation.

Euler angles are extrinsic 'xyz' in radians: rotate about the fixed x axis by a, then fixed y by b, then fixed
z by c, so R = Rz(c) @ Ry(b) @ Rx(a). Quaternions are (x, y, z, w) unless a name says wxyz (MuJoCo's order).
The conversions are vectorised over leading dimensions and accept numpy arrays or torch tensors, returning
the same kind (a tensor keeps its dtype and device; the arithmetic runs on the CPU).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import torch
from scipy.spatial.transform import Rotation

Array = TypeVar("Array", np.ndarray, torch.Tensor)


def _apply(
    x: Array, trailing: tuple[int, ...], name: str, convert: Callable[[np.ndarray], np.ndarray]
) -> Array:
    """`convert` (N, *trailing) float64 -> (N, ...) on x flattened over its leading dimensions."""
    values = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if tuple(values.shape[-len(trailing) :]) != trailing:
        raise ValueError(f"{name} must have trailing shape {trailing}, got {tuple(values.shape)}")
    lead = values.shape[: values.ndim - len(trailing)]
    flat = convert(values.astype(np.float64, copy=False).reshape(-1, *trailing))
    out = flat.reshape(*lead, *flat.shape[1:])
    if isinstance(x, torch.Tensor):
        dtype = x.dtype if x.is_floating_point() else torch.float64
        return torch.as_tensor(out).to(device=x.device, dtype=dtype)
    return out


def euler_to_matrix(euler: Array) -> Array:
    """(..., 3) extrinsic xyz angles -> (..., 3, 3) rotation matrices."""
    return _apply(euler, (3,), "euler", lambda e: Rotation.from_euler("xyz", e).as_matrix())


GIMBAL_LOCK_COS = 1e-7  # |cos b| below which a and c are not separable (scipy's own threshold is similar)


def _matrix_to_euler(matrices: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():  # at gimbal lock scipy warns and zeroes c; a is zeroed below instead
        warnings.simplefilter("ignore", UserWarning)
        euler = Rotation.from_matrix(matrices).as_euler("xyz")
    locked = np.hypot(matrices[:, 0, 0], matrices[:, 1, 0]) < GIMBAL_LOCK_COS
    if locked.any():  # R = Rz(c) Ry(+-pi/2): its (0, 1) and (1, 1) entries are -sin c and cos c
        euler[locked, 2] = np.arctan2(-matrices[locked, 0, 1], matrices[locked, 1, 1])
        euler[locked, 0] = 0.0
    return euler


def matrix_to_euler(matrix: Array) -> Array:
    """(..., 3, 3) rotation matrices -> (..., 3) extrinsic xyz angles, b in [-pi/2, pi/2].

    At gimbal lock (|b| = pi/2) the split between a and c is not unique; a is set to 0 there.
    """
    return _apply(matrix, (3, 3), "rotation matrix", _matrix_to_euler)


def _from_quat(quats: np.ndarray) -> Rotation:
    if bool((np.linalg.norm(quats, axis=-1) < 1e-12).any()):
        raise ValueError("quaternion with zero norm")
    return Rotation.from_quat(quats)


def quaternion_to_matrix(quat: Array) -> Array:
    """(..., 4) quaternions (x, y, z, w), normalised here -> (..., 3, 3)."""
    return _apply(quat, (4,), "quaternion", lambda q: _from_quat(q).as_matrix())


def _positive_w(quats: np.ndarray) -> np.ndarray:
    return np.where(quats[..., 3:4] < 0, -quats, quats)


def matrix_to_quaternion(matrix: Array) -> Array:
    """(..., 3, 3) -> (..., 4) unit quaternions (x, y, z, w) with w >= 0."""
    return _apply(matrix, (3, 3), "rotation matrix", lambda m: _positive_w(Rotation.from_matrix(m).as_quat()))


def euler_to_quaternion(euler: Array) -> Array:
    """(..., 3) extrinsic xyz -> (..., 4) quaternion (x, y, z, w) with w >= 0."""
    return _apply(euler, (3,), "euler", lambda e: _positive_w(Rotation.from_euler("xyz", e).as_quat()))


def quaternion_to_euler(quat: Array) -> Array:
    """(..., 4) quaternion (x, y, z, w) -> (..., 3) extrinsic xyz."""
    return matrix_to_euler(quaternion_to_matrix(quat))


def wrap_angle(angle: Array) -> Array:
    """Wrap angles to [-pi, pi)."""
    if isinstance(angle, torch.Tensor):
        angle = angle if angle.is_floating_point() else angle.double()
    elif not np.issubdtype(np.asarray(angle).dtype, np.floating):
        angle = np.asarray(angle, dtype=np.float64)
    return (angle + np.pi) % (2 * np.pi) - np.pi


def axis_rotation(axis: str, angle: float) -> np.ndarray:
    """(3, 3) rotation by `angle` radians about the base axis 'x', 'y' or 'z'."""
    return Rotation.from_euler(axis, angle).as_matrix()


def axis_quaternion(axis: str, angle: float) -> np.ndarray:
    """Quaternion (x, y, z, w) of a rotation by `angle` radians about the base axis 'x', 'y' or 'z'."""
    return Rotation.from_euler(axis, angle).as_quat()


def xyzw_to_wxyz(quat: Any) -> np.ndarray:
    """Quaternion (x, y, z, w) -> MuJoCo's (w, x, y, z)."""
    quat = np.asarray(quat, dtype=np.float64)
    return np.concatenate([quat[..., 3:], quat[..., :3]], axis=-1)


def wxyz_to_xyzw(quat: Any) -> np.ndarray:
    """MuJoCo's (w, x, y, z) -> (x, y, z, w)."""
    quat = np.asarray(quat, dtype=np.float64)
    return np.concatenate([quat[..., 1:], quat[..., :1]], axis=-1)


def rotation_error(target_xyzw: Any, current_xyzw: Any) -> np.ndarray:
    """Base-frame rotation vector (axis x angle, angle in [0, pi]) taking `current` to `target`."""
    return (Rotation.from_quat(target_xyzw) * Rotation.from_quat(current_xyzw).inv()).as_rotvec()


def check_transform(matrix: Any, name: str) -> np.ndarray:
    """A (4, 4) rigid transform with an orthonormal rotation, else ValueError naming it."""
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.shape != (4, 4) or not np.isfinite(matrix).all():
        raise ValueError(f"{name} must be a finite 4x4 matrix, got shape {matrix.shape}")
    if not np.allclose(matrix[3], [0, 0, 0, 1], atol=1e-6):
        raise ValueError(f"{name} last row must be [0, 0, 0, 1], got {matrix[3]}")
    check_rotation(matrix[:3, :3], f"{name} rotation")
    return matrix


def check_rotation(matrix: Any, name: str) -> np.ndarray:
    """A (3, 3) proper rotation (orthonormal, det +1), else ValueError naming it."""
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.shape != (3, 3) or not np.isfinite(matrix).all():
        raise ValueError(f"{name} must be a finite 3x3 matrix, got shape {matrix.shape}")
    if not np.allclose(matrix @ matrix.T, np.eye(3), atol=1e-4) or np.linalg.det(matrix) < 0:
        raise ValueError(f"{name} is not a proper rotation matrix")
    return matrix


def look_at_rotation(position: Any, target: Any) -> np.ndarray:
    """base_R_camera (3, 3) of a REP-103 camera frame (x forward, y left, z up) at `position` looking at
    `target`, with the base z axis up in its image."""
    forward = np.asarray(target, dtype=np.float64) - np.asarray(position, dtype=np.float64)
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    if np.linalg.norm(right) < 1e-6:
        raise ValueError("camera must not look straight up or down")
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    return np.stack([forward, -right, up], axis=1)


def pose_matrix(translation: Any, quaternion_xyzw: Any) -> np.ndarray:
    """(4, 4) rigid transform from a translation (3,) and a unit quaternion (x, y, z, w); ValueError when
    the quaternion is not of unit length (1e-3)."""
    quaternion = np.asarray(quaternion_xyzw, dtype=np.float64)
    if quaternion.shape != (4,) or abs(np.linalg.norm(quaternion) - 1.0) > 1e-3:
        raise ValueError(f"rotation must be a unit quaternion xyzw, got {quaternion.tolist()}")
    matrix = np.eye(4)
    matrix[:3, :3] = Rotation.from_quat(quaternion).as_matrix()
    matrix[:3, 3] = np.asarray(translation, dtype=np.float64)
    return matrix
