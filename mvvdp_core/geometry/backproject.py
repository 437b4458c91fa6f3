"""Back-projection of per-view heatmaps to 3-D positions: the point most consistent with all views.

The views are axis-aligned orthographic cameras at the workspace resolution R, so pixel centres are the
centres of an R^3 voxel grid and each view sees two base axes: flipped and transposed, a view's map is a
plane indexed by the voxel indices of those two axes. A voxel's score is the mean over views of the view's
support there: the max-normalised map with its background (median) removed, so blank and constant maps
support nothing.

1. Coarse: the planes are max-pooled to about COARSE_CELLS cells per axis; the summed pooled planes bound the
   score of every voxel inside a cell from above. The best local maxima of that bound are the candidates.
2. Fine: around each candidate cell the score is evaluated on every voxel (full heatmap resolution) and its
   best voxel kept.
3. Sub-pixel: each view fits a log-parabola along each of its image axes at that voxel (exact for a
   Gaussian); each base axis is the support-weighted mean of the two views that see it.
4. Scoring: each view's fitted peak model (or its bilinear value where the model does not hold) is read at
   that point; the candidate with the highest mean support wins.

The confidence of a step is the geometric mean of the views' support at the chosen point (clamped to 0..1):
~1 when every view has a clear peak there, ~0 when a view is blank, featureless or contradicts the others.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mvvdp_core.geometry.workspace import VIEW_ROTATIONS, Workspace

PEAKS_PER_VIEW = 4  # local maxima per view combined into candidates (ordered view pairs: 6 x 4 x 4 per frame)
FINE_REACH = 2  # voxels searched around each candidate at full resolution, per axis and direction
# Largest sub-pixel offset of a log-parabola vertex, pixels: a peak on the cube's face, fitted around the
# pixel next to the border pixel, is 1.5 away.
MAX_OFFSET = 1.5
MODEL_REACH = MAX_OFFSET + 1e-3  # the fitted peak model is used this far from its centre (rounding slack)
MODEL_CAP = 1.5  # largest fitted peak of a max-normalised map (a peak between pixels exceeds them all)
BACKGROUND_SAMPLES = 64  # per image axis: the background is the median of a grid of this many pixels squared
MIN_SUPPORT = 0.05  # a view takes part in an axis estimate and the spread only above this support


@dataclass
class BackProjection:
    """positions (T, 3) base frame, metres (the workspace centre where no view supports any point);
    confidence (T,) 0..1, geometric mean of the views' support;
    support (T, V) each view's support at the position (normalised, background-free heatmap value; may
    exceed 1 slightly for a peak between pixels); view_spread (T,) metres, largest disagreement between two
    supporting views on an axis they share."""

    positions: torch.Tensor
    confidence: torch.Tensor
    support: torch.Tensor
    view_spread: torch.Tensor


@dataclass(frozen=True)
class _ViewAxes:
    """Base axes of a view's plane (first < second), the axis it looks along, and the image flips."""

    first: int
    second: int
    forward: int
    transpose: bool  # image rows run along the second axis
    flip_rows: bool
    flip_cols: bool


def _view_axes(workspace: Workspace) -> list[_ViewAxes]:
    result = []
    for name in workspace.views:
        right, down, forward = VIEW_ROTATIONS[name]
        r, d, f = (int(abs(row).argmax()) for row in (right, down, forward))
        result.append(_ViewAxes(min(r, d), max(r, d), f, d > r, down[d] < 0, right[r] < 0))
    return result


def _planes(images: torch.Tensor, axes: list[_ViewAxes]) -> torch.Tensor:
    """Images (T, V, H, W) -> planes (T, V, R, R) indexed by the voxel indices of (first, second) axis."""
    planes = []
    for v, ax in enumerate(axes):
        image = images[:, v]
        flips = [dim for dim, flip in ((1, ax.flip_rows), (2, ax.flip_cols)) if flip]
        if flips:
            image = image.flip(flips)
        planes.append(image.transpose(1, 2) if ax.transpose else image)
    return torch.stack(planes, dim=1).contiguous()


def _broadcast(plane: torch.Tensor, ax: _ViewAxes) -> torch.Tensor:
    """(..., A, B) plane over (first, second) -> (..., A|1, B|1, C|1) volume over base axes (x, y, z)."""
    return plane.unsqueeze(plane.ndim - 2 + ax.forward)


def _local_maxima(images: torch.Tensor) -> torch.Tensor:
    """Mask of the local maxima of images (..., H, W) over the 3x3 neighbourhood, one pixel per plateau.

    A pixel must exceed its neighbours before it in raster order and equal or exceed those after it, so a
    flat top (saturated blob) yields one candidate, not several that would crowd out other blobs.
    """
    height, width = images.shape[-2:]
    padded = F.pad(images, (1, 1, 1, 1), value=-1.0)  # below every value (maps are >= 0)
    local = torch.ones_like(images, dtype=torch.bool)
    for dy, dx in itertools.product((-1, 0, 1), repeat=2):
        if dy == dx == 0:
            continue
        neighbour = padded[..., 1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]
        local &= images > neighbour if (dy, dx) < (0, 0) else images >= neighbour
    return local


def _view_peaks(support: torch.Tensor, count: int) -> torch.Tensor:
    """(T, V, M, 2) plane indices of each view's M highest local maxima (3x3, full resolution)."""
    frames, num_views, res = support.shape[0], support.shape[1], support.shape[-1]
    ranked = (support * _local_maxima(support)).view(frames, num_views, res * res)
    best = ranked.topk(min(count, res * res), dim=2).indices
    return torch.stack(torch.unravel_index(best, (res, res)), dim=-1)


def _candidates(support: torch.Tensor, axes: list[_ViewAxes]) -> torch.Tensor:
    """(T, K, 3) voxels combining the peaks of every ordered pair of views (two views see all three axes).

    The first view of a pair gives both its axes, the second the axis the first does not see; an axis that
    neither sees (fewer than three views) is the middle of the cube.
    """
    frames, res = support.shape[0], support.shape[-1]
    peaks = _view_peaks(support, PEAKS_PER_VIEW)  # (T, V, M, 2)
    count = peaks.shape[2]
    pairs = list(itertools.permutations(range(len(axes)), 2)) or [(0, 0)]
    combined = []
    for v, w in pairs:
        voxel = torch.full((frames, count, count, 3), res // 2, dtype=torch.long, device=support.device)
        for view, expand in ((w, (slice(None), None, slice(None))), (v, (slice(None), slice(None), None))):
            ax = axes[view]
            voxel[..., ax.first] = peaks[:, view, :, 0][expand]
            voxel[..., ax.second] = peaks[:, view, :, 1][expand]
        combined.append(voxel.flatten(1, 2))
    return torch.cat(combined, dim=1)


def _fine_voxels(support: torch.Tensor, axes: list[_ViewAxes], centres: torch.Tensor) -> torch.Tensor:
    """Best voxel (T, K, 3) of the full-resolution score within FINE_REACH voxels of each candidate."""
    frames, res = support.shape[0], support.shape[-1]
    width = min(2 * FINE_REACH + 1, res)
    start = (centres - FINE_REACH).clamp(0, res - width)  # (T, K, 3)
    index = start.unsqueeze(-1) + torch.arange(width, device=support.device)  # (T, K, 3, W)
    frame = torch.arange(frames, device=support.device)[:, None, None, None]
    window = None
    for v, ax in enumerate(axes):
        plane = support[
            frame, v, index[:, :, ax.first, :, None], index[:, :, ax.second, None, :]
        ]  # (T, K, W, W)
        term = _broadcast(plane, ax)
        window = term if window is None else window + term
    flat = window.flatten(2).argmax(dim=2)
    return start + torch.stack(torch.unravel_index(flat, (width,) * 3), dim=-1)


def _log_quadratic(left: torch.Tensor, centre: torch.Tensor, right: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Parabola through the logs of samples at -1, 0, +1: slope, curvature, vertex offset, and whether it
    models a peak (all samples positive, concave, vertex within MAX_OFFSET)."""
    tiny = torch.finfo(centre.dtype).tiny
    la, lb, lc = (x.clamp_min(tiny).log() for x in (left, centre, right))
    slope = 0.5 * (lc - la)
    curvature = 0.5 * (la + lc) - lb
    peaked = curvature < 0
    offset = torch.where(peaked, -slope / torch.where(peaked, 2 * curvature, -1.0), 0.0)
    models_peak = peaked & (left > 0) & (centre > 0) & (right > 0) & (offset.abs() <= MODEL_REACH)
    return slope, curvature, offset.clamp(-MAX_OFFSET, MAX_OFFSET), models_peak


def _bilinear(plane: torch.Tensor, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Values of planes (T, R, R) at continuous voxel indices (T, K) (voxel centres at integers)."""
    res = plane.shape[-1]
    frame = torch.arange(plane.shape[0], device=plane.device)[:, None]
    a = first.clamp(0, res - 1)
    b = second.clamp(0, res - 1)
    a0 = a.floor().clamp(max=res - 2).long()
    b0 = b.floor().clamp(max=res - 2).long()
    fa, fb = a - a0, b - b0
    top = plane[frame, a0, b0] * (1 - fb) + plane[frame, a0, b0 + 1] * fb
    bottom = plane[frame, a0 + 1, b0] * (1 - fb) + plane[frame, a0 + 1, b0 + 1] * fb
    return top * (1 - fa) + bottom * fa


def _refine(
    norm: torch.Tensor,
    support: torch.Tensor,
    background: torch.Tensor,
    axes: list[_ViewAxes],
    voxels: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sub-voxel consensus point (T, K, 3) in voxel index units, per-view support there (T, K, V), spread."""
    frames, num_views, res = norm.shape[0], norm.shape[1], norm.shape[-1]
    frame = torch.arange(frames, device=norm.device)[:, None]
    dtype = norm.dtype
    estimates = torch.zeros(*voxels.shape[:2], num_views, 3, dtype=dtype, device=norm.device)
    weights = torch.zeros_like(estimates)
    fits = []
    for v, ax in enumerate(axes):
        plane = norm[:, v]
        i, j = voxels[..., ax.first], voxels[..., ax.second]
        mid_i, mid_j = i.clamp(1, res - 2), j.clamp(1, res - 2)  # fit centre, moved inward at a border
        fit_i = _log_quadratic(plane[frame, mid_i - 1, j], plane[frame, mid_i, j], plane[frame, mid_i + 1, j])
        fit_j = _log_quadratic(plane[frame, i, mid_j - 1], plane[frame, i, mid_j], plane[frame, i, mid_j + 1])
        weight = support[frame, v, i, j]
        for axis, mid, fit in ((ax.first, mid_i, fit_i), (ax.second, mid_j, fit_j)):
            estimates[..., v, axis] = mid.to(dtype) + fit[2]
            weights[..., v, axis] = torch.where(weight > MIN_SUPPORT, weight, 0.0)
        fits.append((mid_i, mid_j, fit_i, fit_j))
    total = weights.sum(dim=2)
    point = torch.where(
        total > 0, (estimates * weights).sum(dim=2) / total.clamp_min(1e-12), voxels.to(dtype)
    )

    values = []
    for v, (ax, (mid_i, mid_j, fit_i, fit_j)) in enumerate(zip(axes, fits, strict=True)):
        plane = norm[:, v]
        di = point[..., ax.first] - mid_i.to(dtype)
        dj = point[..., ax.second] - mid_j.to(dtype)
        centre = plane[frame, mid_i, mid_j]
        log_model = centre.clamp_min(torch.finfo(dtype).tiny).log()
        log_model = log_model + fit_i[0] * di + fit_i[1] * di * di + fit_j[0] * dj + fit_j[1] * dj * dj
        model = log_model.exp().clamp(max=MODEL_CAP)
        holds = fit_i[3] & fit_j[3] & (di.abs() <= MODEL_REACH) & (dj.abs() <= MODEL_REACH)
        value = torch.where(holds, model, _bilinear(plane, point[..., ax.first], point[..., ax.second]))
        scale = 1 - background[:, v, None]
        values.append(
            torch.where(scale > 1e-6, (value - background[:, v, None]) / scale.clamp_min(1e-6), 0.0)
        )
    view_support = torch.stack(values, dim=-1).clamp(0.0, MODEL_CAP)

    voting = weights > 0
    high = torch.where(voting, estimates, -torch.inf).amax(dim=2)
    low = torch.where(voting, estimates, torch.inf).amin(dim=2)
    spread = torch.where(voting.sum(dim=2) > 1, high - low, 0.0).amax(dim=-1)
    return point, view_support, spread


def backproject_heatmaps(maps: torch.Tensor, workspace: Workspace) -> BackProjection:
    """Heatmaps (T, V, H, W) >= 0 (any scale per map) -> end-effector positions (T, 3) in the base frame."""
    if not isinstance(maps, torch.Tensor) or not maps.is_floating_point():
        raise ValueError("heatmaps must be a floating torch tensor")
    num_views, res = len(workspace.views), workspace.resolution
    if maps.ndim != 4 or maps.shape[1:] != (num_views, res, res):
        raise ValueError(f"heatmaps must have shape (T, {num_views}, {res}, {res}), got {tuple(maps.shape)}")
    if maps.shape[0] == 0:
        raise ValueError("heatmaps hold no frames")
    low, high = torch.aminmax(maps)  # NaN propagates into both
    if not (torch.isfinite(low) and torch.isfinite(high)):
        raise ValueError("heatmaps contain NaN or infinite values")
    if low < 0:
        raise ValueError("heatmaps must be non-negative")
    axes = _view_axes(workspace)
    maps = _planes(maps.to(torch.float32), axes)
    peak = maps.amax(dim=(-2, -1), keepdim=True)
    norm = maps * torch.where(peak > 0, 1 / peak.clamp_min(torch.finfo(maps.dtype).tiny), 0.0)
    stride = max(1, res // BACKGROUND_SAMPLES)
    background = norm[..., ::stride, ::stride].flatten(2).median(dim=2).values  # (T, V)
    scale = (1 - background)[..., None, None]
    inv_scale = torch.where(scale > 1e-6, 1 / scale.clamp_min(1e-6), 0.0)
    support = (norm - background[..., None, None]).mul_(inv_scale).clamp_min_(0.0)

    voxels = _fine_voxels(support, axes, _candidates(support, axes))
    points, view_support, spread = _refine(norm, support, background, axes, voxels)

    best = view_support.mean(dim=-1).argmax(dim=1)  # (T,)
    frame = torch.arange(maps.shape[0], device=maps.device)
    point, chosen_support = points[frame, best], view_support[frame, best]
    lower = torch.as_tensor(workspace.lower, dtype=maps.dtype, device=maps.device)
    upper = torch.as_tensor(workspace.upper, dtype=maps.dtype, device=maps.device)
    positions = torch.minimum(torch.maximum(lower + (point + 0.5) * workspace.pixel_size, lower), upper)
    centre = torch.as_tensor(workspace.center, dtype=maps.dtype, device=maps.device)
    positions = torch.where((chosen_support > 0).any(dim=-1, keepdim=True), positions, centre)
    confidence = chosen_support.clamp(0.0, 1.0).clamp_min(1e-12).log().mean(dim=-1).exp()
    confidence = torch.where(confidence > 1e-6, confidence, 0.0)
    return BackProjection(
        positions=positions,
        confidence=confidence,
        support=chosen_support,
        view_spread=spread[frame, best] * workspace.pixel_size,
    )
