"""The fast inference path against the plain one on the tiny model: same chunk, timings, condition cache.

Tolerance on a CPU in float32: positions within 1 mm, rotation bins equal or off by one, gripper equal. (The
only numeric difference is the LoRA update folded into the base weights.) With a GPU, the bf16 fast path with
the host-sync check on is compared with the float32 plain path on the decoded heatmap videos.
"""

import numpy as np
import pytest
import torch

from mvvdp_core.actions import absolute_to_relative, euler_to_bins
from mvvdp_core.model import MVVDPConfig, build_model_parts
from mvvdp_core.model.lora import merge_lora
from mvvdp_core.policy import FastPathOptions, MVVDPPolicy, Observation

CONFIG = MVVDPConfig.tiny()
STEPS = 2


def _parts():
    """Tiny random model whose LoRA is not the identity, so that merging it changes the base weights."""
    parts = build_model_parts(CONFIG, seed=0)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in parts.transformer.named_parameters():
            if "lora_B" in name:
                param.copy_(0.5 * torch.randn(param.shape, generator=generator))
    return parts


def _observation(stamp: float = 7.5) -> Observation:
    return Observation(
        rgb=torch.rand(
            3, 3, CONFIG.image_size, CONFIG.image_size, generator=torch.Generator().manual_seed(0)
        ),
        ee_position=np.array([0.45, 0.05, 0.35]),
        ee_rotation=np.diag([1.0, -1.0, -1.0]),
        gripper=0.8,
        stamp=stamp,
        task="default",
    )


def _bins(chunk, obs):
    return euler_to_bins(absolute_to_relative(obs.ee_rotation, chunk.euler), CONFIG.rotation_bins)


@pytest.fixture(scope="module")
def plain_output():
    return MVVDPPolicy(_parts(), CONFIG).predict(_observation(), num_steps=STEPS, seed=3)


@pytest.fixture(scope="module")
def fast_policy():
    return MVVDPPolicy(_parts(), CONFIG, fast=FastPathOptions())


def test_merge_folds_lora_into_the_base_weights():
    parts = _parts()
    x = torch.randn(5, CONFIG.transformer["num_attention_heads"] * CONFIG.transformer["attention_head_dim"])
    layer = parts.transformer.base.blocks[0].attn1.to_q
    before_weight = layer.base_layer.weight.detach().clone()
    with torch.no_grad():
        before = layer(x)
        assert merge_lora(parts.transformer) > 0
        assert merge_lora(parts.transformer) == 0  # already merged
        torch.testing.assert_close(layer(x), before, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(layer.base_layer.weight, before_weight)


def test_fast_path_gives_the_plain_chunk(plain_output, fast_policy):
    obs = _observation()
    fast = fast_policy.predict(obs, num_steps=STEPS, seed=3)
    plain_chunk, fast_chunk = plain_output.chunk, fast.chunk
    assert np.abs(fast_chunk.positions - plain_chunk.positions).max() <= 1e-3  # metres
    bin_gap = np.abs(_bins(fast_chunk, obs) - _bins(plain_chunk, obs))
    assert np.minimum(bin_gap, CONFIG.rotation_bins - bin_gap).max() <= 1
    np.testing.assert_array_equal(fast_chunk.gripper, plain_chunk.gripper)
    torch.testing.assert_close(fast.heatmap_video, plain_output.heatmap_video, rtol=0, atol=1e-4)
    expected = {"heatmaps", "encode", "denoise", "decode_heatmaps", "backproject", "head", "total"}
    assert expected | {f"denoise_step_{i}" for i in range(STEPS)} == set(fast.timings)
    assert all(v >= 0 for v in fast.timings.values()) and fast.timings["encode"] > 0
    assert fast.timings["denoise"] == pytest.approx(
        sum(fast.timings[f"denoise_step_{i}"] for i in range(STEPS))
    )


def test_condition_is_encoded_once_per_observation(fast_policy):
    obs = _observation(stamp=9.0)
    first = fast_policy.encode_condition(obs, timings := {})
    assert timings["encode"] > 0
    again = fast_policy.encode_condition(obs, timings := {})
    assert again is first and timings["encode"] == 0.0 and timings["heatmaps"] == 0.0
    newer = _observation(stamp=9.1)  # same pixels, a new observation
    assert fast_policy.encode_condition(newer, timings := {}) is not first and timings["encode"] > 0
    moved = _observation(stamp=9.1)
    moved.ee_position = moved.ee_position + 0.01
    assert not torch.equal(fast_policy.encode_condition(moved), first)


def test_bad_fast_path_options_are_named():
    with pytest.raises(ValueError, match="compile_mode"):
        FastPathOptions(compile_mode="fastest")
    with pytest.raises(ValueError, match="floating point"):
        FastPathOptions(dtype=torch.int8)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_bf16_fast_path_on_cuda_matches_and_never_syncs_in_the_loop(plain_output):
    parts = _parts().to("cuda", torch.float32)
    policy = MVVDPPolicy(parts, CONFIG, fast=FastPathOptions(check_syncs=True))
    assert policy.dtype == torch.bfloat16
    fast = policy.predict(_observation(), num_steps=STEPS, seed=3)
    torch.testing.assert_close(fast.heatmap_video.cpu(), plain_output.heatmap_video, rtol=0, atol=0.05)
    assert set(fast.timings) >= {f"denoise_step_{i}" for i in range(STEPS)}
