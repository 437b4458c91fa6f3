"""Action chunks and the discretisation of rotation changes used by the rotation/gripper head.

Rotation changes are relative to the condition frame: R_t = R_0 @ R_rel(t), with R_rel given as extrinsic
'xyz' Euler angles. Each angle is discretised into `num_bins` bins of 360/num_bins degrees (72 x 5 deg); bin
i stands for the angle -180 deg + i * 5 deg, i.e. the bins cover [-180, 180) and an angle maps to the nearest
bin, wrapping around.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mvvdp_core.rotations import check_rotation, euler_to_matrix, matrix_to_euler, wrap_angle

ROTATION_BINS = 72


@dataclass
class ActionChunk:
    """T future end-effector targets in the robot base frame."""

    positions: np.ndarray  # (T, 3) metres
    euler: np.ndarray  # (T, 3) absolute extrinsic xyz, radians
    gripper: np.ndarray  # (T,) 1 = open, 0 = closed
    time_from_start: np.ndarray  # (T,) seconds after `stamp`
    stamp: float  # time of the observation the chunk was predicted from, seconds
    confidence: float  # in [0, 1]
    step_confidence: np.ndarray  # (T,) in [0, 1]
    chunk_id: int = 0

    def __post_init__(self) -> None:
        self.positions = np.asarray(self.positions, dtype=np.float64)
        self.euler = np.asarray(self.euler, dtype=np.float64)
        self.gripper = np.asarray(self.gripper, dtype=np.int64)
        self.time_from_start = np.asarray(self.time_from_start, dtype=np.float64)
        self.step_confidence = np.asarray(self.step_confidence, dtype=np.float64)
        if self.positions.ndim != 2 or self.positions.shape[1] != 3 or len(self.positions) == 0:
            raise ValueError(f"positions must be (T, 3) with T >= 1, got {self.positions.shape}")
        steps = len(self.positions)
        expected = {
            "euler": (self.euler, (steps, 3)),
            "gripper": (self.gripper, (steps,)),
            "time_from_start": (self.time_from_start, (steps,)),
            "step_confidence": (self.step_confidence, (steps,)),
        }
        for name, (value, shape) in expected.items():
            if value.shape != shape:
                raise ValueError(f"{name} must have shape {shape}, got {value.shape}")
        for name in ("positions", "euler", "time_from_start", "step_confidence"):
            if not np.all(np.isfinite(getattr(self, name))):
                raise ValueError(f"{name} contains NaN or infinite values")
        if not np.all(np.isin(self.gripper, (0, 1))):
            raise ValueError(f"gripper values must be 0 (closed) or 1 (open), got {np.unique(self.gripper)}")
        if np.any(np.diff(self.time_from_start) <= 0) or self.time_from_start[0] < 0:
            raise ValueError("time_from_start must be non-negative and strictly increasing")
        if not (np.isfinite(self.stamp) and np.isfinite(self.confidence)):
            raise ValueError("stamp and confidence must be finite")
        if not 0.0 <= self.confidence <= 1.0 or np.any(
            (self.step_confidence < 0) | (self.step_confidence > 1)
        ):
            raise ValueError("confidence values must lie in [0, 1]")
        self.stamp = float(self.stamp)
        self.confidence = float(self.confidence)
        self.chunk_id = int(self.chunk_id)

    def __len__(self) -> int:
        return len(self.positions)

    @property
    def rotations(self) -> np.ndarray:
        """(T, 3, 3) absolute rotation matrices."""
        return euler_to_matrix(self.euler)


def _check_bins(num_bins: int) -> None:
    if int(num_bins) != num_bins or num_bins < 2:
        raise ValueError(f"num_bins must be an integer >= 2, got {num_bins!r}")


def euler_to_bins(
    euler: np.ndarray | torch.Tensor, num_bins: int = ROTATION_BINS
) -> np.ndarray | torch.Tensor:
    """Angles (radians, any shape) -> nearest bin index in [0, num_bins) (int64, same kind as input)."""
    _check_bins(num_bins)
    width = 2 * np.pi / num_bins
    if isinstance(euler, torch.Tensor):
        if not torch.isfinite(euler).all():
            raise ValueError("angles contain NaN or infinite values")
        return torch.round((wrap_angle(euler) + np.pi) / width).long() % num_bins
    euler = np.asarray(euler, dtype=np.float64)
    if not np.all(np.isfinite(euler)):
        raise ValueError("angles contain NaN or infinite values")
    return np.round((wrap_angle(euler) + np.pi) / width).astype(np.int64) % num_bins


def bins_to_relative_euler(
    bins: np.ndarray | torch.Tensor, num_bins: int = ROTATION_BINS
) -> np.ndarray | torch.Tensor:
    """Bin indices (any shape, typically (T, 3)) -> angles in radians: -pi + index * 2 pi / num_bins."""
    _check_bins(num_bins)
    width = 2 * np.pi / num_bins
    if isinstance(bins, torch.Tensor):
        if bins.is_floating_point() or ((bins < 0) | (bins >= num_bins)).any():
            raise ValueError(f"bins must be integer indices in [0, {num_bins})")
        return bins.double() * width - np.pi
    bins = np.asarray(bins)
    if not np.issubdtype(bins.dtype, np.integer) or np.any((bins < 0) | (bins >= num_bins)):
        raise ValueError(f"bins must be integer indices in [0, {num_bins})")
    return bins.astype(np.float64) * width - np.pi


def relative_to_absolute(cond_rotation: np.ndarray, rel_euler: np.ndarray) -> np.ndarray:
    """Condition rotation R_0 (3, 3), relative angles (..., 3) -> absolute (..., 3); R_t = R_0 R_rel."""
    cond_rotation = check_rotation(cond_rotation, "condition rotation")
    rel_euler = np.asarray(rel_euler, dtype=np.float64)
    return matrix_to_euler(cond_rotation @ euler_to_matrix(rel_euler))


def absolute_to_relative(cond_rotation: np.ndarray, abs_euler: np.ndarray) -> np.ndarray:
    """Inverse of relative_to_absolute: R_rel = R_0^T R_t, as angles (..., 3)."""
    cond_rotation = check_rotation(cond_rotation, "condition rotation")
    abs_euler = np.asarray(abs_euler, dtype=np.float64)
    return matrix_to_euler(cond_rotation.T @ euler_to_matrix(abs_euler))


def rotation_targets(
    cond_rotation: np.ndarray, abs_euler: np.ndarray, num_bins: int = ROTATION_BINS
) -> np.ndarray:
    """Training targets for the head: absolute future angles (T, 3) -> relative bin indices (T, 3)."""
    return euler_to_bins(absolute_to_relative(cond_rotation, abs_euler), num_bins)
