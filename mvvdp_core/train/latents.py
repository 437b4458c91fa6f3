"""On-disk cache of clean training latents, keyed by content: the VAE encode is paid once across runs.

A key covers everything a sample's latents depend on: the episode's recorded content (its index file), the
condition step, the scene motion of its augmentation copy, the sample settings (workspace, frames, heatmap,
splat) and the VAE's weights and latent statistics. Files are written atomically: an interrupted fill resumes.
Only deterministic datasets are cacheable (no augmentation, or fixed augmented copies).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from mvvdp_core.data.dataset import EpisodeDataset
from mvvdp_core.data.episode import INDEX_NAME
from mvvdp_core.model.vae import VideoVAE
from mvvdp_core.train.video import encode_latents

TARGET_KEYS = ("positions", "rotation_bins", "gripper", "episode")
# what a cache file holds besides the latents: the episode's index in this dataset is not content (another
# run may list the same episode at another place) and is set on loading
CACHED_TARGETS = ("positions", "rotation_bins", "gripper")


def vae_fingerprint(vae: VideoVAE) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(vae.vae.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    for buffer in (vae.latents_mean, vae.latents_std):
        digest.update(buffer.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def dataset_fingerprint(dataset: EpisodeDataset) -> str:
    cfg = dataset.config
    ws = cfg.workspace
    settings = (
        tuple(ws.center), ws.edge, ws.resolution, cfg.future_frames, cfg.frame_stride, cfg.sigma,
        cfg.splat_radius, cfg.rotation_bins,
    )  # fmt: skip
    return hashlib.sha256(repr(settings).encode()).hexdigest()


def episode_fingerprint(root: Path) -> str:
    return hashlib.sha256((root / INDEX_NAME).read_bytes()).hexdigest()


class LatentStore:
    """Clean latents and head targets of every item of a deterministic dataset, in memory and on disk."""

    def __init__(self, dataset: EpisodeDataset, vae: VideoVAE, root: str | Path | None) -> None:
        if not dataset.config.deterministic:
            raise ValueError("latents of freshly augmented samples change every time: nothing to cache")
        self.dataset = dataset
        self.vae = vae
        self.root = Path(root) if root is not None else None
        prefix = hashlib.sha256((dataset_fingerprint(dataset) + vae_fingerprint(vae)).encode()).hexdigest()
        episodes = [episode_fingerprint(e.root) for e in dataset.episodes]
        self._keys = []
        for item in range(len(dataset)):
            episode, start, copy = dataset.locate(item)
            transform = dataset.copy_transform(episode, copy)
            motion = "none" if transform is None else np.round(transform, 9).tobytes().hex()
            key = f"{prefix}:{episodes[episode]}:{start}:{motion}"
            self._keys.append(hashlib.sha256(key.encode()).hexdigest()[:40])
        self.latents: list[torch.Tensor | None] = [None] * len(dataset)
        self.targets: list[dict[str, torch.Tensor] | None] = [None] * len(dataset)
        self.hits = 0

    def _file(self, item: int) -> Path | None:
        return None if self.root is None else self.root / f"{self._keys[item]}.pt"

    def fill(self, progress: bool = True) -> int:
        """Load or encode every item; returns how many were encoded (the rest came from disk)."""
        if self.root is not None:
            self.root.mkdir(parents=True, exist_ok=True)
        encoded = 0
        for item in tqdm(range(len(self.dataset)), desc="latents", disable=not progress):
            if self.latents[item] is not None:
                continue
            episode = {"episode": torch.tensor(self.dataset.locate(item)[0])}
            file = self._file(item)
            if file is not None and file.is_file():
                try:
                    entry = torch.load(file, weights_only=True)
                    cached = {k: entry["targets"][k] for k in CACHED_TARGETS}
                    self.latents[item], self.targets[item] = entry["latents"], {**cached, **episode}
                    self.hits += 1
                    continue
                except (OSError, RuntimeError, KeyError, EOFError):
                    pass  # a corrupt entry is encoded again
            sample = self.dataset[item]
            batch = {k: v.unsqueeze(0) for k, v in sample.items()}
            latents = encode_latents(self.vae, batch)[0].float().cpu()
            targets = {k: sample[k] for k in CACHED_TARGETS}
            self.latents[item], self.targets[item] = latents, {**targets, **episode}
            encoded += 1
            if file is not None:
                tmp = file.with_suffix(f".tmp{os.getpid()}")
                torch.save({"latents": latents, "targets": targets}, tmp)
                os.replace(tmp, file)
        return encoded

    def batch(self, items: list[int]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Latents (B, V, C, f, h, w) and stacked targets of the given items (after `fill`)."""
        missing = [i for i in items if self.latents[i] is None]
        if missing:
            raise RuntimeError(f"latent store not filled for items {missing[:5]}")
        latents = torch.stack([self.latents[i] for i in items])
        targets = {k: torch.stack([self.targets[i][k] for i in items]) for k in TARGET_KEYS}
        return latents, targets
