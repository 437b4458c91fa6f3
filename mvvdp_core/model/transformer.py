"""Multi-view Wan transformer: diffusers' WanTransformer3DModel plus a view-attention module after each block.

Composition only: the base model is used as is; a forward hook on each `base.blocks[i]` passes the block's
output through `view_attention[i]`. The V views of each sample run through the base model as B*V videos.
The condition latent frame is kept clean with Wan2.2-TI2V's per-token timesteps (0 on the first frame).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import WanTransformer3DModel
from torch import nn

from mvvdp_core.model.view_attention import TokenLayout, ViewAttention


class _LayoutState:
    """The token layout of the forward pass in progress (None outside one)."""

    layout: TokenLayout | None = None


class _ViewAttentionHook:
    """Forward hook on a base block: its output goes through one view-attention module.

    A callable object rather than a closure so that copies of the model (copy.deepcopy) hook their own
    modules.
    """

    def __init__(self, attention: ViewAttention, state: _LayoutState) -> None:
        self.attention = attention
        self.state = state

    def __call__(self, _module: nn.Module, _args: Any, output: torch.Tensor) -> torch.Tensor:
        if self.state.layout is None:
            raise RuntimeError("a base block ran outside MultiViewWanTransformer.forward")
        return self.attention(output, self.state.layout)


class MultiViewWanTransformer(nn.Module):
    def __init__(self, base: WanTransformer3DModel, num_views: int, view_attention_heads: int) -> None:
        super().__init__()
        self.base = base
        self.num_views = num_views
        cfg = base.config
        dim = cfg.num_attention_heads * cfg.attention_head_dim
        self.view_attention = nn.ModuleList(
            ViewAttention(dim, view_attention_heads, num_views, eps=cfg.eps) for _ in range(len(base.blocks))
        )
        self.view_attention.to(dtype=next(base.parameters()).dtype)
        self._state = _LayoutState()
        for block, attention in zip(base.blocks, self.view_attention, strict=True):
            block.register_forward_hook(_ViewAttentionHook(attention, self._state))

    @classmethod
    def from_config(cls, transformer_kwargs: dict[str, Any], num_views: int, view_attention_heads: int):
        return cls(WanTransformer3DModel(**transformer_kwargs), num_views, view_attention_heads)

    @property
    def patch_size(self) -> tuple[int, int, int]:
        return tuple(self.base.config.patch_size)

    def token_timesteps(
        self, timestep: torch.Tensor, batch: int, frames: int, height: int, width: int, cond_frames: int
    ) -> torch.Tensor:
        """Per-token timesteps (B*V, F*h*w): `timestep` (B,) on future frames, 0 on condition frames."""
        p_t, p_h, p_w = self.patch_size
        t, h, w = frames // p_t, height // p_h, width // p_w
        per_frame = torch.ones(t, device=timestep.device, dtype=timestep.dtype)
        per_frame[: cond_frames // p_t] = 0
        steps = timestep.view(batch, 1, 1) * per_frame.view(1, t, 1).expand(batch, t, h * w)
        return (
            steps.reshape(batch, 1, t * h * w)
            .expand(batch, self.num_views, -1)
            .reshape(batch * self.num_views, -1)
        )

    def forward(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        text: torch.Tensor,
        cond_frames: int = 1,
    ) -> torch.Tensor:
        """latents (B, V, C, F, H, W), timestep (B,) in [0, 1000], text (B, L, D) -> velocity."""
        if latents.ndim != 6 or latents.shape[1] != self.num_views:
            raise ValueError(f"latents must be (B, {self.num_views}, C, F, H, W), got {tuple(latents.shape)}")
        b, v, c, f, h, w = latents.shape
        timestep = torch.as_tensor(timestep, device=latents.device, dtype=torch.float32).reshape(-1)
        if timestep.numel() == 1:
            timestep = timestep.expand(b)
        if timestep.shape != (b,):
            raise ValueError(f"timestep must be a scalar or (B,) = ({b},), got {tuple(timestep.shape)}")
        if text.ndim != 3 or text.shape[0] not in (1, b):
            raise ValueError(f"text embeddings must be (B, L, D), got {tuple(text.shape)}")
        text = text.expand(b, -1, -1).repeat_interleave(v, dim=0).to(latents.dtype)
        p_t, p_h, p_w = self.patch_size
        self._state.layout = TokenLayout(views=v, frames=f // p_t, height=h // p_h, width=w // p_w)
        try:
            out = self.base(
                hidden_states=latents.reshape(b * v, c, f, h, w),
                timestep=self.token_timesteps(timestep, b, f, h, w, cond_frames),
                encoder_hidden_states=text,
                return_dict=False,
            )[0]
        finally:
            self._state.layout = None
        return out.reshape(b, v, *out.shape[1:])
