"""peft LoRA on the Wan transformer's attention and feed-forward linears; the trainable set."""

from __future__ import annotations

import torch
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer

from mvvdp_core.model.config import MVVDPConfig
from mvvdp_core.model.transformer import MultiViewWanTransformer

ADAPTER_NAME = "default"


def lora_config(config: MVVDPConfig) -> LoraConfig:
    return LoraConfig(
        r=config.lora_rank, lora_alpha=config.lora_alpha, target_modules=config.lora_targets, lora_dropout=0.0
    )


def add_lora(model: MultiViewWanTransformer, config: LoraConfig) -> MultiViewWanTransformer:
    """Freeze the base model, inject LoRA layers into it; LoRA and view attention become the trainable set."""
    for param in model.base.parameters():
        param.requires_grad_(False)
    inject_adapter_in_model(config, model.base, adapter_name=ADAPTER_NAME)
    hit = [name for name, _ in model.base.named_modules() if name.endswith(f"lora_A.{ADAPTER_NAME}")]
    if not hit:
        raise ValueError(f"LoRA target pattern {config.target_modules!r} matched no module")
    for name, param in model.base.named_parameters():
        param.requires_grad_("lora_" in name)
    for param in model.view_attention.parameters():
        param.requires_grad_(True)
    return model


def merge_lora(model: MultiViewWanTransformer) -> int:
    """Fold the LoRA updates into the base weights (inference only; the adapter stops being trainable).

    Returns the number of merged layers. Merging twice is a no-op: peft tracks merged adapters.
    """
    merged = 0
    for module in model.base.modules():
        if isinstance(module, LoraLayer) and ADAPTER_NAME not in module.merged_adapters:
            module.merge(safe_merge=True, adapter_names=[ADAPTER_NAME])
            merged += 1
    return merged


def lora_state_dict(model: MultiViewWanTransformer) -> dict[str, torch.Tensor]:
    return get_peft_model_state_dict(model.base, adapter_name=ADAPTER_NAME)


def load_lora_state_dict(model: MultiViewWanTransformer, state: dict[str, torch.Tensor]) -> None:
    result = set_peft_model_state_dict(model.base, state, adapter_name=ADAPTER_NAME)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise ValueError(f"LoRA weights hold keys the model does not have: {unexpected[:5]}")


def base_state_dict(model: MultiViewWanTransformer) -> dict[str, torch.Tensor]:
    """The base transformer's own weights (LoRA layers stripped, original names restored)."""
    state = {}
    for name, tensor in model.base.state_dict().items():
        if "lora_" in name:
            continue
        state[name.replace(".base_layer.", ".")] = tensor
    return state


def trainable_parameters(model: MultiViewWanTransformer) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}
