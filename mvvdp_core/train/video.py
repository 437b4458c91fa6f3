"""Video-model objective (paper 3.4, appendix A): flow matching on the future latents of 2R views.

The R RGB views and R colourised heatmap views of a sample are encoded by the (frozen) VAE and stacked on
the view axis, RGB first. Future latent frames are noised at a sampled training timestep while the condition
frame stays clean; the transformer predicts the velocity (noise - clean) and the loss is
rgb_weight * MSE(RGB views) + (1 - rgb_weight) * MSE(heatmap views) over the future frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

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


def video_loss(
    transformer: MultiViewWanTransformer | torch.nn.Module,
    latents: torch.Tensor,
    text: torch.Tensor,
    num_train_timesteps: int,
    flow_shift: float,
    rgb_weight: float = 0.5,
    generator: torch.Generator | None = None,
) -> VideoLoss:
    """Flow-matching loss on latents (B, 2R, C, f, h, w) with text embeddings (B, L, D)."""
    batch, views = latents.shape[:2]
    if views % 2:
        raise ValueError(f"latents need RGB and heatmap views in equal numbers, got {views} views")
    sigmas = sample_training_sigmas(batch, num_train_timesteps, flow_shift, generator, latents.device)
    noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32).to(latents)
    noisy, target, mask = training_target(latents, noise, sigmas)
    velocity = transformer(noisy, sigma_to_timestep(sigmas, num_train_timesteps), text)
    squared = (velocity.float() - target.float()).square() * mask
    per_view = squared.sum(dim=(0, 2, 3, 4, 5)) / mask.sum(dim=(0, 2, 3, 4, 5))  # (2R,)
    rgb, heat = per_view[: views // 2].mean(), per_view[views // 2 :].mean()
    return VideoLoss(rgb_weight * rgb + (1 - rgb_weight) * heat, rgb.detach(), heat.detach())
