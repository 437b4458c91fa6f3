"""Training loop for the video-model LoRA (+ view attention) and the rotation/gripper head.

Without a pretrained base (tiny, small) every transformer weight trains and the VAE is fitted first
(mvvdp_core.train.vae); on the Wan2.2 base only LoRA and view attention train (the paper). One loop trains
both modules on the same batches: the VAE (frozen) encodes the sample's RGB and heatmap
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
import time
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
    load_base_model,
    load_checkpoint,
    load_config,
    random_text_embeddings,
    resolve_checkpoint,
    save_checkpoint,
)
from mvvdp_core.model.config import MVVDPConfig
from mvvdp_core.model.text import encode_prompts
from mvvdp_core.model.vae import VideoVAE
from mvvdp_core.policy import MVVDPPolicy
from mvvdp_core.threads import set_torch_threads
from mvvdp_core.train.head import head_objective
from mvvdp_core.train.latents import LatentStore
from mvvdp_core.train.plots import plot_trajectories
from mvvdp_core.train.predictor import observation_from_step
from mvvdp_core.train.vae import fit_vae, heatmap_roundtrip_errors, latent_statistics, roundtrip_summary
from mvvdp_core.train.video import encode_latents, video_loss

CHECKPOINTS_DIR = RUN_CHECKPOINTS_DIR
LATEST_FILE = LATEST_POINTER
TRAINER_STATE = "trainer_state.pt"
SETTINGS_FILE = "train_settings.json"
VAE_REPORT_FILE = "vae_roundtrip.json"


@dataclass
class TrainSettings:
    """Everything `mvvdp train` can set; defaults follow the paper's Table 5 where it gives them."""

    config: str = "tiny"  # model preset: tiny | small | wan22
    # lora: LoRA + view attention on a pretrained base (the paper); full: every transformer weight trains
    # (from scratch: adapters on random weights do not learn); auto: lora with --base-model, else full
    mode: str = "auto"
    steps: int = 1000
    batch_size: int = 1
    lr: float = 1e-4
    lr_warmup: int = 0  # steps of linear warm-up
    lr_schedule: str = "constant"  # constant | cosine (to 10 % of lr at the last step)
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max gradient norm (0: off)
    head_lr: float = 1e-4
    head_weight_decay: float = 1e-5
    head_latent_noise: float = 0.05
    rgb_loss_weight: float = 0.5
    vae_steps: int | None = None  # fit the VAE first; None: 300 for a model without a pretrained VAE, else 0
    vae_lr: float = 1e-3
    # RGB pixels off the view's background (arm, objects) weigh 1 + this in the VAE fit, and the RGB condition
    # frames get a term of their own; 0: an unweighted RGB loss (all capacity left to the heatmaps)
    vae_foreground_weight: float = 20.0
    vae_report_samples: int = 8  # samples for the latent statistics and the VAE round-trip report
    vae_from: str | None = None  # take the fitted VAE of this checkpoint (or run folder) instead of fitting
    base_model: str | None = None
    text_encoder: str | None = None  # local umT5 (or Wan2.2 diffusers) folder; None: random task embeddings
    tokenizer: str | None = None  # default: found next to text_encoder
    prompts: dict[str, str] = field(default_factory=dict)  # task -> instruction, used with text_encoder
    config_overrides: dict[str, Any] = field(default_factory=dict)  # MVVDPConfig fields, e.g. image_size
    workspace_center: tuple[float, float, float] | None = None  # None: from the episodes' meta, else default
    workspace_edge: float | None = None
    frame_stride: int = 1
    start_stride: int = 1  # condition frames at every start_stride-th recorded step
    augment: bool = True
    augment_copies: int = 0  # 0: a fresh scene motion per sample; k: k fixed copies per episode (cached)
    max_yaw_deg: float = 15.0
    max_translation: float = 0.05
    latent_cache: str | None = None  # folder of cached latents; None: <out>/latent_cache
    include_failed: bool = False  # also train on episodes recorded as failed
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    log_every: int = 10
    val_episodes: int = 2
    seed: int = 0
    threads: int | None = None  # torch CPU threads; None: half the cores
    mixed_precision: str = "no"  # no | fp16 | bf16
    num_workers: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.config not in ("tiny", "small", "wan22"):
            raise ValueError(f"config must be 'tiny', 'small' or 'wan22', got {self.config!r}")
        if self.mode not in ("auto", "lora", "full"):
            raise ValueError(f"mode must be 'auto', 'lora' or 'full', got {self.mode!r}")
        if self.mode == "lora" and self.base_model is None:
            raise ValueError(
                "--mode lora needs --base-model (a pretrained Wan2.2 folder): LoRA adapters on a randomly "
                "initialised transformer do not learn; use --mode full to train a model from scratch"
            )
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        if self.steps < 1 or self.batch_size < 1 or self.checkpoint_every < 1 or self.keep_checkpoints < 1:
            raise ValueError("steps, batch_size, checkpoint_every and keep_checkpoints must be >= 1")
        if self.vae_foreground_weight < 0:
            raise ValueError(f"vae_foreground_weight must be >= 0, got {self.vae_foreground_weight}")
        if self.lr_warmup < 0 or self.augment_copies < 0 or self.start_stride < 1 or self.grad_clip < 0:
            raise ValueError("lr_warmup, augment_copies, grad_clip must be >= 0 and start_stride >= 1")
        for name in ("lr", "head_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.config == "wan22" and self.base_model is None:
            raise ValueError("the wan22 config needs --base-model, a local Wan2.2-TI2V-5B diffusers folder")
        if self.workspace_center is not None:
            self.workspace_center = tuple(float(c) for c in self.workspace_center)
        if self.prompts and self.text_encoder is None:
            raise ValueError("task prompts need --text-encoder, a local umT5 encoder folder")

    @property
    def training_mode(self) -> str:
        """lora or full, as chosen (auto: lora on a pretrained base, full without one)."""
        if self.mode != "auto":
            return self.mode
        return "lora" if self.base_model is not None else "full"


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
    mode: str = "full"
    vae_roundtrip_cm: list[float] | None = None  # mean error per frame (condition frame first)
    seconds_per_step: float | None = None


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
    if settings.config == "wan22":
        overrides["base_model_path"] = settings.base_model
    config = MVVDPConfig.preset(settings.config, **overrides)
    if settings.training_mode == "full" and config.uses_lora:
        config = replace(config, lora_rank=0)
    elif settings.training_mode == "lora" and not config.uses_lora:
        raise ValueError("--mode lora needs a preset or override with lora_rank > 0")
    return config


def episode_task(episode: Episode) -> str:
    return str(episode.meta.get("task", "default"))


def load_episodes(
    data: str | Path | Sequence[str | Path],
    include_failed: bool = False,
    log: Callable[[str], None] | None = None,
) -> list[Episode]:
    """The recorded episodes under data; those recorded as failed are skipped unless include_failed."""
    roots = [data] if isinstance(data, str | Path) else list(data)
    found = [e for root in roots for e in list_episodes(root)]
    episodes = [e for e in found if include_failed or e.success is not False]
    if len(episodes) < len(found):
        (log or tqdm.write)(f"skipped {len(found) - len(episodes)} of {len(found)} episodes recorded as "
                            "unsuccessful")
    if not episodes:
        raise ValueError(f"no successful recorded episodes with steps under {[str(r) for r in roots]}")
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
            item = dataset.index.index((index, min(start_step, len(episode) - 1)))  # plain: every step
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


def _lr_lambda(settings: TrainSettings) -> Callable[[int], float]:
    """Learning-rate factor per step: linear warm-up, then constant or cosine down to 10 %."""

    def factor(step: int) -> float:
        if step < settings.lr_warmup:
            return (step + 1) / settings.lr_warmup
        if settings.lr_schedule == "constant":
            return 1.0
        progress = (step - settings.lr_warmup) / max(settings.steps - settings.lr_warmup, 1)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


@dataclass
class TrainData:
    """The run's episodes and datasets (training samples, and unaugmented ones for validation)."""

    episodes: list[Episode]
    tasks: list[str]
    episode_tasks: list[str]
    train: EpisodeDataset
    plain: EpisodeDataset


def load_fitted_vae(path: str | Path, config: MVVDPConfig) -> VideoVAE:
    """The VAE of a checkpoint (or training run folder) whose VAE sizes match config's."""
    source = load_config(resolve_checkpoint(path))
    sizes = {k: v for k, v in config.vae.items() if not k.startswith("latents_")}
    theirs = {k: v for k, v in source.vae.items() if not k.startswith("latents_")}
    if sizes != theirs:
        raise ValueError(f"the VAE of {path} differs from this model's: {theirs} vs {sizes}")
    return VideoVAE(load_base_model(source, resolve_checkpoint(path), torch.float32)[1])


def build_data(settings: TrainSettings, config: MVVDPConfig, episodes: list[Episode], rank: int) -> TrainData:
    augment = AugmentConfig(settings.max_yaw_deg, settings.max_translation) if settings.augment else None
    sample_config = SampleConfig(
        workspace=config.workspace(), future_frames=config.future_frames, frame_stride=settings.frame_stride,
        sigma=config.sigma, augment=augment, augment_copies=settings.augment_copies,
        start_stride=settings.start_stride, rotation_bins=config.rotation_bins,
    )  # fmt: skip
    if sample_config.deterministic:  # every rendered step is reused by up to 1 + F samples
        sample_config = replace(sample_config, cache_views=100_000)
    plain = EpisodeDataset(episodes, replace(sample_config, augment=None, start_stride=1, cache_views=0))
    train_set = EpisodeDataset(episodes, sample_config, seed=settings.seed + (0 if augment is None else rank))
    tasks = sorted({episode_task(e) for e in episodes})
    return TrainData(episodes, tasks, [episode_task(e) for e in episodes], train_set, plain)


def _loader(dataset: EpisodeDataset, settings: TrainSettings) -> DataLoader:
    return DataLoader(
        dataset, batch_size=settings.batch_size, shuffle=True, num_workers=settings.num_workers,
        worker_init_fn=_seed_worker, drop_last=len(dataset) >= settings.batch_size,
        generator=torch.Generator().manual_seed(settings.seed),
    )  # fmt: skip


def _prepare_vae(
    parts: ModelParts, config: MVVDPConfig, data: TrainData, settings: TrainSettings, fit: bool,
    generator: torch.Generator, log: Callable[[str], None],
) -> tuple[list[float], list[float] | None]:
    """Fit the VAE (models without a pretrained one), measure its latent statistics and its heatmap round
    trip. Returns the fitting losses and the mean round-trip error per frame in cm."""
    vae_steps = settings.vae_steps if settings.vae_steps is not None else (
        300 if config.base_model_path is None else 0
    )
    losses: list[float] = []
    report = settings.vae_report_samples
    if fit and settings.vae_from is not None:
        fitted = load_fitted_vae(settings.vae_from, config)
        parts.vae.vae.load_state_dict(fitted.vae.state_dict())
        mean, std = fitted.latents_mean.flatten().tolist(), fitted.latents_std.flatten().tolist()
        parts.vae.set_latent_statistics(mean, std)
        config.vae.update(latents_mean=mean, latents_std=std)
        log(f"VAE: the fitted VAE of {settings.vae_from}")
    elif fit and vae_steps > 0:
        losses = fit_vae(parts.vae, _cycle(_loader(data.train, settings)), vae_steps, settings.vae_lr,
                         foreground_weight=settings.vae_foreground_weight,
                         generator=generator, progress=settings.progress)
        if report > 0:
            mean, std = latent_statistics(parts.vae, _cycle(_loader(data.plain, settings)), report)
            parts.vae.set_latent_statistics(mean, std)
            config.vae.update(latents_mean=mean, latents_std=std)
            log(f"VAE fitted in {vae_steps} steps (final loss {losses[-1]:.5f}); latent std per channel "
                f"{min(std):.2f}..{max(std):.2f}, stored as the normalisation")
    parts.vae.requires_grad_(False).eval()
    if report <= 0:
        return losses, None
    errors = heatmap_roundtrip_errors(parts.vae, _cycle(_loader(data.plain, settings)), config.workspace(),
                                      report)
    log(roundtrip_summary(errors))
    return losses, (100 * errors.mean(0)).tolist()


def train(
    data: str | Path | Sequence[str | Path], out: str | Path, settings: TrainSettings, resume: bool = False
) -> TrainResult:
    """Train on the episodes under data (one folder or several) and write checkpoints under out.

    Stages: data (successful episodes, samples), model (fresh or resumed), VAE (fitted and measured where no
    pretrained one exists), latents (cached on disk when samples are deterministic), optimisation of the
    video model and the head, checkpoints with validation plots.
    """
    from accelerate import Accelerator
    from torch.utils.tensorboard import SummaryWriter

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    accelerator = Accelerator(mixed_precision=settings.mixed_precision)
    main = accelerator.is_main_process

    def log(message: str) -> None:
        if main:
            tqdm.write(message)

    threads = set_torch_threads(settings.threads) if accelerator.device.type == "cpu" else None
    episodes = load_episodes(data, settings.include_failed, log)
    tasks = sorted({episode_task(e) for e in episodes})
    # Model ------------------------------------------------------------------------------------------
    previous = latest_checkpoint(out) if resume else None
    if previous is not None:
        parts, config = load_checkpoint(previous)
        state = torch.load(previous / TRAINER_STATE, weights_only=True)
        missing = sorted(set(tasks) - set(parts.text_embeddings))
        if missing:
            raise ValueError(f"checkpoint {previous} has no text embedding for tasks {missing}")
        log(f"text embeddings: from the resumed checkpoint {previous}")
    else:
        config = model_config(settings, episodes)
        parts = build_parts(settings, config, tasks, log=log)
        state = None
    mode = "lora" if config.uses_lora else "full"
    total, num_trainable = count_parameters(parts)
    log(f"training mode: {mode} ("
        + ("LoRA + view attention on the pretrained base" if mode == "lora"
           else "every transformer weight, no pretrained base") + f"); {total / 1e6:.2f} M parameters, "
        f"{num_trainable / 1e6:.3f} M trained; {len(episodes)} episodes"
        + (f"; {threads} CPU threads" if threads else ""))
    # Data and VAE -----------------------------------------------------------------------------------
    data_ = build_data(settings, config, episodes, accelerator.process_index)
    generator = torch.Generator().manual_seed(settings.seed + 1000 * accelerator.process_index)
    parts.vae.to(accelerator.device)
    vae_losses, roundtrip = _prepare_vae(parts, config, data_, settings, previous is None, generator, log)
    if accelerator.num_processes > 1 and previous is None:  # every process fitted its own copy: keep rank 0's
        from accelerate.utils import broadcast

        for tensor in [*parts.vae.parameters(), parts.vae.latents_mean, parts.vae.latents_std]:
            tensor.data.copy_(broadcast(tensor.data.clone(), from_process=0))
    if state is not None:
        vae_losses = list(state.get("vae_losses", []))
    # Latents ----------------------------------------------------------------------------------------
    store = None
    if data_.train.config.deterministic and settings.num_workers == 0:
        cache_root = Path(settings.latent_cache) if settings.latent_cache else out / "latent_cache"
        store = LatentStore(data_.train, parts.vae, cache_root)
        started = time.perf_counter()
        encoded = store.fill(progress=settings.progress and main)
        if encoded:
            seconds = (time.perf_counter() - started) / encoded
            log(f"latents: encoded {encoded} samples ({seconds:.2f} s each), {store.hits} from the cache "
                f"{cache_root}")
        else:
            log(f"latents: all {store.hits} samples from the cache {cache_root}")
    # Optimisers -------------------------------------------------------------------------------------
    trainable = [p for p in parts.transformer.parameters() if p.requires_grad]
    video_optimizer = torch.optim.AdamW(trainable, lr=settings.lr, weight_decay=settings.weight_decay)
    head_optimizer = torch.optim.AdamW(
        parts.head.parameters(), lr=settings.head_lr, weight_decay=settings.head_weight_decay
    )
    schedules = [torch.optim.lr_scheduler.LambdaLR(o, _lr_lambda(settings))
                 for o in (video_optimizer, head_optimizer)]
    start_step = 0
    if state is not None:
        video_optimizer.load_state_dict(state["video_optimizer"])
        head_optimizer.load_state_dict(state["head_optimizer"])
        for schedule, saved in zip(schedules, state.get("schedules", []), strict=False):
            schedule.load_state_dict(saved)
        generator.set_state(state["generator"])
        start_step = int(state["step"])
    loader = _loader(data_.train, settings) if store is None else None
    transformer, head, video_optimizer, head_optimizer = accelerator.prepare(
        parts.transformer, parts.head, video_optimizer, head_optimizer
    )
    batches = _cycle(accelerator.prepare(loader)) if loader is not None else None
    transformer.train()
    head.train()
    text = {task: emb.to(accelerator.device) for task, emb in parts.text_embeddings.items()}
    writer = SummaryWriter(str(out / "tensorboard")) if main else None
    if main:
        (out / SETTINGS_FILE).write_text(json.dumps(asdict(settings), indent=1, default=str))
    for i, loss in enumerate(vae_losses if previous is None and writer is not None else []):
        writer.add_scalar("vae/loss", loss, i)
    for frame, error in enumerate(roundtrip or [] if writer is not None else []):
        writer.add_scalar("vae/roundtrip_cm", error, frame)
    # Loop -------------------------------------------------------------------------------------------
    val_indices = list(range(min(settings.val_episodes, len(episodes))))
    video_losses: list[float] = []
    head_losses: list[float] = []
    checkpoint = previous
    val_error = None
    workspace = config.workspace()
    step_times: list[float] = []
    bar = tqdm(
        range(start_step + 1, settings.steps + 1), desc="train", initial=start_step, total=settings.steps,
        disable=not (settings.progress and main),
    )  # fmt: skip
    for step in bar:
        started = time.perf_counter()
        if store is not None:
            items = torch.randint(0, len(data_.train), (settings.batch_size,), generator=generator).tolist()
            latents, targets = store.batch(items)
            latents = latents.to(accelerator.device)
            targets = {k: v.to(accelerator.device) for k, v in targets.items()}
        else:
            targets = next(batches)
            latents = encode_latents(parts.vae, targets)
        task_text = torch.stack([text[data_.episode_tasks[int(e)]] for e in targets["episode"]])
        with accelerator.autocast():
            vloss = video_loss(transformer, latents, task_text, config.num_train_timesteps, config.flow_shift,
                               config.rgb_loss_weight, generator)
        accelerator.backward(vloss.total)
        if settings.grad_clip > 0:
            accelerator.clip_grad_norm_(trainable, settings.grad_clip)
        video_optimizer.step()
        video_optimizer.zero_grad(set_to_none=True)
        with accelerator.autocast():
            hloss = head_objective(head, latents, targets["positions"], targets["rotation_bins"],
                                   targets["gripper"], workspace, settings.head_latent_noise, generator)
        accelerator.backward(hloss.total)
        head_optimizer.step()
        head_optimizer.zero_grad(set_to_none=True)
        for schedule in schedules:
            schedule.step()
        step_times.append(time.perf_counter() - started)
        video_losses.append(vloss.total.item())
        head_losses.append(hloss.total.item())
        if not (math.isfinite(video_losses[-1]) and math.isfinite(head_losses[-1])):
            raise FloatingPointError(f"loss became non-finite at step {step}: video {vloss.total}, "
                                     f"head {hloss.total}")
        bar.set_postfix(video=f"{video_losses[-1]:.4f}", head=f"{head_losses[-1]:.3f}")
        if writer is not None and (step % settings.log_every == 0 or step == settings.steps):
            scalars = {
                "video/loss": vloss.total, "video/rgb": vloss.rgb, "video/heatmap": vloss.heatmap,
                "head/loss": hloss.total, "head/rotation_accuracy": hloss.rotation_accuracy,
                "head/gripper_accuracy": hloss.gripper_accuracy, "lr": schedules[0].get_last_lr()[0],
            }  # fmt: skip
            for name, value in scalars.items():
                writer.add_scalar(name, float(torch.as_tensor(value).detach()), step)
        if step % settings.checkpoint_every == 0 or step == settings.steps:
            accelerator.wait_for_everyone()
            if main:
                unwrapped = ModelParts(
                    accelerator.unwrap_model(transformer), parts.vae, accelerator.unwrap_model(head),
                    parts.text_embeddings,
                )  # fmt: skip
                trainer_state = {
                    "step": step,
                    "video_optimizer": video_optimizer.state_dict(),
                    "head_optimizer": head_optimizer.state_dict(),
                    "schedules": [schedule.state_dict() for schedule in schedules],
                    "generator": generator.get_state(),
                    "vae_losses": vae_losses,
                    "settings": asdict(settings),
                }
                checkpoint = _save_checkpoint(out, step, unwrapped, config, trainer_state,
                                              settings.keep_checkpoints)
                if roundtrip is not None:
                    (checkpoint / VAE_REPORT_FILE).write_text(json.dumps({"roundtrip_cm": roundtrip}))
                errors = validation_errors(unwrapped, config, data_.plain, val_indices, checkpoint)
                val_error = float(np.mean(errors)) if errors else None
                if val_error is not None:
                    log(f"step {step}: validation position error {100 * val_error:.1f} cm")
                    if writer is not None:
                        writer.add_scalar("val/position_error", val_error, step)
            accelerator.wait_for_everyone()
    if writer is not None:
        writer.close()
    if checkpoint is None:
        raise RuntimeError("training finished without writing a checkpoint")
    end_step = max(settings.steps, start_step)
    return TrainResult(
        checkpoint, start_step, end_step, video_losses, head_losses, vae_losses, total, num_trainable,
        val_error, mode, roundtrip, float(np.median(step_times)) if step_times else None,
    )  # fmt: skip


def train_from_episodes(
    data: Sequence[str | Path], out: str | Path, settings: TrainSettings
) -> tuple[Path, dict[str, float]]:
    """Train (resuming when out already holds a checkpoint); returns the checkpoint and model size figures."""
    result = train(data, out, settings, resume=True)
    return result.checkpoint, {"parameters": result.parameters, "trainable": result.trainable}
