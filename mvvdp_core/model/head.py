"""Rotation and gripper head (paper 3.3, Fig. 2c).

Input: denoised latents of all views (B, 2R, C, f, h, w) (R RGB views then R heatmap views; latent frame 0 is
the condition) and the heatmap peak of every future frame in every view, in image pixels (column, row).
Future latents are upsampled in time to T frames. Per view and frame, a global conv encoder reads the
whole latent (RGB and heatmap latents of that view stacked on channels) and a local conv encoder reads a
patch around the peak; the two are fused and averaged over views. The T frame tokens cross-attend to the
condition latent's tokens, pass a transformer encoder, and two MLPs give per-frame
logits: 3 x bins rotation changes relative to the condition frame and 2 gripper classes (0 closed, 1 open).
A diffusers model: save_pretrained / from_pretrained (config.json holds the constructor arguments).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from torch import nn

from mvvdp_core.model.config import HeadConfig


def _conv_encoder(in_channels: int, channels: tuple[int, ...], width: int, downsample: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    prev = in_channels
    for i, ch in enumerate(channels):
        stride = 2 if downsample and i > 0 else 1
        layers += [nn.Conv2d(prev, ch, 3, stride=stride, padding=1), nn.GroupNorm(min(8, ch), ch), nn.SiLU()]
        prev = ch
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(prev, width)]
    return nn.Sequential(*layers)


class _CrossAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int, ffn_mult: int, dropout: float) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(width)
        self.norm_kv = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.norm_ffn = nn.LayerNorm(width)
        self.ffn = nn.Sequential(
            nn.Linear(width, ffn_mult * width), nn.GELU(), nn.Linear(ffn_mult * width, width)
        )

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        kv = self.norm_kv(context)
        x = x + self.attn(self.norm_q(x), kv, kv, need_weights=False)[0]
        return x + self.ffn(self.norm_ffn(x))


class RotationGripperHead(ModelMixin, ConfigMixin):
    def __init__(
        self,
        head_config: HeadConfig | dict[str, Any],
        latent_channels: int,
        num_rgb_views: int,
        future_frames: int,
        latent_size: int,
        spatial_compression: int,
        rotation_bins: int = 72,
    ) -> None:
        super().__init__()
        cfg = HeadConfig(**head_config) if isinstance(head_config, dict) else head_config
        # Registered by hand: the HeadConfig is stored as a plain dict.
        self.register_to_config(
            head_config=asdict(cfg), latent_channels=latent_channels, num_rgb_views=num_rgb_views,
            future_frames=future_frames, latent_size=latent_size, spatial_compression=spatial_compression,
            rotation_bins=rotation_bins,
        )  # fmt: skip
        self.cfg = cfg
        self.num_rgb_views = num_rgb_views
        self.future_frames = future_frames
        self.latent_size = latent_size
        self.spatial_compression = spatial_compression
        self.rotation_bins = rotation_bins
        width, pair_channels = cfg.width, 2 * latent_channels
        self.global_encoder = _conv_encoder(pair_channels, cfg.conv_channels, width, downsample=True)
        self.local_encoder = _conv_encoder(pair_channels, cfg.conv_channels, width, downsample=False)
        self.fuse = nn.Sequential(nn.Linear(2 * width, width), nn.GELU())
        self.view_embedding = nn.Parameter(torch.zeros(num_rgb_views, width))
        self.time_embedding = nn.Parameter(torch.randn(future_frames, width) * 0.02)
        cond_tokens = 2 * num_rgb_views * latent_size * latent_size
        self.cond_proj = nn.Linear(latent_channels, width)
        self.cond_position = nn.Parameter(torch.randn(cond_tokens, width) * 0.02)
        self.cross = _CrossAttentionBlock(width, cfg.num_heads, cfg.ffn_mult, cfg.dropout)
        layer = nn.TransformerEncoderLayer(
            width,
            cfg.num_heads,
            cfg.ffn_mult * width,
            cfg.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, cfg.num_layers, enable_nested_tensor=False)
        self.norm_out = nn.LayerNorm(width)
        self.rotation_mlp = nn.Sequential(
            nn.Linear(width, width), nn.GELU(), nn.Linear(width, 3 * rotation_bins)
        )
        self.gripper_mlp = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, 2))

    def _local_patches(self, pairs: torch.Tensor, peaks: torch.Tensor) -> torch.Tensor:
        """pairs (N, 2C, h, w), peaks (N, 2) image pixels -> (N, 2C, k, k) bilinear patch around each peak."""
        k = self.cfg.local_patch
        h, w = pairs.shape[-2:]
        centre = peaks / self.spatial_compression  # latent pixel units
        offsets = torch.arange(k, device=pairs.device, dtype=pairs.dtype) - (k - 1) / 2
        cols = centre[:, 0, None] + offsets  # (N, k)
        rows = centre[:, 1, None] + offsets
        grid = torch.stack(
            [
                (2 * cols / w - 1)[:, None, :].expand(-1, k, k),
                (2 * rows / h - 1)[:, :, None].expand(-1, k, k),
            ],
            -1,
        )
        return F.grid_sample(pairs, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def forward(self, latents: torch.Tensor, peaks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """latents (B, 2R, C, f, h, w), peaks (B, T, R, 2) -> logits (B, T, 3, bins), (B, T, 2)."""
        b, v, c, f, h, w = latents.shape
        r, t = self.num_rgb_views, self.future_frames
        if v != 2 * r or f < 2 or (h, w) != (self.latent_size, self.latent_size):
            raise ValueError(
                f"latents {tuple(latents.shape)} do not match {2 * r} views of {self.latent_size}^2"
            )
        if peaks.shape != (b, t, r, 2):
            raise ValueError(f"peaks must be (B, T, R, 2) = ({b}, {t}, {r}, 2), got {tuple(peaks.shape)}")
        if not torch.isfinite(peaks).all():
            raise ValueError("peaks contain NaN or infinite values")
        dtype = self.cond_proj.weight.dtype
        latents = latents.to(dtype)
        future = latents[:, :, :, 1:].flatten(0, 1)
        future = F.interpolate(future, size=(t, h, w), mode="trilinear", align_corners=False)
        # (B, 2R, C, T, h, w) -> (B, T, R, 2C, h, w): RGB and heatmap latents of one view stacked
        future = future.view(b, 2, r, c, t, h, w).permute(0, 4, 2, 1, 3, 5, 6).reshape(b * t * r, 2 * c, h, w)
        global_features = self.global_encoder(future)
        local_features = self.local_encoder(self._local_patches(future, peaks.reshape(-1, 2).to(dtype)))
        fused = self.fuse(torch.cat([global_features, local_features], -1)).view(b, t, r, -1)
        frames = (fused + self.view_embedding).mean(2) + self.time_embedding  # (B, T, width)
        cond = latents[:, :, :, 0].permute(0, 1, 3, 4, 2).reshape(b, v * h * w, c)
        cond = self.cond_proj(cond) + self.cond_position
        x = self.norm_out(self.encoder(self.cross(frames, cond)))
        rotation = self.rotation_mlp(x).view(b, t, 3, self.rotation_bins)
        return rotation, self.gripper_mlp(x)


def head_loss(
    rotation_logits: torch.Tensor,
    gripper_logits: torch.Tensor,
    rotation_bins: torch.Tensor,
    gripper: torch.Tensor,
) -> torch.Tensor:
    """Paper eq. 4: cross-entropy of the three Euler-angle bins plus that of the gripper state.

    Logits (B, T, 3, bins) and (B, T, 2); targets: rotation_bins (B, T, 3) and gripper (B, T), integers.
    """
    if rotation_bins.shape != rotation_logits.shape[:-1] or gripper.shape != gripper_logits.shape[:-1]:
        raise ValueError("targets must match the logits without their class dimension")
    per_angle = [
        F.cross_entropy(rotation_logits[..., i, :].flatten(0, -2).float(), rotation_bins[..., i].flatten())
        for i in range(3)
    ]
    grip = F.cross_entropy(gripper_logits.flatten(0, -2).float(), gripper.flatten())
    return sum(per_angle) + grip
