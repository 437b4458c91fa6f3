"""What both projection backends share: input checks, each point's pixel and depth per view, the result.

Pixels and depths are computed once per signed base axis (views share them), with the same float32
operations as Workspace.to_view, on a transposed (3, N) copy of the points so that every step reads and
writes contiguous rows.
"""

from __future__ import annotations

import functools
import math
import threading
from dataclasses import dataclass

import numpy as np
import torch

from mvvdp_core.geometry.workspace import VIEW_ROTATIONS, Workspace

MAX_POINTS = 2**31 - 1
POINT_CHUNK = 65_536  # points per pass of the CPU z-ordering: per-operation overheads fade, and its reused
# temporaries (about 120 bytes a point) stay in cache


@dataclass
class ProjectedViews:
    """rgb (V, C, H, W) in [0, 1], background 0; depth (V, H, W) m from the camera face, background +inf."""

    rgb: torch.Tensor
    depth: torch.Tensor


@dataclass
class ViewTerms:
    """Pixels and depths of N points in V views.

    pixel: (V, N) int64, per view the index of each point's pixel inside the view's (H, W) image (row * W +
    column); depth: (D, N) float32 depths >= +0.0 along the D distinct viewing directions, depth[depth_row[v]]
    those of view v; outside: (N,) bool, the points outside the cube (None: no point is).
    """

    pixel: torch.Tensor
    depth: torch.Tensor
    depth_row: tuple[int, ...]
    outside: torch.Tensor | None


@dataclass(frozen=True)
class _Plan:
    """What view_terms needs from a workspace: float32 bounds and centre, and the signed base axes.

    `axes` lists every signed axis (axis, sign) the views use, ordered so that axes[:pixel_stop] are those
    giving pixels and axes[depth_start:] those giving depths: each is one block of rows."""

    lower: tuple[float, ...]
    upper: tuple[float, ...]
    center: tuple[float, ...]
    axes: tuple[tuple[int, float], ...]
    pixel_stop: int
    depth_start: int
    views: tuple[tuple[int, int, int], ...]  # per view the rows of its right, down and viewing axes


@functools.cache
def _plan(center: tuple[float, ...], edge: float, views: tuple[str, ...]) -> _Plan:
    workspace = Workspace(center=center, edge=edge, views=views)
    as_f32 = lambda values: tuple(torch.as_tensor(values, dtype=torch.float32).tolist())  # noqa: E731
    signed = _signed_axes(views)
    on_pixel = {axis for right, down, _ in signed for axis in (right, down)}
    on_depth = {forward for _, _, forward in signed}
    axes = tuple(sorted(on_pixel - on_depth) + sorted(on_pixel & on_depth) + sorted(on_depth - on_pixel))
    rows = tuple(tuple(axes.index(axis) for axis in view) for view in signed)
    return _Plan(
        lower=as_f32(workspace.lower),
        upper=as_f32(workspace.upper),
        center=as_f32(workspace.center),
        axes=axes,
        pixel_stop=len(on_pixel),
        depth_start=len(on_pixel - on_depth),
        views=rows,
    )


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
    points = points.to(torch.float32).contiguous()  # view_terms rejects NaN and infinite coordinates
    return points, colors.to(device=points.device, dtype=torch.float32).contiguous()


@functools.cache
def _signed_axes(views: tuple[str, ...]) -> tuple[tuple[tuple[int, float], ...], ...]:
    """Per view the (base axis, sign) of its image right, image down and viewing direction."""
    result = []
    for name in views:
        rows = VIEW_ROTATIONS[name]
        result.append(tuple((int(abs(row).argmax()), float(row[abs(row).argmax()])) for row in rows))
    return tuple(result)


def signed_view_axes(workspace: Workspace) -> tuple[tuple[tuple[int, float], ...], ...]:
    """Per view the (base axis, sign) of its image right, image down and viewing direction."""
    return _signed_axes(tuple(workspace.views))


def float32_cube(workspace: Workspace) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """The cube's centre, lower and upper bounds as the float32 values view_terms computes with."""
    plan = _plan(tuple(workspace.center), float(workspace.edge), tuple(workspace.views))
    return plan.center, plan.lower, plan.upper


def depth_rows(workspace: Workspace) -> int:
    """D, the rows of view_terms' depth: how many distinct viewing directions the workspace's views have."""
    return len({forward for _, _, forward in _signed_axes(tuple(workspace.views))})


class Scratch:
    """Named buffers reused from call to call: each a flat tensor, grown when a larger one is asked for,
    handed out as a contiguous view of its leading elements (contents undefined). Fresh buffers of a few MB
    cost a page fault per 4 KiB touched on every call; reused ones are mapped already, often still cached.
    Not thread-safe: keep one per thread (`thread_scratch`)."""

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def get(
        self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
    ) -> torch.Tensor:
        size = math.prod(shape)
        buffer = self._buffers.get(name)
        if buffer is None or buffer.dtype != dtype or buffer.device != device or buffer.numel() < size:
            buffer = self._buffers[name] = torch.empty(size, dtype=dtype, device=device)
        return buffer[:size].view(shape)


_local = threading.local()


def thread_scratch() -> Scratch:
    """The calling thread's Scratch (made on first use): concurrent calls never share buffers."""
    scratch = getattr(_local, "scratch", None)
    if scratch is None:
        scratch = _local.scratch = Scratch()
    return scratch


def scratch_buffer(
    scratch: Scratch | None, name: str, shape: tuple[int, ...], dtype: torch.dtype, like: torch.Tensor
) -> torch.Tensor:
    """scratch's buffer `name`, or a new tensor without scratch."""
    if scratch is None:
        return torch.empty(shape, dtype=dtype, device=like.device)
    return scratch.get(name, shape, dtype, like.device)


def view_terms(
    points: torch.Tensor,
    workspace: Workspace,
    depth_out: torch.Tensor | None = None,
    scratch: Scratch | None = None,
) -> ViewTerms:
    """Pixel and depth of each float32 point (N, 3) in each view: Workspace.to_view's column, row and depth
    (column and row floored and clamped to the image, depth clamped to [+0.0, edge]) and Workspace.contains.

    A view row that is +-(a base axis) reduces to_view's sum to exactly sign * unit (the other entries are
    zeros), so each signed axis is computed once for all views: cam = unit + 0.5 or 0.5 - unit (the same
    float32 value as -unit + 0.5), pixel = int(clamp(cam * resolution, 0, resolution - 1)) (truncating a
    value >= 0 is its floor) and depth = clamp(cam * edge, 0, edge) + 0.0 (turns -0.0 into +0.0).
    depth_out: a float32 (D, N) tensor, of any strides, that receives the depths (else a new one). scratch:
    buffers for the temporaries (the result's pixels live there too), else new tensors.
    """
    res, edge = workspace.resolution, float(workspace.edge)
    plan = _plan(tuple(workspace.center), edge, tuple(workspace.views))
    count = points.shape[0]
    coords = scratch_buffer(scratch, "coords", (3, count), torch.float32, points)  # rows of x, y and z
    if points.device.type == "cpu":  # numpy's transposing copy is several times faster than torch's
        np.copyto(coords.numpy(), points.detach().numpy().T)
    else:
        coords.copy_(points.t())
    low, high = coords.amin(dim=1).tolist(), coords.amax(dim=1).tolist()  # (aminmax(dim) is slower)
    if not all(map(math.isfinite, low + high)):  # NaN and inf reach the minimum or the maximum
        raise ValueError("points contain NaN or infinite coordinates")
    outside = None  # the mask is built only when some point lies outside (clouds come cropped)
    if any(low[axis] < plan.lower[axis] or high[axis] > plan.upper[axis] for axis in range(3)):
        outside = scratch_buffer(scratch, "outside", (count,), torch.bool, points).zero_()
        for axis in range(3):
            outside |= coords[axis] < plan.lower[axis]
            outside |= coords[axis] > plan.upper[axis]
    center = torch.tensor(plan.center, device=points.device)[:, None]
    unit = coords.sub_(center).div_(edge)  # the cube -> [-0.5, 0.5]^3
    cam = scratch_buffer(scratch, "cam", (len(plan.axes), count), torch.float32, points)
    for row, (axis, sign) in enumerate(plan.axes):
        if sign < 0:
            torch.sub(0.5, unit[axis], out=cam[row])
        else:
            torch.add(unit[axis], 0.5, out=cam[row])
    scaled = scratch_buffer(scratch, "scaled", (plan.pixel_stop, count), torch.float32, points)
    torch.mul(cam[: plan.pixel_stop], float(res), out=scaled).clamp_(0, res - 1)
    pixel_rows = scratch_buffer(scratch, "pixel_rows", (plan.pixel_stop, count), torch.int32, points)
    pixel_rows.copy_(scaled)  # truncates
    depth = cam[plan.depth_start :].mul_(edge).clamp_(0.0, edge)
    depth = torch.add(depth, 0.0, out=depth if depth_out is None else depth_out)
    pixel32 = scratch_buffer(scratch, "pixel32", (len(plan.views), count), torch.int32, points)
    for v, (right, down, _) in enumerate(plan.views):
        torch.add(pixel_rows[right], pixel_rows[down], alpha=res, out=pixel32[v])
    pixel = scratch_buffer(scratch, "pixel", (len(plan.views), count), torch.int64, points)
    pixel.copy_(pixel32)  # (one int32 -> int64 conversion: an int64 output of the addition is slower)
    return ViewTerms(
        pixel=pixel,
        depth=depth,
        depth_row=tuple(forward - plan.depth_start for _, _, forward in plan.views),
        outside=outside,
    )


def view_pixels(
    points: torch.Tensor, workspace: Workspace, outside: int = -1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat pixel index into (V, H, W) images and depth per (view, point), both (V, N).

    Points outside the cube get index `outside` (-1 unless a caller reserves a slot for them). Depth is
    float32, clamped to >= +0.0 (never -0.0). The view_terms of every view, stacked.
    """
    terms = view_terms(points.to(torch.float32), workspace)
    num_pixels = workspace.resolution * workspace.resolution
    flat = terms.pixel
    flat += torch.arange(flat.shape[0], device=flat.device)[:, None] * num_pixels
    if terms.outside is not None:
        flat.masked_fill_(terms.outside, outside)
    return flat, terms.depth[list(terms.depth_row)]
