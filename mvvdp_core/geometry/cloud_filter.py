"""Cloud clean-up with Open3D: voxel downsampling and statistical outlier removal (both off by default).

Open3D is optional (the `cloud` extra, package open3d-cpu or open3d); asking for a filter without it raises
a RuntimeError that names the package.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np


@functools.cache
def open3d_problem() -> str:
    """Why open3d cannot be used here ('' when it imports): not installed, or a system library it loads
    (libusb-1.0, libGL) is missing."""
    try:
        import open3d  # noqa: F401
    except (ImportError, OSError) as err:
        return f"{type(err).__name__}: {err}"
    return ""


def open3d_installed() -> bool:
    return not open3d_problem()


def import_open3d() -> Any:
    """The open3d module, or a RuntimeError saying how to install it."""
    problem = open3d_problem()
    if problem:
        raise RuntimeError("open3d is not usable: pip install open3d-cpu (the `cloud` extra; it needs "
                           f"libusb-1.0 from the system), or turn the cloud filters off ({problem})")
    import open3d
    open3d.utility.set_verbosity_level(open3d.utility.VerbosityLevel.Error)
    return open3d


@dataclass(frozen=True)
class CloudFilter:
    """voxel_size: one averaged point per voxel of this edge (m), 0 = off. outlier_neighbors: drop points
    whose mean distance to this many neighbours is above the cloud's mean by outlier_std_ratio standard
    deviations, 0 = off."""

    voxel_size: float = 0.0
    outlier_neighbors: int = 0
    outlier_std_ratio: float = 2.0

    def __post_init__(self) -> None:
        if not (np.isfinite(self.voxel_size) and self.voxel_size >= 0):
            raise ValueError(f"voxel_size must be >= 0 m, got {self.voxel_size!r}")
        if int(self.outlier_neighbors) != self.outlier_neighbors or self.outlier_neighbors < 0:
            raise ValueError(f"outlier_neighbors must be an integer >= 0, got {self.outlier_neighbors!r}")
        if not (np.isfinite(self.outlier_std_ratio) and self.outlier_std_ratio > 0):
            raise ValueError(f"outlier_std_ratio must be > 0, got {self.outlier_std_ratio!r}")

    @property
    def enabled(self) -> bool:
        return self.voxel_size > 0 or self.outlier_neighbors > 0


def to_open3d(points: np.ndarray, colors: np.ndarray | None = None) -> Any:
    """(N, 3) points (non-finite rows dropped) and optional (N, 3) uint8 or [0, 1] colours -> PointCloud."""
    o3d = import_open3d()
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points must have shape (N, 3), got {points.shape}")
    keep = np.isfinite(points).all(axis=1)
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points[keep]))
    if colors is not None:
        colors = np.asarray(colors)
        if colors.shape != (len(keep), 3):
            raise ValueError(f"colors must have shape {(len(keep), 3)}, got {colors.shape}")
        scale = 255.0 if colors.dtype == np.uint8 else 1.0
        cloud.colors = o3d.utility.Vector3dVector(colors[keep].astype(np.float64) / scale)
    return cloud


def filter_cloud(points: np.ndarray, colors: np.ndarray,
                 config: CloudFilter) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3) points and (N, 3) colours (uint8, or floats in [0, 1]) -> the filtered cloud, same dtypes.

    Non-finite points are dropped; voxel downsampling averages points and colours per voxel, then the
    statistical outlier removal runs on what is left. Unchanged when no filter is on."""
    if not config.enabled:
        return points, colors
    uint8 = np.asarray(colors).dtype == np.uint8
    cloud = to_open3d(points, colors)
    if config.voxel_size > 0:
        cloud = cloud.voxel_down_sample(config.voxel_size)
    if config.outlier_neighbors > 0 and len(cloud.points) > config.outlier_neighbors:
        cloud, _ = cloud.remove_statistical_outlier(nb_neighbors=int(config.outlier_neighbors),
                                                    std_ratio=float(config.outlier_std_ratio))
    out_points = np.asarray(cloud.points, dtype=np.float32)
    out_colors = np.asarray(cloud.colors)
    if uint8:
        out_colors = np.clip(np.round(out_colors * 255.0), 0, 255).astype(np.uint8)
    else:
        out_colors = out_colors.astype(np.float32)
    return out_points, out_colors
