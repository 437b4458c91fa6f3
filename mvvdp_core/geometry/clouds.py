"""Camera clouds -> one coloured cloud in the base frame, cropped to the workspace cube."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from mvvdp_core.geometry.workspace import Workspace

ArrayLike = np.ndarray | torch.Tensor

RIGID_TOLERANCE = 1e-4


def _as_tensor(value: ArrayLike, name: str, device: torch.device | None = None) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise ValueError(f"{name} must be a numeric array, got dtype object")
        value = torch.from_numpy(np.ascontiguousarray(value))
    elif not isinstance(value, torch.Tensor):
        raise ValueError(f"{name} must be a numpy array or torch tensor, got {type(value).__name__}")
    return value if device is None else value.to(device)


def check_rigid(base_T_cam: ArrayLike, name: str = "extrinsic") -> torch.Tensor:
    """Return the transform as a float64 (4, 4) tensor; ValueError unless it is a proper rigid transform."""
    mat = _as_tensor(base_T_cam, name)
    if mat.shape != (4, 4):
        raise ValueError(f"{name} must be a (4, 4) matrix, got shape {tuple(mat.shape)}")
    if not mat.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {mat.dtype}")
    mat = mat.detach().to(device="cpu", dtype=torch.float64)
    if not torch.isfinite(mat).all():
        raise ValueError(f"{name} contains non-finite values")
    rot = mat[:3, :3]
    eye = torch.eye(3, dtype=torch.float64)
    if not torch.allclose(rot.T @ rot, eye, atol=RIGID_TOLERANCE):
        raise ValueError(
            f"{name} is not a rigid transform: rotation block not orthonormal (R^T R != I)"
        )
    if abs(float(torch.linalg.det(rot)) - 1.0) > RIGID_TOLERANCE:
        raise ValueError(
            f"{name} is not a rigid transform: rotation determinant != +1 (a reflection)"
        )
    if not torch.allclose(mat[3], torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64), atol=0.0):
        raise ValueError(
            f"{name} is not a rigid transform: last row must be [0, 0, 0, 1], is {mat[3].tolist()}"
        )
    return mat


def _check_points(points: torch.Tensor, name: str) -> torch.Tensor:
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"{name} must have shape (N, 3), got {tuple(points.shape)}")
    if not points.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {points.dtype}")
    return points


def transform_points(points: ArrayLike, base_T_cam: ArrayLike) -> torch.Tensor:
    """Map camera-frame points (N, 3) into the base frame with a rigid base_T_cam (4, 4)."""
    pts = _check_points(_as_tensor(points, "points"), "points")
    mat = check_rigid(base_T_cam, "base_T_cam").to(device=pts.device, dtype=pts.dtype)
    return pts @ mat[:3, :3].T + mat[:3, 3]


def _colors_to_float(colors: torch.Tensor, name: str) -> torch.Tensor:
    if colors.dtype == torch.uint8:
        return colors.to(torch.float32) / 255.0
    if not colors.is_floating_point():
        raise ValueError(f"{name} must be uint8 or floating point in [0, 1], got {colors.dtype}")
    return colors.to(torch.float32)


def merge_clouds(
    points: Sequence[ArrayLike],
    colors: Sequence[ArrayLike],
    extrinsics: Sequence[ArrayLike],
    workspace: Workspace,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge per-camera clouds into the base frame and crop them to the workspace cube.

    points[i] (N_i, 3) are in camera i's frame, colors[i] (N_i, C) uint8 or floats in [0, 1], extrinsics[i]
    the rigid base_T_cam. Returns float32 points (M, 3) and colours (M, C) on the first cloud's device.
    Non-finite points are dropped.
    """
    if not (len(points) == len(colors) == len(extrinsics)):
        raise ValueError(
            f"need one colour array and one extrinsic per cloud, got {len(points)} clouds, "
            f"{len(colors)} colour arrays, {len(extrinsics)} extrinsics"
        )
    if len(points) == 0:
        raise ValueError("empty input: no clouds given")
    device = points[0].device if isinstance(points[0], torch.Tensor) else torch.device("cpu")
    merged_points, merged_colors = [], []
    channels: int | None = None
    for i, (pts_in, cols_in, ext) in enumerate(zip(points, colors, extrinsics, strict=True)):
        pts = _check_points(_as_tensor(pts_in, f"points[{i}]", device), f"points[{i}]")
        cols = _as_tensor(cols_in, f"colors[{i}]", device)
        if cols.ndim != 2 or cols.shape[0] != pts.shape[0]:
            raise ValueError(
                f"colors[{i}] must have shape (N, C) with N = {pts.shape[0]} points, got {tuple(cols.shape)}"
            )
        if channels is not None and cols.shape[1] != channels:
            raise ValueError(f"colors[{i}] has {cols.shape[1]} channels, earlier clouds have {channels}")
        channels = cols.shape[1]
        cols = _colors_to_float(cols, f"colors[{i}]")
        mat = check_rigid(ext, f"extrinsics[{i}]").to(device=device)
        base = (pts.to(torch.float64) @ mat[:3, :3].T + mat[:3, 3]).to(torch.float32)
        merged_points.append(base)
        merged_colors.append(cols)
    all_points = torch.cat(merged_points)
    all_colors = torch.cat(merged_colors)
    if all_points.shape[0] == 0:
        raise ValueError("empty input: the clouds hold no points")
    keep = torch.isfinite(all_points).all(dim=1) & workspace.contains(all_points)
    if not bool(keep.any()):
        raise ValueError("no points inside the workspace (all points are non-finite or outside the cube)")
    kept_colors = all_colors[keep]
    if not torch.isfinite(kept_colors).all():
        raise ValueError("colours contain non-finite values")
    return all_points[keep].contiguous(), kept_colors.contiguous()
