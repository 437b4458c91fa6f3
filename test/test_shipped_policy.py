"""The trained small checkpoint that ships with the package: size, VAE round trip, closed-loop picks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mvvdp_core.checkpoints import shipped_checkpoint
from mvvdp_core.data.dataset import EpisodeDataset, SampleConfig
from mvvdp_core.data.episode import Episode
from mvvdp_core.data.record import record_pick_demos
from mvvdp_core.evaluation.closed_loop import evaluate_policy
from mvvdp_core.model.checkpoint import load_checkpoint
from mvvdp_core.policy import MVVDPPolicy
from mvvdp_core.sim.pick import PickTask
from mvvdp_core.train.predictor import make_chunk_predictor, observation_from_step
from mvvdp_core.train.vae import heatmap_roundtrip_errors

HELD_OUT_SEED = 91_000  # far from the scene seeds of its training (0-19, 100-129, 300-319)


@pytest.fixture(scope="module")
def held_out_demo(tmp_path_factory: pytest.TempPathFactory) -> Episode:
    torch.set_num_threads(1)
    (path,) = record_pick_demos(tmp_path_factory.mktemp("demo"), 1, seed=HELD_OUT_SEED)
    return Episode(path)


def test_shipped_checkpoint_is_small_and_loads() -> None:
    path = shipped_checkpoint()
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    assert size <= 30 * 2**20, f"shipped checkpoint is {size / 2**20:.1f} MB"
    parts, config = load_checkpoint(path)
    assert not config.uses_lora and config.latent_size >= 8
    assert PickTask().name in parts.text_embeddings
    std = torch.tensor(config.vae["latents_std"])
    assert not torch.allclose(std, torch.ones_like(std)), "latent statistics were never measured"


def test_vae_round_trip_on_a_held_out_demonstration(held_out_demo: Episode) -> None:
    """Heatmap -> fitted VAE -> back-projection on a demonstration the VAE never saw: averaged over the
    chunks of the episode, every frame of a chunk comes back within 1 cm (measured on seeds 91000-91002:
    condition frame 0.11-0.12 cm, the worst future frame 0.66-0.75 cm)."""
    parts, config = load_checkpoint(shipped_checkpoint())
    sample = SampleConfig(config.workspace(), future_frames=config.future_frames, sigma=config.sigma)
    dataset = EpisodeDataset([held_out_demo], sample)
    starts = range(0, len(dataset), max(len(dataset) // 12, 1))
    batches = iter([torch.utils.data.default_collate([dataset[i]]) for i in starts])
    errors = heatmap_roundtrip_errors(parts.vae, batches, config.workspace(), len(starts))  # (S, 1 + F) m
    per_frame = errors.mean(0)
    assert len(starts) >= 10 and per_frame.shape[0] == 1 + config.future_frames
    assert per_frame[0] <= 0.005, f"condition frame {100 * per_frame[0]:.2f} cm"
    assert per_frame.max() <= 0.01, f"per frame (cm): {np.round(100 * per_frame, 2)}"


def test_shipped_model_runs_closed_loop_through_the_executor() -> None:
    """The shipped model's chunks pass the executor's checks and move the arm in the simulated pick."""
    torch.set_num_threads(1)
    policy = MVVDPPolicy.from_checkpoint(shipped_checkpoint())
    result = evaluate_policy(make_chunk_predictor(policy), 1, HELD_OUT_SEED + 10, time_limit=5.0)
    (episode,) = result.episodes
    assert episode.chunks >= 2 and episode.refused == 0, result.table()


def test_shipped_model_picks_the_cube_on_fixed_held_out_scenes() -> None:
    """Closed loop through the executor path on three fixed scenes it was not trained on (seeds 2004-2006:
    three of the 16 successes of `mvvdp evaluate --episodes 20 --seed 2000`, 80 %); at least two picks."""
    torch.set_num_threads(1)
    policy = MVVDPPolicy.from_checkpoint(shipped_checkpoint())
    result = evaluate_policy(make_chunk_predictor(policy), 3, 2004)
    assert sum(e.success for e in result.episodes) >= 2, result.table()
    assert all(e.refused == 0 for e in result.episodes), result.table()


def test_predicted_chunk_starts_at_the_end_effector(held_out_demo: Episode) -> None:
    """The predicted video starts where the arm is: the first predicted steps stay near the observed end
    effector (the heatmap of the condition frame carried into the future frames), with RGB frames."""
    policy = MVVDPPolicy.from_checkpoint(shipped_checkpoint())
    obs = observation_from_step(held_out_demo.step(0), policy, PickTask().name)
    out = policy.predict(obs, return_video=True, seed=0)
    assert np.linalg.norm(out.chunk.positions[0] - obs.ee_position) < 0.03
    assert out.rgb_video is not None and out.rgb_video.shape[:2] == (3, policy.config.future_frames)
    assert out.chunk.step_confidence[:4].min() > 0.5


def test_shipped_checkpoint_path_error_names_the_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no shipped checkpoint"):
        shipped_checkpoint("does_not_exist")
