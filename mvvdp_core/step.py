"""One control step as the robot senses it: camera clouds with their extrinsics, end-effector pose, gripper.

Simulators and the ROS recorder produce steps, episodes store them, policies read them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mvvdp_core.rotations import check_rotation, check_transform

GRIPPER_WIDTH_TOLERANCE = 1e-3  # m: closed fingers (contact, encoder noise) may read this far below 0


@dataclass
class CameraCloud:
    """One camera's cloud: points (N, 3) float32 in the camera frame, colours (N, 3) uint8, base_T_camera."""

    points: np.ndarray
    colors: np.ndarray
    base_T_camera: np.ndarray

    def __post_init__(self) -> None:
        points = np.asarray(self.points, dtype=np.float32)
        colors = np.asarray(self.colors)
        if points.ndim == 3:  # organised H x W x 3 cloud: flatten, keep only returns
            points = points.reshape(-1, 3)
            colors = colors.reshape(-1, 3)
        if points.ndim != 2 or points.shape[1] != 3:
            raise ValueError(f"camera points must be (N, 3) or (H, W, 3), got {points.shape}")
        if colors.shape != points.shape:
            raise ValueError(f"camera colours {colors.shape} must match points {points.shape}")
        if colors.dtype != np.uint8:
            raise ValueError(f"camera colours must be uint8, got {colors.dtype}")
        valid = np.isfinite(points).all(axis=1)
        self.points = np.ascontiguousarray(points[valid])
        self.colors = np.ascontiguousarray(colors[valid])
        self.base_T_camera = check_transform(self.base_T_camera, "base_T_camera")

    def in_base(self, base_T_camera: np.ndarray | None = None) -> np.ndarray:
        """Points (N, 3) in the base frame, through the given extrinsics (default: this camera's own)."""
        transform = self.base_T_camera if base_T_camera is None else base_T_camera
        return (self.points.astype(np.float64) @ transform[:3, :3].T + transform[:3, 3]).astype(np.float32)


@dataclass
class Step:
    """Everything recorded at one control step."""

    clouds: dict[str, CameraCloud]
    ee_position: np.ndarray  # (3,) metres, base frame
    ee_rotation: np.ndarray  # (3, 3) rotation matrix, base_R_ee
    gripper_width: float  # metres between the fingers
    gripper_closed: bool  # commanded state: True = closing/closed
    timestamp: float  # seconds
    extras: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. the demonstrator's raw action

    def __post_init__(self) -> None:
        self.ee_position = np.asarray(self.ee_position, dtype=np.float64).reshape(-1)
        if self.ee_position.shape != (3,) or not np.isfinite(self.ee_position).all():
            raise ValueError(f"ee_position must be 3 finite numbers, got {self.ee_position!r}")
        self.ee_rotation = check_rotation(self.ee_rotation, "ee_rotation")
        if not np.isfinite(self.gripper_width) or self.gripper_width < -GRIPPER_WIDTH_TOLERANCE:
            raise ValueError(f"gripper_width must be a finite non-negative width, got {self.gripper_width!r}")
        self.gripper_width = max(float(self.gripper_width), 0.0)  # closed fingers read a hair below 0
        if not np.isfinite(self.timestamp):
            raise ValueError(f"timestamp must be finite, got {self.timestamp!r}")
        if not self.clouds:
            raise ValueError("a step needs at least one camera cloud")
        for name in self.clouds:
            if not name or "/" in name or "__" in name:
                raise ValueError(f"bad camera name {name!r} (non-empty, no '/' or '__')")
