"""Operator preview of a predicted chunk: heatmaps over RGB frames, trajectory colours, PNG/GIF files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mvvdp_core.geometry import colorize_heatmaps


def overlay_heatmaps(rgb: torch.Tensor, heatmaps: torch.Tensor, max_alpha: float = 0.7) -> torch.Tensor:
    """Blend jet-coloured heatmaps over RGB frames.

    rgb (..., 3, H, W) in [0, 1]; heatmaps (..., H, W) >= 0 (each map normalised by its own maximum).
    The heatmap's opacity grows with its value, up to max_alpha at the peak. Returns (..., 3, H, W).
    """
    if rgb.shape[-3] != 3 or rgb.shape[:-3] + rgb.shape[-2:] != heatmaps.shape:
        raise ValueError(f"rgb (..., 3, H, W) and heatmaps (..., H, W) must match, got {tuple(rgb.shape)} "
                         f"and {tuple(heatmaps.shape)}")
    maps = heatmaps.float().clamp_min(0)
    peak = maps.flatten(-2).amax(-1)[..., None, None].clamp_min(1e-12)
    alpha = (maps / peak * max_alpha).unsqueeze(-3)
    return (rgb.float() * (1 - alpha) + colorize_heatmaps(maps) * alpha).clamp(0, 1)


def confidence_color(confidence: np.ndarray) -> np.ndarray:
    """Confidence in [0, 1] -> RGB (..., 3) from red (0) through yellow to green (1)."""
    c = np.clip(np.nan_to_num(np.asarray(confidence, dtype=np.float64)), 0.0, 1.0)
    return np.stack([np.clip(2 * (1 - c), 0, 1), np.clip(2 * c, 0, 1), np.zeros_like(c)], axis=-1)


def _to_uint8(frames: torch.Tensor) -> np.ndarray:
    return (frames.detach().float().clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)


def preview_frames(
    rgb_video: torch.Tensor, overlay_video: torch.Tensor, observed: torch.Tensor | None = None
) -> list[np.ndarray]:
    """(V, T, 3, H, W) RGB and overlay videos -> T images (rows*H, V*W, 3) uint8.

    Rows, top to bottom: the observed views (V, 3, H, W) the prediction started from, when given; the
    predicted RGB frame; the predicted heatmap over it.
    """
    if rgb_video.shape != overlay_video.shape or rgb_video.ndim != 5:
        raise ValueError(f"videos must both be (V, T, 3, H, W), got {tuple(rgb_video.shape)} and "
                         f"{tuple(overlay_video.shape)}")
    rows = [rgb_video, overlay_video]
    if observed is not None:
        expected = rgb_video.shape[:1] + rgb_video.shape[2:]
        if observed.shape != expected:
            raise ValueError(f"observed views must be (V, 3, H, W) = {tuple(expected)}, "
                             f"got {tuple(observed.shape)}")
        rows.insert(0, observed.to(rgb_video.dtype).unsqueeze(1).expand_as(rgb_video))
    stacked = torch.stack(rows)  # (R, V, T, 3, H, W)
    frames = stacked.permute(2, 0, 4, 1, 5, 3)  # (T, R, H, V, W, 3)
    t, r, h, v, w, c = frames.shape
    return list(_to_uint8(frames.reshape(t, r * h, v * w, c)))


MIN_PREVIEW_HEIGHT = 600  # pixels


def save_preview(frames: list[np.ndarray], out_dir: str | Path, name: str, fps: float = 10.0) -> list[Path]:
    """Write the frames as an animated GIF plus a PNG of the last frame; returns the paths."""
    if not frames:
        raise ValueError("no preview frames to save")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Small model resolutions are enlarged (nearest neighbour) so that a person can see them.
    scale = max(1, MIN_PREVIEW_HEIGHT // frames[0].shape[0])
    images = [Image.fromarray(f) for f in frames]
    if scale > 1:
        images = [im.resize((im.width * scale, im.height * scale), Image.NEAREST) for im in images]
    gif, png = out / f"{name}.gif", out / f"{name}_last.png"
    images[0].save(gif, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    images[-1].save(png)
    return [gif, png]
