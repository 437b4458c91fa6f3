"""Rotation conversions: Euler 'xyz' (extrinsic, radians) <-> 3x3 matrix <-> quaternion (x, y, z, w).

Extrinsic 'xyz' means: rotate about the fixed x axis by a, then fixed y by b, then fixed z by c, so
R = Rz(c) @ Ry(b) @ Rx(a). Every function is vectorised over leading dimensions and accepts numpy arrays or
torch tensors, returning the same kind.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, TypeVar

import numpy as np
import torch

Array = TypeVar("Array", np.ndarray, torch.Tensor)


def _xp(x: np.ndarray | torch.Tensor) -> ModuleType:
    return torch if isinstance(x, torch.Tensor) else np


def _as_float(x: Array) -> Array:
    if isinstance(x, torch.Tensor):
        return x if x.is_floating_point() else x.double()
    return np.asarray(x, dtype=np.float64) if not np.issubdtype(np.asarray(x).dtype, np.floating) else x


def _check_last(x: np.ndarray | torch.Tensor, shape: tuple[int, ...], name: str) -> None:
    if tuple(x.shape[-len(shape) :]) != shape:
        raise ValueError(f"{name} must have trailing shape {shape}, got {tuple(x.shape)}")


def euler_to_matrix(euler: Array) -> Array:
    """(..., 3) extrinsic xyz angles -> (..., 3, 3) rotation matrices."""
    euler = _as_float(euler)
    _check_last(euler, (3,), "euler")
    xp = _xp(euler)
    a, b, c = euler[..., 0], euler[..., 1], euler[..., 2]
    ca, sa, cb, sb, cc, sc = xp.cos(a), xp.sin(a), xp.cos(b), xp.sin(b), xp.cos(c), xp.sin(c)
    rows = [
        [cc * cb, cc * sb * sa - sc * ca, cc * sb * ca + sc * sa],
        [sc * cb, sc * sb * sa + cc * ca, sc * sb * ca - cc * sa],
        [-sb, cb * sa, cb * ca],
    ]
    return xp.stack([xp.stack(row, -1) for row in rows], -2)


def matrix_to_euler(matrix: Array) -> Array:
    """(..., 3, 3) rotation matrices -> (..., 3) extrinsic xyz angles, b in [-pi/2, pi/2].

    At gimbal lock (|b| = pi/2) the split between a and c is not unique; a is set to 0 there.
    """
    matrix = _as_float(matrix)
    _check_last(matrix, (3, 3), "rotation matrix")
    xp = _xp(matrix)
    r20 = xp.clip(matrix[..., 2, 0], -1.0, 1.0)
    b = xp.arcsin(-r20)
    cos_b = xp.sqrt(matrix[..., 0, 0] ** 2 + matrix[..., 1, 0] ** 2)
    regular = cos_b > 1e-9
    a = xp.where(regular, xp.arctan2(matrix[..., 2, 1], matrix[..., 2, 2]), xp.zeros_like(b))
    c_regular = xp.arctan2(matrix[..., 1, 0], matrix[..., 0, 0])
    c_locked = xp.arctan2(-matrix[..., 0, 1], matrix[..., 1, 1])
    c = xp.where(regular, c_regular, c_locked)
    return xp.stack([a, b, c], -1)


def quaternion_to_matrix(quat: Array) -> Array:
    """(..., 4) quaternions (x, y, z, w), normalised here -> (..., 3, 3)."""
    quat = _as_float(quat)
    _check_last(quat, (4,), "quaternion")
    xp = _xp(quat)
    norm = (quat**2).sum(-1)[..., None] ** 0.5
    if bool((norm < 1e-12).any()):
        raise ValueError("quaternion with zero norm")
    unit = quat / norm
    x, y, z, w = unit[..., 0], unit[..., 1], unit[..., 2], unit[..., 3]
    rows = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ]
    return xp.stack([xp.stack(row, -1) for row in rows], -2)


def matrix_to_quaternion(matrix: Array) -> Array:
    """(..., 3, 3) -> (..., 4) unit quaternions (x, y, z, w) with w >= 0."""
    matrix = _as_float(matrix)
    _check_last(matrix, (3, 3), "rotation matrix")
    xp = _xp(matrix)
    m = matrix
    r00, r11, r22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    # 4 * component^2 for x, y, z, w; build the quaternion from the largest one for stability.
    sq = xp.stack([1 + r00 - r11 - r22, 1 - r00 + r11 - r22, 1 - r00 - r11 + r22, 1 + r00 + r11 + r22], -1)
    d01, s01 = m[..., 1, 0] - m[..., 0, 1], m[..., 0, 1] + m[..., 1, 0]
    d02, s02 = m[..., 0, 2] - m[..., 2, 0], m[..., 0, 2] + m[..., 2, 0]
    d12, s12 = m[..., 2, 1] - m[..., 1, 2], m[..., 1, 2] + m[..., 2, 1]
    candidates = xp.stack(
        [
            xp.stack([sq[..., 0], s01, s02, d12], -1),
            xp.stack([s01, sq[..., 1], s12, d02], -1),
            xp.stack([s02, s12, sq[..., 2], d01], -1),
            xp.stack([d12, d02, d01, sq[..., 3]], -1),
        ],
        -2,
    )
    best = sq.argmax(-1)
    if xp is np:
        chosen = np.take_along_axis(candidates, best[..., None, None].repeat(4, -1), -2)[..., 0, :]
    else:
        index = best[..., None, None].expand(*best.shape, 1, 4)
        chosen = torch.gather(candidates, -2, index)[..., 0, :]
    quat = chosen / (chosen**2).sum(-1)[..., None] ** 0.5
    sign = xp.where(quat[..., 3:4] < 0, -xp.ones_like(quat[..., 3:4]), xp.ones_like(quat[..., 3:4]))
    return quat * sign


def euler_to_quaternion(euler: Array) -> Array:
    """(..., 3) extrinsic xyz -> (..., 4) quaternion (x, y, z, w)."""
    return matrix_to_quaternion(euler_to_matrix(euler))


def quaternion_to_euler(quat: Array) -> Array:
    """(..., 4) quaternion (x, y, z, w) -> (..., 3) extrinsic xyz."""
    return matrix_to_euler(quaternion_to_matrix(quat))


def wrap_angle(angle: Array) -> Array:
    """Wrap angles to [-pi, pi)."""
    angle = _as_float(angle)
    return (angle + np.pi) % (2 * np.pi) - np.pi


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
