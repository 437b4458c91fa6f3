"""View attention: tokens of the same latent frame attend across all views (paper 3.2, Fig. 2b)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class TokenLayout:
    """How a batch of per-view token sequences (B*V, T*H*W, C) is laid out."""

    views: int
    frames: int
    height: int
    width: int

    @property
    def tokens_per_frame(self) -> int:
        return self.height * self.width


def grid_position_encoding(height: int, width: int, dim: int, device: torch.device) -> torch.Tensor:
    """Fixed 2-D sinusoidal encoding (H*W, dim): half the channels encode the row, half the column."""
    if dim % 4:
        raise ValueError(f"position encoding width {dim} must be divisible by 4")
    quarter = dim // 4
    freqs = 1.0 / (10000 ** (torch.arange(quarter, device=device, dtype=torch.float32) / quarter))
    rows = torch.arange(height, device=device, dtype=torch.float32)[:, None] * freqs
    cols = torch.arange(width, device=device, dtype=torch.float32)[:, None] * freqs
    row_enc = torch.cat([rows.sin(), rows.cos()], -1)[:, None, :].expand(height, width, 2 * quarter)
    col_enc = torch.cat([cols.sin(), cols.cos()], -1)[None, :, :].expand(height, width, 2 * quarter)
    return torch.cat([row_enc, col_enc], -1).reshape(height * width, dim)


class ViewAttention(nn.Module):
    """Pre-norm multi-head self-attention over the V*H*W tokens of one latent frame, with a residual.

    Queries and keys see which view (learned embedding) and which latent pixel (fixed 2-D sinusoid) a
    token comes from. The output projection starts at zero, so at initialisation the module is the identity.
    """

    def __init__(self, dim: int, num_heads: int, num_views: int, eps: float = 1e-6) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"view attention width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.view_embedding = nn.Parameter(torch.randn(num_views, dim) * 0.02)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, tokens: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        """tokens (B*V, T*H*W, C) -> same shape, after attention across views within each frame."""
        bv, seq, dim = tokens.shape
        v, t, hw = layout.views, layout.frames, layout.tokens_per_frame
        if bv % v or seq != t * hw:
            raise ValueError(f"tokens {tuple(tokens.shape)} do not match layout {layout}")
        if v != len(self.view_embedding):
            raise ValueError(f"layout has {v} views, the module was built for {len(self.view_embedding)}")
        b = bv // v
        # (B, V, T, HW, C) -> (B, T, V, HW, C) -> (B*T, V*HW, C)
        x = tokens.view(b, v, t, hw, dim).transpose(1, 2).reshape(b * t, v * hw, dim)
        position = grid_position_encoding(layout.height, layout.width, dim, x.device).to(x.dtype)
        where = (self.view_embedding[:, None, :] + position[None]).reshape(v * hw, dim)
        q, k, val = (
            self.qkv(self.norm(x) + where).view(b * t, v * hw, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        )
        attended = F.scaled_dot_product_attention(q, k, val).transpose(1, 2).reshape(b * t, v * hw, dim)
        x = x + self.out(attended)
        return x.view(b, t, v, hw, dim).transpose(1, 2).reshape(bv, seq, dim)
