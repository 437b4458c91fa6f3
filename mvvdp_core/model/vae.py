"""Wan VAE wrapper: each view is its own video; latents are normalised with the VAE's channel statistics.

Frames are float in [0, 1] with layout (B, V, F, 3, H, W); latents are (B, V, C, f, h, w) with
f = 1 + (F - 1) / 4. The VAE is causal in time, so the first latent frame depends on frame 0 only and
`encode_condition` of that frame equals the first latent frame of the whole video.
A diffusers model: save_pretrained / from_pretrained write and read a folder whose config.json holds the
Wan VAE's constructor arguments (`vae_config`) and whose weights include the latent statistics.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from diffusers import AutoencoderKLWan, ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config


class VideoVAE(ModelMixin, ConfigMixin):
    """Wan VAE (`vae_config`: AutoencoderKLWan's constructor arguments, a random one when `vae` is not given)
    with the latent statistics as buffers, saved with the weights."""

    ignore_for_config = ["vae"]

    @register_to_config
    def __init__(self, vae_config: dict[str, Any], vae: AutoencoderKLWan | None = None) -> None:
        super().__init__()
        self.vae = AutoencoderKLWan(**vae_config) if vae is None else vae
        cfg = self.vae.config
        self.register_buffer("latents_mean", torch.tensor(cfg.latents_mean).view(1, -1, 1, 1, 1))
        self.register_buffer("latents_std", torch.tensor(cfg.latents_std).view(1, -1, 1, 1, 1))
        self.temporal_compression = int(cfg.scale_factor_temporal)
        self.spatial_compression = int(cfg.scale_factor_spatial)

    def set_latent_statistics(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Per-channel statistics that normalise the latents (also written into the diffusers config)."""
        mean_t = torch.as_tensor(list(mean), dtype=torch.float32)
        std_t = torch.as_tensor(list(std), dtype=torch.float32)
        channels = self.latents_mean.numel()
        if mean_t.shape != (channels,) or std_t.shape != (channels,):
            raise ValueError(f"latent statistics need {channels} values each")
        if not (torch.isfinite(mean_t).all() and torch.isfinite(std_t).all() and (std_t > 0).all()):
            raise ValueError("latent statistics must be finite with std > 0")
        self.latents_mean.copy_(mean_t.view_as(self.latents_mean))
        self.latents_std.copy_(std_t.view_as(self.latents_std))
        self.vae.register_to_config(latents_mean=mean_t.tolist(), latents_std=std_t.tolist())
        stats = {"latents_mean": mean_t.tolist(), "latents_std": std_t.tolist()}
        self.register_to_config(vae_config={**self.config.vae_config, **stats})

    @classmethod
    def from_autoencoder(cls, vae: AutoencoderKLWan) -> VideoVAE:
        """Wrap a built (e.g. pretrained) Wan VAE; its config becomes vae_config."""
        return cls({k: v for k, v in dict(vae.config).items() if not k.startswith("_")}, vae=vae)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    def _check_frames(self, frames: torch.Tensor) -> None:
        if frames.ndim != 6 or frames.shape[3] != 3:
            raise ValueError(f"frames must be (B, V, F, 3, H, W), got {tuple(frames.shape)}")
        if (frames.shape[2] - 1) % self.temporal_compression:
            raise ValueError(
                f"frame count {frames.shape[2]} must be 1 + a multiple of {self.temporal_compression}"
            )
        if frames.shape[-1] % self.spatial_compression or frames.shape[-2] % self.spatial_compression:
            raise ValueError(
                f"frame size {tuple(frames.shape[-2:])} not divisible by {self.spatial_compression}"
            )
        if not torch.isfinite(frames).all():
            raise ValueError("frames contain NaN or infinite values")

    def encode(
        self, frames: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """(B, V, F, 3, H, W) in [0, 1] -> normalised latents (B, V, C, f, h, w) (posterior mean)."""
        self._check_frames(frames)
        b, v = frames.shape[:2]
        video = frames.flatten(0, 1).transpose(1, 2).to(self.dtype) * 2 - 1  # (B*V, 3, F, H, W) in [-1, 1]
        posterior = self.vae.encode(video).latent_dist
        latents = posterior.sample(generator) if sample else posterior.mode()
        latents = (latents - self.latents_mean.to(latents)) / self.latents_std.to(latents)
        return latents.view(b, v, *latents.shape[1:])

    def encode_condition(self, frames: torch.Tensor) -> torch.Tensor:
        """Single frames (B, V, 3, H, W) -> condition latents (B, V, C, 1, h, w)."""
        if frames.ndim != 5:
            raise ValueError(f"condition frames must be (B, V, 3, H, W), got {tuple(frames.shape)}")
        return self.encode(frames.unsqueeze(2))

    def decode(self, latents: torch.Tensor, views: Sequence[int] | None = None) -> torch.Tensor:
        """Latents (B, V, C, f, h, w) -> frames (B, len(views), F, 3, H, W) in [0, 1] for the chosen views."""
        if latents.ndim != 6:
            raise ValueError(f"latents must be (B, V, C, f, h, w), got {tuple(latents.shape)}")
        if views is not None:
            views = list(views)
            if not views or min(views) < 0 or max(views) >= latents.shape[1]:
                raise ValueError(f"views {views} out of range for {latents.shape[1]} views")
            latents = latents[:, views]
        b, v = latents.shape[:2]
        z = latents.flatten(0, 1).to(self.dtype)
        z = z * self.latents_std.to(z) + self.latents_mean.to(z)
        video = self.vae.decode(z, return_dict=False)[0]  # (B*V, 3, F, H, W) in [-1, 1]
        frames = ((video.float() + 1) / 2).clamp(0, 1).transpose(1, 2)
        return frames.reshape(b, v, *frames.shape[1:])
