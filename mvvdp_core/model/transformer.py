"""Multi-view Wan transformer: diffusers' WanTransformer3DModel with a view-attention module after each block.

The V views of each sample run through the base model as B*V videos. Each Wan block and its view attention
form one `MultiViewBlock`, called by this module's own pass over the base model's layers (the base model's
forward is not used), so activation checkpointing and torch.compile see the block and its view attention
as one unit. Weights keep their places: `base.*` (diffusers names, LoRA inside) and `view_attention.N.*`.
The model is a diffusers model: `save_pretrained` / `from_pretrained` write and read a folder (config.json
holds the base model's constructor arguments and the view-attention settings).
The condition latent frame is kept clean with Wan2.2-TI2V's per-token timesteps (0 on the first frame).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import ConfigMixin, ModelMixin, WanTransformer3DModel
from diffusers.configuration_utils import register_to_config
from torch import nn
from torch.utils.checkpoint import checkpoint

from mvvdp_core.model.view_attention import TokenLayout, ViewAttention

Rotary = tuple[torch.Tensor, torch.Tensor]


class MultiViewBlock(nn.Module):
    """One Wan block followed by its view attention."""

    def __init__(self, block: nn.Module, view_attention: ViewAttention) -> None:
        super().__init__()
        self.block = block
        self.view_attention = view_attention

    def forward(
        self,
        hidden_states: torch.Tensor,
        text: torch.Tensor,
        temb: torch.Tensor,
        rotary: Rotary,
        layout: TokenLayout,
        view_rotary: Rotary | None,
    ) -> torch.Tensor:
        hidden_states = self.block(hidden_states, text, temb, rotary)
        return self.view_attention(hidden_states, layout, view_rotary)


def keep_in_fp32(base: WanTransformer3DModel) -> list[str]:
    """Name components of the parameters and buffers Wan keeps in float32 (its `_keep_in_fp32_modules`)."""
    return list(getattr(base, "_keep_in_fp32_modules", None) or [])


def init_kwargs(model: ConfigMixin) -> dict[str, Any]:
    """A diffusers model's constructor arguments from its config (private entries dropped)."""
    return {k: v for k, v in dict(model.config).items() if not k.startswith("_")}


class MultiViewWanTransformer(ModelMixin, ConfigMixin):
    """Wan base model (`base_config`: WanTransformer3DModel's constructor arguments) plus view attention.

    `base` takes an already built (e.g. pretrained) Wan model instead of a random one from base_config.
    """

    ignore_for_config = ["base"]
    _keep_in_fp32_modules = WanTransformer3DModel._keep_in_fp32_modules

    @register_to_config
    def __init__(
        self,
        base_config: dict[str, Any],
        num_views: int,
        view_attention_heads: int,
        view_attention_style: str = "plain",
        base: WanTransformer3DModel | None = None,
    ) -> None:
        super().__init__()
        self.base = WanTransformer3DModel(**base_config) if base is None else base
        base = self.base
        self.num_views = num_views
        self.view_attention_style = view_attention_style
        cfg = base.config
        dim = cfg.num_attention_heads * cfg.attention_head_dim
        if view_attention_style == "wan" and view_attention_heads != cfg.num_attention_heads:
            raise ValueError(
                f"the 'wan' view attention style copies the block's self-attention: it needs "
                f"{cfg.num_attention_heads} heads, got {view_attention_heads}"
            )
        param = next(base.parameters())
        self.view_attention = nn.ModuleList(
            ViewAttention(dim, view_attention_heads, num_views, eps=cfg.eps, style=view_attention_style)
            for _ in range(len(base.blocks))
        ).to(device=param.device, dtype=param.dtype)
        if view_attention_style == "wan":
            for block, attention in zip(base.blocks, self.view_attention, strict=True):
                attention.init_from_self_attention(block.attn1)
        self.gradient_checkpointing = False
        # Not registered as submodules: the weights stay under base.blocks and view_attention.
        self._blocks: list[MultiViewBlock] = [
            MultiViewBlock(block, attention)
            for block, attention in zip(base.blocks, self.view_attention, strict=True)
        ]

    @classmethod
    def from_base(
        cls,
        base: WanTransformer3DModel,
        num_views: int,
        view_attention_heads: int,
        view_attention_style: str = "plain",
    ) -> MultiViewWanTransformer:
        """View attention around a built Wan model (its config becomes base_config)."""
        return cls(init_kwargs(base), num_views, view_attention_heads, view_attention_style, base=base)

    @property
    def blocks(self) -> list[MultiViewBlock]:
        return self._blocks

    @property
    def patch_size(self) -> tuple[int, int, int]:
        return tuple(self.base.config.patch_size)

    def enable_gradient_checkpointing(self, enabled: bool = True) -> MultiViewWanTransformer:
        """Recompute each block (with its view attention) in the backward pass instead of storing its
        activations."""
        self.gradient_checkpointing = enabled
        return self

    def compile_blocks(self, **options: Any) -> MultiViewWanTransformer:
        """torch.compile each block with its view attention (regional compilation: one graph, reused)."""
        for block in self._blocks:
            block.compile(**options)
        return self

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

    def view_rotary(self, layout: TokenLayout, device: torch.device) -> Rotary | None:
        """Wan's rotary embedding of the (view, row, column) grid of one latent frame ("wan" style)."""
        if self.view_attention_style != "wan":
            return None
        p_t, p_h, p_w = self.patch_size
        grid = torch.empty(
            (1, 0, layout.views * p_t, layout.height * p_h, layout.width * p_w), device=device
        )
        return self.base.rope(grid)

    def run_base(
        self, hidden_states: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor, layout: TokenLayout
    ) -> torch.Tensor:
        """The base model's pass (patch embedding, condition embedding, blocks, output projection) on B*V
        videos (B*V, C, F, H, W) with per-token timesteps (B*V, F*h*w), each block followed by its view
        attention."""
        base = self.base
        n, _, frames, height, width = hidden_states.shape
        p_t, p_h, p_w = self.patch_size
        rotary = base.rope(hidden_states)
        view_rotary = self.view_rotary(layout, hidden_states.device)
        tokens = base.patch_embedding(hidden_states).flatten(2).transpose(1, 2).contiguous()
        temb, projection, text, _ = base.condition_embedder(
            timestep.flatten(), text, None, timestep_seq_len=timestep.shape[1]
        )
        projection = projection.unflatten(2, (6, -1))  # (B*V, S, 6, D)
        recompute = self.gradient_checkpointing and torch.is_grad_enabled()
        for block in self._blocks:
            args = (tokens, text, projection, rotary, layout, view_rotary)
            tokens = checkpoint(block, *args, use_reentrant=False) if recompute else block(*args)
        table = base.scale_shift_table.unsqueeze(0).to(temb.device)
        shift, scale = (table + temb.unsqueeze(2)).chunk(2, dim=2)
        tokens = (base.norm_out(tokens.float()) * (1 + scale.squeeze(2)) + shift.squeeze(2)).type_as(tokens)
        tokens = base.proj_out(tokens)
        t, h, w = frames // p_t, height // p_h, width // p_w
        tokens = tokens.reshape(n, t, h, w, p_t, p_h, p_w, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return tokens.flatten(6, 7).flatten(4, 5).flatten(2, 3)

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
        layout = TokenLayout(views=v, frames=f // p_t, height=h // p_h, width=w // p_w)
        out = self.run_base(
            latents.reshape(b * v, c, f, h, w),
            self.token_timesteps(timestep, b, f, h, w, cond_frames),
            text,
            layout,
        )
        return out.reshape(b, v, *out.shape[1:])


def cast_transformer(model: MultiViewWanTransformer, dtype: torch.dtype) -> MultiViewWanTransformer:
    """Cast to dtype, except the parameters and buffers Wan keeps in float32 (rotary tables, time embedder,
    modulation tables, block norms): those keep their precision, as diffusers' from_pretrained does."""
    keep = set(keep_in_fp32(model.base))
    for module_name, module in model.base.named_modules():
        parts = set(module_name.split("."))
        for name, param in module.named_parameters(recurse=False):
            param.data = param.data.to(torch.float32 if parts & keep or name in keep else dtype)
        for name, buffer in module.named_buffers(recurse=False):
            if buffer.is_floating_point() and not (parts & keep or name in keep):
                module._buffers[name] = buffer.to(dtype)
    model.view_attention.to(dtype)
    return model
