"""MV-VDP policy: one observation (three views + end-effector pose) -> an action chunk.

Path: end-effector position -> heatmaps per view -> colorised -> with the three RGB views as six condition
frames -> VAE encode -> N Euler flow steps -> decode the heatmap views (and the RGB views on request) ->
decolorise -> back-project to positions; the rotation/gripper head reads the denoised latents and the heatmap
peaks and gives rotation changes and gripper states, resolved to absolute via the condition pose.

The fast path (`FastPathOptions`) runs the same steps for serving: LoRA merged into the base weights, bf16
weights and activations on a GPU, flash / memory-efficient SDPA kernels, condition latents cached per
observation, optional torch.compile of the transformer (CUDA only), and per-step timings from CUDA events so
that the denoising loop never waits for the GPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mvvdp_core.actions import ActionChunk, bins_to_relative_euler, relative_to_absolute
from mvvdp_core.geometry.backproject import BackProjection, backproject_heatmaps
from mvvdp_core.geometry.heatmaps import colorize_heatmaps, decolorize_heatmaps, ee_heatmaps
from mvvdp_core.geometry.workspace import Workspace
from mvvdp_core.model.checkpoint import ModelParts, cast_module, load_checkpoint, save_checkpoint
from mvvdp_core.model.config import MVVDPConfig
from mvvdp_core.model.flow import check_num_steps, euler_sample
from mvvdp_core.model.lora import merge_lora


@dataclass
class Observation:
    rgb: torch.Tensor  # (3 views, 3, H, W) float in [0, 1], views in VIEW_NAMES order
    ee_position: np.ndarray  # (3,) base frame, metres
    ee_rotation: np.ndarray  # (3, 3) base frame
    gripper: float  # opening in [0, 1]
    stamp: float  # seconds
    task: str

    def __post_init__(self) -> None:
        self.rgb = torch.as_tensor(self.rgb)
        if self.rgb.ndim != 4 or self.rgb.shape[:2] != (3, 3) or self.rgb.shape[2] != self.rgb.shape[3]:
            raise ValueError(f"rgb must be (3 views, 3, H, H), got {tuple(self.rgb.shape)}")
        if not self.rgb.is_floating_point():
            raise ValueError(f"rgb must be a float tensor in [0, 1], got dtype {self.rgb.dtype}")
        if not torch.isfinite(self.rgb).all() or self.rgb.min() < 0 or self.rgb.max() > 1:
            raise ValueError("rgb values must be finite and within [0, 1]")
        self.ee_position = np.asarray(self.ee_position, dtype=np.float64)
        self.ee_rotation = np.asarray(self.ee_rotation, dtype=np.float64)
        if self.ee_position.shape != (3,) or not np.all(np.isfinite(self.ee_position)):
            raise ValueError(f"ee_position must be 3 finite numbers, got {self.ee_position!r}")
        if self.ee_rotation.shape != (3, 3) or not np.all(np.isfinite(self.ee_rotation)):
            raise ValueError(
                f"ee_rotation must be a finite (3, 3) matrix, got shape {self.ee_rotation.shape}"
            )
        if not np.allclose(self.ee_rotation @ self.ee_rotation.T, np.eye(3), atol=1e-4):
            raise ValueError("ee_rotation is not orthonormal")
        if not (np.isfinite(self.gripper) and 0.0 <= self.gripper <= 1.0):
            raise ValueError(f"gripper must be in [0, 1], got {self.gripper!r}")
        if not np.isfinite(self.stamp):
            raise ValueError(f"stamp must be finite, got {self.stamp!r}")
        if not isinstance(self.task, str) or not self.task:
            raise ValueError("task must be a non-empty string")


@dataclass
class PolicyOutput:
    chunk: ActionChunk
    rgb_video: torch.Tensor | None  # (3, T, 3, H, W) predicted RGB views, only with return_video
    heatmap_video: torch.Tensor  # (3, T, 3, H, W) predicted colorised heatmaps
    heatmaps: torch.Tensor  # (T, 3, H, W) decolorised scalar heatmaps
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    rgb_latents: torch.Tensor | None = None  # (1, R, C, f, h, w) denoised RGB-view latents, for decode_rgb


@dataclass
class HeatmapDecoding:
    positions: torch.Tensor  # (T, 3)
    heatmaps: torch.Tensor  # (T, V, H, W)
    backprojection: BackProjection
    step_confidence: np.ndarray  # (T,)


def decode_heatmap_video(heatmap_video: torch.Tensor, workspace: Workspace) -> HeatmapDecoding:
    """Colorised heatmap videos (V, T, 3, H, W) -> positions (T, 3) and per-step confidence.

    A step's confidence is the back-projection's: ~1 when every view has a clear peak at the chosen point, ~0
    when a view is blank, featureless or contradicts the others.
    """
    if (
        heatmap_video.ndim != 5
        or heatmap_video.shape[2] != 3
        or heatmap_video.shape[0] != len(workspace.views)
    ):
        raise ValueError(
            f"heatmap video must be ({len(workspace.views)}, T, 3, H, W), got {tuple(heatmap_video.shape)}"
        )
    heatmaps = decolorize_heatmaps(heatmap_video.float()).transpose(0, 1).contiguous()  # (T, V, H, W)
    projection = backproject_heatmaps(heatmaps, workspace)
    confidence = projection.confidence.double().clamp(0, 1).cpu().numpy()
    return HeatmapDecoding(projection.positions, heatmaps, projection, confidence)


# Steps over which the gripper head's probabilities are averaged: a demonstrated gripper state lasts far
# longer (closing, holding), so a state predicted for one or two steps only is noise, not a grasp.
GRIPPER_WINDOW = 5


def smooth_gripper(gripper_logits: torch.Tensor, window: int = GRIPPER_WINDOW) -> np.ndarray:
    """Gripper logits (T, 2) -> states (T,) in {0, 1}: the argmax of the class probabilities averaged over a
    centred window of `window` steps (odd; edges repeat the first/last step). window 1: the plain argmax."""
    if window < 1 or window % 2 == 0:
        raise ValueError(f"gripper window must be an odd number >= 1, got {window}")
    probabilities = gripper_logits.float().softmax(-1)  # (T, 2)
    half = window // 2
    first, last = probabilities[:1].expand(half, -1), probabilities[-1:].expand(half, -1)
    padded = torch.cat([first, probabilities, last])
    averaged = padded.unfold(0, window, 1).mean(-1)  # (T, 2)
    return averaged.argmax(-1).cpu().numpy()


def head_to_actions(
    rotation_logits: torch.Tensor, gripper_logits: torch.Tensor, cond_rotation: np.ndarray, num_bins: int,
    gripper_window: int = GRIPPER_WINDOW,
) -> tuple[np.ndarray, np.ndarray]:
    """Head logits (T, 3, bins), (T, 2) -> absolute Euler angles (T, 3) and gripper states (T,) in {0, 1}
    (`smooth_gripper`)."""
    bins = rotation_logits.argmax(-1).cpu().numpy()
    relative = bins_to_relative_euler(bins, num_bins)
    return relative_to_absolute(cond_rotation, relative), smooth_gripper(gripper_logits, gripper_window)


@dataclass(frozen=True)
class FastPathOptions:
    """Serving settings. The weights change in place (LoRA merged, cast): give the policy its own parts."""

    dtype: torch.dtype | None = None  # None: bfloat16 on CUDA, the weights' own dtype elsewhere
    compile: bool = False  # torch.compile the transformer; CUDA only (ignored elsewhere)
    compile_mode: str = "reduce-overhead"  # CUDA graphs
    cache_condition: bool = True  # encode the condition frames once per observation
    check_syncs: bool = False  # CUDA: raise if the denoising loop synchronises with the host
    vae_dtype: torch.dtype | None = None  # None: the VAE keeps its own dtype (float32 as loaded)
    tf32: bool = True  # CUDA: TF32 matmuls and convolutions for what runs in float32 (the VAE)

    def __post_init__(self) -> None:
        for dtype in (self.dtype, self.vae_dtype):
            if dtype is not None and not dtype.is_floating_point:
                raise ValueError(f"fast path dtype must be a floating point type, got {dtype}")
        modes = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
        if self.compile_mode not in modes:
            raise ValueError(f"compile_mode must be one of {modes}, got {self.compile_mode!r}")


def _fast_attention() -> AbstractContextManager:
    """Flash / memory-efficient / cuDNN SDPA kernels on CUDA (no math fallback); nothing elsewhere."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(
        [SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]
    )


class _StepClock:
    """Marks the end of each denoising step; `intervals()` gives the seconds between consecutive marks."""

    def __init__(self, use_cuda_events: bool, sync: Callable[[], None]) -> None:
        self.use_cuda_events = use_cuda_events
        self.sync = sync
        self.marks: list = []

    def mark(self) -> None:
        if self.use_cuda_events:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.sync()
            self.marks.append(time.perf_counter())

    def intervals(self) -> list[float]:
        """Call after the last mark (and a synchronisation for CUDA events)."""
        pairs = zip(self.marks[:-1], self.marks[1:], strict=True)
        if self.use_cuda_events:
            return [start.elapsed_time(end) / 1000 for start, end in pairs]
        return [end - start for start, end in pairs]


@contextmanager
def _sync_debug_error() -> Iterator[None]:
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


class MVVDPPolicy:
    def __init__(
        self, parts: ModelParts, config: MVVDPConfig, fast: FastPathOptions | bool | None = None
    ) -> None:
        self.parts = parts
        self.config = config
        self.workspace = config.workspace()
        for module in (parts.transformer, parts.vae, parts.head):
            module.eval()
        self.device = next(parts.transformer.parameters()).device
        self.fast = FastPathOptions() if fast is True else (fast or None)
        self._velocity_model: torch.nn.Module = parts.transformer
        self._condition_cache: tuple[tuple, torch.Tensor] | None = None
        if self.fast is not None:
            self._prepare_fast_path(self.fast)
        self.dtype = next(parts.transformer.parameters()).dtype
        self._chunk_counter = 0

    def _prepare_fast_path(self, options: FastPathOptions) -> None:
        on_cuda = self.device.type == "cuda"
        merge_lora(self.parts.transformer)
        dtype = options.dtype or (
            torch.bfloat16 if on_cuda else next(self.parts.transformer.parameters()).dtype
        )
        self.parts.to(self.device, dtype)
        if options.vae_dtype is not None:
            cast_module(self.parts.vae, options.vae_dtype)
        if on_cuda and options.tf32:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        if options.compile and on_cuda:
            self._velocity_model = torch.compile(self.parts.transformer, mode=options.compile_mode)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        fast: FastPathOptions | bool | None = None,
    ) -> MVVDPPolicy:
        parts, config = load_checkpoint(path, device=device, dtype=dtype)
        return cls(parts, config, fast)

    def save(self, path: str | Path) -> None:
        save_checkpoint(self.parts, self.config, path)

    @property
    def tasks(self) -> list[str]:
        return sorted(self.parts.text_embeddings)

    def condition_frames(self, obs: Observation) -> torch.Tensor:
        """(1, 2R, 3, H, W): the RGB views followed by the colorised end-effector heatmaps."""
        size = self.config.image_size
        if obs.rgb.shape[-1] != size:
            raise ValueError(
                f"rgb views must be {size}x{size} for this model, got {tuple(obs.rgb.shape[-2:])}"
            )
        position = torch.as_tensor(obs.ee_position, dtype=torch.float64)
        maps = ee_heatmaps(position, self.workspace, sigma=self.config.sigma)  # (V, H, W)
        colored = colorize_heatmaps(maps.float())  # (V, 3, H, W)
        return torch.cat([obs.rgb.float().to(self.device), colored.to(self.device)], 0).unsqueeze(0)

    def text_embedding(self, task: str) -> torch.Tensor:
        if task not in self.parts.text_embeddings:
            raise KeyError(f"no text embedding for task {task!r}; this checkpoint knows {self.tasks}")
        return self.parts.text_embeddings[task].unsqueeze(0).to(self.device, self.dtype)

    def _condition_key(self, obs: Observation) -> tuple:
        rgb = obs.rgb
        return (
            obs.stamp,
            obs.ee_position.tobytes(),
            rgb.data_ptr(),
            rgb._version,
            tuple(rgb.shape),
            rgb.dtype,
        )

    def encode_condition(self, obs: Observation, timings: dict[str, float] | None = None) -> torch.Tensor:
        """Condition latents (1, V, C, 1, h, w) float32; cached per observation on the fast path.

        Times the stages "heatmaps" (condition frames) and "encode" (VAE) into `timings` (0 on a cache hit).
        """
        timings = {} if timings is None else timings
        cache = self.fast is not None and self.fast.cache_condition
        key = self._condition_key(obs) if cache else None
        if cache and self._condition_cache is not None and self._condition_cache[0] == key:
            timings["heatmaps"] = timings["encode"] = 0.0
            return self._condition_cache[1]
        with self._timed(timings, "heatmaps"):
            frames = self.condition_frames(obs)
        with self._timed(timings, "encode"):
            condition = self.parts.vae.encode_condition(frames).float()  # the sampler integrates in float32
        if cache:
            self._condition_cache = (key, condition)
        return condition

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def _timed(self, timings: dict[str, float], name: str) -> Iterator[None]:
        self._sync()
        start = time.perf_counter()
        yield
        self._sync()
        timings[name] = time.perf_counter() - start

    def _step_clock(self) -> _StepClock:
        """Per-step timestamps: synchronising ones on the plain path, CUDA events on the fast path."""
        events = self.fast is not None and self.device.type == "cuda"
        return _StepClock(events, self._sync)

    def _denoise_context(self) -> AbstractContextManager:
        if self.fast is None or self.device.type != "cuda":
            return nullcontext()
        stack = ExitStack()
        stack.enter_context(_fast_attention())
        if self.fast.check_syncs:
            stack.enter_context(_sync_debug_error())
        return stack

    @torch.no_grad()
    def predict(
        self,
        obs: Observation,
        num_steps: int | None = None,
        return_video: bool = False,
        seed: int | None = None,
        on_step: Callable[[int, int], None] | None = None,
    ) -> PolicyOutput:
        """The action chunk (and videos on request) for an observation. on_step(done, total) is called after
        each denoising step; an exception it raises (a cancelled request) ends the prediction."""
        cfg = self.config
        parts = self.parts
        steps = check_num_steps(cfg.num_inference_steps if num_steps is None else num_steps)
        r = cfg.num_rgb_views
        timings: dict[str, float] = {}
        generator = torch.Generator().manual_seed(
            int(seed) if seed is not None else int(torch.randint(0, 2**62, (1,)).item())
        )
        self._sync()
        start = time.perf_counter()
        text = self.text_embedding(obs.task)
        condition = self.encode_condition(obs, timings)
        shape = (1, cfg.num_views, cfg.latent_channels, cfg.latent_frames, cfg.latent_size, cfg.latent_size)
        step_marks = self._step_clock()

        def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self._velocity_model(x.to(self.dtype), t, text).float()

        def step_done(i: int) -> None:
            step_marks.mark()
            if on_step is not None:
                on_step(i + 1, steps)

        self._sync()
        step_marks.mark()
        with self._denoise_context():
            latents = euler_sample(
                velocity,
                condition,
                shape,
                steps,
                cfg.flow_shift,
                cfg.num_train_timesteps,
                generator=generator,
                on_step=step_done,
            )
        self._sync()
        for i, seconds in enumerate(step_marks.intervals()):
            timings[f"denoise_step_{i}"] = seconds
        timings["denoise"] = sum(v for k, v in timings.items() if k.startswith("denoise_step_"))
        with self._timed(timings, "decode_heatmaps"):
            heatmap_video = parts.vae.decode(latents, views=range(r, 2 * r))[
                0, :, 1:
            ].float()  # (R, T, 3, H, W)
        with self._timed(timings, "backproject"):
            decoded = decode_heatmap_video(heatmap_video, self.workspace)
        with self._timed(timings, "head"):
            peaks = self.workspace.to_view(decoded.positions.double())[..., :2].float()  # (T, R, 2) pixels
            rotation_logits, gripper_logits = parts.head(latents, peaks.unsqueeze(0).to(self.device))
            euler, gripper = head_to_actions(
                rotation_logits[0], gripper_logits[0], obs.ee_rotation, cfg.rotation_bins
            )
        self._sync()
        timings["total"] = time.perf_counter() - start
        chunk = ActionChunk(
            positions=decoded.positions.double().cpu().numpy(),
            euler=euler,
            gripper=gripper,
            time_from_start=cfg.control_period * np.arange(1, cfg.future_frames + 1),
            stamp=obs.stamp,
            confidence=float(decoded.step_confidence.mean()),
            step_confidence=decoded.step_confidence,
            chunk_id=self._chunk_counter,
        )
        self._chunk_counter += 1
        output = PolicyOutput(chunk, None, heatmap_video, decoded.heatmaps, timings, latents[:, :r])
        if return_video:  # after the chunk is complete: "total" is the chunk's latency without it
            self.decode_rgb(output)
        return output

    @torch.no_grad()
    def decode_rgb(self, output: PolicyOutput) -> torch.Tensor:
        """Decode the predicted RGB views (R, T, 3, H, W) of an output (the preview; the action does not need
        them), store them in output.rgb_video and time it as "decode_rgb"."""
        if output.rgb_video is None:
            if output.rgb_latents is None:
                raise ValueError("this output keeps no RGB latents to decode")
            with self._timed(output.timings, "decode_rgb"):
                output.rgb_video = self.parts.vae.decode(output.rgb_latents)[0, :, 1:].float()
        return output.rgb_video
