"""Training loop for the video-model LoRA (+ view attention) and the rotation/gripper head.

Without a pretrained base (tiny, small) every transformer weight trains and the VAE is fitted first
(mvvdp_core.train.vae); on the Wan2.2 base only LoRA and view attention train (the paper). One loop trains
both modules on the same batches: the VAE (frozen) encodes the sample's RGB and heatmap
views, the transformer takes a flow-matching step on them (AdamW, lr 1e-4, no weight decay) and the head a
cross-entropy step on the same clean latents with a little noise (AdamW, lr 1e-4, weight decay 1e-5).
accelerate places everything on the device, wraps the trainable modules for DDP when several processes run,
and applies mixed precision. Checkpoints are written to a temporary folder and renamed into place, in the
model's checkpoint format plus a trainer_state.pt (step, schedules, random state) and, in the newest one,
optimizer.pt (AdamW state); `latest` names the last complete one, and a run with resume=True continues
from it. With a pretrained base, activation checkpointing is on and the frozen base is stored in bf16 on
CUDA; micro-batches accumulate to --global-batch. Every checkpoint gets one trajectory plot per
validation episode (predicted vs true positions of the first chunk).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
import torch
import tyro
from diffusers.training_utils import EMAModel
from torch.utils.data import DataLoader, WeightedRandomSampler
from tqdm import tqdm

from mvvdp_core.data.augment import AugmentConfig
from mvvdp_core.data.dataset import EpisodeDataset, SampleConfig, render_step_views
from mvvdp_core.data.episode import Episode, atomic_write_bytes, fsync_dir, list_episodes
from mvvdp_core.model.checkpoint import (
    LATEST_POINTER,
    RUN_CHECKPOINTS_DIR,
    ModelParts,
    build_model_parts,
    load_checkpoint,
    load_config,
    load_vae,
    random_text_embeddings,
    resolve_checkpoint,
    save_checkpoint,
)
from mvvdp_core.model.config import MVVDPConfig
from mvvdp_core.model.text import encode_prompts
from mvvdp_core.model.vae import VideoVAE
from mvvdp_core.policy import MVVDPPolicy
from mvvdp_core.threads import set_torch_threads
from mvvdp_core.train.head import HeadLoss, head_objective
from mvvdp_core.train.latents import LatentStore
from mvvdp_core.train.plots import plot_trajectories
from mvvdp_core.train.predictor import observation_from_step
from mvvdp_core.train.vae import (
    fit_vae,
    heatmap_roundtrip_errors,
    latent_statistics,
    roundtrip_summary,
    scene_background,
    scene_roundtrip_summary,
)
from mvvdp_core.train.video import VideoLoss, empty_heatmap_latents, encode_latents, video_loss

if TYPE_CHECKING:
    from accelerate import Accelerator
    from torch.utils.tensorboard import SummaryWriter

    from mvvdp_core.geometry.workspace import Workspace

CHECKPOINTS_DIR = RUN_CHECKPOINTS_DIR
LATEST_FILE = LATEST_POINTER
TRAINER_STATE = "trainer_state.pt"
OPTIMIZER_STATE = "optimizer.pt"  # AdamW moments: in the newest checkpoint only, unless optimizer_state=all
SETTINGS_FILE = "train_settings.json"
VAE_REPORT_FILE = "vae_roundtrip.json"


@dataclass
class TrainSettings:
    """Everything `mvvdp train` can set; defaults follow the paper's Table 5 where it gives them."""

    config: Literal["tiny", "small", "wan22"] = "tiny"  # model preset
    # lora: LoRA + view attention on a pretrained base (the paper); full: every transformer weight trains
    # (from scratch: adapters on random weights do not learn); auto: lora with --base-model, else full
    mode: Literal["auto", "lora", "full"] = "auto"
    steps: int = 1000  # optimiser step to stop after (a resumed run counts from its checkpoint)
    batch_size: int = 1  # samples per micro-batch and process
    lr: float = 1e-4  # video model learning rate (AdamW)
    lr_warmup: int = 0  # steps of linear warm-up
    lr_schedule: Literal["constant", "cosine"] = "constant"  # cosine: to 10 % of lr at the last step
    weight_decay: float = 0.0  # video model AdamW weight decay
    grad_clip: float = 1.0  # max gradient norm (0: off)
    # checkpoints hold an exponential moving average of the trained weights (transformer and head) with
    # this decay, warmed up from 0 (diffusers' EMAModel); validation measures those; 0: the weights as trained
    ema_decay: float = 0.0
    head_lr: float = 1e-4  # rotation/gripper head learning rate
    head_weight_decay: float = 1e-5  # head AdamW weight decay
    head_latent_noise: float = 0.05  # noise on the clean latents the head trains on
    rgb_loss_weight: float = 0.5  # weight of the RGB term of the video loss (heatmaps: 1 - this)
    # heatmap latent pixels weigh 1 + this times their distance from the background (the blob, i.e. the
    # end-effector path, dominates the heatmap term); 0: a plain MSE as in the paper
    heatmap_blob_weight: float = 0.0
    # fit the VAE first; None: 300 for a model without a pretrained or given VAE (vae_from, init_from),
    # else 0; with a given VAE, steps > 0 fine-tune it
    vae_steps: int | None = None
    vae_lr: float = 1e-3  # VAE fitting learning rate
    vae_condition_batch: int = 8  # RGB condition frames (of many scenes) reconstructed per VAE fitting step
    # RGB pixels off the scene background (objects, the moved arm: what the episodes' first frames do not
    # share) weigh 1 + this in the VAE fit, and the RGB condition frames get a term of their own; 0: an
    # unweighted RGB loss (all capacity left to the heatmaps)
    vae_foreground_weight: float = 20.0
    vae_report_samples: int = 8  # samples for the latent statistics and the VAE round-trip report
    vae_from: str | None = None  # take the fitted VAE of this checkpoint (or run folder) instead of fitting
    # start a new run (step 0, fresh optimisers) from this checkpoint's weights: transformer, head, text
    # embeddings and VAE (the model sizes must match the preset's)
    init_from: str | None = None
    base_model: str | None = None  # local Wan2.2-TI2V-5B diffusers folder (pretrained base)
    text_encoder: str | None = None  # local umT5 (or Wan2.2 diffusers) folder; None: random task embeddings
    tokenizer: str | None = None  # default: found next to text_encoder
    # task -> instruction, used with text_encoder (command line: --prompt NAME="instruction")
    prompts: Annotated[dict[str, str], tyro.conf.Suppress] = field(default_factory=dict)
    # MVVDPConfig fields, e.g. image_size (command line: --override FIELD=JSON)
    config_overrides: Annotated[dict[str, Any], tyro.conf.Suppress] = field(default_factory=dict)
    workspace_center: tuple[float, float, float] | None = None  # None: from the episodes' meta, else default
    workspace_edge: float | None = None  # workspace cube edge (m); None: as workspace_center
    frame_stride: int = 1  # recorded steps between the frames of a chunk
    start_stride: int = 1  # condition frames at every start_stride-th recorded step
    # chunks that start at an episode's first step are drawn this many times as often as the others
    first_chunk_weight: float = 1.0
    augment: bool = True  # SE(3) scene augmentation of clouds and poses
    augment_copies: int = 0  # 0: a fresh scene motion per sample; k: k fixed copies per episode (cached)
    max_yaw_deg: float = 15.0  # largest augmentation yaw
    max_translation: float = 0.05  # largest augmentation translation (m)
    latent_cache: str | None = None  # folder of cached latents; None: <out>/latent_cache
    include_failed: bool = False  # also train on episodes recorded as failed
    checkpoint_every: int = 500  # steps between checkpoints
    keep_checkpoints: int = 3  # newest checkpoints kept
    log_every: int = 10  # steps between TensorBoard scalars
    val_episodes: int = 2  # episodes held out for validation
    seed: int = 0  # random seed
    threads: int | None = None  # torch CPU threads; None: half the cores
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"  # auto: bf16 on CUDA, no elsewhere
    tf32: bool = True  # CUDA: TF32 matmuls and convolutions for what runs in float32
    base_dtype: Literal["auto", "fp32", "bf16"] = "auto"  # frozen base weights (lora); auto: bf16 on CUDA
    # None: on with a pretrained base (wan22), off otherwise
    gradient_checkpointing: Annotated[bool | None, tyro.conf.arg(constructor=bool)] = None
    grad_accumulation: int = 1  # micro-batches per optimiser step
    global_batch: int | None = None  # samples per optimiser step over all processes; sets grad_accumulation
    optimizer_state: Literal["latest", "all"] = "latest"  # checkpoints that keep the AdamW state
    num_workers: int = 0  # DataLoader worker processes
    progress: bool = True  # progress bars

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
        if self.mixed_precision not in ("auto", "no", "fp16", "bf16"):
            raise ValueError(f"mixed_precision must be auto, no, fp16 or bf16, got {self.mixed_precision!r}")
        if self.base_dtype not in ("auto", "fp32", "bf16"):
            raise ValueError(f"base_dtype must be auto, fp32 or bf16, got {self.base_dtype!r}")
        if self.optimizer_state not in ("latest", "all"):
            raise ValueError(f"optimizer_state must be latest or all, got {self.optimizer_state!r}")
        if self.grad_accumulation < 1 or (self.global_batch is not None and self.global_batch < 1):
            raise ValueError("grad_accumulation and global_batch must be >= 1")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        if self.steps < 1 or self.batch_size < 1 or self.checkpoint_every < 1 or self.keep_checkpoints < 1:
            raise ValueError("steps, batch_size, checkpoint_every and keep_checkpoints must be >= 1")
        if self.heatmap_blob_weight < 0:
            raise ValueError(f"heatmap_blob_weight must be >= 0, got {self.heatmap_blob_weight}")
        if self.vae_foreground_weight < 0:
            raise ValueError(f"vae_foreground_weight must be >= 0, got {self.vae_foreground_weight}")
        if self.vae_condition_batch < 1:
            raise ValueError(f"vae_condition_batch must be >= 1, got {self.vae_condition_batch}")
        if not self.first_chunk_weight > 0:
            raise ValueError(f"first_chunk_weight must be > 0, got {self.first_chunk_weight}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
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

    def accumulation(self, processes: int) -> int:
        """Micro-batches per optimiser step: global_batch / (batch_size * processes), else
        grad_accumulation."""
        if self.global_batch is None:
            return self.grad_accumulation
        per_step = self.batch_size * processes
        if self.global_batch % per_step:
            raise ValueError(
                f"global_batch {self.global_batch} is not a multiple of batch_size x processes = {per_step}"
            )
        return self.global_batch // per_step

    def precision(self, device: torch.device) -> str:
        """The mixed precision mode on this device (auto: bf16 on CUDA, none elsewhere)."""
        if self.mixed_precision != "auto":
            return self.mixed_precision
        return "bf16" if device.type == "cuda" else "no"

    def frozen_base_dtype(self, device: torch.device) -> torch.dtype:
        if self.base_dtype == "auto":
            return torch.bfloat16 if device.type == "cuda" else torch.float32
        return {"fp32": torch.float32, "bf16": torch.bfloat16}[self.base_dtype]

    def checkpointing(self, config: MVVDPConfig) -> bool:
        if self.gradient_checkpointing is not None:
            return self.gradient_checkpointing
        return config.base_model_path is not None

    @property
    def training_mode(self) -> str:
        """lora or full, as chosen (auto: lora on a pretrained base, full without one)."""
        if self.mode != "auto":
            return self.mode
        return "lora" if self.base_model is not None else "full"


def saved_settings(out: str | Path) -> dict[str, Any] | None:
    """The settings a run folder last trained with (its train_settings.json), as TrainSettings keys; None
    where the folder has none. Keys TrainSettings no longer has are dropped."""
    path = Path(out) / SETTINGS_FILE
    if not path.is_file():
        return None
    try:
        loaded = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read the run's settings {path}: {error}") from error
    if not isinstance(loaded, dict):
        raise ValueError(f"the run's settings {path} must be a mapping of TrainSettings keys")
    known = {f.name for f in fields(TrainSettings)}
    return {key: value for key, value in loaded.items() if key in known}


def changed_settings(saved: dict[str, Any], settings: TrainSettings) -> dict[str, tuple[Any, Any]]:
    """Settings whose value differs from a saved run's: name -> (saved, now), compared as JSON values."""
    now = json.loads(json.dumps(asdict(settings), default=str))
    before = json.loads(json.dumps(saved, default=str))
    return {name: (before.get(name), value) for name, value in now.items()
            if name in before and before[name] != value}


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
    return ModelParts(transformer, VideoVAE.from_autoencoder(vae), build_head(config), text)


def prepare_frozen_base(transformer: torch.nn.Module, dtype: torch.dtype) -> None:
    """Store the frozen base weights in dtype (Wan's float32 parts kept); LoRA and view attention, which
    train, stay in float32."""
    from mvvdp_core.model.transformer import cast_transformer

    cast_transformer(transformer, dtype)
    for param in transformer.parameters():
        if param.requires_grad:
            param.data = param.data.float()


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
            start = min(max(start_step, episode.train_from_step), len(episode) - 1)
            item = dataset.index.index((index, start))  # plain: every step from train_from_step
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
    out: Path, step: int, parts: ModelParts, config: MVVDPConfig, state: dict[str, Any], keep: int,
    optimizers: dict[str, Any] | None = None, optimizers_in_older: bool = False,
) -> Path:
    """Write checkpoints/step_N via a temporary folder + rename, then point `latest` at it. The model files
    hold only what trains (and a base model trained in full); the optimiser state goes to its own file, which
    older checkpoints lose unless optimizers_in_older."""
    root = out / CHECKPOINTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:07d}"
    tmp = root / f".tmp_step_{step:07d}_{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    save_checkpoint(parts, config, tmp)
    torch.save(state, tmp / TRAINER_STATE)
    if optimizers is not None:
        torch.save(optimizers, tmp / OPTIMIZER_STATE)
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
    if not optimizers_in_older:
        for older in old:
            (older / OPTIMIZER_STATE).unlink(missing_ok=True)
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
    """The run's episodes and datasets: training samples of the training episodes, and unaugmented samples
    of every episode (`plain`, for validation and the VAE's measurements). The first `held_out` episodes
    are validation episodes that training never sees; 0 when there are too few episodes to spare them,
    and validation then measures training episodes."""

    episodes: list[Episode]
    tasks: list[str]
    episode_tasks: list[str]  # task of each training episode, indexed like `train`'s episodes
    train: EpisodeDataset
    plain: EpisodeDataset
    held_out: int = 0
    validation: list[int] = field(default_factory=list)  # indices into `plain` of the validated episodes

    @property
    def train_episodes(self) -> list[Episode]:
        return self.episodes[self.held_out :]


def load_fitted_vae(path: str | Path, config: MVVDPConfig) -> VideoVAE:
    """The VAE of a checkpoint (or training run folder) whose VAE sizes match config's."""
    source = load_config(resolve_checkpoint(path))
    sizes = {k: v for k, v in config.vae.items() if not k.startswith("latents_")}
    theirs = {k: v for k, v in source.vae.items() if not k.startswith("latents_")}
    if sizes != theirs:
        raise ValueError(f"the VAE of {path} differs from this model's: {theirs} vs {sizes}")
    return load_vae(source, resolve_checkpoint(path))


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
    held_out = settings.val_episodes if len(episodes) > settings.val_episodes else 0
    training = episodes[held_out:]
    train_set = EpisodeDataset(training, sample_config, seed=settings.seed + (0 if augment is None else rank))
    tasks = sorted({episode_task(e) for e in episodes})
    validation = list(range(held_out or min(settings.val_episodes, len(episodes))))
    training_tasks = [episode_task(e) for e in training]
    return TrainData(episodes, tasks, training_tasks, train_set, plain, held_out, validation)


def _loader(dataset: EpisodeDataset, settings: TrainSettings) -> DataLoader:
    generator = torch.Generator().manual_seed(settings.seed)
    sampler = None
    if settings.first_chunk_weight != 1.0:
        weights = dataset.sample_weights(settings.first_chunk_weight)
        sampler = WeightedRandomSampler(weights, len(dataset), replacement=True, generator=generator)
    return DataLoader(
        dataset, batch_size=settings.batch_size, shuffle=sampler is None, sampler=sampler,
        num_workers=settings.num_workers, worker_init_fn=_seed_worker,
        drop_last=len(dataset) >= settings.batch_size, generator=generator,
    )  # fmt: skip


def condition_pool(episodes: list[Episode], workspace: Workspace, per_episode: int = 6) -> torch.Tensor:
    """RGB views (N, R, 3, H, W) of `per_episode` evenly spaced steps of every episode, unaugmented: the
    condition frames the VAE fit reconstructs on their own."""
    frames = []
    for episode in episodes:
        for k in np.unique(np.linspace(0, len(episode) - 1, per_episode).round().astype(int)):
            frames.append(render_step_views(episode.step(int(k)), workspace))
    return torch.stack(frames)


def _prepare_vae(
    parts: ModelParts, config: MVVDPConfig, data: TrainData, settings: TrainSettings, fit: bool,
    generator: torch.Generator, log: Callable[[str], None],
) -> tuple[list[float], list[float] | None]:
    """Fit the VAE (models without a pretrained one), measure its latent statistics and its heatmap round
    trip. Returns the fitting losses and the mean round-trip error per frame in cm."""
    given = settings.vae_from is not None or settings.init_from is not None  # a fitted VAE to start from
    vae_steps = settings.vae_steps if settings.vae_steps is not None else (
        300 if config.base_model_path is None and not given else 0
    )
    losses: list[float] = []
    report = settings.vae_report_samples
    if fit and settings.vae_from is not None:
        fitted = load_fitted_vae(settings.vae_from, config)
        parts.vae.vae.load_state_dict(fitted.vae.state_dict())
        mean, std = fitted.latents_mean.flatten().tolist(), fitted.latents_std.flatten().tolist()
        parts.vae.set_latent_statistics(mean, std)
        config.vae.update(latents_mean=mean, latents_std=std)
    if fit and given:
        log(f"VAE: the fitted VAE of {settings.vae_from or settings.init_from}"
            + (f", fine-tuned for {vae_steps} steps" if vae_steps > 0 else ""))
    if fit and vae_steps > 0:
        background = pool = None
        if settings.vae_foreground_weight > 0:
            background = scene_background(torch.stack([
                render_step_views(e.step(0), config.workspace()) for e in data.train_episodes
            ]))  # fmt: skip
            pool = condition_pool(data.train_episodes, config.workspace())
        losses = fit_vae(parts.vae, _cycle(_loader(data.train, settings)), vae_steps, settings.vae_lr,
                         foreground_weight=settings.vae_foreground_weight, generator=generator,
                         progress=settings.progress, background=background, condition_pool=pool,
                         condition_batch=settings.vae_condition_batch)
        if report > 0:
            mean, std = latent_statistics(parts.vae, _cycle(_loader(data.plain, settings)), report)
            parts.vae.set_latent_statistics(mean, std)
            config.vae.update(latents_mean=mean, latents_std=std)
            log(f"VAE fitted in {vae_steps} steps (final loss {losses[-1]:.5f}); latent std per channel "
                f"{min(std):.2f}..{max(std):.2f}, stored as the normalisation")
        if background is not None:
            log(scene_roundtrip_summary(parts.vae, data.episodes, config.workspace(), background))
    parts.vae.requires_grad_(False).eval()
    if report <= 0:
        return losses, None
    errors = heatmap_roundtrip_errors(parts.vae, _cycle(_loader(data.plain, settings)), config.workspace(),
                                      report)
    log(roundtrip_summary(errors))
    return losses, (100 * errors.mean(0)).tolist()


@dataclass
class _Run:
    """What every stage of one training run shares: its settings, output folder and accelerate."""

    settings: TrainSettings
    out: Path
    accelerator: Accelerator
    accumulation: int  # micro-batches per optimiser step
    threads: int | None  # torch CPU threads set for the run (CPU only)

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def log(self, message: str) -> None:
        """A line from the main process only."""
        if self.main:
            tqdm.write(message)


@dataclass
class _Model:
    """The model parts being trained, and where they came from."""

    parts: ModelParts
    config: MVVDPConfig
    previous: Path | None  # the checkpoint resumed from (None: a fresh model)
    state: dict[str, Any] | None  # its trainer state
    mode: str  # lora | full
    parameters: int
    trainable: int


@dataclass
class _Optimisers:
    """AdamW for the video model and the head, their learning-rate schedules and the step to start after."""

    trainable: list[torch.nn.Parameter]  # the transformer's trained parameters (gradient clipping)
    video: torch.optim.Optimizer
    head: torch.optim.Optimizer
    schedules: list[torch.optim.lr_scheduler.LambdaLR]
    start_step: int
    ema: EMAModel | None = None  # the average of ema_params (settings.ema_decay > 0)
    ema_params: list[torch.nn.Parameter] = field(default_factory=list)  # transformer (trained) and head

    def state(self) -> dict[str, Any]:
        """What a resumed run needs: the AdamW states and, with EMA, the average and the raw weights (the
        checkpoint's model files hold the average)."""
        state = {"video_optimizer": self.video.state_dict(), "head_optimizer": self.head.state_dict()}
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
            state["training_weights"] = [p.detach().clone() for p in self.ema_params]
        return state

    @contextmanager
    def averaged_weights(self) -> Iterator[None]:
        """The EMA weights in the model for the block (saving, validating); the trained ones after it."""
        if self.ema is None:
            yield
            return
        self.ema.store(self.ema_params)
        self.ema.copy_to(self.ema_params)
        try:
            yield
        finally:
            self.ema.restore(self.ema_params)


def _start_run(out: str | Path, settings: TrainSettings) -> _Run:
    """The output folder, accelerate (processes, device, mixed precision), TF32 and CPU threads."""
    from accelerate import Accelerator
    from torch.utils import tensorboard  # noqa: F401  (without tensorboard the run stops here, before any work)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    accelerator = Accelerator(mixed_precision=settings.precision(device))
    accumulation = settings.accumulation(accelerator.num_processes)
    if accelerator.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = settings.tf32
        torch.backends.cudnn.allow_tf32 = settings.tf32
    threads = set_torch_threads(settings.threads) if accelerator.device.type == "cpu" else None
    return _Run(settings, out, accelerator, accumulation, threads)


def _model(run: _Run, episodes: list[Episode], tasks: list[str], resume: bool) -> _Model:
    """Fresh parts, or those of the latest checkpoint under run.out with resume; the frozen base's dtype and
    activation checkpointing set."""
    settings, log = run.settings, run.log
    previous = latest_checkpoint(run.out) if resume else None
    if previous is not None:
        parts, config = load_checkpoint(previous)
        state = torch.load(previous / TRAINER_STATE, weights_only=True)
        missing = sorted(set(tasks) - set(parts.text_embeddings))
        if missing:
            raise ValueError(f"checkpoint {previous} has no text embedding for tasks {missing}")
        trained = state.get("settings", {}).get("config")
        if trained is not None and trained != settings.config:
            raise ValueError(f"cannot resume {previous} (config {trained!r}) with config "
                             f"{settings.config!r}: a run keeps its model config; drop --config or start a "
                             "new --out")
        log(f"text embeddings: from the resumed checkpoint {previous}")
    elif settings.init_from is not None:
        parts, config = _initial_weights(settings, model_config(settings, episodes), tasks, log)
        state = None
        log(f"weights: from {settings.init_from} (a new run: step 0, fresh optimisers)")
    else:
        config = model_config(settings, episodes)
        parts = build_parts(settings, config, tasks, log=log)
        state = None
    mode = "lora" if config.uses_lora else "full"
    base_dtype = settings.frozen_base_dtype(run.device)
    if mode == "lora" and base_dtype != torch.float32:
        prepare_frozen_base(parts.transformer, base_dtype)
    checkpointing = settings.checkpointing(config)
    parts.transformer.enable_gradient_checkpointing(checkpointing)
    accelerator = run.accelerator
    log(f"precision: {accelerator.mixed_precision} autocast"
        + (f", frozen base in {str(base_dtype).removeprefix('torch.')}" if mode == "lora" else "")
        + f", TF32 {'on' if settings.tf32 and accelerator.device.type == 'cuda' else 'off'}, activation "
        f"checkpointing {'on' if checkpointing else 'off'}; {run.accumulation} micro-batch(es) of "
        f"{settings.batch_size} per step on {accelerator.num_processes} process(es)")
    total, num_trainable = count_parameters(parts)
    log(f"training mode: {mode} ("
        + ("LoRA + view attention on the pretrained base" if mode == "lora"
           else "every transformer weight, no pretrained base") + f"); {total / 1e6:.2f} M parameters, "
        f"{num_trainable / 1e6:.3f} M trained; {len(episodes)} episodes"
        + (f"; {run.threads} CPU threads" if run.threads else ""))
    return _Model(parts, config, previous, state, mode, total, num_trainable)


def _sizes(config: MVVDPConfig) -> dict[str, Any]:
    """What fixes the shapes of a model's weights (not its latent statistics or data settings)."""
    vae = {k: v for k, v in config.vae.items() if not k.startswith("latents_")}
    return {"transformer": config.transformer, "vae": vae, "head": asdict(config.head),
            "image_size": config.image_size, "future_frames": config.future_frames,
            "num_rgb_views": config.num_rgb_views, "text_len": config.text_len, "lora_rank": config.lora_rank}


def _initial_weights(
    settings: TrainSettings, config: MVVDPConfig, tasks: list[str], log: Callable[[str], None]
) -> tuple[ModelParts, MVVDPConfig]:
    """The parts of settings.init_from, checked against the run's model config (its sizes); tasks it has no
    text embedding for get new ones (a model trained on one task starting another)."""
    source = resolve_checkpoint(settings.init_from)
    parts, theirs = load_checkpoint(source)
    if _sizes(theirs) != _sizes(config):
        raise ValueError(f"{source} is not a {settings.config} model of these sizes: it cannot initialise "
                         f"this run (compare its config.json with --config / --override)")
    missing = sorted(set(tasks) - set(parts.text_embeddings))
    if missing:
        text, how = task_text_embeddings(settings, config, tasks)
        parts.text_embeddings.update({task: text[task] for task in missing})
        log(f"{how}; kept from {source}: {sorted(set(tasks) - set(missing))}, new: {missing}")
    workspace = {"workspace_center": config.workspace_center, "workspace_edge": config.workspace_edge}
    return parts, replace(theirs, **workspace)


def _datasets(run: _Run, config: MVVDPConfig, episodes: list[Episode]) -> tuple[TrainData, torch.Generator]:
    """The training and validation datasets, and this process's random stream (noise, timesteps, draws)."""
    process = run.accelerator.process_index
    data = build_data(run.settings, config, episodes, process)
    if data.held_out:
        run.log(f"episodes: {len(data.train_episodes)} for training, {data.held_out} held out for validation")
    elif data.validation:
        run.log(f"episodes: all {len(episodes)} for training (too few to hold {run.settings.val_episodes} "
                "out); validation measures training episodes")
    if run.settings.first_chunk_weight != 1.0:
        weights = data.train.sample_weights(run.settings.first_chunk_weight)
        share = float(weights[weights != 1.0].sum() / weights.sum())
        run.log(f"sampling: chunks from an episode's first step weigh {run.settings.first_chunk_weight:g} "
                f"({share:.0%} of draws)")
    return data, torch.Generator().manual_seed(run.settings.seed + 1000 * process)


def _vae(
    run: _Run, model: _Model, data: TrainData, generator: torch.Generator
) -> tuple[list[float], list[float] | None]:
    """Fit (fresh runs) and measure the VAE on the device; its fitting losses (a resumed run's from its
    trainer state) and the heatmap round-trip error per frame in cm."""
    parts, fresh = model.parts, model.previous is None
    parts.vae.to(run.device)
    vae_losses, roundtrip = _prepare_vae(parts, model.config, data, run.settings, fresh, generator, run.log)
    if run.accelerator.num_processes > 1 and fresh:  # every process fitted its own copy: keep rank 0's
        from accelerate.utils import broadcast

        for tensor in [*parts.vae.parameters(), parts.vae.latents_mean, parts.vae.latents_std]:
            tensor.data.copy_(broadcast(tensor.data.clone(), from_process=0))
    if model.state is not None:
        vae_losses = list(model.state.get("vae_losses", []))
    return vae_losses, roundtrip


def _latent_store(run: _Run, vae: VideoVAE, data: TrainData) -> LatentStore | None:
    """Every training sample's latents, encoded once and cached on disk, when samples are deterministic
    (no fresh augmentation per draw) and loaded in this process; None otherwise."""
    settings = run.settings
    if not (data.train.config.deterministic and settings.num_workers == 0):
        return None
    cache_root = Path(settings.latent_cache) if settings.latent_cache else run.out / "latent_cache"
    store = LatentStore(data.train, vae, cache_root)
    started = time.perf_counter()
    encoded = store.fill(progress=settings.progress and run.main)
    if encoded:
        seconds = (time.perf_counter() - started) / encoded
        run.log(f"latents: encoded {encoded} samples ({seconds:.2f} s each), {store.hits} from the cache "
                f"{cache_root}")
    else:
        run.log(f"latents: all {store.hits} samples from the cache {cache_root}")
    return store


def _optimisers(run: _Run, model: _Model, generator: torch.Generator) -> _Optimisers:
    """AdamW and schedules; a resumed run restores them (the AdamW moments where the checkpoint kept them),
    the random stream and the step."""
    settings, parts, state, previous = run.settings, model.parts, model.state, model.previous
    trainable = [p for p in parts.transformer.parameters() if p.requires_grad]
    video_optimizer = torch.optim.AdamW(trainable, lr=settings.lr, weight_decay=settings.weight_decay)
    head_optimizer = torch.optim.AdamW(
        parts.head.parameters(), lr=settings.head_lr, weight_decay=settings.head_weight_decay
    )
    schedules = [torch.optim.lr_scheduler.LambdaLR(o, _lr_lambda(settings))
                 for o in (video_optimizer, head_optimizer)]  # fmt: skip
    start_step = 0
    ema_params = [*trainable, *parts.head.parameters()]
    ema = EMAModel(ema_params, decay=settings.ema_decay, use_ema_warmup=True) if settings.ema_decay else None
    if ema is not None:
        run.log(f"weights: checkpoints hold their moving average (EMA decay {settings.ema_decay})")
    if state is not None and previous is not None:
        saved = state if "video_optimizer" in state else None
        if saved is None and (previous / OPTIMIZER_STATE).is_file():
            saved = torch.load(previous / OPTIMIZER_STATE, weights_only=True)
        if saved is not None:
            video_optimizer.load_state_dict(saved["video_optimizer"])
            head_optimizer.load_state_dict(saved["head_optimizer"])
        else:
            run.log(f"{previous} keeps no optimiser state: AdamW moments start afresh")
        if saved is not None and "training_weights" in saved:
            with torch.no_grad():  # the checkpoint's model files hold the average: back to the raw weights
                for param, weights in zip(ema_params, saved["training_weights"], strict=True):
                    param.copy_(weights)
        if ema is not None and saved is not None and "ema" in saved:
            ema.load_state_dict(saved["ema"])
        elif ema is not None:
            run.log(f"{previous} keeps no weight average: EMA starts from its weights")
        for schedule, saved in zip(schedules, state.get("schedules", []), strict=False):
            schedule.load_state_dict(saved)
        generator.set_state(state["generator"])
        start_step = int(state["step"])
    return _Optimisers(trainable, video_optimizer, head_optimizer, schedules, start_step, ema, ema_params)


def _open_writer(
    run: _Run, fresh: bool, vae_losses: list[float], roundtrip: list[float] | None
) -> SummaryWriter | None:
    """TensorBoard (main process) with the VAE's fitting losses and round trip; the settings beside it."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(run.out / "tensorboard")) if run.main else None
    if run.main:
        (run.out / SETTINGS_FILE).write_text(json.dumps(asdict(run.settings), indent=1, default=str))
    for i, loss in enumerate(vae_losses if fresh and writer is not None else []):
        writer.add_scalar("vae/loss", loss, i)
    for frame, error in enumerate(roundtrip or [] if writer is not None else []):
        writer.add_scalar("vae/roundtrip_cm", error, frame)
    return writer


class _Loop:
    """The optimisation loop: steps over accumulated micro-batches, scalars, checkpoints with validation."""

    def __init__(
        self, run: _Run, model: _Model, data: TrainData, store: LatentStore | None, optimisers: _Optimisers,
        generator: torch.Generator, vae_losses: list[float], roundtrip: list[float] | None,
    ) -> None:  # fmt: skip
        self.run, self.model, self.data, self.store = run, model, data, store
        self.optimisers, self.generator = optimisers, generator
        self.vae_losses, self.roundtrip = vae_losses, roundtrip
        settings, parts, accelerator = run.settings, model.parts, run.accelerator
        loader = _loader(data.train, settings) if store is None else None
        self.transformer, self.head, optimisers.video, optimisers.head = accelerator.prepare(
            parts.transformer, parts.head, optimisers.video, optimisers.head
        )
        self.batches = _cycle(accelerator.prepare(loader)) if loader is not None else None
        self.transformer.train()
        self.head.train()
        self.text = {task: emb.to(accelerator.device) for task, emb in parts.text_embeddings.items()}
        self.writer = _open_writer(run, model.previous is None, vae_losses, roundtrip)
        self.val_indices = data.validation
        self.workspace = model.config.workspace()
        self.sample_weights = None
        if store is not None and settings.first_chunk_weight != 1.0:
            self.sample_weights = data.train.sample_weights(settings.first_chunk_weight)
        self.heatmap_background = None
        if settings.heatmap_blob_weight > 0:
            config = model.config
            self.heatmap_background = empty_heatmap_latents(
                parts.vae, 1 + config.future_frames, config.image_size
            ).to(accelerator.device)

    def _batch(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Latents and targets of one micro-batch: drawn from the latent store, else encoded from a batch."""
        device = self.run.device
        if self.store is not None:
            batch_size = self.run.settings.batch_size
            if self.sample_weights is None:
                draw = torch.randint(0, len(self.data.train), (batch_size,), generator=self.generator)
            else:
                draw = torch.multinomial(
                    self.sample_weights, batch_size, replacement=True, generator=self.generator
                )
            latents, targets = self.store.batch(draw.tolist())
            return latents.to(device), {k: v.to(device) for k, v in targets.items()}
        targets = next(self.batches)
        return encode_latents(self.model.parts.vae, targets), targets

    def _step(self) -> tuple[float, float, VideoLoss, HeadLoss]:
        """One optimiser step: the step's video and head losses, and the last micro-batch's loss terms."""
        settings, accelerator, accumulation = self.run.settings, self.run.accelerator, self.run.accumulation
        config, optimisers = self.model.config, self.optimisers
        step_video, step_head = 0.0, 0.0
        for micro in range(accumulation):
            latents, targets = self._batch()
            task_text = torch.stack([self.text[self.data.episode_tasks[int(e)]] for e in targets["episode"]])
            with ExitStack() as sync:
                if micro < accumulation - 1:  # gradients are reduced across processes on the last one only
                    sync.enter_context(accelerator.no_sync(self.transformer))
                    sync.enter_context(accelerator.no_sync(self.head))
                with accelerator.autocast():
                    vloss = video_loss(self.transformer, latents, task_text, config.num_train_timesteps,
                                       config.flow_shift, config.rgb_loss_weight, self.generator,
                                       settings.heatmap_blob_weight, self.heatmap_background)
                accelerator.backward(vloss.total / accumulation)
                with accelerator.autocast():
                    hloss = head_objective(self.head, latents, targets["positions"], targets["rotation_bins"],
                                           targets["gripper"], self.workspace, settings.head_latent_noise,
                                           self.generator)
                accelerator.backward(hloss.total / accumulation)
            step_video += vloss.total.item() / accumulation
            step_head += hloss.total.item() / accumulation
        if settings.grad_clip > 0:
            accelerator.clip_grad_norm_(optimisers.trainable, settings.grad_clip)
        optimisers.video.step()
        optimisers.video.zero_grad(set_to_none=True)
        optimisers.head.step()
        optimisers.head.zero_grad(set_to_none=True)
        for schedule in optimisers.schedules:
            schedule.step()
        if optimisers.ema is not None:
            optimisers.ema.step(optimisers.ema_params)
        return step_video, step_head, vloss, hloss

    def _log_scalars(self, step: int, vloss: VideoLoss, hloss: HeadLoss) -> None:
        scalars = {
            "video/loss": vloss.total, "video/rgb": vloss.rgb, "video/heatmap": vloss.heatmap,
            "head/loss": hloss.total, "head/rotation_accuracy": hloss.rotation_accuracy,
            "head/gripper_accuracy": hloss.gripper_accuracy,
            "lr": self.optimisers.schedules[0].get_last_lr()[0],
        }  # fmt: skip
        for name, value in scalars.items():
            self.writer.add_scalar(name, float(torch.as_tensor(value).detach()), step)

    def _checkpoint(self, step: int) -> tuple[Path, float | None]:
        """Save checkpoints/step_N (main process) and validate it: the checkpoint and the mean validation
        position error (m)."""
        settings, accelerator, optimisers = self.run.settings, self.run.accelerator, self.optimisers
        parts, config = self.model.parts, self.model.config
        unwrapped = ModelParts(
            accelerator.unwrap_model(self.transformer), parts.vae, accelerator.unwrap_model(self.head),
            parts.text_embeddings,
        )  # fmt: skip
        optimizers = optimisers.state()
        trainer_state = {
            "step": step,
            "schedules": [schedule.state_dict() for schedule in optimisers.schedules],
            "generator": self.generator.get_state(),
            "vae_losses": self.vae_losses,
            "settings": asdict(settings),
        }
        with optimisers.averaged_weights():
            checkpoint = _save_checkpoint(
                self.run.out, step, unwrapped, config, trainer_state, settings.keep_checkpoints, optimizers,
                settings.optimizer_state == "all",
            )
            if self.roundtrip is not None:
                (checkpoint / VAE_REPORT_FILE).write_text(json.dumps({"roundtrip_cm": self.roundtrip}))
            errors = validation_errors(unwrapped, config, self.data.plain, self.val_indices, checkpoint)
        val_error = float(np.mean(errors)) if errors else None
        if val_error is not None:
            self.run.log(f"step {step}: validation position error {100 * val_error:.1f} cm")
            if self.writer is not None:
                self.writer.add_scalar("val/position_error", val_error, step)
        return checkpoint, val_error

    def optimise(self) -> TrainResult:
        """Steps start_step + 1 .. settings.steps; checkpoints every checkpoint_every steps and at the end."""
        run, settings, model = self.run, self.run.settings, self.model
        start_step = self.optimisers.start_step
        video_losses: list[float] = []
        head_losses: list[float] = []
        checkpoint = model.previous
        val_error = None
        step_times: list[float] = []
        bar = tqdm(
            range(start_step + 1, settings.steps + 1), desc="train", initial=start_step, total=settings.steps,
            disable=not (settings.progress and run.main),
        )  # fmt: skip
        for step in bar:
            started = time.perf_counter()
            step_video, step_head, vloss, hloss = self._step()
            step_times.append(time.perf_counter() - started)
            video_losses.append(step_video)
            head_losses.append(step_head)
            if not (math.isfinite(video_losses[-1]) and math.isfinite(head_losses[-1])):
                raise FloatingPointError(f"loss became non-finite at step {step}: video {step_video}, "
                                         f"head {step_head}")  # fmt: skip
            bar.set_postfix(video=f"{video_losses[-1]:.4f}", head=f"{head_losses[-1]:.3f}")
            if self.writer is not None and (step % settings.log_every == 0 or step == settings.steps):
                self._log_scalars(step, vloss, hloss)
            if step % settings.checkpoint_every == 0 or step == settings.steps:
                run.accelerator.wait_for_everyone()
                if run.main:
                    checkpoint, val_error = self._checkpoint(step)
                run.accelerator.wait_for_everyone()
        if self.writer is not None:
            self.writer.close()
        if checkpoint is None:
            raise RuntimeError("training finished without writing a checkpoint")
        end_step = max(settings.steps, start_step)
        return TrainResult(
            checkpoint, start_step, end_step, video_losses, head_losses, self.vae_losses, model.parameters,
            model.trainable, val_error, model.mode, self.roundtrip,
            float(np.median(step_times)) if step_times else None,
        )  # fmt: skip


def train(
    data: str | Path | Sequence[str | Path], out: str | Path, settings: TrainSettings, resume: bool = False
) -> TrainResult:
    """Train on the episodes under data (one folder or several) and write checkpoints under out.

    Stages: data (successful episodes, samples), model (fresh or resumed), VAE (fitted and measured where no
    pretrained one exists), latents (cached on disk when samples are deterministic), optimisation of the
    video model and the head, checkpoints with validation plots.
    """
    run = _start_run(out, settings)
    episodes = load_episodes(data, settings.include_failed, run.log)
    tasks = sorted({episode_task(e) for e in episodes})
    model = _model(run, episodes, tasks, resume)
    train_data, generator = _datasets(run, model.config, episodes)
    vae_losses, roundtrip = _vae(run, model, train_data, generator)
    store = _latent_store(run, model.parts.vae, train_data)
    optimisers = _optimisers(run, model, generator)
    return _Loop(run, model, train_data, store, optimisers, generator, vae_losses, roundtrip).optimise()


def train_from_episodes(
    data: Sequence[str | Path], out: str | Path, settings: TrainSettings
) -> tuple[Path, dict[str, float]]:
    """Train (resuming when out already holds a checkpoint); returns the checkpoint and model size figures."""
    result = train(data, out, settings, resume=True)
    return result.checkpoint, {"parameters": result.parameters, "trainable": result.trainable}
