"""Orthographic projection of a coloured cloud into the workspace views: z-ordering, screen-space splatting.

Per view every point gets a pixel and a depth. Depth and point index are packed into one 64-bit key (high 32
bits: the float32 bit pattern of the non-negative depth, which orders like the depth; low 32 bits: the point
index) and each pixel keeps the smallest key. Splatting then lets each pixel j take the key of the nearest
pixel k within the splat radius whose depth is strictly smaller (ties: smaller key, i.e. smaller depth, then
smaller point index). It reads only the z-ordered key image, so a farther surface never covers a nearer one.
Keys are finally unpacked into feature and depth images.

The CUDA kernel (cuda/) implements the same three steps on the same keys; this module is the reference and
the CPU path. Pixels and depths are computed once per signed base axis (views share them) and points are
z-ordered in cache-sized chunks (numpy's minimum.at on the CPU), so the cost is linear in the number of
points; every CPU step works on blocks below torch's parallel grain size, so it never waits on a thread of a
busy core.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

from mvvdp_core.geometry.workspace import VIEW_ROTATIONS, Workspace

# Key of an empty pixel: larger than every packed key (its depth bits 0x7FFFFFFF exceed those of +inf).
EMPTY_KEY = 0x7FFF_FFFF_FFFF_FFFF
LOW_MASK = 0xFFFF_FFFF
MAX_POINTS = 2**31 - 1
POINT_CHUNK = 32_000  # points per pass of the z-ordering: temporaries stay in cache, and below torch's
# intra-op grain size (32768 elements) element-wise ops run on the calling thread: no stalls on busy cores
IMAGE_BLOCK = 32_767  # pixels per block of the splatting and unpacking, for the same reason


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


def pack_keys(depth: torch.Tensor, point_index: torch.Tensor) -> torch.Tensor:
    """int64 keys from float32 depths >= 0 and point indices < 2^31."""
    depth_bits = depth.to(torch.float32).contiguous().view(torch.int32).to(torch.int64)
    return (depth_bits << 32) | point_index.to(torch.int64)


def zorder_keys(points: torch.Tensor, workspace: Workspace) -> torch.Tensor:
    """Minimum key per pixel of the points landing on it, EMPTY_KEY where none does; shape (V, H, W).

    On the CPU points go through view_pixels in chunks of POINT_CHUNK, so the temporaries stay in cache and
    the cost is linear in the number of points, and the per-pixel minimum is numpy's minimum.at; elsewhere
    one pass with torch's scatter_reduce. Points outside the cube land on a discarded extra pixel.
    """
    num_views, res = len(workspace.views), workspace.resolution
    num_pixels = num_views * res * res
    on_cpu = points.device.type == "cpu"
    if on_cpu:
        image = torch.from_numpy(np.full(num_pixels + 1, EMPTY_KEY, dtype=np.int64))
    else:
        image = torch.full((num_pixels + 1,), EMPTY_KEY, dtype=torch.int64, device=points.device)
    step = POINT_CHUNK if on_cpu else max(1, points.shape[0])
    for start in range(0, points.shape[0], step):
        chunk = points[start : start + step]
        flat, depth = view_pixels(chunk, workspace, outside=num_pixels)
        point_index = torch.arange(start, start + chunk.shape[0], device=points.device)
        for v in range(num_views):
            keys = pack_keys(depth[v], point_index)
            if on_cpu:
                np.minimum.at(image.numpy(), flat[v].numpy(), keys.numpy())
            else:
                image.scatter_reduce_(0, flat[v], keys, reduce="amin", include_self=True)
    return image[:num_pixels].view(num_views, res, res)


def splat_offsets(reach: int, max_d2: int) -> list[tuple[int, list[tuple[int, int]]]]:
    """Offsets (dy, dx) of the splat disc, grouped by squared distance, nearest first; the centre excluded."""
    groups: dict[int, list[tuple[int, int]]] = {}
    for dy in range(-reach, reach + 1):
        for dx in range(-reach, reach + 1):
            d2 = dy * dy + dx * dx
            if 0 < d2 <= max_d2:
                groups.setdefault(d2, []).append((dy, dx))
    return sorted(groups.items())


def _row_blocks(images: torch.Tensor, elements: int) -> list[tuple[int, slice]]:
    """(view, rows) blocks covering images (V, H, W, ...): on the CPU of at most `elements` pixels (at least
    one row), elsewhere whole views."""
    num_views, height, width = images.shape[:3]
    rows = max(1, elements // width) if images.device.type == "cpu" else height
    return [(v, slice(r, min(r + rows, height))) for v in range(num_views) for r in range(0, height, rows)]


def splat_keys(keys: torch.Tensor, reach: int, max_d2: int) -> torch.Tensor:
    """Screen-space splatting on a (V, H, W) key image; returns a new key image.

    Per ring of equal distance the smallest neighbouring key is taken when its depth is strictly smaller:
    the smallest key of a ring is below `own depth << 32` exactly when some key of the ring is, so one
    minimum per offset and one test per ring suffice. On the CPU it works through blocks of rows small
    enough for torch to run each operation on the calling thread.
    """
    if max_d2 == 0:
        return keys
    num_views, height, width = keys.shape
    padded = torch.full(
        (num_views, height + 2 * reach, width + 2 * reach), EMPTY_KEY, dtype=torch.int64, device=keys.device
    )
    padded[:, reach : reach + height, reach : reach + width] = keys
    result = torch.empty_like(keys)
    groups = splat_offsets(reach, max_d2)
    for v, rows in _row_blocks(keys, IMAGE_BLOCK):
        own = keys[v, rows]
        own_depth_floor = (own >> 32) << 32  # keys below it have a strictly smaller depth
        block = own.clone()
        found = torch.zeros_like(own, dtype=torch.bool)
        ring_best = torch.empty_like(own)
        for _, offsets in groups:
            for k, (dy, dx) in enumerate(offsets):
                near_rows = slice(reach + dy + rows.start, reach + dy + rows.stop)
                near = padded[v, near_rows, reach + dx : reach + dx + width]
                if k == 0:
                    ring_best.copy_(near)
                else:
                    torch.minimum(ring_best, near, out=ring_best)
            take = (ring_best < own_depth_floor) & ~found
            block = torch.where(take, ring_best, block)
            found |= take
        result[v, rows] = block
    return result


def unpack_keys(keys: torch.Tensor, colors: torch.Tensor) -> ProjectedViews:
    """Key image (V, H, W) -> ProjectedViews with colours (N, C) looked up by point index (in row blocks)."""
    num_views, height, width = keys.shape
    rgb = torch.empty(num_views, colors.shape[1], height, width, dtype=colors.dtype, device=keys.device)
    depth = torch.empty(num_views, height, width, dtype=torch.float32, device=keys.device)
    for v, rows in _row_blocks(keys, IMAGE_BLOCK // max(1, colors.shape[1])):
        block = keys[v, rows]
        empty = block == EMPTY_KEY
        block_depth = (block >> 32).to(torch.int32).view(torch.float32)
        depth[v, rows] = torch.where(empty, math.inf, block_depth)
        index = torch.where(empty, 0, block & LOW_MASK)
        features = colors.index_select(0, index.flatten()).view(*index.shape, -1)  # (rows, W, C)
        features = torch.where(empty.unsqueeze(-1), 0.0, features)
        rgb[v, :, rows] = features.permute(2, 0, 1)
    return ProjectedViews(rgb=rgb, depth=depth)


def project_views_torch(
    points: np.ndarray | torch.Tensor,
    colors: np.ndarray | torch.Tensor,
    workspace: Workspace,
    splat_radius: float = 0.008,
) -> ProjectedViews:
    """Reference projection in vectorised torch (CPU or CUDA tensors). Points outside the cube are ignored."""
    points, colors = prepare_inputs(points, colors)
    reach, max_d2 = splat_extent(splat_radius, workspace)
    return unpack_keys(splat_keys(zorder_keys(points, workspace), reach, max_d2), colors)


def project_views(
    points: np.ndarray | torch.Tensor,
    colors: np.ndarray | torch.Tensor,
    workspace: Workspace,
    splat_radius: float = 0.008,
    backend: str = "auto",
) -> ProjectedViews:
    """Project a base-frame cloud into the workspace views.

    backend: "torch" (reference), "cuda" (kernel; error if unavailable) or "auto" (the kernel when the points
    are on a GPU and it builds, else torch).
    """
    if backend not in ("auto", "torch", "cuda"):
        raise ValueError(f"backend must be 'auto', 'torch' or 'cuda', got {backend!r}")
    on_gpu = isinstance(points, torch.Tensor) and points.is_cuda
    if backend == "torch" or (backend == "auto" and not on_gpu):
        return project_views_torch(points, colors, workspace, splat_radius)
    from mvvdp_core.geometry import cuda_ext

    if backend == "auto" and cuda_ext.load_extension() is None:
        return project_views_torch(points, colors, workspace, splat_radius)
    return cuda_ext.project_views_cuda(points, colors, workspace, splat_radius)
