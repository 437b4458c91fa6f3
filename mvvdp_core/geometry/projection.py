"""Orthographic projection of a coloured cloud into the workspace views: z-ordering, screen-space splatting.

Per view every point gets a pixel and a depth. Depth and point index are packed into one 64-bit key (high 32
bits: the float32 bit pattern of the non-negative depth, which orders like the depth; low 32 bits: the point
index) and each pixel keeps the smallest key. Splatting then lets each pixel j take the key of the nearest
pixel k within the splat radius whose depth is strictly smaller (ties: smaller key, i.e. smaller depth, then
smaller point index). It reads only the z-ordered key image, so a farther surface never covers a nearer one.
Keys are finally unpacked into feature and depth images.

The CUDA kernel (cuda/, loaded by cuda_ext) and the compiled CPU library (cuda/projection_cpu.cpp, loaded by
cpu_ext) implement the same three steps on the same keys with the same per-element functions; this module is
the reference, and the CPU path where that library cannot be built. `project_views` is the one place that
picks a backend. Pixels and depths come from pixels.view_terms (on the GPU too; the compiled CPU library
computes them with the same float32 operations). Here, on the CPU, points are z-ordered in cache-sized chunks
(a scatter-min of the keys), so the cost is linear in the number of points, its temporaries live in
buffers each calling thread reuses from call to call, and the call runs on its own thread budget (one
thread by default, set for the calling thread only): torch threads that wait for busy cores make it many
times slower.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from mvvdp_core.geometry import cpu_ext, cuda_ext
from mvvdp_core.geometry.pixels import (
    POINT_CHUNK,
    ProjectedViews,
    Scratch,
    depth_rows,
    prepare_inputs,
    scratch_buffer,
    splat_extent,
    thread_scratch,
    view_terms,
)
from mvvdp_core.geometry.workspace import Workspace
from mvvdp_core.threads import torch_threads

# Key of an empty pixel: larger than every packed key (its depth bits 0x7FFFFFFF exceed those of +inf).
EMPTY_KEY = 0x7FFF_FFFF_FFFF_FFFF
LOW_MASK = 0xFFFF_FFFF
DEPTH_MASK = -(1 << 32)  # clears the index bits of a key
INF_BITS = 0x7F80_0000  # float32 +inf
SPLAT_BLOCK = 32_768  # pixels per block of the CPU splatting: its temporaries stay in cache
# Halves of a key seen as two int32: which holds the point index and which the depth bits.
LOW, HIGH = (1, 0) if sys.byteorder == "big" else (0, 1)


def key_halves(keys: torch.Tensor) -> torch.Tensor:
    """int32 view (..., 2) of int64 keys: [..., LOW] the point index, [..., HIGH] the depth bits."""
    return keys.view(torch.int32).view(*keys.shape, 2)


def zorder_keys(points: torch.Tensor, workspace: Workspace, scratch: Scratch | None = None) -> torch.Tensor:
    """Minimum key per pixel of the points landing on it, EMPTY_KEY where none does; shape (V, H, W).

    Points go through view_terms in chunks of POINT_CHUNK on the CPU (the temporaries stay in cache), in one
    pass elsewhere. Each chunk's keys are built in place: view_terms writes the depths into their high
    halves, the point indices go into the low halves, and a scatter-min per view takes them into the view's
    image. Points outside the cube land on a discarded extra pixel of each view. scratch: buffers for the
    temporaries and the result (then a view of scratch's "image"; else everything is new).
    """
    num_views, res = len(workspace.views), workspace.resolution
    num_pixels = res * res
    device = points.device
    image = scratch_buffer(scratch, "image", (num_views, num_pixels + 1), torch.int64, points)
    image.fill_(EMPTY_KEY)
    step = POINT_CHUNK if device.type == "cpu" else max(1, points.shape[0])
    width = min(step, points.shape[0])
    keys = scratch_buffer(scratch, "keys", (depth_rows(workspace), width), torch.int64, points)
    halves = key_halves(keys)
    index = scratch_buffer(scratch, "index", (width,), torch.int32, points)
    halves[..., LOW] = torch.arange(width, dtype=torch.int32, device=device, out=index)
    for start in range(0, points.shape[0], step):
        if start > 0:  # moves each point index on by one chunk; the indices stay below 2^32, so this never
            keys += step  # carries into the high halves, which view_terms overwrites
        chunk = points[start : start + step]
        count = chunk.shape[0]
        depth_out = halves[:, :count, HIGH].view(torch.float32)
        terms = view_terms(chunk, workspace, depth_out=depth_out, scratch=scratch)
        for v in range(num_views):
            pixel = terms.pixel[v]
            if terms.outside is not None:
                pixel.masked_fill_(terms.outside, num_pixels)
            view_keys = keys[terms.depth_row[v], :count]
            image[v].scatter_reduce_(0, pixel, view_keys, reduce="amin", include_self=True)
    return image[:, :num_pixels].view(num_views, res, res)


def splat_offsets(reach: int, max_d2: int) -> list[tuple[int, list[tuple[int, int]]]]:
    """Offsets (dy, dx) of the splat disc, grouped by squared distance, nearest first; the centre excluded."""
    groups: dict[int, list[tuple[int, int]]] = {}
    for dy in range(-reach, reach + 1):
        for dx in range(-reach, reach + 1):
            d2 = dy * dy + dx * dx
            if 0 < d2 <= max_d2:
                groups.setdefault(d2, []).append((dy, dx))
    return sorted(groups.items())


def splat_keys(
    keys: torch.Tensor,
    reach: int,
    max_d2: int,
    scratch: Scratch | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Screen-space splatting on a (V, H, W) key image; returns the splatted key image (`out` when given,
    which may be `keys` itself, else a new tensor; `keys` is returned unchanged when max_d2 is 0).

    Per ring of equal distance the smallest neighbouring key is taken when its depth is strictly smaller:
    the smallest key of a ring is below `own depth << 32` exactly when some key of the ring is, so one
    minimum per offset and one test per ring suffice. Rings go from the farthest to the nearest, each
    overwriting where it qualifies, so the nearest qualifying ring is what remains. Neighbours are read from
    a padded copy of `keys`, so the result may overwrite them. On the CPU the image goes through blocks of
    rows of about SPLAT_BLOCK pixels, whose temporaries stay in cache; elsewhere through whole views.
    scratch: buffers for the padded copy and the temporaries (else new ones).
    """
    if max_d2 == 0:
        return keys
    num_views, height, width = keys.shape
    shape = (num_views, height + 2 * reach, width + 2 * reach)
    padded = scratch_buffer(scratch, "padded", shape, torch.int64, keys)
    padded[:, :reach].fill_(EMPTY_KEY)  # the border; the inside is a copy of keys
    padded[:, reach + height :].fill_(EMPTY_KEY)
    padded[:, reach : reach + height, :reach].fill_(EMPTY_KEY)
    padded[:, reach : reach + height, reach + width :].fill_(EMPTY_KEY)
    padded[:, reach : reach + height, reach : reach + width] = keys
    if out is None:
        result = keys.clone(memory_format=torch.contiguous_format)
    else:
        result = out if out is keys else out.copy_(keys)
    rows = max(1, SPLAT_BLOCK // width) if keys.device.type == "cpu" else height
    block = scratch_buffer(scratch, "splat_block", (3, min(rows, height), width), torch.int64, keys)
    rings = [offsets for _, offsets in reversed(splat_offsets(reach, max_d2))]
    for v in range(num_views):
        for top in range(0, height, rows):
            bottom = min(top + rows, height)
            _splat_block(result[v, top:bottom], padded[v, top : bottom + 2 * reach], rings, reach, block)
    return result


def _splat_block(
    block: torch.Tensor,
    near_rows: torch.Tensor,
    rings: list[list[tuple[int, int]]],
    reach: int,
    scratch: torch.Tensor,
) -> None:
    """Splat one block (rows, W) of a key image in place. near_rows: the padded image's rows around it;
    rings: the offsets of each ring, farthest first; scratch: (3, >= rows, W) int64. The test and the
    overwrite are integer arithmetic (a select by a data-dependent mask is several times slower on a CPU)."""
    count, width = block.shape
    floor, best, take = (buffer[:count] for buffer in scratch)
    torch.bitwise_and(block, DEPTH_MASK, out=floor)  # keys below it have a strictly smaller depth

    def near(dy: int, dx: int) -> torch.Tensor:
        return near_rows[reach + dy : reach + dy + count, reach + dx : reach + dx + width]

    for offsets in rings:
        if len(offsets) == 1:
            best.copy_(near(*offsets[0]))
        else:
            torch.minimum(near(*offsets[0]), near(*offsets[1]), out=best)
        for dy, dx in offsets[2:]:
            torch.minimum(best, near(dy, dx), out=best)
        torch.sub(best, floor, out=take).bitwise_right_shift_(63)  # keys are >= 0: -1 where best < floor
        block.bitwise_xor_(best.bitwise_xor_(block).bitwise_and_(take))  # block = best where take


def unpack_keys(keys: torch.Tensor, colors: torch.Tensor, scratch: Scratch | None = None) -> ProjectedViews:
    """Key image (V, H, W) -> ProjectedViews with float32 colours (N, C) looked up by point index.

    Branch-free on the halves of the keys: an empty pixel's depth bits 0x7FFFFFFF exceed those of every depth
    (finite, at most the edge) and clamp to +inf's, and its index half -1 is the only negative one, so it
    clamps to index 0 and its sign clears the colour bits. scratch: buffers for the temporaries (the result
    is always new).
    """
    num_views, height, width = keys.shape
    channels, num_pixels = colors.shape[1], height * width
    halves = key_halves(keys)
    depth = halves[..., HIGH].clamp(max=INF_BITS).view(torch.float32)
    low = halves[..., LOW]
    index = scratch_buffer(scratch, "unpack_index", (num_views, num_pixels), torch.int32, keys)
    torch.clamp(low, min=0, out=index.view(num_views, height, width))
    keep = scratch_buffer(scratch, "keep", (num_views, 1, num_pixels), torch.int32, keys)
    torch.bitwise_right_shift(low, 31, out=keep.view(num_views, height, width)).bitwise_not_()  # 0 if empty
    # Colours go channel by channel from a column of `colors`, so that every write is contiguous.
    rgb = torch.empty(num_views, channels, height, width, dtype=colors.dtype, device=keys.device)
    planes = rgb.view(num_views, channels, num_pixels)
    for v in range(num_views):
        for c in range(channels):
            torch.index_select(colors[:, c], 0, index[v], out=planes[v, c])
    planes.view(torch.int32).bitwise_and_(keep)
    return ProjectedViews(rgb=rgb, depth=depth)


def project_views_torch(
    points: np.ndarray | torch.Tensor,
    colors: np.ndarray | torch.Tensor,
    workspace: Workspace,
    splat_radius: float = 0.008,
    threads: int | None = 1,
) -> ProjectedViews:
    """Reference projection in vectorised torch (CPU or CUDA tensors). Points outside the cube are ignored.

    threads: torch intra-op threads of the calling thread for a call on the CPU, restored afterwards (None:
    torch's setting; see threads.torch_threads). On the CPU the temporaries live in the calling thread's
    reused buffers (pixels.thread_scratch); the result never shares memory with them.
    """
    on_gpu = isinstance(points, torch.Tensor) and points.device.type != "cpu"
    with torch_threads(None if on_gpu else threads):
        points, colors = prepare_inputs(points, colors)
        reach, max_d2 = splat_extent(splat_radius, workspace)
        scratch = None if points.device.type != "cpu" else thread_scratch()
        keys = zorder_keys(points, workspace, scratch)  # scratch's image, splatted in place
        return unpack_keys(splat_keys(keys, reach, max_d2, scratch, out=keys), colors, scratch)


def project_views(
    points: np.ndarray | torch.Tensor,
    colors: np.ndarray | torch.Tensor,
    workspace: Workspace,
    splat_radius: float = 0.008,
    backend: str = "auto",
    threads: int | None = 1,
) -> ProjectedViews:
    """Project a base-frame cloud into the workspace views.

    backend: "torch" (reference), "cpu" (compiled CPU library; error if it cannot be built), "cuda" (kernel;
    error if unavailable) or "auto": the kernel for points on a GPU, the compiled library for points on the
    CPU, each when it builds, else torch (cpu_ext / cuda_ext.unavailable_reason say why). threads: CPU threads
    of a projection on the CPU (default 1: the call never waits for a busy core; None: torch's setting).
    """
    if backend not in ("auto", "cpu", "torch", "cuda"):
        raise ValueError(f"backend must be 'auto', 'cpu', 'torch' or 'cuda', got {backend!r}")
    on_cpu = not isinstance(points, torch.Tensor) or points.device.type == "cpu"
    on_gpu = isinstance(points, torch.Tensor) and points.is_cuda
    if backend == "auto":
        if on_cpu and cpu_ext.load_library() is not None:
            backend = "cpu"
        elif on_gpu and cuda_ext.load_extension() is not None:
            backend = "cuda"
        else:
            backend = "torch"
    if backend == "cpu":
        return cpu_ext.project_views_cpu(points, colors, workspace, splat_radius, threads)
    if backend == "cuda":
        return cuda_ext.project_views_cuda(points, colors, workspace, splat_radius)
    return project_views_torch(points, colors, workspace, splat_radius, threads)
