"""End-effector heatmaps per view (paper eq. 1) and their jet-colormap RGB encoding for the video VAE."""

from __future__ import annotations

import math

import numpy as np
import torch

from mvvdp_core.geometry.workspace import Workspace

# Jet colormap as piecewise-linear channels: (position, value) breakpoints per channel.
_JET_SEGMENTS = {
    "red": ((0.0, 0.0), (0.35, 0.0), (0.66, 1.0), (0.89, 1.0), (1.0, 0.5)),
    "green": ((0.0, 0.0), (0.125, 0.0), (0.375, 1.0), (0.64, 1.0), (0.91, 0.0), (1.0, 0.0)),
    "blue": ((0.0, 0.5), (0.11, 1.0), (0.34, 1.0), (0.65, 0.0), (1.0, 0.0)),
}


def _jet_polyline() -> tuple[np.ndarray, np.ndarray]:
    """Vertices of the jet curve in RGB space: positions (K,) and colours (K, 3), linear in between."""
    knots = sorted({pos for segs in _JET_SEGMENTS.values() for pos, _ in segs})
    positions = np.asarray(knots, dtype=np.float64)
    rgb = np.stack(
        [np.interp(positions, [p for p, _ in segs], [v for _, v in segs]) for segs in _JET_SEGMENTS.values()],
        axis=1,
    )
    return positions, rgb


JET_POSITIONS, JET_COLORS = _jet_polyline()


def ee_heatmaps(
    positions: torch.Tensor | np.ndarray, workspace: Workspace, sigma: float = 1.5, truncate: float = 3.0
) -> torch.Tensor:
    """Truncated Gaussian heatmaps (..., V, H, W) around the projected end-effector positions (..., 3).

    sigma is in pixels; values farther than `truncate` sigmas from the projected point are zero (the
    probability threshold tau of eq. 1). Each map sums to 1.
    """
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a positive number of pixels, got {sigma!r}")
    if not (math.isfinite(truncate) and truncate > 0):
        raise ValueError(f"truncate must be a positive number of sigmas, got {truncate!r}")
    pos = torch.as_tensor(positions)
    if pos.ndim < 1 or pos.shape[-1] != 3 or not pos.is_floating_point():
        raise ValueError(f"positions must be floating (..., 3), got {tuple(pos.shape)} {pos.dtype}")
    if not torch.isfinite(pos).all():
        raise ValueError("positions contain NaN or infinite values")
    pos = pos.to(torch.float32)
    if not bool(workspace.contains(pos).all()):
        raise ValueError("end-effector position outside the workspace cube")
    coords = workspace.to_view(pos)  # (..., V, 3)
    centres = torch.arange(workspace.resolution, dtype=torch.float32, device=pos.device) + 0.5
    dx2 = (centres - coords[..., 0:1]).square()  # (..., V, W)
    dy2 = (centres - coords[..., 1:2]).square()  # (..., V, H)
    d2 = dy2.unsqueeze(-1) + dx2.unsqueeze(-2)  # (..., V, H, W)
    maps = torch.exp(-d2 / (2 * sigma * sigma))
    maps = torch.where(d2 <= (truncate * sigma) ** 2, maps, torch.zeros_like(maps))
    total = maps.sum(dim=(-2, -1), keepdim=True)
    if not bool((total > 0).all()):
        raise ValueError(f"truncate * sigma = {truncate * sigma} px leaves an empty heatmap; raise it")
    return maps / total


def _check_maps(maps: torch.Tensor, name: str, channels: int | None = None) -> None:
    if not isinstance(maps, torch.Tensor) or not maps.is_floating_point():
        raise ValueError(f"{name} must be a floating torch tensor")
    if maps.ndim < 2 + (channels is not None) or (channels is not None and maps.shape[-3] != channels):
        shape = "(..., 3, H, W)" if channels else "(..., H, W)"
        raise ValueError(f"{name} must have shape {shape}, got {tuple(maps.shape)}")
    if not torch.isfinite(maps).all():
        raise ValueError(f"{name} contain NaN or infinite values")


def colorize_heatmaps(maps: torch.Tensor) -> torch.Tensor:
    """Heatmaps (..., H, W) >= 0 -> jet RGB (..., 3, H, W) in [0, 1], each map scaled by its own maximum."""
    _check_maps(maps, "heatmaps")
    if bool((maps < 0).any()):
        raise ValueError("heatmaps must be non-negative")
    peak = maps.amax(dim=(-2, -1), keepdim=True)
    value = torch.where(peak > 0, maps / peak.clamp_min(torch.finfo(maps.dtype).tiny), torch.zeros_like(maps))
    knots = torch.as_tensor(JET_POSITIONS, dtype=maps.dtype, device=maps.device)
    colors = torch.as_tensor(JET_COLORS, dtype=maps.dtype, device=maps.device)
    seg = (torch.bucketize(value, knots, right=True) - 1).clamp(0, len(knots) - 2).flatten()
    offset = value.flatten() - knots.index_select(0, seg)
    slopes = (colors[1:] - colors[:-1]) / (knots[1:] - knots[:-1]).unsqueeze(1)  # (K-1, 3)
    channels = [
        (colors[:-1, c].index_select(0, seg) + slopes[:, c].index_select(0, seg) * offset).reshape(maps.shape)
        for c in range(3)
    ]
    return torch.stack(channels, dim=-3).clamp(0.0, 1.0)


def decolorize_heatmaps(rgb: torch.Tensor) -> torch.Tensor:
    """Jet RGB (..., 3, H, W) -> values (..., H, W) in [0, 1]: position of the nearest jet colour."""
    _check_maps(rgb, "colour heatmaps", channels=3)
    pixels = rgb.movedim(-3, -1).reshape(-1, 3)
    # Exact background colour (jet at 0) decodes to 0 directly; heatmaps are mostly background.
    zero_colour = torch.as_tensor(JET_COLORS[0], dtype=rgb.dtype, device=rgb.device)
    todo = (pixels != zero_colour).any(dim=-1).nonzero().squeeze(1)
    values = torch.zeros(pixels.shape[0], dtype=rgb.dtype, device=rgb.device)
    for chunk in todo.split(DECODE_CHUNK):
        # float64: the expanded distances below lose too much to cancellation in float32.
        values[chunk] = _curve_position(pixels[chunk].double()).to(rgb.dtype)
    return values.reshape(rgb.shape[:-3] + rgb.shape[-2:])


DECODE_CHUNK = 1 << 18


def _curve_position(pixels: torch.Tensor) -> torch.Tensor:
    """Colours (P, 3) -> position in [0, 1] of the nearest point on the jet polyline."""
    knots = torch.as_tensor(JET_POSITIONS, dtype=pixels.dtype, device=pixels.device)
    colors = torch.as_tensor(JET_COLORS, dtype=pixels.dtype, device=pixels.device)
    start, step = colors[:-1], colors[1:] - colors[:-1]  # (K-1, 3) segments
    # A flat stretch of jet (0.11..0.125) is a zero-length segment: decode it to its start.
    step_len2 = step.square().sum(-1).clamp_min(1e-12)
    start_dot_step = (start * step).sum(-1)
    q_dot_step = pixels @ step.T  # (P, K-1)
    t = ((q_dot_step - start_dot_step) / step_len2).clamp(0.0, 1.0)
    # |q - start - t step|^2 without the |q|^2 term shared by all segments.
    dist2 = -2 * (pixels @ start.T) + start.square().sum(-1) - 2 * t * (q_dot_step - start_dot_step)
    dist2 = dist2 + t.square() * step_len2
    seg = dist2.argmin(dim=-1, keepdim=True)
    t_best = t.gather(-1, seg).squeeze(-1)
    seg = seg.squeeze(-1)
    return knots[seg] + t_best * (knots[seg + 1] - knots[seg])
