"""Checkpoint folder: build, save and load the model parts.

    config.json                   MVVDPConfig
    lora/                         peft adapter: adapter_config.json + adapter_model.safetensors (LoRA models)
    view_attention.safetensors    view-attention weights of every block
    head.safetensors              rotation/gripper head
    text_embeddings.safetensors   task instruction -> (L, text_dim) embedding
    base/transformer, base/vae    the base diffusers models (only when config.base_model_path is unset; for
                                  models trained in full, base/transformer holds the trained weights)

With config.base_model_path set, the base transformer and VAE load from that local diffusers folder
(transformer/ and vae/ subfolders) with local_files_only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from peft import LoraConfig
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mvvdp_core.model.config import MVVDPConfig
from mvvdp_core.model.head import RotationGripperHead
from mvvdp_core.model.lora import (
    add_lora,
    base_state_dict,
    load_lora_state_dict,
    lora_config,
    lora_state_dict,
)
from mvvdp_core.model.transformer import MultiViewWanTransformer, cast_transformer
from mvvdp_core.model.vae import VideoVAE

CONFIG_FILE = "config.json"
LORA_DIR = "lora"
LORA_CONFIG_FILE = "adapter_config.json"
LORA_WEIGHTS_FILE = "adapter_model.safetensors"
VIEW_ATTENTION_FILE = "view_attention.safetensors"
HEAD_FILE = "head.safetensors"
TEXT_FILE = "text_embeddings.safetensors"
BASE_DIR = "base"
TRANSFORMER_WEIGHTS = "diffusion_pytorch_model.safetensors"
RUN_CHECKPOINTS_DIR = "checkpoints"  # a training run keeps its checkpoints here ...
LATEST_POINTER = "latest"  # ... and names the newest one in this file


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder as given, or the newest checkpoint of a training run (its folder or its
    checkpoints/latest pointer file)."""
    path = Path(path).expanduser()
    for pointer in (path, path / RUN_CHECKPOINTS_DIR / LATEST_POINTER):
        if pointer.name == LATEST_POINTER and pointer.is_file():
            name = pointer.read_text().strip()
            if not name:
                raise CheckpointError(f"empty checkpoint pointer: {pointer}")
            return pointer.parent / name
    return path


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or does not match the model."""


@dataclass
class ModelParts:
    transformer: MultiViewWanTransformer
    vae: VideoVAE
    head: RotationGripperHead
    text_embeddings: dict[str, torch.Tensor]  # task -> (L, text_dim)

    def to(self, device: str | torch.device, dtype: torch.dtype) -> ModelParts:
        """Move everything to device; cast the transformer (except the parts Wan keeps in float32), the head
        and the text embeddings to dtype. The VAE keeps its own dtype (it takes and gives any float dtype)."""
        cast_transformer(self.transformer.to(device=device), dtype)
        self.vae.to(device=device)
        self.head.to(device=device, dtype=dtype)
        self.text_embeddings = {k: v.to(dtype) for k, v in self.text_embeddings.items()}
        return self


def build_head(config: MVVDPConfig) -> RotationGripperHead:
    return RotationGripperHead(
        config.head,
        config.latent_channels,
        config.num_rgb_views,
        config.future_frames,
        config.latent_size,
        config.spatial_compression,
        config.rotation_bins,
    )


def build_transformer(
    config: MVVDPConfig, base: WanTransformer3DModel | None = None
) -> MultiViewWanTransformer:
    """Base model (random when not given) + view attention, and LoRA when config.uses_lora.

    Trainable set: LoRA + view attention (LoRA), or every transformer weight (config.lora_rank == 0).
    """
    base = WanTransformer3DModel(**config.transformer) if base is None else base
    model = MultiViewWanTransformer(
        base, config.num_views, config.view_attention_heads, config.view_attention_style
    )
    if config.uses_lora:
        return add_lora(model, lora_config(config))
    return model.requires_grad_(True)


def random_text_embeddings(config: MVVDPConfig, tasks: list[str], seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        task: torch.randn(config.text_len, config.text_dim, generator=generator, device="cpu")
        for task in tasks
    }


def build_model_parts(config: MVVDPConfig, seed: int = 0, tasks: list[str] | None = None) -> ModelParts:
    """Randomly initialised parts (tests, benchmarks, the start of training from a random base)."""
    torch.manual_seed(seed)
    transformer = build_transformer(config)
    vae = VideoVAE.from_config(config.vae)
    head = build_head(config)
    return ModelParts(transformer, vae, head, random_text_embeddings(config, tasks or ["default"], seed))


# Saving ------------------------------------------------------------------------------------------
def save_checkpoint(parts: ModelParts, config: MVVDPConfig, path: str | Path) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config.save(path / CONFIG_FILE)
    if config.uses_lora:
        lora_dir = path / LORA_DIR
        lora_dir.mkdir(exist_ok=True)
        lora_config(config).save_pretrained(str(lora_dir))
        _save(lora_state_dict(parts.transformer), lora_dir / LORA_WEIGHTS_FILE)
    _save(parts.transformer.view_attention.state_dict(), path / VIEW_ATTENTION_FILE)
    _save(parts.head.state_dict(), path / HEAD_FILE)
    _save(parts.text_embeddings, path / TEXT_FILE)
    if config.base_model_path is None:
        transformer_dir = path / BASE_DIR / "transformer"
        transformer_dir.mkdir(parents=True, exist_ok=True)
        parts.transformer.base.save_config(str(transformer_dir))
        _save(base_state_dict(parts.transformer), transformer_dir / TRANSFORMER_WEIGHTS)
        parts.vae.vae.save_pretrained(str(path / BASE_DIR / "vae"))
    return path


def _save(state: dict[str, torch.Tensor], file: Path) -> None:
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(file))


# Loading -----------------------------------------------------------------------------------------
def _require(file: Path) -> Path:
    if not file.exists():
        raise CheckpointError(f"checkpoint file missing: {file}")
    return file


def load_tensors(file: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; CheckpointError naming the file when it is missing or corrupt."""
    try:
        return load_file(str(_require(file)))
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"cannot read {file}: {error}") from error


def _load_module(module: torch.nn.Module, file: Path) -> None:
    try:
        module.load_state_dict(load_tensors(file), strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"{file} does not match the model: {error}") from error


def load_config(path: str | Path) -> MVVDPConfig:
    file = _require(Path(path) / CONFIG_FILE)
    try:
        return MVVDPConfig.load(file)
    except (json.JSONDecodeError, TypeError, ValueError, KeyError) as error:
        raise CheckpointError(f"invalid {file}: {error}") from error


def _plain(value: object) -> object:
    return list(value) if isinstance(value, tuple | list) else value


def load_base_model(
    config: MVVDPConfig, path: Path, dtype: torch.dtype
) -> tuple[WanTransformer3DModel, AutoencoderKLWan]:
    """The base Wan transformer (in dtype, Wan's float32 parts kept) and the VAE (float32) from
    config.base_model_path (a local diffusers folder), else from the checkpoint's own base/ folder; local
    files only, checked against the config."""
    root = Path(config.base_model_path) if config.base_model_path is not None else path / BASE_DIR
    for sub in ("transformer", "vae"):
        _require(root / sub / CONFIG_FILE)
    try:
        base = WanTransformer3DModel.from_pretrained(
            str(root), subfolder="transformer", local_files_only=True, torch_dtype=dtype
        )
        vae = AutoencoderKLWan.from_pretrained(
            str(root), subfolder="vae", local_files_only=True, torch_dtype=torch.float32
        )
    except (OSError, ValueError, RuntimeError, SafetensorError) as error:
        raise CheckpointError(f"cannot load the base diffusers model from {root}: {error}") from error
    mismatched = {
        key: (wanted, base.config[key])
        for key, wanted in config.transformer.items()
        if key in base.config and _plain(wanted) != _plain(base.config[key])
    }
    if mismatched:
        raise CheckpointError(
            f"base transformer in {root} differs from config.json (config, found): {mismatched}"
        )
    if vae.config.z_dim != config.latent_channels:
        raise CheckpointError(
            f"base VAE in {root} has z_dim {vae.config.z_dim}, config says {config.latent_channels}"
        )
    return base, vae


def _load_lora(transformer: MultiViewWanTransformer, config: MVVDPConfig, lora_dir: Path) -> None:
    try:
        saved_lora = LoraConfig.from_pretrained(str(_require(lora_dir / LORA_CONFIG_FILE).parent))
    except (json.JSONDecodeError, TypeError, ValueError) as error:
        raise CheckpointError(f"invalid {lora_dir / LORA_CONFIG_FILE}: {error}") from error
    if (saved_lora.r, saved_lora.lora_alpha) != (config.lora_rank, config.lora_alpha):
        raise CheckpointError(f"{lora_dir / LORA_CONFIG_FILE} rank/alpha differ from the checkpoint's config")
    try:
        load_lora_state_dict(transformer, load_tensors(lora_dir / LORA_WEIGHTS_FILE))
    except (RuntimeError, ValueError) as error:
        if isinstance(error, CheckpointError):
            raise
        raise CheckpointError(f"{lora_dir / LORA_WEIGHTS_FILE} does not match the model: {error}") from error


def load_checkpoint(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[ModelParts, MVVDPConfig]:
    path = resolve_checkpoint(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint folder not found: {path}")
    config = load_config(path)
    base, vae = load_base_model(config, path, dtype)
    transformer = build_transformer(config, base)
    if config.uses_lora:
        _load_lora(transformer, config, path / LORA_DIR)
    _load_module(transformer.view_attention, path / VIEW_ATTENTION_FILE)
    head = build_head(config)
    _load_module(head, path / HEAD_FILE)
    text = load_tensors(path / TEXT_FILE)
    for task, embedding in text.items():
        if embedding.ndim != 2 or embedding.shape[1] != config.text_dim:
            raise CheckpointError(
                f"{path / TEXT_FILE}: embedding for {task!r} has shape {tuple(embedding.shape)}"
            )
    parts = ModelParts(transformer, VideoVAE(vae), head, text)
    return parts.to(device, dtype), config


# Command line ------------------------------------------------------------------------------------


def write_tiny_checkpoint(out: str | Path, seed: int = 0, tasks: list[str] | None = None) -> ModelParts:
    """Build a tiny random model (random text embeddings for tasks, default ["default"]) and save it."""
    config = MVVDPConfig.tiny()
    parts = build_model_parts(config, seed=seed, tasks=tasks or ["default"])
    save_checkpoint(parts, config, out)
    return parts
