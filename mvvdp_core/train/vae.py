"""Fitting the video VAE, only for models built without a pretrained one (tiny configs).

The paper's VAE is Wan2.2's pretrained one, frozen throughout. A tiny random model has no such VAE, and an
untrained decoder cannot turn latents back into heatmaps, so before the video model is trained the tiny VAE
is fitted as an autoencoder on short clips (1 + temporal compression frames, covering both its first-frame and
its compressed paths) of the RGB and heatmap views. Pixels on the heatmap blob get a larger weight: they are
few, and the positions are read from them.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from tqdm import tqdm

from mvvdp_core.model.vae import VideoVAE
from mvvdp_core.train.video import sample_videos

JET_BACKGROUND = (0.0, 0.0, 0.5)  # colour of a zero heatmap value


def blob_weights(videos: torch.Tensor, num_heat_views: int, blob_weight: float) -> torch.Tensor:
    """Per-pixel weights (B, V, F, 1, H, W): blob_weight + 1 on heatmap pixels off the background colour."""
    heat = videos[:, -num_heat_views:]
    background = torch.tensor(JET_BACKGROUND, dtype=videos.dtype, device=videos.device).view(1, 1, 1, 3, 1, 1)
    blob = ((heat - background).abs().sum(3, keepdim=True) > 0.05).to(videos.dtype)
    ones = torch.ones_like(videos[:, : videos.shape[1] - num_heat_views, :, :1])
    return torch.cat([ones, 1 + blob_weight * blob], dim=1)


def fit_vae(
    vae: VideoVAE,
    batches: Iterator[dict[str, torch.Tensor]],
    steps: int,
    lr: float = 1e-3,
    blob_weight: float = 50.0,
    generator: torch.Generator | None = None,
    progress: bool = True,
) -> list[float]:
    """Fit the VAE on random clips of the batches' videos; returns the loss per step. Leaves it frozen.

    Each step reconstructs one random RGB view and one random heatmap view of each sample (the VAE treats
    views independently, so this only thins the batch).
    """
    if steps < 0:
        raise ValueError(f"VAE steps must be >= 0, got {steps}")
    device = next(vae.parameters()).device
    vae.train()
    for param in vae.parameters():
        param.requires_grad_(True)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    clip = 1 + vae.temporal_compression
    losses = []
    for _ in tqdm(range(steps), desc="fit VAE", disable=not progress):
        videos = sample_videos(next(batches)).to(device=device, dtype=vae.dtype)  # (B, 2R, 1 + F, 3, H, W)
        frames = videos.shape[2]
        start = int(torch.randint(0, max(frames - clip, 0) + 1, (1,), generator=generator))
        num_rgb = videos.shape[1] // 2
        pick = torch.randint(0, num_rgb, (2,), generator=generator)
        videos = videos[:, [int(pick[0]), num_rgb + int(pick[1])], start : start + clip]
        weights = blob_weights(videos, 1, blob_weight)
        decoded = vae.decode(vae.encode(videos))
        loss = (weights * (decoded - videos).square()).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    vae.eval()
    for param in vae.parameters():
        param.requires_grad_(False)
    return losses
