"""Checkpoint folder: build, save and load the model parts. It reads like a diffusers pipeline folder:
one subfolder per model, each a diffusers model folder (config.json + diffusion_pytorch_model.safetensors)
that its class's `from_pretrained` reads.

    config.json                   MVVDPConfig
    transformer/                  MultiViewWanTransformer: base weights (LoRA stripped) and view attention;
                                  with config.base_model_path set only config.json and
                                  view_attention.safetensors (the base loads from that folder)
    vae/                          VideoVAE with its latent statistics (absent with config.base_model_path set)
    head/                         RotationGripperHead
    lora/                         peft adapter: adapter_config.json + adapter_model.safetensors (LoRA models)
    text_embeddings.safetensors   task instruction -> (L, text_dim) embedding

With config.base_model_path set, the base transformer and VAE load from that local diffusers folder
(transformer/ and vae/ subfolders) with local_files_only; LoRA and view attention load on top of it.
A training run adds its trainer and optimiser state files next to these.

Folders in the older layout (view_attention.safetensors, head.safetensors and base/ at the top) convert with
`upgrade_checkpoint` (`mvvdp upgrade-checkpoint OLD NEW`); load_checkpoint refuses them, naming that command.
"""

from __future__ import annotations

import json
import os
import shutil
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKLWan, ModelMixin, WanTransformer3DModel
from peft import LoraConfig
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mvvdp_core.checkpoint_paths import (  # noqa: F401  (re-exported: the model's checkpoint API)
    CONFIG_FILE,
    LATEST_POINTER,
    RUN_CHECKPOINTS_DIR,
    CheckpointError,
    resolve_checkpoint,
)
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

WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"  # diffusers' weights file name
TRANSFORMER_DIR = "transformer"
VAE_DIR = "vae"
HEAD_DIR = "head"
LORA_DIR = "lora"
LORA_CONFIG_FILE = "adapter_config.json"
LORA_WEIGHTS_FILE = "adapter_model.safetensors"
VIEW_ATTENTION_FILE = "view_attention.safetensors"  # in transformer/ when the base lives elsewhere
TEXT_FILE = "text_embeddings.safetensors"
UPGRADE_COMMAND = "mvvdp upgrade-checkpoint"
# The older layout's model files (top level of the folder).
OLD_VIEW_ATTENTION_FILE = "view_attention.safetensors"
OLD_HEAD_FILE = "head.safetensors"
OLD_BASE_DIR = "base"


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
        cast_module(self.head.to(device=device), dtype)
        self.text_embeddings = {k: v.to(dtype) for k, v in self.text_embeddings.items()}
        return self


def cast_module(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """module.to(dtype) without diffusers' ModelMixin.to warning about float32 modules (the head and the VAE
    keep none)."""
    return torch.nn.Module.to(module, dtype=dtype)


def head_kwargs(config: MVVDPConfig) -> dict[str, Any]:
    """RotationGripperHead's constructor arguments for a model config."""
    return dict(
        head_config=asdict(config.head), latent_channels=config.latent_channels,
        num_rgb_views=config.num_rgb_views, future_frames=config.future_frames,
        latent_size=config.latent_size, spatial_compression=config.spatial_compression,
        rotation_bins=config.rotation_bins,
    )  # fmt: skip


def build_head(config: MVVDPConfig) -> RotationGripperHead:
    return RotationGripperHead(**head_kwargs(config))


def _attach_trainable(model: MultiViewWanTransformer, config: MVVDPConfig) -> MultiViewWanTransformer:
    if config.uses_lora:
        return add_lora(model, lora_config(config))
    return model.requires_grad_(True)


def build_transformer(
    config: MVVDPConfig, base: WanTransformer3DModel | None = None
) -> MultiViewWanTransformer:
    """Base model (random when not given) + view attention, and LoRA when config.uses_lora.

    Trainable set: LoRA + view attention (LoRA), or every transformer weight (config.lora_rank == 0).
    """
    views = (config.num_views, config.view_attention_heads, config.view_attention_style)
    if base is None:
        model = MultiViewWanTransformer(dict(config.transformer), *views)
    else:
        model = MultiViewWanTransformer.from_base(base, *views)
    return _attach_trainable(model, config)


def random_text_embeddings(config: MVVDPConfig, tasks: list[str], seed: int) -> dict[str, torch.Tensor]:
    """A random embedding per task, drawn from the seed and the task's name: a task gets the same one whatever
    other tasks a run has, and two tasks never share one."""
    return {
        task: torch.randn(config.text_len, config.text_dim, device="cpu",
                          generator=torch.Generator().manual_seed(seed + zlib.crc32(task.encode())))
        for task in tasks
    }


def build_model_parts(config: MVVDPConfig, seed: int = 0, tasks: list[str] | None = None) -> ModelParts:
    """Randomly initialised parts (tests, benchmarks, the start of training from a random base)."""
    torch.manual_seed(seed)
    transformer = build_transformer(config)
    vae = VideoVAE(dict(config.vae))
    head = build_head(config)
    return ModelParts(transformer, vae, head, random_text_embeddings(config, tasks or ["default"], seed))


# Saving ------------------------------------------------------------------------------------------
def _prefixed(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{name}": tensor for name, tensor in state.items()}


def transformer_state_dict(model: MultiViewWanTransformer) -> dict[str, torch.Tensor]:
    """The transformer's weights under MultiViewWanTransformer's own names, LoRA layers stripped."""
    return {
        **_prefixed("base", base_state_dict(model)),
        **_prefixed("view_attention", model.view_attention.state_dict()),
    }


def save_checkpoint(parts: ModelParts, config: MVVDPConfig, path: str | Path) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config.save(path / CONFIG_FILE)
    transformer_dir = path / TRANSFORMER_DIR
    transformer_dir.mkdir(exist_ok=True)
    parts.transformer.save_config(str(transformer_dir))
    if config.base_model_path is None:
        _save(transformer_state_dict(parts.transformer), transformer_dir / WEIGHTS_FILE)
        parts.vae.save_pretrained(str(path / VAE_DIR))
    else:
        _save(parts.transformer.view_attention.state_dict(), transformer_dir / VIEW_ATTENTION_FILE)
    parts.head.save_pretrained(str(path / HEAD_DIR))
    if config.uses_lora:
        lora_dir = path / LORA_DIR
        lora_dir.mkdir(exist_ok=True)
        lora_config(config).save_pretrained(str(lora_dir))
        _save(lora_state_dict(parts.transformer), lora_dir / LORA_WEIGHTS_FILE)
    _save(parts.text_embeddings, path / TEXT_FILE)
    _drop_source_paths(path)
    return path


def _drop_source_paths(path: Path) -> None:
    """Remove diffusers' `_name_or_path` (the folder a model was loaded from, e.g. another run's checkpoint)
    from the sub-configs: a checkpoint names no folder of the machine that wrote it."""
    for config_file in sorted(path.glob(f"*/{CONFIG_FILE}")):
        values = json.loads(config_file.read_text())
        if values.pop("_name_or_path", None) is not None:
            config_file.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")


def _save(state: dict[str, torch.Tensor], file: Path) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    save_file(tensors, str(file), metadata={"format": "pt"})


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
    """JSON-equal form (tuples become lists) for comparing configs."""
    return json.loads(json.dumps(value))


def _differences(wanted: dict[str, Any], found: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Entries of wanted that found holds with another value: key -> (wanted, found)."""
    return {
        key: (value, found[key])
        for key, value in wanted.items()
        if key in found and _plain(value) != _plain(found[key])
    }


def _from_pretrained(cls: type[ModelMixin], folder: Path, dtype: torch.dtype) -> Any:
    """cls.from_pretrained(folder) from local files; every weight must be there and fit (CheckpointError
    naming the file otherwise)."""
    _require(folder / CONFIG_FILE)
    weights = _require(folder / WEIGHTS_FILE)
    try:
        cls.load_config(str(folder))
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise CheckpointError(f"invalid {folder / CONFIG_FILE}: {error}") from error
    try:
        model, info = cls.from_pretrained(
            str(folder), local_files_only=True, torch_dtype=dtype, output_loading_info=True
        )
    except (OSError, ValueError, RuntimeError, TypeError, KeyError, SafetensorError) as error:
        raise CheckpointError(f"cannot load {weights}: {error}") from error
    keys = ("missing_keys", "unexpected_keys", "mismatched_keys")
    wrong = {key: info[key] for key in keys if info.get(key)}
    if wrong:
        raise CheckpointError(f"{weights} does not match {cls.__name__}: {wrong}")
    return model


def load_base_model(
    config: MVVDPConfig, root: Path, dtype: torch.dtype
) -> tuple[WanTransformer3DModel, AutoencoderKLWan]:
    """The base Wan transformer (in dtype, Wan's float32 parts kept) and the VAE (float32) from a local
    diffusers folder (transformer/ and vae/ subfolders, e.g. config.base_model_path), checked against the
    config."""
    root = Path(root)
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
    mismatched = _differences(config.transformer, dict(base.config))
    if mismatched:
        raise CheckpointError(
            f"base transformer in {root} differs from config.json (config, found): {mismatched}"
        )
    _check_vae(vae.config.z_dim, config, root)
    return base, vae


def _check_vae(z_dim: int, config: MVVDPConfig, where: Path) -> None:
    if z_dim != config.latent_channels:
        raise CheckpointError(f"VAE in {where} has z_dim {z_dim}, config says {config.latent_channels}")


def load_vae(config: MVVDPConfig, path: Path) -> VideoVAE:
    """The VAE (float32) of the checkpoint folder path, or of config.base_model_path when set."""
    if config.base_model_path is not None:
        _, vae = load_base_model(config, Path(config.base_model_path), torch.float32)
        return VideoVAE.from_autoencoder(vae)
    _refuse_old_layout(path)
    vae = _from_pretrained(VideoVAE, path / VAE_DIR, torch.float32)
    _check_vae(int(vae.config.vae_config["z_dim"]), config, path / VAE_DIR)
    return vae


def _check_transformer_config(saved: dict[str, Any], config: MVVDPConfig, folder: Path) -> None:
    wanted = {
        "num_views": config.num_views,
        "view_attention_heads": config.view_attention_heads,
        "view_attention_style": config.view_attention_style,
    }
    mismatched = _differences(wanted, saved)
    mismatched.update(_differences(config.transformer, saved.get("base_config", {})))
    if mismatched:
        raise CheckpointError(f"{folder / CONFIG_FILE} differs from the checkpoint's config: {mismatched}")


def load_transformer(config: MVVDPConfig, path: Path, dtype: torch.dtype) -> MultiViewWanTransformer:
    """The transformer of the checkpoint folder path (without LoRA; trainable set as build_transformer)."""
    folder = path / TRANSFORMER_DIR
    try:
        saved = MultiViewWanTransformer.load_config(str(_require(folder / CONFIG_FILE)))
    except (OSError, ValueError) as error:
        raise CheckpointError(f"invalid {folder / CONFIG_FILE}: {error}") from error
    _check_transformer_config(saved, config, folder)
    if config.base_model_path is None:
        model = _from_pretrained(MultiViewWanTransformer, folder, dtype)
    else:
        base, _ = load_base_model(config, Path(config.base_model_path), dtype)
        views = (config.num_views, config.view_attention_heads, config.view_attention_style)
        model = MultiViewWanTransformer.from_base(base, *views)
        _load_module(model.view_attention, folder / VIEW_ATTENTION_FILE)
    return _attach_trainable(model, config)


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


def load_head(config: MVVDPConfig, path: Path) -> RotationGripperHead:
    head = _from_pretrained(RotationGripperHead, path / HEAD_DIR, torch.float32)
    mismatched = _differences(head_kwargs(config), dict(head.config))
    if mismatched:
        raise CheckpointError(f"{path / HEAD_DIR / CONFIG_FILE} differs from config.json: {mismatched}")
    return head


def is_old_layout(path: Path) -> bool:
    """Whether path is a checkpoint folder in the older layout (model files at the top)."""
    return (path / OLD_HEAD_FILE).is_file() or (path / OLD_VIEW_ATTENTION_FILE).is_file()


def _refuse_old_layout(path: Path) -> None:
    if is_old_layout(path):
        raise CheckpointError(
            f"{path} is a checkpoint in the older layout; convert it with `{UPGRADE_COMMAND} {path} NEW`"
        )


def load_checkpoint(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[ModelParts, MVVDPConfig]:
    path = resolve_checkpoint(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint folder not found: {path}")
    _refuse_old_layout(path)
    config = load_config(path)
    transformer = load_transformer(config, path, dtype)
    if config.uses_lora:
        _load_lora(transformer, config, path / LORA_DIR)
    head = load_head(config, path)
    vae = load_vae(config, path)
    text = load_tensors(path / TEXT_FILE)
    for task, embedding in text.items():
        if embedding.ndim != 2 or embedding.shape[1] != config.text_dim:
            raise CheckpointError(
                f"{path / TEXT_FILE}: embedding for {task!r} has shape {tuple(embedding.shape)}"
            )
    parts = ModelParts(transformer, vae, head, text)
    return parts.to(device, dtype), config


# Older layout ------------------------------------------------------------------------------------
def _diffusers_kwargs(config_file: Path) -> dict[str, Any]:
    """A diffusers config.json's constructor arguments (private entries dropped)."""
    try:
        data = json.loads(_require(config_file).read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"invalid {config_file}: {error}") from error
    return {k: v for k, v in data.items() if not k.startswith("_")}


def _save_checked(model: torch.nn.Module, state: dict[str, torch.Tensor], file: Path, source: Path) -> None:
    """Write state to file after checking that its names and shapes are model's (a meta-device model)."""
    wanted = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    found = {name: tuple(t.shape) for name, t in state.items()}
    if wanted != found:
        differing = sorted(set(wanted) ^ set(found)) or sorted(k for k in wanted if wanted[k] != found[k])
        raise CheckpointError(f"{source} does not match {type(model).__name__}: {differing[:5]}")
    _save(state, file)


def upgrade_checkpoint(old_dir: str | Path, new_dir: str | Path) -> Path:
    """Convert a checkpoint folder in the older layout into the current one (new_dir may be old_dir: the
    folder is then replaced). Tensors are copied unchanged; other files (trainer state, reports) come
    along."""
    old, new = resolve_checkpoint(old_dir), Path(new_dir).expanduser()
    if not old.is_dir() or not is_old_layout(old):
        raise CheckpointError(f"{old} is not a checkpoint folder in the older layout")
    in_place = new.resolve() == old.resolve()
    if not in_place and new.exists() and any(new.iterdir()):
        raise CheckpointError(f"{new} exists and is not empty")
    config = load_config(old)
    tmp = new.parent / f".{new.name}.upgrade_{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    base_dir = old / OLD_BASE_DIR
    views = (config.num_views, config.view_attention_heads, config.view_attention_style)
    with torch.device("meta"):  # the models give the subfolder configs and the expected tensor names
        if config.base_model_path is None:
            base = WanTransformer3DModel(**_diffusers_kwargs(base_dir / "transformer" / CONFIG_FILE))
            transformer = MultiViewWanTransformer.from_base(base, *views)
            vae = VideoVAE(_diffusers_kwargs(base_dir / "vae" / CONFIG_FILE))
        else:
            transformer = MultiViewWanTransformer(dict(config.transformer), *views)
        head = build_head(config)
    shutil.copy2(old / CONFIG_FILE, tmp / CONFIG_FILE)
    view_attention = load_tensors(old / OLD_VIEW_ATTENTION_FILE)
    (tmp / TRANSFORMER_DIR).mkdir()
    transformer.save_config(str(tmp / TRANSFORMER_DIR))
    if config.base_model_path is None:
        state = {
            **_prefixed("base", load_tensors(base_dir / "transformer" / WEIGHTS_FILE)),
            **_prefixed("view_attention", view_attention),
        }
        _save_checked(transformer, state, tmp / TRANSFORMER_DIR / WEIGHTS_FILE, base_dir / "transformer")
        (tmp / VAE_DIR).mkdir()
        vae.save_config(str(tmp / VAE_DIR))
        vae_state = _prefixed("vae", load_tensors(base_dir / "vae" / WEIGHTS_FILE))
        for name in ("latents_mean", "latents_std"):  # the older wrapper built these from the VAE's config
            vae_state[name] = torch.tensor(vae.config.vae_config[name]).view(1, -1, 1, 1, 1)
        _save_checked(vae, vae_state, tmp / VAE_DIR / WEIGHTS_FILE, base_dir / "vae")
    else:
        _save_checked(
            transformer.view_attention, view_attention, tmp / TRANSFORMER_DIR / VIEW_ATTENTION_FILE,
            old / OLD_VIEW_ATTENTION_FILE,
        )  # fmt: skip
    (tmp / HEAD_DIR).mkdir()
    head.save_config(str(tmp / HEAD_DIR))
    _save_checked(head, load_tensors(old / OLD_HEAD_FILE), tmp / HEAD_DIR / WEIGHTS_FILE, old / OLD_HEAD_FILE)
    converted = {CONFIG_FILE, OLD_VIEW_ATTENTION_FILE, OLD_HEAD_FILE, OLD_BASE_DIR}
    for entry in sorted(old.iterdir()):
        if entry.name in converted:
            continue
        if entry.is_dir():
            shutil.copytree(entry, tmp / entry.name)
        else:
            shutil.copy2(entry, tmp / entry.name)
    if in_place:
        shutil.rmtree(old)
    elif new.exists():
        new.rmdir()
    os.replace(tmp, new)
    return new


# Command line ------------------------------------------------------------------------------------


def write_tiny_checkpoint(out: str | Path, seed: int = 0, tasks: list[str] | None = None) -> ModelParts:
    """Build a tiny random model (random text embeddings for tasks, default ["default"]) and save it."""
    config = MVVDPConfig.tiny()
    parts = build_model_parts(config, seed=seed, tasks=tasks or ["default"])
    save_checkpoint(parts, config, out)
    return parts
