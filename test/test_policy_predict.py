"""The whole policy path on the tiny model: shapes for 1 and 5 steps, determinism, inputs and errors."""

import numpy as np
import pytest
import torch

from mvvdp_core.model import MVVDPConfig, build_model_parts
from mvvdp_core.policy import MVVDPPolicy, Observation

CONFIG = MVVDPConfig.tiny()


@pytest.fixture(scope="module")
def policy():
    return MVVDPPolicy(build_model_parts(CONFIG, seed=0, tasks=["default", "open drawer"]), CONFIG)


def _observation(**changes) -> Observation:
    values = dict(
        rgb=torch.rand(
            3, 3, CONFIG.image_size, CONFIG.image_size, generator=torch.Generator().manual_seed(0)
        ),
        ee_position=np.array([0.45, 0.05, 0.35]),
        ee_rotation=np.diag([1.0, -1.0, -1.0]),
        gripper=0.8,
        stamp=100.25,
        task="default",
    )
    values.update(changes)
    return Observation(**values)


@pytest.mark.parametrize("steps", [1, 5])
def test_shapes_through_the_whole_path(policy, steps):
    out = policy.predict(_observation(), num_steps=steps, return_video=True, seed=1)
    t, size = CONFIG.future_frames, CONFIG.image_size
    chunk = out.chunk
    assert chunk.positions.shape == (t, 3) and chunk.euler.shape == (t, 3) and chunk.gripper.shape == (t,)
    assert policy.workspace.contains(chunk.positions).all()
    np.testing.assert_allclose(chunk.time_from_start, CONFIG.control_period * np.arange(1, t + 1))
    assert chunk.stamp == 100.25 and 0 <= chunk.confidence <= 1
    assert out.heatmap_video.shape == (3, t, 3, size, size)
    assert out.rgb_video is not None and out.rgb_video.shape == (3, t, 3, size, size)
    assert out.heatmaps.shape == (t, 3, size, size)
    expected = {
        "heatmaps",
        "encode",
        "denoise",
        "decode_heatmaps",
        "decode_rgb",
        "backproject",
        "head",
        "total",
    }
    assert expected | {f"denoise_step_{i}" for i in range(steps)} == set(out.timings)
    assert all(v >= 0 for v in out.timings.values())


def test_deterministic_for_a_seed_and_task_dependent(policy):
    obs = _observation()
    first, second = policy.predict(obs, num_steps=1, seed=5), policy.predict(obs, num_steps=1, seed=5)
    assert second.chunk.chunk_id == first.chunk.chunk_id + 1
    assert first.rgb_video is None and "decode_rgb" not in first.timings
    torch.testing.assert_close(first.heatmap_video, second.heatmap_video, rtol=0, atol=0)
    np.testing.assert_array_equal(first.chunk.positions, second.chunk.positions)
    np.testing.assert_array_equal(first.chunk.euler, second.chunk.euler)
    other_task = policy.predict(_observation(task="open drawer"), num_steps=1, seed=5)
    assert not torch.equal(
        first.heatmap_video, other_task.heatmap_video
    )  # text conditioning reaches the output
    with pytest.raises(KeyError, match="open drawer"):
        policy.predict(_observation(task="unknown task"), num_steps=1)


def test_condition_frames_hold_views_and_heatmaps(policy):
    obs = _observation()
    frames = policy.condition_frames(obs)
    assert frames.shape == (1, 6, 3, CONFIG.image_size, CONFIG.image_size)
    torch.testing.assert_close(frames[0, :3], obs.rgb)
    # The heatmap views are blue (jet's zero) except around the end effector.
    assert float(frames[0, 3:, 2].mean()) > 0.4 and float(frames[0, 3:, 0].max()) > 0.5


def test_observation_validation(policy):
    with pytest.raises(ValueError, match="rgb"):
        _observation(rgb=torch.rand(2, 3, 64, 64))
    with pytest.raises(ValueError, match="rgb"):
        _observation(rgb=torch.rand(3, 3, 64, 64) + 1)
    with pytest.raises(ValueError, match="ee_position"):
        _observation(ee_position=np.array([np.nan, 0, 0]))
    with pytest.raises(ValueError, match="orthonormal"):
        _observation(ee_rotation=np.ones((3, 3)))
    with pytest.raises(ValueError, match="gripper"):
        _observation(gripper=1.5)
    with pytest.raises(ValueError, match="64x64"):
        policy.predict(_observation(rgb=torch.rand(3, 3, 32, 32)), num_steps=1)
    with pytest.raises(ValueError, match="num_steps"):
        policy.predict(_observation(), num_steps=0)


def test_rgb_preview_decodes_after_the_chunk_and_on_demand(policy):
    obs = _observation()
    with_video = policy.predict(obs, num_steps=1, return_video=True, seed=11)
    chunk_only = policy.predict(obs, num_steps=1, seed=11)
    assert chunk_only.rgb_video is None and chunk_only.rgb_latents is not None
    np.testing.assert_array_equal(chunk_only.chunk.positions, with_video.chunk.positions)
    rgb = policy.decode_rgb(chunk_only)
    assert chunk_only.rgb_video is rgb and "decode_rgb" in chunk_only.timings
    torch.testing.assert_close(rgb, with_video.rgb_video, rtol=0, atol=0)
