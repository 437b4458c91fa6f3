"""SE(3) augmentation (paper 3.4): one random rigid motion of the whole scene per training sample.

The motion is a rotation about the vertical axis through the workspace centre followed by a translation.
It moves the camera extrinsics (so every cloud point moves with it) and the end-effector poses, before the
scene is projected into views and heatmaps. It is sampled so that every end-effector position of the sample
stays inside the workspace cube by a margin; when no such motion is found the identity is used.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mvvdp_core.geometry.workspace import Workspace
from mvvdp_core.rotations import axis_rotation


@dataclass(frozen=True)
class AugmentConfig:
    max_yaw_deg: float = 15.0  # rotation about z, uniform in [-max, max]
    max_translation: float = 0.05  # metres, uniform per axis in [-max, max]
    margin: float = 0.02  # metres the end effector keeps from the cube faces
    attempts: int = 20

    def __post_init__(self) -> None:
        for name in ("max_yaw_deg", "max_translation", "margin"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value >= 0):
                raise ValueError(f"augmentation {name} must be finite and >= 0, got {value!r}")
        if self.attempts < 1:
            raise ValueError(f"augmentation attempts must be >= 1, got {self.attempts}")


def rotation_z(angle: float) -> np.ndarray:
    """(3, 3) rotation by angle radians about +z."""
    return axis_rotation("z", angle)


def yaw_about_point(angle: float, pivot: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """(4, 4) transform: rotate by angle about the vertical line through pivot, then translate."""
    rot = rotation_z(angle)
    transform = np.eye(4)
    transform[:3, :3] = rot
    transform[:3, 3] = pivot - rot @ pivot + translation
    return transform


def sample_scene_transform(
    rng: np.random.Generator, ee_positions: np.ndarray, workspace: Workspace, config: AugmentConfig
) -> np.ndarray:
    """Random (4, 4) aug_T_base keeping every ee position (N, 3) inside the cube shrunk by config.margin."""
    ee_positions = np.asarray(ee_positions, dtype=np.float64).reshape(-1, 3)
    if not np.isfinite(ee_positions).all():
        raise ValueError("end-effector positions for augmentation contain NaN or inf")
    lower, upper = workspace.lower + config.margin, workspace.upper - config.margin
    pivot = np.asarray(workspace.center, dtype=np.float64)
    for _ in range(config.attempts):
        angle = np.deg2rad(rng.uniform(-config.max_yaw_deg, config.max_yaw_deg))
        translation = rng.uniform(-config.max_translation, config.max_translation, size=3)
        transform = yaw_about_point(angle, pivot, translation)
        moved = transform_points(transform, ee_positions)
        if np.all((moved >= lower) & (moved <= upper)):
            return transform
    return np.eye(4)


def transform_points(transform: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a (4, 4) rigid transform to points (..., 3)."""
    return points @ transform[:3, :3].T + transform[:3, 3]


def transform_poses(
    transform: np.ndarray, positions: np.ndarray, rotations: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Move poses (positions (..., 3), rotations (..., 3, 3)) by transform; rotations stay orthonormal."""
    return transform_points(transform, positions), np.einsum("ij,...jk->...ik", transform[:3, :3], rotations)


def transform_extrinsics(transform: np.ndarray, base_T_camera: np.ndarray) -> np.ndarray:
    """Camera extrinsics after moving the scene: the camera moves with the scene it saw."""
    return transform @ base_T_camera
