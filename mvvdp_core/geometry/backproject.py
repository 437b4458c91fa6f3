"""Back-projection of per-view heatmaps to 3-D positions (paper appendix B.2) with sub-voxel refinement.

The cube is discretised into a grid; the views' (max-normalised) heatmaps are averaged at every grid point
and the best grid point is kept. Views are axis-aligned, so each view's map sampled on the grid depends on two
base axes only: the 3-D average is a broadcast sum of 2-D grids. The grid point is then refined per view with
a 3-point log-parabola fit per image axis around the peak pixel (exact for a Gaussian), and each base axis is
the mean of the estimates of the views that see it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mvvdp_core.geometry.workspace import VIEW_ROTATIONS, Workspace

FRAME_CHUNK = 8
PEAK_SEARCH_REACH = 3  # pixels around the grid point's projection searched for the peak pixel
MIN_SUPPORT = 0.05  # a view votes for an axis only if its normalised map reaches this near the chosen point


@dataclass
class BackProjection:
    """positions (T, 3) base frame; peak (T,) mean normalised view value there (0..1, sharpness);
    view_spread (T,) metres, largest disagreement between the views' own peaks on a shared axis."""

    positions: torch.Tensor
    peak: torch.Tensor
    view_spread: torch.Tensor


def _view_axes(workspace: Workspace) -> list[tuple[int, int, int]]:
    """Per view the base axes of (image right, image down, viewing direction)."""
    return [tuple(int(abs(row).argmax()) for row in VIEW_ROTATIONS[name]) for name in workspace.views]


def _interp_matrix(coords: torch.Tensor, size: int) -> torch.Tensor:
    """(G, size) linear interpolation weights sampling pixel-centred data at continuous coordinates (G,)."""
    pos = (coords - 0.5).clamp(0, size - 1)
    lower = pos.floor().clamp(max=size - 2).to(torch.int64)
    frac = (pos - lower).unsqueeze(1)
    weights = torch.zeros(coords.shape[0], size, dtype=coords.dtype, device=coords.device)
    weights.scatter_(1, lower.unsqueeze(1), 1 - frac)
    weights.scatter_add_(1, (lower + 1).unsqueeze(1), frac)
    return weights


def _grid_average(
    norm: torch.Tensor, workspace: Workspace, grid_res: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best grid point per frame: (T, 3) indices along base x, y, z and the averaged value (T,)."""
    frames, num_views = norm.shape[:2]
    lower = torch.as_tensor(workspace.lower, dtype=norm.dtype, device=norm.device)
    steps = (torch.arange(grid_res, dtype=norm.dtype, device=norm.device) + 0.5) * (workspace.edge / grid_res)
    diagonal = lower + steps.unsqueeze(1)  # (G, 3): grid coordinate i on every axis
    coords = workspace.to_view(diagonal)  # (G, V, 3); column depends on the right axis only, row on down
    best_index = torch.empty(frames, 3, dtype=torch.int64, device=norm.device)
    best_value = torch.empty(frames, dtype=norm.dtype, device=norm.device)
    axes = _view_axes(workspace)
    for start in range(0, frames, FRAME_CHUNK):
        chunk = norm[start : start + FRAME_CHUNK]
        volume = torch.zeros(
            (chunk.shape[0], grid_res, grid_res, grid_res), dtype=norm.dtype, device=norm.device
        )
        for v, (right_axis, down_axis, forward_axis) in enumerate(axes):
            rows = _interp_matrix(coords[:, v, 1], norm.shape[-2])
            cols = _interp_matrix(coords[:, v, 0], norm.shape[-1])
            plane = rows @ chunk[:, v] @ cols.T  # (t, G_down, G_right)
            if down_axis > right_axis:
                plane = plane.transpose(1, 2)
            volume += plane.unsqueeze(1 + forward_axis)
        flat_value, flat_index = volume.flatten(1).max(dim=1)
        best_value[start : start + chunk.shape[0]] = flat_value / num_views
        idx = torch.stack(torch.unravel_index(flat_index, (grid_res,) * 3), dim=1)
        best_index[start : start + chunk.shape[0]] = idx
    return best_index, best_value


def _log_parabola(left: torch.Tensor, centre: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Vertex offset (clamped to +-1.5) of the parabola through the logs of three equally spaced samples."""
    tiny = torch.finfo(centre.dtype).tiny
    la, lb, lc = (x.clamp_min(tiny).log() for x in (left, centre, right))
    curvature = la - 2 * lb + lc
    offset = 0.5 * (la - lc) / torch.where(curvature < 0, curvature, -torch.ones_like(curvature))
    return torch.where(curvature < 0, offset, torch.zeros_like(offset)).clamp(-1.5, 1.5)


def _subpixel_peak(
    image: torch.Tensor, col: torch.Tensor, row: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sub-pixel (column, row) and value of the peak pixel near integer pixel (col, row); image (T, H, W)."""
    frames, height, width = image.shape
    frame = torch.arange(frames, device=image.device)
    reach = torch.arange(-PEAK_SEARCH_REACH, PEAK_SEARCH_REACH + 1, device=image.device)
    rows = (row.unsqueeze(1) + reach).clamp(0, height - 1)  # (T, S)
    cols = (col.unsqueeze(1) + reach).clamp(0, width - 1)
    window = image[frame[:, None, None], rows[:, :, None], cols[:, None, :]]  # (T, S, S)
    best_value, best = window.flatten(1).max(dim=1)
    span = reach.numel()
    peak_row = rows[frame, best // span]
    peak_col = cols[frame, best % span]
    # Fit on the three samples centred on the peak, moved inward at an image border.
    mid_row = peak_row.clamp(1, height - 2)
    mid_col = peak_col.clamp(1, width - 2)
    row_offset = _log_parabola(
        image[frame, mid_row - 1, peak_col],
        image[frame, mid_row, peak_col],
        image[frame, mid_row + 1, peak_col],
    )
    col_offset = _log_parabola(
        image[frame, peak_row, mid_col - 1],
        image[frame, peak_row, mid_col],
        image[frame, peak_row, mid_col + 1],
    )
    sub_row = mid_row.to(image.dtype) + 0.5 + row_offset
    sub_col = mid_col.to(image.dtype) + 0.5 + col_offset
    return sub_col, sub_row, best_value


def _view_estimates(
    norm: torch.Tensor, workspace: Workspace, coords: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per view the base point (T, V, 3) of its refined peak near coords (T, V, 3) and the peak value (T, V).

    Only the two base axes a view sees are meaningful in its estimate.
    """
    res = workspace.resolution
    estimates, values = [], []
    for v in range(norm.shape[1]):
        col = coords[:, v, 0].floor().clamp(0, res - 1).to(torch.int64)
        row = coords[:, v, 1].floor().clamp(0, res - 1).to(torch.int64)
        sub_col, sub_row, value = _subpixel_peak(norm[:, v], col, row)
        view_coords = coords.clone()
        view_coords[:, v, 0], view_coords[:, v, 1] = sub_col, sub_row
        estimates.append(workspace.from_view(view_coords)[:, v])
        values.append(value)
    return torch.stack(estimates, dim=1), torch.stack(values, dim=1)


def _sample(image: torch.Tensor, col: torch.Tensor, row: torch.Tensor) -> torch.Tensor:
    """Bilinear value of pixel-centred images (T, H, W) at continuous (col, row) per frame."""
    frames, height, width = image.shape
    frame = torch.arange(frames, device=image.device)
    r = (row - 0.5).clamp(0, height - 1)
    c = (col - 0.5).clamp(0, width - 1)
    r0 = r.floor().clamp(max=height - 2).to(torch.int64)
    c0 = c.floor().clamp(max=width - 2).to(torch.int64)
    fr, fc = r - r0, c - c0
    top = image[frame, r0, c0] * (1 - fc) + image[frame, r0, c0 + 1] * fc
    bottom = image[frame, r0 + 1, c0] * (1 - fc) + image[frame, r0 + 1, c0 + 1] * fc
    return top * (1 - fr) + bottom * fr


def backproject_heatmaps(
    maps: torch.Tensor, workspace: Workspace, grid_resolution: int = 128
) -> BackProjection:
    """Heatmaps (T, V, H, W) >= 0 (any scale per map) -> end-effector positions (T, 3) in the base frame."""
    if not isinstance(maps, torch.Tensor) or not maps.is_floating_point():
        raise ValueError("heatmaps must be a floating torch tensor")
    num_views, res = len(workspace.views), workspace.resolution
    if maps.ndim != 4 or maps.shape[1:] != (num_views, res, res):
        raise ValueError(f"heatmaps must have shape (T, {num_views}, {res}, {res}), got {tuple(maps.shape)}")
    if maps.shape[0] == 0:
        raise ValueError("heatmaps hold no frames")
    if not torch.isfinite(maps).all():
        raise ValueError("heatmaps contain NaN or infinite values")
    if bool((maps < 0).any()):
        raise ValueError("heatmaps must be non-negative")
    if int(grid_resolution) != grid_resolution or grid_resolution < 2:
        raise ValueError(f"grid_resolution must be an integer >= 2, got {grid_resolution!r}")
    maps = maps.to(torch.float32)
    peak = maps.amax(dim=(-2, -1), keepdim=True)
    norm = torch.where(peak > 0, maps / peak.clamp_min(torch.finfo(maps.dtype).tiny), torch.zeros_like(maps))

    grid_index, _ = _grid_average(norm, workspace, int(grid_resolution))
    lower = torch.as_tensor(workspace.lower, dtype=maps.dtype, device=maps.device)
    grid_point = lower + (grid_index.to(maps.dtype) + 0.5) * (workspace.edge / grid_resolution)
    grid_coords = workspace.to_view(grid_point)  # (T, V, 3)

    seen = torch.ones(num_views, 3, dtype=torch.bool, device=maps.device)
    for v, (_, _, forward_axis) in enumerate(_view_axes(workspace)):
        seen[v, forward_axis] = False

    # Position: each view's peak next to the best grid point; views with no mass there do not vote.
    estimates, support = _view_estimates(norm, workspace, grid_coords)
    votes = seen & (support > MIN_SUPPORT).unsqueeze(-1)  # (T, V, 3)
    counts = votes.sum(dim=1)
    total = torch.where(votes, estimates, torch.zeros_like(estimates)).sum(dim=1)
    positions = torch.where(counts > 0, total / counts.clamp_min(1), grid_point)

    # Spread: where each view's own global peak puts the shared axes.
    flat_peak = norm.flatten(2).argmax(dim=2)  # (T, V)
    peak_coords = grid_coords.clone()
    peak_coords[..., 0] = (flat_peak % res).to(maps.dtype) + 0.5
    peak_coords[..., 1] = (flat_peak // res).to(maps.dtype) + 0.5
    own, own_value = _view_estimates(norm, workspace, peak_coords)
    has_peak = seen & (own_value > 0).unsqueeze(-1)
    upper_est = torch.where(has_peak, own, torch.full_like(own, -math.inf)).amax(dim=1)
    lower_est = torch.where(has_peak, own, torch.full_like(own, math.inf)).amin(dim=1)
    shared = has_peak.sum(dim=1) > 1
    spread = torch.where(shared, upper_est - lower_est, torch.zeros_like(upper_est)).amax(dim=1)

    coords = workspace.to_view(positions)  # (T, V, 3)
    values = torch.stack([_sample(norm[:, v], coords[:, v, 0], coords[:, v, 1]) for v in range(num_views)], 1)
    return BackProjection(positions=positions, peak=values.mean(dim=1), view_spread=spread)
