"""Video-model objective (paper 3.4, appendix A): flow matching on the future latents of 2R views.

The R RGB views and R colourised heatmap views of a sample are encoded by the (frozen) VAE and stacked on
the view axis, RGB first. Future latent frames are noised at a sampled training timestep while the condition
frame stays clean; the transformer predicts the velocity (noise - clean) and the loss is
rgb_weight * MSE(RGB views) + (1 - rgb_weight) * MSE(heatmap views) over the future frames.

The heatmap views are mostly background: the blob, the only part that carries the end-effector path, covers
one or two latent pixels of each frame, so an unweighted MSE barely tells a path to the target from an
average path. `heatmap_blob_weight` > 0 weighs each heatmap latent pixel by 1 + weight * (how far its clean
latent lies from an empty heatmap's latent there, 0..1), normalised by the total weight: the heatmap term
then measures mostly where the blob goes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mvvdp_core.geometry.heatmaps import colorize_heatmaps
from mvvdp_core.model.flow import sample_training_sigmas, sigma_to_timestep, training_target
from mvvdp_core.model.transformer import MultiViewWanTransformer
from mvvdp_core.model.vae import VideoVAE


def sample_videos(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Dataset batch -> VAE input (B, 2R, 1 + F, 3, H, W): RGB views then colourised heatmap views."""
    rgb, heat = batch["rgb"], batch["heatmap_rgb"]  # (B, 1 + F, R, 3, H, W)
    if rgb.ndim != 6 or heat.shape != rgb.shape:
        raise ValueError(f"rgb {tuple(rgb.shape)} and heatmap_rgb {tuple(heat.shape)} must be equal 6-D")
    return torch.cat([rgb, heat], dim=2).transpose(1, 2)


@torch.no_grad()
def encode_latents(vae: VideoVAE, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Clean latents (B, 2R, C, f, h, w) of a batch, from the frozen VAE."""
    videos = sample_videos(batch).to(device=next(vae.parameters()).device, dtype=vae.dtype)
    return vae.encode(videos)


@dataclass
class VideoLoss:
    total: torch.Tensor
    rgb: torch.Tensor
    heatmap: torch.Tensor


def blob_emphasis(latents: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """(B, V, 1, f, h, w) in [0, 1]: each heatmap latent pixel's distance from the latent of an empty heatmap
    at the same place (`background`, broadcastable to latents), divided by the frame's largest distance."""
    distance = (latents.float() - background.float()).square().sum(dim=2, keepdim=True).sqrt()
    scale = distance.amax(dim=(-2, -1), keepdim=True)
    return torch.where(scale > 1e-6, distance / scale.clamp_min(1e-6), torch.zeros_like(distance))


@torch.no_grad()
def empty_heatmap_latents(vae: VideoVAE, frames: int, size: int) -> torch.Tensor:
    """Latents (1, 1, C, f, h, w) of a colourised heatmap video without a blob (`frames` frames, size px)."""
    param = next(vae.parameters())
    video = colorize_heatmaps(torch.zeros(1, 1, frames, size, size))
    return vae.encode(video.to(device=param.device, dtype=param.dtype))


def video_loss(
    transformer: MultiViewWanTransformer | torch.nn.Module,
    latents: torch.Tensor,
    text: torch.Tensor,
    num_train_timesteps: int,
    flow_shift: float,
    rgb_weight: float = 0.5,
    generator: torch.Generator | None = None,
    heatmap_blob_weight: float = 0.0,
    heatmap_background: torch.Tensor | None = None,
) -> VideoLoss:
    """Flow-matching loss on latents (B, 2R, C, f, h, w) with text embeddings (B, L, D).

    heatmap_blob_weight > 0 needs heatmap_background, the latents of an empty heatmap
    (`empty_heatmap_latents`)."""
    batch, views = latents.shape[:2]
    if views % 2:
        raise ValueError(f"latents need RGB and heatmap views in equal numbers, got {views} views")
    if heatmap_blob_weight < 0:
        raise ValueError(f"heatmap_blob_weight must be >= 0, got {heatmap_blob_weight}")
    if heatmap_blob_weight > 0 and heatmap_background is None:
        raise ValueError("heatmap_blob_weight > 0 needs the latents of an empty heatmap (heatmap_background)")
    sigmas = sample_training_sigmas(batch, num_train_timesteps, flow_shift, generator, latents.device)
    noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32).to(latents)
    noisy, target, mask = training_target(latents, noise, sigmas)
    velocity = transformer(noisy, sigma_to_timestep(sigmas, num_train_timesteps), text)
    mask = mask.float()
    if heatmap_blob_weight > 0:
        heat = slice(views // 2, views)
        emphasis = blob_emphasis(latents[:, heat], heatmap_background)
        mask[:, heat] = mask[:, heat] * (1 + heatmap_blob_weight * emphasis)
    squared = (velocity.float() - target.float()).square() * mask
    per_view = squared.sum(dim=(0, 2, 3, 4, 5)) / mask.sum(dim=(0, 2, 3, 4, 5))  # (2R,)
    rgb, heat = per_view[: views // 2].mean(), per_view[views // 2 :].mean()
    return VideoLoss(rgb_weight * rgb + (1 - rgb_weight) * heat, rgb.detach(), heat.detach())
