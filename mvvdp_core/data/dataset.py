"""Training samples from recorded episodes: one condition frame and the next `future_frames` frames.

Every sample is rebuilt from the camera clouds: an optional SE(3) augmentation moves the camera extrinsics
and the end-effector poses, the clouds are merged and cropped to the workspace, projected into the views,
and the end-effector positions become Gaussian heatmaps (all through mvvdp_core.geometry, the same code the
robot runs). Frames past the end of an episode repeat its last step.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset

from mvvdp_core.actions import ROTATION_BINS, euler_to_bins
from mvvdp_core.data.augment import (
    AugmentConfig,
    sample_scene_transform,
    transform_extrinsics,
    transform_poses,
)
from mvvdp_core.data.episode import Episode
from mvvdp_core.geometry.clouds import merge_clouds
from mvvdp_core.geometry.heatmaps import colorize_heatmaps, ee_heatmaps
from mvvdp_core.geometry.projection import project_views
from mvvdp_core.geometry.workspace import Workspace
from mvvdp_core.rotations import matrix_to_euler
from mvvdp_core.step import Step


@dataclass(frozen=True)
class SampleConfig:
    """How samples are cut from episodes and rendered."""

    workspace: Workspace = field(default_factory=Workspace)
    future_frames: int = 24
    frame_stride: int = 1  # recorded steps between consecutive frames
    sigma: float = 1.5  # heatmap std in pixels
    splat_radius: float = 0.008  # metres
    augment: AugmentConfig | None = None
    # 0: a fresh random scene motion per item. k >= 1: k fixed copies of every episode (copy 0 unmoved, the
    # others each one random motion of the whole episode), so items are deterministic and can be cached.
    augment_copies: int = 0
    start_stride: int = 1  # condition frames at every start_stride-th step
    rotation_bins: int = ROTATION_BINS
    cache_steps: int = 256  # decoded steps kept in memory
    cache_views: int = 0  # rendered views kept in memory (deterministic items only)

    def __post_init__(self) -> None:
        if self.future_frames < 1 or self.frame_stride < 1:
            raise ValueError(
                f"future_frames and frame_stride must be >= 1, got {self.future_frames}, {self.frame_stride}"
            )
        if not self.sigma > 0:
            raise ValueError(f"heatmap sigma must be > 0 pixels, got {self.sigma}")
        if self.augment_copies < 0 or self.start_stride < 1 or self.cache_views < 0:
            raise ValueError("augment_copies and cache_views must be >= 0 and start_stride >= 1")

    @property
    def deterministic(self) -> bool:
        """Every item always renders the same (no augmentation, or fixed augmented copies)."""
        return self.augment is None or self.augment_copies > 0

    @property
    def copies(self) -> int:
        return self.augment_copies if self.augment is not None and self.augment_copies > 0 else 1


def frame_indices(start: int, episode_length: int, future_frames: int, stride: int) -> np.ndarray:
    """Condition step plus future steps start + k * stride, clamped to the last step (tail padding)."""
    if episode_length < 1 or not 0 <= start < episode_length:
        raise IndexError(f"start step {start} outside an episode of {episode_length} steps")
    return np.minimum(start + stride * np.arange(future_frames + 1), episode_length - 1)


def relative_rotation_bins(rotations: np.ndarray, num_bins: int = ROTATION_BINS) -> np.ndarray:
    """(1 + F, 3, 3) rotations -> (F, 3) bins of R_0^T R_t as extrinsic xyz Euler angles."""
    relative = np.einsum("ji,tjk->tik", rotations[0], rotations[1:])
    return np.asarray(euler_to_bins(matrix_to_euler(relative), num_bins))


def gripper_open(closed: np.ndarray) -> np.ndarray:
    """Recorded 'closed' flags -> the action convention: 1 = open, 0 = closed."""
    return (1 - np.asarray(closed, dtype=np.int64)).astype(np.int64)


def render_step_views(
    step: Step, workspace: Workspace, splat_radius: float = 0.008, scene_transform: np.ndarray | None = None
) -> torch.Tensor:
    """One step's camera clouds (moved by scene_transform) -> projected views (V, 3, R, R) in [0, 1]."""
    clouds = list(step.clouds.values())
    extrinsics = [c.base_T_camera for c in clouds]
    if scene_transform is not None:
        extrinsics = [transform_extrinsics(scene_transform, e) for e in extrinsics]
    points = [c.points for c in clouds]
    points, colors = merge_clouds(points, [c.colors for c in clouds], extrinsics, workspace)
    return project_views(points, colors, workspace, splat_radius, backend="torch").rgb


def _leaves_workspace(episode: Episode, workspace: Workspace) -> str:
    """'' if every trained step's end-effector lies in the cube, else where the first one leaves it."""
    positions = episode.ee_positions()[episode.train_from_step:]
    outside = np.flatnonzero(~workspace.contains(positions))
    if outside.size == 0:
        return ""
    step = episode.train_from_step + int(outside[0])
    return f"{episode.root} step {step} at {positions[outside[0]].round(3).tolist()} ({outside.size} steps)"


class EpisodeDataset(Dataset):
    """Samples (condition frame, future frames) from a list of episodes.

    Each item is a dict of tensors, F = future_frames, V = number of views, R = view resolution:
      rgb (1 + F, V, 3, R, R) in [0, 1]; heatmap (1 + F, V, R, R); heatmap_rgb (1 + F, V, 3, R, R) in [0, 1];
      positions (1 + F, 3) metres (index 0 is the condition frame); rotations (1 + F, 3, 3);
      rotation_bins (F, 3) int64; gripper (1 + F,) int64 with 1 = open; episode, step, item int64.
    """

    def __init__(self, episodes: list[Episode], config: SampleConfig, seed: int = 0) -> None:
        if not episodes:
            raise ValueError("no episodes: record some before building a dataset")
        empty = [str(e.root) for e in episodes if len(e) == 0]
        if empty:
            raise ValueError(f"episodes without any step: {empty}")
        too_short = [str(e.root) for e in episodes if e.train_from_step >= len(e)]
        if too_short:
            raise ValueError(f"episodes that end before their train_from_step: {too_short}")
        outside = [_leaves_workspace(e, config.workspace) for e in episodes]
        if any(outside):
            cube = f"{config.workspace.lower.round(3).tolist()}..{config.workspace.upper.round(3).tolist()} m"
            raise ValueError(f"end-effector outside the workspace cube {cube}: "
                             f"{'; '.join(o for o in outside if o)}; record with a cube that holds the task")
        self.episodes = episodes
        self.config = config
        self.seed = seed
        stride = config.start_stride
        # Condition frames: every stride-th step from the episode's train_from_step (0 unless it opens with a
        # detour that is not to be learned).
        self.index = [
            (e, s)
            for e, episode in enumerate(episodes)
            for s in range(episode.train_from_step, len(episode), stride)
        ]
        self._rng = np.random.default_rng(seed)
        self._cache: OrderedDict[tuple[int, int], Step] = OrderedDict()
        self._views: OrderedDict[tuple[int, int, int], torch.Tensor] = OrderedDict()
        self._transforms: dict[tuple[int, int], np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.index) * self.config.copies

    def locate(self, item: int) -> tuple[int, int, int]:
        """(episode index, condition step, augmentation copy) of an item."""
        if not 0 <= item < len(self):
            raise IndexError(f"item {item} outside a dataset of {len(self)}")
        copy, position = divmod(item, len(self.index))
        episode, start = self.index[position]
        return episode, start, copy

    def sample_weights(self, first_chunk_weight: float) -> torch.Tensor:
        """Sampling weight of every item: `first_chunk_weight` for the chunks whose condition frame is an
        episode's first step (where only the scene, not the arm, tells where to go), 1 for the others."""
        if not first_chunk_weight > 0:
            raise ValueError(f"first_chunk_weight must be > 0, got {first_chunk_weight}")
        first = torch.tensor([start == 0 for _episode, start in self.index] * self.config.copies)
        return torch.where(first, float(first_chunk_weight), 1.0).double()

    def copy_transform(self, episode: int, copy: int) -> np.ndarray | None:
        """The fixed scene motion of one augmented copy of an episode (None for copy 0 or no augmentation)."""
        cfg = self.config
        if cfg.augment is None or copy == 0:
            return None
        key = (episode, copy)
        if key not in self._transforms:
            rng = np.random.default_rng([self.seed, episode, copy])
            positions = self.episodes[episode].ee_positions()
            self._transforms[key] = sample_scene_transform(rng, positions, cfg.workspace, cfg.augment)
        return self._transforms[key]

    def _step(self, episode: int, step: int) -> Step:
        key = (episode, step)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        loaded = self.episodes[episode].step(step)
        self._cache[key] = loaded
        while len(self._cache) > self.config.cache_steps:
            self._cache.popitem(last=False)
        return loaded

    def frames(self, item: int) -> tuple[int, np.ndarray]:
        """(episode index, step indices of the condition frame and the future frames) of one item."""
        episode, start, _copy = self.locate(item)
        cfg = self.config
        return episode, frame_indices(start, len(self.episodes[episode]), cfg.future_frames, cfg.frame_stride)

    def _sample_transform(self, item: int, positions: np.ndarray) -> np.ndarray | None:
        cfg = self.config
        if cfg.augment is None:
            return None
        if cfg.augment_copies > 0:
            episode, _start, copy = self.locate(item)
            return self.copy_transform(episode, copy)
        return sample_scene_transform(self._rng, positions, cfg.workspace, cfg.augment)

    def targets(self, item: int, transform: np.ndarray | None = None) -> dict[str, torch.Tensor]:
        """The item's pose, heatmap and gripper targets (no rendering), moved by transform."""
        cfg = self.config
        episode_index, steps = self.frames(item)
        episode = self.episodes[episode_index]
        positions = np.stack([episode.records[s].ee_position for s in steps])
        rotations = np.stack([episode.records[s].ee_rotation for s in steps])
        closed = np.array([episode.records[s].gripper_closed for s in steps])
        if transform is not None:
            positions, rotations = transform_poses(transform, positions, rotations)
        heat = ee_heatmaps(torch.as_tensor(positions, dtype=torch.float32), cfg.workspace, cfg.sigma)
        return {
            "heatmap": heat.float(),
            "heatmap_rgb": colorize_heatmaps(heat).float(),
            "positions": torch.as_tensor(positions, dtype=torch.float32),
            "rotations": torch.as_tensor(rotations, dtype=torch.float32),
            "rotation_bins": torch.as_tensor(relative_rotation_bins(rotations, cfg.rotation_bins)),
            "gripper": torch.as_tensor(gripper_open(closed)),
            "episode": torch.tensor(episode_index),
            "step": torch.tensor(int(steps[0])),
        }

    def _views_of(self, episode: int, step: int, copy: int, transform: np.ndarray | None) -> torch.Tensor:
        cfg = self.config
        key = (episode, step, copy)
        if key in self._views:
            self._views.move_to_end(key)
            return self._views[key]
        views = render_step_views(self._step(episode, step), cfg.workspace, cfg.splat_radius, transform)
        if cfg.deterministic and cfg.cache_views > 0:
            self._views[key] = views
            while len(self._views) > cfg.cache_views:
                self._views.popitem(last=False)
        return views

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        episode_index, steps = self.frames(item)
        _, _, copy = self.locate(item)
        positions = np.stack([self.episodes[episode_index].records[s].ee_position for s in steps])
        transform = self._sample_transform(item, positions)
        sample = self.targets(item, transform)
        rgb = torch.stack([self._views_of(episode_index, int(s), copy, transform) for s in steps])
        return {"rgb": rgb.float(), **sample, "item": torch.tensor(item)}
