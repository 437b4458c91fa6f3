"""Orthographic projection of a coloured cloud into the workspace views: z-ordering, screen-space splatting.

Per view every point gets a pixel and a depth. Depth and point index are packed into one 64-bit key (high 32
bits: the float32 bit pattern of the non-negative depth, which orders like the depth; low 32 bits: the point
index) and each pixel keeps the smallest key. Splatting then lets each pixel j take the key of the nearest
pixel k within the splat radius whose depth is strictly smaller (ties: smaller key, i.e. smaller depth, then
smaller point index). It reads only the z-ordered key image, so a farther surface never covers a nearer one.
Keys are finally unpacked into feature and depth images.

The CUDA kernel (cuda/, loaded by cuda_ext) implements the same three steps on the same keys; this module is
the reference and the CPU path, and `project_views` is the one place that picks a backend. Pixels and depths
come from pixels.view_pixels (shared by both backends); points are z-ordered in cache-sized chunks (numpy's
minimum.at on the CPU), so the cost is linear in the number of points; every CPU step works on blocks below
torch's parallel grain size, so it never waits on a thread of a busy core.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from mvvdp_core.geometry import cuda_ext
from mvvdp_core.geometry.pixels import (
    POINT_CHUNK,
    ProjectedViews,
    prepare_inputs,
    splat_extent,
    view_pixels,
)
from mvvdp_core.geometry.workspace import Workspace

# Key of an empty pixel: larger than every packed key (its depth bits 0x7FFFFFFF exceed those of +inf).
EMPTY_KEY = 0x7FFF_FFFF_FFFF_FFFF
LOW_MASK = 0xFFFF_FFFF
IMAGE_BLOCK = 32_767  # pixels per block of the splatting and unpacking, below torch's intra-op grain size


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
    if backend == "auto" and cuda_ext.load_extension() is None:
        return project_views_torch(points, colors, workspace, splat_radius)
    return cuda_ext.project_views_cuda(points, colors, workspace, splat_radius)
