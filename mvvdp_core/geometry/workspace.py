"""Workspace cube and the three fixed orthographic views: the one place that defines them.

Every point is expressed in the robot base frame, in metres. The workspace is an axis-aligned cube.
Each view is an orthographic camera sitting on one face of the cube and looking through it:

    view    looks along   image right   image down
    top        -z            -y            -x        (from above, robot forward is up in the image)
    front      -x            +y            -z        (facing the robot from its front)
    side       -y            -x            -z        (from the robot's left side)

Image coordinates are continuous pixel units: pixel (row r, column c) covers [r, r+1) x [c, c+1), its
centre is (r + 0.5, c + 0.5). Depth is the distance in metres from the face the camera sits on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

VIEW_NAMES: tuple[str, ...] = ("top", "front", "side")

# Rows are the base-frame directions of (image right, image down, viewing direction) per view.
VIEW_ROTATIONS: dict[str, np.ndarray] = {
    "top": np.array([[0, -1, 0], [-1, 0, 0], [0, 0, -1]], dtype=np.float64),
    "front": np.array([[0, 1, 0], [0, 0, -1], [-1, 0, 0]], dtype=np.float64),
    "side": np.array([[-1, 0, 0], [0, 0, -1], [0, -1, 0]], dtype=np.float64),
}


def _check_rotation(rot: np.ndarray) -> None:
    right, down, forward = rot
    if not np.allclose(np.cross(right, down), forward):
        raise ValueError("view axes must form a right-handed frame (right x down = forward)")


for _rot in VIEW_ROTATIONS.values():
    _check_rotation(_rot)


@dataclass(frozen=True)
class Workspace:
    """Axis-aligned cube in the base frame plus the image resolution of the views projected from it."""

    center: tuple[float, float, float] = (0.5, 0.0, 0.4)
    edge: float = 1.0
    resolution: int = 256
    views: tuple[str, ...] = field(default=VIEW_NAMES)

    def __post_init__(self) -> None:
        if len(self.center) != 3 or not all(np.isfinite(self.center)):
            raise ValueError(f"workspace centre must be 3 finite numbers, got {self.center!r}")
        if not (np.isfinite(self.edge) and self.edge > 0):
            raise ValueError(f"workspace edge must be a positive length in metres, got {self.edge!r}")
        if int(self.resolution) != self.resolution or self.resolution < 8:
            raise ValueError(f"view resolution must be an integer >= 8, got {self.resolution!r}")
        unknown = [v for v in self.views if v not in VIEW_ROTATIONS]
        if unknown or not self.views:
            raise ValueError(f"unknown views {unknown}; known: {list(VIEW_ROTATIONS)}")

    @property
    def lower(self) -> np.ndarray:
        return np.asarray(self.center, dtype=np.float64) - self.edge / 2

    @property
    def upper(self) -> np.ndarray:
        return np.asarray(self.center, dtype=np.float64) + self.edge / 2

    @property
    def pixel_size(self) -> float:
        """Metres per pixel."""
        return self.edge / self.resolution

    def contains(self, points: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Boolean mask of points (..., 3) inside the closed cube."""
        if isinstance(points, torch.Tensor):
            lo = torch.as_tensor(self.lower, dtype=points.dtype, device=points.device)
            hi = torch.as_tensor(self.upper, dtype=points.dtype, device=points.device)
            return ((points >= lo) & (points <= hi)).all(dim=-1)
        points = np.asarray(points)
        return np.all((points >= self.lower) & (points <= self.upper), axis=-1)

    def view_rotations(self, like: torch.Tensor | None = None) -> torch.Tensor:
        """(V, 3, 3) rows (right, down, forward) for this workspace's views, on like's device."""
        rot = torch.as_tensor(np.stack([VIEW_ROTATIONS[v] for v in self.views]))
        if like is not None:
            rot = rot.to(device=like.device, dtype=like.dtype if like.is_floating_point() else torch.float32)
        return rot

    def to_view(self, points: torch.Tensor) -> torch.Tensor:
        """Base-frame points (..., 3) -> (..., V, 3) as (column, row, depth).

        Column and row are continuous pixel coordinates, depth is metres from the camera's face.
        """
        rot = self.view_rotations(points)
        center = torch.as_tensor(self.center, dtype=points.dtype, device=points.device)
        unit = (points - center) / self.edge  # cube -> [-0.5, 0.5]^3
        cam = torch.einsum("vij,...j->...vi", rot, unit) + 0.5  # [0, 1]^3 per view
        scale = torch.tensor(
            [self.resolution, self.resolution, self.edge], dtype=points.dtype, device=points.device
        )
        return cam * scale

    def from_view(self, coords: torch.Tensor) -> torch.Tensor:
        """Inverse of to_view: (..., V, 3) (column, row, depth) -> (..., V, 3) base-frame points."""
        rot = self.view_rotations(coords)
        scale = torch.tensor(
            [self.resolution, self.resolution, self.edge], dtype=coords.dtype, device=coords.device
        )
        cam = coords / scale - 0.5
        center = torch.as_tensor(self.center, dtype=coords.dtype, device=coords.device)
        return torch.einsum("vji,...vj->...vi", rot, cam) * self.edge + center
