"""What both projection backends share: input checks, each point's pixel and depth per view, the result.

Pixels and depths are computed once per signed base axis (views share them), with the same float32
operations as Workspace.to_view.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

from mvvdp_core.geometry.workspace import VIEW_ROTATIONS, Workspace

MAX_POINTS = 2**31 - 1
POINT_CHUNK = 32_000  # points per pass of the z-ordering: temporaries stay in cache, and below torch's
# intra-op grain size (32768 elements) element-wise ops run on the calling thread: no stalls on busy cores


@dataclass
class ProjectedViews:
    """rgb (V, C, H, W) in [0, 1], background 0; depth (V, H, W) m from the camera face, background +inf."""

    rgb: torch.Tensor
    depth: torch.Tensor


def splat_extent(splat_radius: float, workspace: Workspace) -> tuple[int, int]:
    """(reach, max squared pixel distance) of the splat disc: offsets with dx^2 + dy^2 <= max_d2 count."""
    if not (math.isfinite(splat_radius) and splat_radius >= 0):
        raise ValueError(f"splat_radius must be a finite length >= 0 in metres, got {splat_radius!r}")
    radius_px = splat_radius / workspace.pixel_size
    max_d2 = int(math.floor(radius_px * radius_px + 1e-9))
    return math.isqrt(max_d2), max_d2


def prepare_inputs(
    points: np.ndarray | torch.Tensor, colors: np.ndarray | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate and convert to float32 points (N, 3) and float32 colours (N, C) on the points' device."""
    if isinstance(points, np.ndarray):
        points = torch.from_numpy(np.ascontiguousarray(points))
    if isinstance(colors, np.ndarray):
        colors = torch.from_numpy(np.ascontiguousarray(colors))
    if not isinstance(points, torch.Tensor) or not isinstance(colors, torch.Tensor):
        raise ValueError("points and colors must be numpy arrays or torch tensors")
    if points.ndim != 2 or points.shape[1] != 3 or not points.is_floating_point():
        raise ValueError(f"points must be a floating (N, 3) array, got {tuple(points.shape)} {points.dtype}")
    if colors.ndim != 2 or colors.shape[0] != points.shape[0] or colors.shape[1] < 1:
        raise ValueError(
            f"colors must have shape (N, C) with N = {points.shape[0]} and C >= 1, got {tuple(colors.shape)}"
        )
    if points.shape[0] == 0:
        raise ValueError("empty cloud: no points to project")
    if points.shape[0] > MAX_POINTS:
        raise ValueError(f"at most {MAX_POINTS} points fit the 32-bit point index, got {points.shape[0]}")
    if colors.dtype == torch.uint8:
        colors = colors.to(torch.float32) / 255.0
    elif not colors.is_floating_point():
        raise ValueError(f"colors must be uint8 or floating point, got {colors.dtype}")
    points = points.to(torch.float32)
    step = POINT_CHUNK // 3 if points.device.type == "cpu" else max(1, points.shape[0])
    for chunk in points.split(step):  # NaN and inf reach the minimum or the maximum
        if not bool(torch.isfinite(torch.stack(torch.aminmax(chunk))).all()):
            raise ValueError("points contain NaN or infinite coordinates")
    return points.contiguous(), colors.to(device=points.device, dtype=torch.float32).contiguous()


def _axis_terms(
    column: torch.Tensor, sign: float, resolution: int, edge: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel index (int64, clamped to the image) and depth along a signed base axis, from one column (N,)
    of unit coordinates.

    The same float32 operations as Workspace.to_view for a view row that is +-(this axis): the rotation's
    other entries are zeros, so its sum reduces exactly to sign * unit. Clamping before the integer
    conversion equals floor-then-clamp (truncation is the floor of a non-negative value).
    """
    cam = (column * sign if sign < 0 else column) + 0.5
    pixel = (cam * float(resolution)).clamp_(0, resolution - 1).to(torch.int64)
    depth = cam.mul_(float(edge)).clamp_(0.0, edge).add_(0.0)  # adding +0.0 turns -0.0 into +0.0
    return pixel, depth


@functools.cache
def _signed_axes(views: tuple[str, ...]) -> tuple[tuple[tuple[int, float], ...], ...]:
    """Per view the (base axis, sign) of its image right, image down and viewing direction."""
    result = []
    for name in views:
        rows = VIEW_ROTATIONS[name]
        result.append(tuple((int(abs(row).argmax()), float(row[abs(row).argmax()])) for row in rows))
    return tuple(result)


def view_pixels(
    points: torch.Tensor, workspace: Workspace, outside: int = -1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat pixel index into (V, H, W) images and depth per (view, point), both (V, N).

    Points outside the cube get index `outside` (-1 unless a caller reserves a slot for them). Depth is
    float32, clamped to >= +0.0 (never -0.0). Equal to Workspace.to_view's column, row and depth and to
    Workspace.contains, computed once per signed base axis (views share them).
    """
    res = workspace.resolution
    points = points.to(torch.float32)
    lower = torch.as_tensor(workspace.lower, dtype=torch.float32).tolist()
    upper = torch.as_tensor(workspace.upper, dtype=torch.float32).tolist()
    center = torch.as_tensor(workspace.center, dtype=torch.float32).tolist()
    bounds = [torch.stack(torch.aminmax(points[:, axis])).tolist() for axis in range(3)]  # column-wise:
    # element-wise sized for the calling thread (see POINT_CHUNK)
    outside_cube = None  # the mask is built only when some point lies outside (clouds come cropped)
    if any(bounds[axis][0] < lower[axis] or bounds[axis][1] > upper[axis] for axis in range(3)):
        outside_cube = torch.zeros(points.shape[0], dtype=torch.bool, device=points.device)
        for axis in range(3):
            outside_cube |= points[:, axis] < lower[axis]
            outside_cube |= points[:, axis] > upper[axis]
    cache: dict[tuple[int, float], tuple[torch.Tensor, torch.Tensor]] = {}

    def terms(axis: int, sign: float) -> tuple[torch.Tensor, torch.Tensor]:
        if (axis, sign) not in cache:
            unit = (points[:, axis] - center[axis]) / workspace.edge
            cache[axis, sign] = _axis_terms(unit, sign, res, workspace.edge)
        return cache[axis, sign]

    flat = torch.empty(len(workspace.views), points.shape[0], dtype=torch.int64, device=points.device)
    depth = torch.empty(len(workspace.views), points.shape[0], dtype=torch.float32, device=points.device)
    for v, (right, down, forward) in enumerate(_signed_axes(tuple(workspace.views))):
        torch.add(terms(*right)[0], terms(*down)[0], alpha=res, out=flat[v])
        flat[v].add_(v * res * res)
        if outside_cube is not None:
            flat[v].masked_fill_(outside_cube, outside)
        depth[v] = terms(*forward)[1]
    return flat, depth
