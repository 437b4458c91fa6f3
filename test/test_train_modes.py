"""Presets with overrides, explicit training modes, latent statistics and the on-disk latent cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_train_loop import record_line_episode

from mvvdp_core.data.augment import AugmentConfig
from mvvdp_core.data.dataset import EpisodeDataset, SampleConfig
from mvvdp_core.model.checkpoint import build_model_parts, load_checkpoint, save_checkpoint
from mvvdp_core.model.config import MVVDPConfig
from mvvdp_core.train.latents import LatentStore
from mvvdp_core.train.loop import TrainSettings, load_episodes, model_config
from mvvdp_core.train.vae import latent_statistics, reconstruction_loss
from mvvdp_core.train.video import sample_videos

FUTURE = 4


@pytest.mark.parametrize("preset", ["tiny", "small", "wan22"])
def test_every_preset_takes_size_overrides(preset: str) -> None:
    config = MVVDPConfig.preset(
        preset, transformer={"num_layers": 3}, vae={"base_dim": 8}, head={"width": 48, "num_heads": 4},
        future_frames=8,
    )  # fmt: skip
    assert config.transformer["num_layers"] == 3 and config.vae["base_dim"] == 8
    assert config.head.width == 48 and config.future_frames == 8
    assert MVVDPConfig.from_json(config.to_json()) == config
    untouched = MVVDPConfig.preset(preset)
    assert untouched.transformer["num_layers"] != 3 or preset == "tiny"


def test_small_preset_sizes() -> None:
    config = MVVDPConfig.small()
    assert config.latent_size == 16 and config.latent_channels == 16 and not config.uses_lora
    assert config.image_size == 64 and config.latent_frames == 7
    with pytest.raises(ValueError, match="unknown model preset"):
        MVVDPConfig.preset("huge")


def test_lora_on_a_random_base_is_refused() -> None:
    with pytest.raises(ValueError, match="do not learn"):
        TrainSettings(config="small", mode="lora")
    assert TrainSettings(config="tiny").training_mode == "full"
    assert TrainSettings(config="wan22", base_model="/models/wan").training_mode == "lora"


def test_full_mode_trains_every_transformer_weight_and_round_trips(tmp_path: Path) -> None:
    data = record_line_episode(tmp_path / "data", steps=5)
    run = TrainSettings(config="tiny", config_overrides={"future_frames": FUTURE})
    config = model_config(run, load_episodes(data))
    assert config.lora_rank == 0
    parts = build_model_parts(config, seed=0, tasks=["reach"])
    params = list(parts.transformer.parameters())
    assert all(p.requires_grad for p in params)
    assert not any("lora_" in name for name, _ in parts.transformer.named_parameters())
    with torch.no_grad():
        for p in params:
            p.add_(0.01 * torch.randn_like(p))
    save_checkpoint(parts, config, tmp_path / "ckpt")
    assert not (tmp_path / "ckpt" / "lora").exists()
    loaded, loaded_config = load_checkpoint(tmp_path / "ckpt")
    assert loaded_config == config
    for a, b in zip(parts.transformer.state_dict().values(), loaded.transformer.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)


def test_reconstruction_loss_weighs_condition_and_future_frames_equally() -> None:
    videos = torch.zeros(1, 2, 5, 3, 8, 8)
    decoded = videos.clone()
    decoded[:, :, 0] += 1.0  # all error on the condition frame
    first = reconstruction_loss(decoded, videos, num_heat_views=1, blob_weight=0.0)
    decoded = videos.clone()
    decoded[:, :, 1:] += 1.0  # the same error on every future frame
    future = reconstruction_loss(decoded, videos, num_heat_views=1, blob_weight=0.0)
    assert float(first) == pytest.approx(0.5) and float(future) == pytest.approx(0.5)


def test_latent_statistics_match_the_latents(tmp_path: Path) -> None:
    data = record_line_episode(tmp_path / "data", steps=5)
    config = MVVDPConfig.tiny(future_frames=FUTURE)
    parts = build_model_parts(config)
    dataset = EpisodeDataset(load_episodes(data), SampleConfig(config.workspace(), future_frames=FUTURE))
    batch = torch.utils.data.default_collate([dataset[i] for i in range(3)])
    mean, std = latent_statistics(parts.vae, iter([batch]), samples=3)
    with torch.no_grad():
        raw = parts.vae.encode(sample_videos(batch))
    expected = raw.transpose(0, 2).flatten(1).double()  # the tiny VAE's statistics are 0 / 1: raw latents
    np.testing.assert_allclose(mean, expected.mean(1).numpy(), atol=1e-4)
    np.testing.assert_allclose(std, expected.std(1, unbiased=False).numpy(), rtol=1e-3)
    parts.vae.set_latent_statistics(mean, std)
    with torch.no_grad():
        normalised = parts.vae.encode(sample_videos(batch)).transpose(0, 2).flatten(1).double()
    assert parts.vae.vae.config.latents_std == pytest.approx(std)
    np.testing.assert_allclose(normalised.mean(1).numpy(), 0.0, atol=1e-4)
    np.testing.assert_allclose(normalised.std(1, unbiased=False).numpy(), 1.0, rtol=1e-3)


def test_latent_cache_is_keyed_by_content_augmentation_and_vae(tmp_path: Path) -> None:
    data = record_line_episode(tmp_path / "data", steps=5)
    episodes = load_episodes(data)
    config = MVVDPConfig.tiny(future_frames=FUTURE)
    vae = build_model_parts(config).vae
    augmented = SampleConfig(config.workspace(), future_frames=FUTURE, augment=AugmentConfig(),
                             augment_copies=2)
    dataset = EpisodeDataset(episodes, augmented, seed=3)
    assert len(dataset) == 2 * len(episodes[0])
    first = LatentStore(dataset, vae, tmp_path / "cache")
    assert first.fill(progress=False) == len(dataset)
    again = LatentStore(EpisodeDataset(episodes, augmented, seed=3), vae, tmp_path / "cache")
    assert again.fill(progress=False) == 0 and again.hits == len(dataset)
    latents, targets = again.batch([0, len(dataset) - 1])
    torch.testing.assert_close(latents, torch.stack([first.latents[0], first.latents[-1]]))
    # copy 1 is moved by its augmentation: its targets differ from copy 0's
    assert not torch.allclose(first.targets[0]["positions"], first.targets[len(episodes[0])]["positions"])
    other_seed = LatentStore(EpisodeDataset(episodes, augmented, seed=4), vae, tmp_path / "cache")
    assert other_seed.fill(progress=False) == len(episodes[0])  # copy 0 (unmoved) is shared: cached
    with torch.no_grad():
        next(vae.parameters()).add_(0.1)
    changed_vae = LatentStore(EpisodeDataset(episodes, augmented, seed=3), vae, tmp_path / "cache")
    assert changed_vae.fill(progress=False) == len(dataset)
    with pytest.raises(ValueError, match="nothing to cache"):
        LatentStore(EpisodeDataset(episodes, SampleConfig(config.workspace(), future_frames=FUTURE,
                                                          augment=AugmentConfig())), vae, None)


def test_cached_latents_take_the_episode_index_of_the_dataset_that_reads_them(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for _ in range(3):
        record_line_episode(data, steps=3)
    episodes = load_episodes(data)
    config = MVVDPConfig.tiny(future_frames=FUTURE)
    vae = build_model_parts(config).vae
    sample = SampleConfig(config.workspace(), future_frames=FUTURE)
    every = LatentStore(EpisodeDataset(episodes, sample), vae, tmp_path / "cache")
    assert every.fill(progress=False) == 3  # three recordings of the same motion share their entries
    assert torch.stack([t["episode"] for t in every.targets]).tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    # A run that holds the first episode out lists the other two at indices 0 and 1: same content, cached.
    later = LatentStore(EpisodeDataset(episodes[1:], sample), vae, tmp_path / "cache")
    assert later.fill(progress=False) == 0
    _latents, targets = later.batch(list(range(6)))
    assert targets["episode"].tolist() == [0, 0, 0, 1, 1, 1]
    torch.testing.assert_close(targets["positions"], torch.stack([t["positions"] for t in every.targets[3:]]))
