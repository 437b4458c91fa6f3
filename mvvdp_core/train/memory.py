"""Training memory plan of a model config and batch, computed on the meta device (no weights, no GPU).

Parameters are counted on the real module tree (base, LoRA, view attention, head, VAE). Activations are
measured, not guessed: one forward pass of the transformer on meta tensors records every tensor autograd
saves for the backward pass (parameters excluded, each tensor once). With activation checkpointing that is
the block inputs, plus one block's saved tensors while it is recomputed. AdamW keeps two float32 moments per
trained weight, gradients take the trained weights' dtype. The estimate leaves out the allocator's slack and
the CUDA context (a few GB together), stated as `reserve` in the plan. Under autocast the float32 trained
weights also exist as 16-bit copies while the forward pass runs (`weight_copies`).

    mvvdp memory-plan --config wan22 --batch 1            # the paper's model, LoRA, checkpointing, bf16 base
    mvvdp train ... --dry-run                             # the same plan for a training command's settings
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from mvvdp_core.model.checkpoint import build_head, build_transformer
from mvvdp_core.model.config import MVVDPConfig
from mvvdp_core.model.transformer import MultiViewWanTransformer, cast_transformer

GB = 1e9
DEFAULT_RESERVE_GB = 4.0  # CUDA context, cuBLAS/attention workspaces, allocator fragmentation


@dataclass
class MemoryPlan:
    """Bytes (and parameter counts) of one training process."""

    config: str
    batch: int
    mode: str  # lora | full
    checkpointing: bool
    base_dtype: torch.dtype
    compute_dtype: torch.dtype
    base_parameters: int
    lora_parameters: int
    view_attention_parameters: int
    head_parameters: int
    vae_parameters: int
    trained_parameters: int
    weights: int
    gradients: int
    optimizer: int
    activations: int
    weight_copies: int  # autocast's 16-bit copies of the float32 trained transformer weights
    reserve: int

    @property
    def peak(self) -> int:
        return (self.weights + self.gradients + self.optimizer + self.activations + self.weight_copies
                + self.reserve)

    def fits(self, memory_gb: float) -> bool:
        return self.peak <= memory_gb * GB

    def table(self) -> str:
        """Markdown table of the plan."""
        dtype = str(self.base_dtype).removeprefix("torch.")
        rows = [
            ("base transformer parameters", f"{self.base_parameters / 1e9:.4f} B"),
            ("LoRA parameters", f"{self.lora_parameters / 1e6:.1f} M"),
            ("view-attention parameters", f"{self.view_attention_parameters / 1e9:.4f} B"),
            ("rotation/gripper head parameters", f"{self.head_parameters / 1e6:.1f} M"),
            ("VAE parameters", f"{self.vae_parameters / 1e6:.1f} M"),
            ("trained parameters", f"{self.trained_parameters / 1e9:.4f} B"),
            (f"weights (frozen base in {dtype}, trained in float32, VAE)", f"{self.weights / GB:.1f} GB"),
            ("gradients", f"{self.gradients / GB:.1f} GB"),
            ("optimiser state (AdamW, 2 float32 moments)", f"{self.optimizer / GB:.1f} GB"),
            (
                f"activations (batch {self.batch}, {'with' if self.checkpointing else 'no'} checkpointing)",
                f"{self.activations / GB:.1f} GB",
            ),
            ("autocast copies of the trained weights", f"{self.weight_copies / GB:.1f} GB"),
            ("reserve (context, workspaces, fragmentation)", f"{self.reserve / GB:.1f} GB"),
            ("peak", f"{self.peak / GB:.1f} GB"),
        ]
        head = f"| {self.config}, {self.mode} | |\n| --- | --- |\n"
        return head + "\n".join(f"| {name} | {value} |" for name, value in rows)


def _numel(params) -> int:
    return sum(p.numel() for p in params)


def _bytes(params) -> int:
    return sum(p.numel() * p.element_size() for p in params)


def saved_activation_bytes(run, exclude: list[torch.Tensor]) -> int:
    """Bytes of the distinct tensors autograd saves while run() executes, parameters excluded."""
    skip = {id(t) for t in exclude}
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        root = tensor._base if tensor._base is not None else tensor
        if id(root) not in skip and id(tensor) not in skip:
            seen[id(root)] = max(seen.get(id(root), 0), root.numel() * root.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run()
    return sum(seen.values())


def _transformer_inputs(config: MVVDPConfig, batch: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    shape = (batch, config.num_views, config.latent_channels, config.latent_frames, config.latent_size,
             config.latent_size)  # fmt: skip
    latents = torch.zeros(shape, device="meta", dtype=dtype)
    text = torch.zeros(batch, config.text_len, config.text_dim, device="meta", dtype=dtype)
    return latents, torch.full((batch,), 500.0, device="meta"), text


def _activations(
    model: MultiViewWanTransformer, config: MVVDPConfig, batch: int, checkpointing: bool, dtype: torch.dtype
) -> int:
    latents, timestep, text = _transformer_inputs(config, batch, dtype)
    params = list(model.parameters())
    model.enable_gradient_checkpointing(checkpointing)
    total = saved_activation_bytes(lambda: model(latents, timestep, text).float().square().mean(), params)
    if checkpointing:  # one block's activations exist again while it is recomputed in the backward pass
        model.enable_gradient_checkpointing(False)
        store: dict[str, torch.Tensor] = {}
        block = model.blocks[0]
        original = block.forward

        def capture(*args, **kwargs):
            store["args"] = args
            return original(*args, **kwargs)

        block.forward = capture
        try:
            with torch.no_grad():
                model(latents, timestep, text)
        finally:
            del block.forward
        args = tuple(a.detach().requires_grad_(a.is_floating_point()) if isinstance(a, torch.Tensor) else a
                     for a in store["args"])  # fmt: skip
        total += saved_activation_bytes(lambda: block(*args), params)
    return total


def memory_plan(
    config: MVVDPConfig,
    batch: int = 1,
    mode: str = "lora",
    checkpointing: bool = True,
    base_dtype: torch.dtype = torch.bfloat16,
    compute_dtype: torch.dtype = torch.bfloat16,
    name: str = "custom",
    reserve_gb: float = DEFAULT_RESERVE_GB,
) -> MemoryPlan:
    """The plan of one training process: `mode` lora (frozen base in base_dtype, LoRA + view attention +
    head trained in float32) or full (every transformer weight trained in float32); activations in
    compute_dtype."""
    from diffusers import AutoencoderKLWan

    if mode not in ("lora", "full"):
        raise ValueError(f"mode must be 'lora' or 'full', got {mode!r}")
    if mode == "lora" and not config.uses_lora:
        raise ValueError("mode 'lora' needs a config with lora_rank > 0")
    if mode == "full":
        config = replace(config, lora_rank=0)
    with torch.device("meta"):
        model = build_transformer(config)
        head = build_head(config)
        vae = AutoencoderKLWan(**config.vae)
    base = [p for n, p in model.base.named_parameters() if "lora_" not in n]
    lora = [p for n, p in model.base.named_parameters() if "lora_" in n]
    view = list(model.view_attention.parameters())
    head_params = list(head.parameters())
    if mode == "lora":
        cast_transformer(model, base_dtype)
        for param in [*lora, *view]:
            param.data = param.data.float()
    trained_transformer = [p for p in model.parameters() if p.requires_grad]
    trained = trained_transformer + head_params
    trained_bytes = _numel(trained) * 4  # float32 master weights
    frozen = _bytes(p for p in model.parameters() if not p.requires_grad)
    weights = frozen + trained_bytes + _bytes(vae.parameters())
    # Activations: the transformer in the compute dtype (as autocast runs its matmuls), trained set included.
    measure = cast_transformer(model, compute_dtype)
    activations = _activations(measure, config, batch, checkpointing, compute_dtype)
    return MemoryPlan(
        config=name, batch=batch, mode=mode, checkpointing=checkpointing, base_dtype=base_dtype,
        compute_dtype=compute_dtype, base_parameters=_numel(base), lora_parameters=_numel(lora),
        view_attention_parameters=_numel(view), head_parameters=_numel(head_params),
        vae_parameters=_numel(vae.parameters()), trained_parameters=_numel(trained), weights=weights,
        gradients=trained_bytes, optimizer=2 * trained_bytes, activations=activations,
        weight_copies=_numel(trained_transformer) * (compute_dtype.itemsize % 4),  # 2 bytes when 16-bit
        reserve=int(reserve_gb * GB),
    )  # fmt: skip

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
