"""Training: losses fall, a tiny model fit on one episode decodes positions closer to the truth, resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_data_dataset import scene_step

from mvvdp_core.data.dataset import EpisodeDataset, SampleConfig
from mvvdp_core.data.recorder import Recorder
from mvvdp_core.model.checkpoint import load_checkpoint
from mvvdp_core.rotations import euler_to_matrix
from mvvdp_core.train.head import head_objective
from mvvdp_core.train.loop import (
    TrainSettings,
    _loader,
    build_data,
    build_parts,
    episode_task,
    latest_checkpoint,
    load_episodes,
    model_config,
    train,
    validation_errors,
)
from mvvdp_core.train.video import encode_latents, video_loss

FUTURE = 4  # short chunks keep the tests fast; the structure is the paper's (1 + 4k frames)
SIGMA = 3.0  # heatmap std in pixels: a wider blob at the tiny model's 64 px views


def record_line_episode(root: Path, steps: int = 9, task: str = "reach") -> Path:
    """The end effector moves along a straight line, turning about z and closing the gripper half-way."""
    writer = Recorder(root).start_episode(["cam_a", "cam_b"], task=task)
    for t in range(steps):
        ee = np.array([0.35 + 0.035 * t, -0.15 + 0.03 * t, 0.45 - 0.025 * t])
        rot = euler_to_matrix(np.array([0.0, 0.0, np.deg2rad(5.0 * t)]))
        writer.add_step(scene_step(t, ee, rot, closed=t >= steps // 2))
    writer.close(success=True)
    return root


def settings(**overrides: object) -> TrainSettings:
    base = dict(
        config="tiny", config_overrides={"future_frames": FUTURE, "sigma": SIGMA}, augment=False,
        progress=False, val_episodes=1, vae_steps=0, seed=0,
    )  # fmt: skip
    base.update(overrides)
    return TrainSettings(**base)


def fixed_losses(parts, config, batch) -> tuple[float, float]:
    """Video and head losses on one batch with fixed noise and timesteps (comparable across training)."""
    with torch.no_grad():
        latents = encode_latents(parts.vae, batch)
        text = parts.text_embeddings["reach"].unsqueeze(0).expand(latents.shape[0], -1, -1)
        video = video_loss(parts.transformer, latents, text, config.num_train_timesteps, config.flow_shift,
                           generator=torch.Generator().manual_seed(7))
        targets = batch["positions"], batch["rotation_bins"], batch["gripper"]
        head = head_objective(parts.head, latents, *targets, config.workspace(),
                              generator=torch.Generator().manual_seed(7))
    return float(video.total), float(head.total)


def plain_dataset(episodes, config) -> EpisodeDataset:
    sample = SampleConfig(workspace=config.workspace(), future_frames=FUTURE, sigma=SIGMA)
    return EpisodeDataset(episodes, sample)


@pytest.fixture(scope="module")
def line_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return record_line_episode(tmp_path_factory.mktemp("line"))


def test_validation_episodes_are_held_out_of_training(tmp_path: Path) -> None:
    for task in ("reach", "push", "pull"):
        record_line_episode(tmp_path, steps=5, task=task)
    episodes = load_episodes(tmp_path)
    run = settings(val_episodes=1)
    data = build_data(run, model_config(run, episodes), episodes, 0)
    assert data.held_out == 1 and data.validation == [0]
    assert [e.root for e in data.train.episodes] == [e.root for e in episodes[1:]]
    assert data.episode_tasks == [episode_task(e) for e in episodes[1:]]
    assert data.tasks == sorted(episode_task(e) for e in episodes)
    assert len(data.plain.episodes) == 3  # validation reads every episode
    # Too few to spare one: all train, and validation measures the first training episode.
    one = load_episodes(record_line_episode(tmp_path / "one"))
    data = build_data(run, model_config(run, one), one, 0)
    assert data.held_out == 0 and data.validation == [0] and len(data.train.episodes) == 1


def test_training_lowers_both_losses(line_data: Path, tmp_path: Path) -> None:
    run = settings(steps=60, lr=1e-3, head_lr=1e-3, checkpoint_every=60, val_episodes=0)
    episodes = load_episodes(line_data)
    config = model_config(run, episodes)
    data = plain_dataset(episodes, config)
    batch = torch.utils.data.default_collate([data[i] for i in range(0, 8, 2)])
    before = fixed_losses(build_parts(run, config, ["reach"]), config, batch)
    result = train(line_data, tmp_path, run)
    parts, _ = load_checkpoint(result.checkpoint)
    after = fixed_losses(parts, config, batch)
    assert after[0] < 0.85 * before[0], f"video loss {before[0]:.4f} -> {after[0]:.4f}"
    assert after[1] < 0.5 * before[1], f"head loss {before[1]:.4f} -> {after[1]:.4f}"
    assert len(result.video_losses) == 60 and all(np.isfinite(result.head_losses))


def test_fit_on_one_episode_decodes_positions_closer_to_truth(line_data: Path, tmp_path: Path) -> None:
    # The tiny preset's 4x4 latents hold the heatmap blob or the RGB foreground, not both: heatmaps only.
    run = settings(steps=90, lr=1e-3, head_lr=1e-3, vae_steps=90, vae_lr=3e-3, checkpoint_every=90,
                   vae_foreground_weight=0.0)
    episodes = load_episodes(line_data)
    config = model_config(run, episodes)
    plain = plain_dataset(episodes, config)
    starts = [0, 2, 4]
    initial = np.mean([validation_errors(build_parts(run, config, ["reach"]), config, plain, [0], None, s)
                       for s in starts])
    result = train(line_data, tmp_path, run)
    parts, _ = load_checkpoint(result.checkpoint)
    fitted = np.mean([validation_errors(parts, config, plain, [0], None, s) for s in starts])
    assert fitted < 0.7 * initial, f"mean position error {initial:.3f} m -> {fitted:.3f} m"
    assert (result.checkpoint / "trajectory_episode_000000.png").stat().st_size > 1000


def test_resume_continues_from_the_saved_step(line_data: Path, tmp_path: Path) -> None:
    first = train(line_data, tmp_path, settings(steps=3, checkpoint_every=2))
    assert first.start_step == 0 and first.checkpoint.name == "step_0000003"
    saved, _ = load_checkpoint(first.checkpoint)
    resumed = train(line_data, tmp_path, settings(steps=5, checkpoint_every=2), resume=True)
    assert resumed.start_step == 3 and resumed.end_step == 5 and len(resumed.video_losses) == 2
    assert latest_checkpoint(tmp_path).name == "step_0000005"
    state = torch.load(resumed.checkpoint / "trainer_state.pt", weights_only=True)
    assert state["step"] == 5
    assert torch.load(resumed.checkpoint / "optimizer.pt", weights_only=True)["video_optimizer"]["state"]
    # The resumed run started from the saved weights: its VAE (frozen) is the saved one, bit for bit.
    final, _ = load_checkpoint(resumed.checkpoint)
    for a, b in zip(saved.vae.parameters(), final.vae.parameters(), strict=True):
        assert torch.equal(a, b)
    kept = sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*"))
    assert kept == ["step_0000002", "step_0000003", "step_0000004", "step_0000005"][-3:]
    assert not list((tmp_path / "checkpoints").glob(".tmp*"))


def test_gradient_accumulation_steps_once_per_micro_batches_and_only_the_newest_keeps_the_optimiser(
    line_data: Path, tmp_path: Path
) -> None:
    result = train(line_data, tmp_path, settings(steps=2, checkpoint_every=1, grad_accumulation=3,
                                                 gradient_checkpointing=True))
    assert len(result.video_losses) == 2 and all(np.isfinite(result.video_losses))
    optimizers = torch.load(result.checkpoint / "optimizer.pt", weights_only=True)
    steps = {float(s["step"]) for s in optimizers["video_optimizer"]["state"].values()}
    assert steps == {2.0}  # two optimiser steps from six micro-batches
    older = tmp_path / "checkpoints" / "step_0000001"
    assert (older / "trainer_state.pt").is_file() and not (older / "optimizer.pt").exists()
    load_checkpoint(older)  # the model files are complete without it


def test_global_batch_sets_the_accumulation() -> None:
    assert TrainSettings(batch_size=2, global_batch=64).accumulation(4) == 8
    assert TrainSettings(grad_accumulation=3).accumulation(2) == 3
    with pytest.raises(ValueError, match="multiple"):
        TrainSettings(batch_size=3, global_batch=64).accumulation(1)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert TrainSettings().precision(cpu) == "no" and TrainSettings().precision(cuda) == "bf16"
    assert TrainSettings().frozen_base_dtype(cuda) == torch.bfloat16
    assert TrainSettings().frozen_base_dtype(cpu) == torch.float32


def test_init_from_starts_a_new_run_from_the_weights_and_fine_tunes_the_vae(
    line_data: Path, tmp_path: Path
) -> None:
    first = train(line_data, tmp_path / "a", settings(steps=2, checkpoint_every=2, lr=1e-3))
    source, _ = load_checkpoint(first.checkpoint)
    # Vanishing learning rates: after one step the weights are still the source's (VAE: bit for bit).
    kept = train(line_data, tmp_path / "b", settings(steps=1, checkpoint_every=1, lr=1e-12, head_lr=1e-12,
                                                     init_from=str(tmp_path / "a")))
    assert kept.start_step == 0 and kept.end_step == 1
    copy, _ = load_checkpoint(kept.checkpoint)
    for a, b in zip([*source.transformer.parameters(), *source.head.parameters()],
                    [*copy.transformer.parameters(), *copy.head.parameters()], strict=True):
        assert torch.allclose(a, b, rtol=0.0, atol=1e-9)
    for a, b in zip(source.vae.parameters(), copy.vae.parameters(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(source.text_embeddings["reach"], copy.text_embeddings["reach"])
    # With VAE steps, the given VAE is fine-tuned (it moves) and its latent statistics measured again.
    tuned = train(line_data, tmp_path / "c", settings(steps=1, checkpoint_every=1, vae_steps=2, vae_lr=1e-3,
                                                      init_from=str(tmp_path / "a"), vae_report_samples=1))
    moved, _ = load_checkpoint(tuned.checkpoint)
    assert any(not torch.equal(a, b) for a, b in zip(source.vae.parameters(), moved.vae.parameters(),
                                                      strict=True))
    # A new task starts from these weights: the source's embeddings are kept, the new task gets its own.
    other = train(record_line_episode(tmp_path / "push_data", task="push"), tmp_path / "e",
                  settings(steps=1, checkpoint_every=1, val_episodes=0, init_from=str(tmp_path / "a")))
    both, _ = load_checkpoint(other.checkpoint)
    assert sorted(both.text_embeddings) == ["push", "reach"]
    assert torch.equal(both.text_embeddings["reach"], source.text_embeddings["reach"])
    assert both.text_embeddings["push"].shape == source.text_embeddings["reach"].shape
    assert not torch.equal(both.text_embeddings["push"], source.text_embeddings["reach"])
    # Other model sizes cannot start from these weights.
    with pytest.raises(ValueError, match="cannot initialise"):
        train(line_data, tmp_path / "d", settings(steps=1, init_from=str(tmp_path / "a"),
                                                  config_overrides={"future_frames": FUTURE, "sigma": SIGMA,
                                                                    "image_size": 32}))


def test_ema_checkpoints_hold_the_average_and_a_resumed_run_matches_an_uninterrupted_one(
    line_data: Path, tmp_path: Path
) -> None:
    run = dict(lr=1e-3, head_lr=1e-3, ema_decay=0.9, val_episodes=0, checkpoint_every=3)
    whole = train(line_data, tmp_path / "whole", settings(steps=6, **run))
    train(line_data, tmp_path / "split", settings(steps=3, **run))
    split = train(line_data, tmp_path / "split", settings(steps=6, **run), resume=True)
    assert split.start_step == 3

    state = torch.load(whole.checkpoint / "optimizer.pt", weights_only=True)
    shadow, raw = state["ema"]["shadow_params"], state["training_weights"]
    parts, _ = load_checkpoint(whole.checkpoint)
    saved = [*parts.transformer.parameters(), *parts.head.parameters()]
    assert len(shadow) == len(raw) == len(saved)
    # The model files hold the average; the optimiser file the weights as trained, which differ from it.
    assert all(torch.equal(s, a) for s, a in zip(saved, shadow, strict=True))
    assert sum(float((s - r).abs().max()) > 1e-6 for s, r in zip(shadow, raw, strict=True)) > len(raw) // 2
    # Stopping and resuming changes nothing: the average and the trained weights carry over.
    resumed, _ = load_checkpoint(split.checkpoint)
    for a, b in zip(saved, [*resumed.transformer.parameters(), *resumed.head.parameters()], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    resumed_raw = torch.load(split.checkpoint / "optimizer.pt", weights_only=True)["training_weights"]
    for a, b in zip(raw, resumed_raw, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_ema_decay_outside_zero_one_is_refused() -> None:
    for decay in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match="ema_decay"):
            settings(ema_decay=decay)


def test_first_chunks_are_drawn_as_often_as_their_weight_says(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for _ in range(3):
        record_line_episode(tmp_path, steps=5)
    episodes = load_episodes(tmp_path)
    run = settings(val_episodes=1, start_stride=2, first_chunk_weight=4.0, steps=2, checkpoint_every=2)
    data = build_data(run, model_config(run, episodes), episodes, 0)
    starts = [data.train.locate(i)[1] for i in range(len(data.train))]
    assert starts == [0, 2, 4, 0, 2, 4]  # two training episodes, condition frames every 2nd step
    weights = data.train.sample_weights(run.first_chunk_weight)
    assert weights.tolist() == [4.0 if s == 0 else 1.0 for s in starts]
    # The loader draws first chunks 4 / (4 + 2) of the time: 2 of 3 draws.
    sampler = _loader(data.train, run).sampler
    draws = [i for _ in range(500) for i in sampler]
    first = np.mean([starts[i] == 0 for i in draws])
    assert abs(first - 2 / 3) < 0.03, first
    # The cached-latent loop draws with the same weights and says so.
    train(tmp_path, tmp_path / "run", run)
    out = capsys.readouterr().out
    assert "weigh 4 (67% of draws)" in out
    assert "2 for training, 1 held out" in out and "too few" not in out
    for weight in (0.0, -1.0):
        with pytest.raises(ValueError, match="first_chunk_weight"):
            settings(first_chunk_weight=weight)
