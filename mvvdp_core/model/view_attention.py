"""View attention: tokens of the same latent frame attend across all views (paper 3.2, Fig. 2b).

Two styles, chosen by MVVDPConfig.view_attention_style:

- "plain": pre-norm multi-head attention whose queries and keys see a learned view embedding and a fixed 2-D
  sinusoid of the latent pixel; the output projection starts at zero (identity at initialisation), no gate.
  For models trained from scratch, and the layout of every checkpoint written before the "wan" style existed.
- "wan": the structure of the block's own self-attention (q/k RMS norms, Wan's 3-D rotary embedding with the
  view index on the time axis, so the V views of one frame look like a V-frame clip to it), initialised from
  the block's pretrained self-attention; its output goes through a per-channel gate that starts at zero, so
  the untrained multi-view model is the pretrained model run on each view.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

VIEW_ATTENTION_STYLES = ("plain", "wan")


@dataclass(frozen=True)
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


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding on interleaved channel pairs (Wan's convention): x (N, S, heads, D), cos and sin
    (1, S, 1, D) with each frequency repeated for both members of a pair."""
    pairs = x.float().unflatten(-1, (-1, 2))
    even, odd = pairs[..., 0], pairs[..., 1]
    c, s = cos[..., 0::2].float(), sin[..., 1::2].float()
    return torch.stack([even * c - odd * s, even * s + odd * c], -1).flatten(-2).type_as(x)


class ViewAttention(nn.Module):
    """Multi-head self-attention over the V*H*W tokens of one latent frame, added to its input.

    tokens (B*V, T*H*W, C) -> same shape. `rotary` ((1, V*H*W, 1, D) cos and sin) is required by the "wan"
    style and ignored by the "plain" one.
    """

    def __init__(
        self, dim: int, num_heads: int, num_views: int, eps: float = 1e-6, style: str = "plain"
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"view attention width {dim} is not divisible by {num_heads} heads")
        if style not in VIEW_ATTENTION_STYLES:
            raise ValueError(f"view attention style must be one of {VIEW_ATTENTION_STYLES}, got {style!r}")
        self.num_heads = num_heads
        self.style = style
        self.view_embedding = nn.Parameter(torch.randn(num_views, dim) * 0.02)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        if style == "plain":
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)
        else:
            nn.init.zeros_(self.view_embedding)
            self.norm_q = nn.RMSNorm(dim, eps=eps)
            self.norm_k = nn.RMSNorm(dim, eps=eps)
            self.gate = nn.Parameter(torch.zeros(dim))

    @torch.no_grad()
    def init_from_self_attention(self, attention: nn.Module) -> None:
        """Copy q, k, v, output projections and q/k norms from a Wan block's self-attention ("wan" style)."""
        if self.style != "wan":
            raise ValueError("only the 'wan' view attention style mirrors Wan's self-attention")
        if attention.heads != self.num_heads:
            raise ValueError(f"self-attention has {attention.heads} heads, view attention {self.num_heads}")
        projections = (attention.to_q, attention.to_k, attention.to_v)
        self.qkv.weight.copy_(torch.cat([_weight(p) for p in projections]))
        self.qkv.bias.copy_(torch.cat([_bias(p) for p in projections]))
        self.out.weight.copy_(_weight(attention.to_out[0]))
        self.out.bias.copy_(_bias(attention.to_out[0]))
        self.norm_q.weight.copy_(attention.norm_q.weight)
        self.norm_k.weight.copy_(attention.norm_k.weight)

    def forward(
        self,
        tokens: torch.Tensor,
        layout: TokenLayout,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        bv, seq, dim = tokens.shape
        v, t, hw = layout.views, layout.frames, layout.tokens_per_frame
        if bv % v or seq != t * hw:
            raise ValueError(f"tokens {tuple(tokens.shape)} do not match layout {layout}")
        if v != len(self.view_embedding):
            raise ValueError(f"layout has {v} views, the module was built for {len(self.view_embedding)}")
        b = bv // v
        # (B, V, T, HW, C) -> (B, T, V, HW, C) -> (B*T, V*HW, C)
        x = tokens.view(b, v, t, hw, dim).transpose(1, 2).reshape(b * t, v * hw, dim)
        if self.style == "plain":
            position = grid_position_encoding(layout.height, layout.width, dim, x.device).to(x.dtype)
            where = (self.view_embedding[:, None, :] + position[None]).reshape(v * hw, dim)
            qkv = self.qkv(self.norm(x) + where).view(b * t, v * hw, 3, self.num_heads, -1)
            q, k, val = qkv.permute(2, 0, 3, 1, 4)
            attended = F.scaled_dot_product_attention(q, k, val).transpose(1, 2).reshape(b * t, v * hw, dim)
            x = x + self.out(attended)
        else:
            if rotary is None:
                raise ValueError("the 'wan' view attention style needs the rotary embedding of the view grid")
            where = self.view_embedding.to(x.dtype).repeat_interleave(hw, 0)
            q, k, val = self.qkv(self.norm(x) + where).chunk(3, dim=-1)
            q = rotate(self.norm_q(q).unflatten(-1, (self.num_heads, -1)), *rotary)
            k = rotate(self.norm_k(k).unflatten(-1, (self.num_heads, -1)), *rotary)
            val = val.unflatten(-1, (self.num_heads, -1))
            attended = F.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), val.transpose(1, 2)
            ).transpose(1, 2).reshape(b * t, v * hw, dim)
            x = x + self.gate.to(x.dtype) * self.out(attended)
        return x.view(b, t, v, hw, dim).transpose(1, 2).reshape(bv, seq, dim)


def _weight(linear: nn.Module) -> torch.Tensor:
    """A linear layer's weight, also when peft has wrapped it (base_layer holds the original)."""
    return getattr(linear, "base_layer", linear).weight


def _bias(linear: nn.Module) -> torch.Tensor:
    return getattr(linear, "base_layer", linear).bias
