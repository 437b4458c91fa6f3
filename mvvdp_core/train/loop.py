"""Training loop for the video-model LoRA (+ view attention) and the rotation/gripper head.

One loop trains both modules on the same batches: the VAE (frozen) encodes the sample's RGB and heatmap
views, the transformer takes a flow-matching step on them (AdamW, lr 1e-4, no weight decay) and the head a
cross-entropy step on the same clean latents with a little noise (AdamW, lr 1e-4, weight decay 1e-5).
accelerate places everything on the device, wraps the trainable modules for DDP when several processes run,
and applies mixed precision. Checkpoints are written to a temporary folder and renamed into place, in the
model's checkpoint format plus a trainer_state.pt (optimisers, step, random state); `latest` names the last
complete one, and a run with resume=True continues from it. Every checkpoint gets one trajectory plot per
validation episode (predicted vs true positions of the first chunk).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from mvvdp_core.data.augment import AugmentConfig
from mvvdp_core.data.dataset import EpisodeDataset, SampleConfig
from mvvdp_core.data.episode import Episode, atomic_write_bytes, fsync_dir, list_episodes
from mvvdp_core.model.checkpoint import (
    LATEST_POINTER,
    RUN_CHECKPOINTS_DIR,
    ModelParts,
    build_model_parts,
    load_checkpoint,
    random_text_embeddings,
    save_checkpoint,
)
from mvvdp_core.model.config import MVVDPConfig
from mvvdp_core.model.text import encode_prompts
from mvvdp_core.policy import MVVDPPolicy
from mvvdp_core.train.head import head_objective
from mvvdp_core.train.plots import plot_trajectories
from mvvdp_core.train.predictor import observation_from_step
from mvvdp_core.train.vae import fit_vae
from mvvdp_core.train.video import encode_latents, video_loss

CHECKPOINTS_DIR = RUN_CHECKPOINTS_DIR
LATEST_FILE = LATEST_POINTER
TRAINER_STATE = "trainer_state.pt"
SETTINGS_FILE = "train_settings.json"


@dataclass
class TrainSettings:
    """Everything `mvvdp train` can set; defaults follow the paper's Table 5 where it gives them."""

    config: str = "tiny"  # tiny | wan22
    steps: int = 1000
    batch_size: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.0
    head_lr: float = 1e-4
    head_weight_decay: float = 1e-5
    head_latent_noise: float = 0.05
    rgb_loss_weight: float = 0.5
    vae_steps: int | None = None  # fit the VAE first; None: 300 for a random (tiny) base, else 0
    vae_lr: float = 1e-3
    base_model: str | None = None
    text_encoder: str | None = None  # local umT5 (or Wan2.2 diffusers) folder; None: random task embeddings
    tokenizer: str | None = None  # default: found next to text_encoder
    prompts: dict[str, str] = field(default_factory=dict)  # task -> instruction, used with text_encoder
    config_overrides: dict[str, Any] = field(default_factory=dict)  # MVVDPConfig fields, e.g. image_size
    workspace_center: tuple[float, float, float] | None = None  # None: from the episodes' meta, else default
    workspace_edge: float | None = None
    frame_stride: int = 1
    augment: bool = True
    max_yaw_deg: float = 15.0
    max_translation: float = 0.05
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    log_every: int = 10
    val_episodes: int = 2
    seed: int = 0
    mixed_precision: str = "no"  # no | fp16 | bf16
    num_workers: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.config not in ("tiny", "wan22"):
            raise ValueError(f"config must be 'tiny' or 'wan22', got {self.config!r}")
        if self.steps < 1 or self.batch_size < 1 or self.checkpoint_every < 1 or self.keep_checkpoints < 1:
            raise ValueError("steps, batch_size, checkpoint_every and keep_checkpoints must be >= 1")
        for name in ("lr", "head_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.config == "wan22" and self.base_model is None:
            raise ValueError("the wan22 config needs --base-model, a local Wan2.2-TI2V-5B diffusers folder")
        if self.workspace_center is not None:
            self.workspace_center = tuple(float(c) for c in self.workspace_center)
        if self.prompts and self.text_encoder is None:
            raise ValueError("task prompts need --text-encoder, a local umT5 encoder folder")


@dataclass
class TrainResult:
    checkpoint: Path
    start_step: int  # steps already done when this run began (resume)
    end_step: int
    video_losses: list[float]
    head_losses: list[float]
    vae_losses: list[float]
    parameters: int
    trainable: int
    val_position_error: float | None


def model_config(settings: TrainSettings, episodes: Sequence[Episode]) -> MVVDPConfig:
    """The model config for this run: preset, workspace (settings, else the episodes' meta), overrides."""
    overrides = dict(settings.config_overrides)
    center, edge = settings.workspace_center, settings.workspace_edge
    meta = episodes[0].meta if episodes else {}
    if center is None and "workspace_center" in meta:
        center = tuple(meta["workspace_center"])
    if edge is None and "workspace_edge" in meta:
        edge = float(meta["workspace_edge"])
    if center is not None:
        overrides.setdefault("workspace_center", center)
    if edge is not None:
        overrides.setdefault("workspace_edge", edge)
    overrides.setdefault("rgb_loss_weight", settings.rgb_loss_weight)
    if settings.config == "tiny":
        return MVVDPConfig.tiny(**overrides)
    return MVVDPConfig.wan22_ti2v_5b(base_model_path=settings.base_model, **overrides)


def episode_task(episode: Episode) -> str:
    return str(episode.meta.get("task", "default"))


def load_episodes(data: str | Path | Sequence[str | Path]) -> list[Episode]:
    """Recorded episodes with steps; episodes whose summary says success False are skipped (logged)."""
    roots = [data] if isinstance(data, str | Path) else list(data)
    found = [e for root in roots for e in list_episodes(root)]
    episodes = [e for e in found if e.success is not False]
    if len(episodes) < len(found):
        tqdm.write(f"skipped {len(found) - len(episodes)} of {len(found)} episodes marked unsuccessful")
    if not episodes:
        raise ValueError(f"no recorded successful episodes with steps under {[str(r) for r in roots]}")
    return episodes


def latest_checkpoint(out: str | Path) -> Path | None:
    """The last complete checkpoint under out/checkpoints, or None."""
    pointer = Path(out) / CHECKPOINTS_DIR / LATEST_FILE
    if not pointer.is_file():
        return None
    path = pointer.parent / pointer.read_text().strip()
    return path if (path / TRAINER_STATE).is_file() else None


def task_text_embeddings(
    settings: TrainSettings, config: MVVDPConfig, tasks: list[str]
) -> tuple[dict[str, torch.Tensor], str]:
    """Starting text embeddings per task and a line saying where they came from.

    With settings.text_encoder every task needs a prompt; without it the embeddings are random.
    """
    if settings.text_encoder is None:
        return random_text_embeddings(config, tasks, settings.seed), (
            f"text embeddings: random per task {tasks} (no --text-encoder given)"
        )
    missing = sorted(set(tasks) - set(settings.prompts))
    unknown = sorted(set(settings.prompts) - set(tasks))
    if missing or unknown:
        raise ValueError(
            f"--prompt must name exactly the recorded tasks {tasks}: "
            f"missing {missing}, no episodes for {unknown}"
        )
    text = encode_prompts(
        settings.prompts, settings.text_encoder, settings.tokenizer, max_length=config.text_len,
        text_dim=config.text_dim, progress=settings.progress,
    )  # fmt: skip
    return text, f"text embeddings: umT5 encoding of the task prompts {tasks} from {settings.text_encoder}"


def build_parts(
    settings: TrainSettings, config: MVVDPConfig, tasks: list[str], log: Callable[[str], None] | None = None
) -> ModelParts:
    """Fresh parts: a random tiny model, or the local Wan2.2 base with new LoRA, view attention and head."""
    text, source = task_text_embeddings(settings, config, tasks)
    if log is not None:
        log(source)
    if config.base_model_path is None:
        parts = build_model_parts(config, seed=settings.seed, tasks=tasks)
        parts.text_embeddings = text
        return parts
    from mvvdp_core.model.checkpoint import build_head, build_transformer, load_base_model
    from mvvdp_core.model.vae import VideoVAE

    torch.manual_seed(settings.seed)
    base, vae = load_base_model(config, Path(config.base_model_path), torch.float32)
    transformer = build_transformer(config, base)
    return ModelParts(transformer, VideoVAE(vae), build_head(config), text)


def count_parameters(parts: ModelParts) -> tuple[int, int]:
    modules = (parts.transformer, parts.vae, parts.head)
    total = sum(p.numel() for m in modules for p in m.parameters())
    trainable = sum(p.numel() for p in parts.transformer.parameters() if p.requires_grad)
    trainable += sum(p.numel() for p in parts.head.parameters())
    return total, trainable


def _cycle(loader: DataLoader) -> Iterator[dict[str, torch.Tensor]]:
    while True:
        yield from loader


class MemoizedDataset(torch.utils.data.Dataset):
    """Keeps every item once built: for datasets without augmentation, whose items never change."""

    def __init__(self, dataset: EpisodeDataset) -> None:
        self.dataset = dataset
        self.items: dict[int, dict[str, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        if item not in self.items:
            self.items[item] = {**self.dataset[item], "item": torch.tensor(item)}
        return self.items[item]


class LatentCache:
    """Clean latents per dataset item, for items that never change (no augmentation, frozen VAE)."""

    def __init__(self) -> None:
        self.latents: dict[int, torch.Tensor] = {}

    def __call__(self, vae: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        items = [int(i) for i in batch["item"]]
        missing = [k for k, i in enumerate(items) if i not in self.latents]
        if missing:
            fresh = encode_latents(vae, {key: value[missing] for key, value in batch.items()})
            for k, latent in zip(missing, fresh, strict=True):
                self.latents[items[k]] = latent
        return torch.stack([self.latents[i] for i in items])


def _seed_worker(worker_id: int) -> None:
    info = torch.utils.data.get_worker_info()
    if info is not None:
        info.dataset._rng = np.random.default_rng(torch.initial_seed() % 2**32)


@torch.no_grad()
def validation_errors(
    parts: ModelParts,
    config: MVVDPConfig,
    dataset: EpisodeDataset,
    episodes: Sequence[int],
    out_dir: Path | None = None,
    start_step: int = 0,
) -> list[float]:
    """Mean position error (m) of the chunk predicted from start_step of each episode; plots into out_dir."""
    policy = MVVDPPolicy(parts, config)
    errors = []
    try:
        for index in episodes:
            episode = dataset.episodes[index]
            item = dataset.index.index((index, min(start_step, len(episode) - 1)))
            _, steps = dataset.frames(item)
            true = np.stack([episode.records[s].ee_position for s in steps[1:]])
            obs = observation_from_step(episode.step(int(steps[0])), policy, episode_task(episode))
            predicted = policy.predict(obs, seed=0).chunk.positions
            errors.append(float(np.linalg.norm(predicted - true, axis=1).mean()))
            if out_dir is not None:
                name = f"trajectory_{episode.root.name}.png"
                title = f"{episode.root.name} from step {int(steps[0])}"
                plot_trajectories(predicted, true, out_dir / name, title, obs.ee_position)
    finally:
        for module in (parts.transformer, parts.head):
            module.train()
    return errors


def _save_checkpoint(
    out: Path, step: int, parts: ModelParts, config: MVVDPConfig, state: dict[str, Any], keep: int
) -> Path:
    """Write checkpoints/step_N via a temporary folder + rename, then point `latest` at it."""
    root = out / CHECKPOINTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:07d}"
    tmp = root / f".tmp_step_{step:07d}_{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    save_checkpoint(parts, config, tmp)
    torch.save(state, tmp / TRAINER_STATE)
    for file in tmp.rglob("*"):
        if file.is_file():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(root)
    atomic_write_bytes(root / LATEST_FILE, final.name.encode())
    old = sorted(p for p in root.glob("step_*") if p.is_dir() and p != final)
    for stale in old[: max(len(old) - (keep - 1), 0)]:
        shutil.rmtree(stale, ignore_errors=True)
    return final


def train(
    data: str | Path | Sequence[str | Path], out: str | Path, settings: TrainSettings, resume: bool = False
) -> TrainResult:
    """Train on the episodes under data (one folder or several) and write checkpoints under out."""
    from accelerate import Accelerator
    from torch.utils.tensorboard import SummaryWriter

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    accelerator = Accelerator(mixed_precision=settings.mixed_precision)
    episodes = load_episodes(data)
    tasks = sorted({episode_task(e) for e in episodes})
    previous = latest_checkpoint(out) if resume else None
    if previous is not None:
        parts, config = load_checkpoint(previous)
        state = torch.load(previous / TRAINER_STATE, weights_only=True)
        missing = sorted(set(tasks) - set(parts.text_embeddings))
        if missing:
            raise ValueError(f"checkpoint {previous} has no text embedding for tasks {missing}")
        if accelerator.is_main_process:
            tqdm.write(f"text embeddings: from the resumed checkpoint {previous}")
    else:
        config = model_config(settings, episodes)
        parts = build_parts(settings, config, tasks, log=tqdm.write if accelerator.is_main_process else None)
        state = None
    workspace = config.workspace()
    augment = AugmentConfig(settings.max_yaw_deg, settings.max_translation) if settings.augment else None
    sample_config = SampleConfig(
        workspace=workspace, future_frames=config.future_frames, frame_stride=settings.frame_stride,
        sigma=config.sigma, augment=augment, rotation_bins=config.rotation_bins,
    )  # fmt: skip
    plain = EpisodeDataset(episodes, replace(sample_config, augment=None))
    dataset: torch.utils.data.Dataset = (
        EpisodeDataset(episodes, sample_config, seed=settings.seed + accelerator.process_index)
        if augment is not None
        else MemoizedDataset(plain)
    )
    latent_cache = LatentCache() if augment is None and settings.num_workers == 0 else None
    loader = DataLoader(
        dataset, batch_size=settings.batch_size, shuffle=True, num_workers=settings.num_workers,
        worker_init_fn=_seed_worker, drop_last=len(dataset) >= settings.batch_size,
        generator=torch.Generator().manual_seed(settings.seed),
    )  # fmt: skip
    generator = torch.Generator().manual_seed(settings.seed + 1000 * accelerator.process_index)
    parts.vae.to(accelerator.device)
    vae_losses: list[float] = []
    vae_steps = settings.vae_steps if settings.vae_steps is not None else (
        300 if config.base_model_path is None else 0
    )
    if previous is None and vae_steps > 0:
        vae_losses = fit_vae(parts.vae, _cycle(loader), vae_steps, settings.vae_lr, generator=generator,
                             progress=settings.progress and accelerator.is_main_process)
        if accelerator.num_processes > 1:  # every process fitted its own copy: keep the first one's
            from accelerate.utils import broadcast

            for param in parts.vae.parameters():
                param.data.copy_(broadcast(param.data.clone(), from_process=0))
    parts.vae.requires_grad_(False).eval()
    trainable = [p for p in parts.transformer.parameters() if p.requires_grad]
    video_optimizer = torch.optim.AdamW(trainable, lr=settings.lr, weight_decay=settings.weight_decay)
    head_optimizer = torch.optim.AdamW(
        parts.head.parameters(), lr=settings.head_lr, weight_decay=settings.head_weight_decay
    )
    start_step = 0
    if state is not None:
        video_optimizer.load_state_dict(state["video_optimizer"])
        head_optimizer.load_state_dict(state["head_optimizer"])
        generator.set_state(state["generator"])
        start_step = int(state["step"])
        vae_losses = list(state.get("vae_losses", []))
    transformer, head, video_optimizer, head_optimizer, loader = accelerator.prepare(
        parts.transformer, parts.head, video_optimizer, head_optimizer, loader
    )
    transformer.train()
    head.train()
    text = {task: emb.to(accelerator.device) for task, emb in parts.text_embeddings.items()}
    episode_tasks = [episode_task(e) for e in episodes]
    writer = SummaryWriter(str(out / "tensorboard")) if accelerator.is_main_process else None
    if accelerator.is_main_process:
        (out / SETTINGS_FILE).write_text(json.dumps(asdict(settings), indent=1, default=str))
    for i, loss in enumerate(vae_losses if previous is None and writer is not None else []):
        writer.add_scalar("vae/loss", loss, i)
    val_indices = list(range(min(settings.val_episodes, len(episodes))))
    total, num_trainable = count_parameters(parts)
    video_losses: list[float] = []
    head_losses: list[float] = []
    batches = _cycle(loader)
    checkpoint = previous
    val_error = None
    bar = tqdm(
        range(start_step + 1, settings.steps + 1), desc="train", initial=start_step, total=settings.steps,
        disable=not (settings.progress and accelerator.is_main_process),
    )  # fmt: skip
    for step in bar:
        batch = next(batches)
        encode = latent_cache if latent_cache is not None else encode_latents
        latents = encode(parts.vae, batch)
        task_text = torch.stack([text[episode_tasks[int(e)]] for e in batch["episode"]])
        with accelerator.autocast():
            vloss = video_loss(transformer, latents, task_text, config.num_train_timesteps, config.flow_shift,
                               config.rgb_loss_weight, generator)
        accelerator.backward(vloss.total)
        video_optimizer.step()
        video_optimizer.zero_grad(set_to_none=True)
        with accelerator.autocast():
            targets = batch["positions"], batch["rotation_bins"], batch["gripper"]
            hloss = head_objective(head, latents, *targets, workspace, settings.head_latent_noise, generator)
        accelerator.backward(hloss.total)
        head_optimizer.step()
        head_optimizer.zero_grad(set_to_none=True)
        video_losses.append(vloss.total.item())
        head_losses.append(hloss.total.item())
        if not (math.isfinite(video_losses[-1]) and math.isfinite(head_losses[-1])):
            raise FloatingPointError(f"loss became non-finite at step {step}: video {vloss.total}, "
                                     f"head {hloss.total}")
        bar.set_postfix(video=f"{video_losses[-1]:.4f}", head=f"{head_losses[-1]:.3f}")
        if writer is not None and (step % settings.log_every == 0 or step == settings.steps):
            scalars = {
                "video/loss": vloss.total, "video/rgb": vloss.rgb, "video/heatmap": vloss.heatmap,
                "head/loss": hloss.total,
                "head/rotation_accuracy": hloss.rotation_accuracy,
                "head/gripper_accuracy": hloss.gripper_accuracy,
            }  # fmt: skip
            for name, value in scalars.items():
                writer.add_scalar(name, float(torch.as_tensor(value).detach()), step)
        if step % settings.checkpoint_every == 0 or step == settings.steps:
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                unwrapped = ModelParts(
                    accelerator.unwrap_model(transformer), parts.vae, accelerator.unwrap_model(head),
                    parts.text_embeddings,
                )  # fmt: skip
                trainer_state = {
                    "step": step,
                    "video_optimizer": video_optimizer.state_dict(),
                    "head_optimizer": head_optimizer.state_dict(),
                    "generator": generator.get_state(),
                    "vae_losses": vae_losses,
                    "settings": asdict(settings),
                }
                checkpoint = _save_checkpoint(out, step, unwrapped, config, trainer_state,
                                              settings.keep_checkpoints)
                errors = validation_errors(unwrapped, config, plain, val_indices, checkpoint)
                val_error = float(np.mean(errors)) if errors else None
                if writer is not None and val_error is not None:
                    writer.add_scalar("val/position_error", val_error, step)
            accelerator.wait_for_everyone()
    if writer is not None:
        writer.close()
    if checkpoint is None:
        raise RuntimeError("training finished without writing a checkpoint")
    end_step = max(settings.steps, start_step)
    return TrainResult(
        checkpoint, start_step, end_step, video_losses, head_losses, vae_losses, total, num_trainable,
        val_error,
    )  # fmt: skip


def train_from_episodes(
    data: Sequence[str | Path], out: str | Path, settings: TrainSettings
) -> tuple[Path, dict[str, float]]:
    """Train (resuming when out already holds a checkpoint); returns the checkpoint and model size figures."""
    result = train(data, out, settings, resume=True)
    return result.checkpoint, {"parameters": result.parameters, "trainable": result.trainable}
