"""Memory plan on the meta device: the 5B model's parameter counts and the wan22 training config's fit."""

from __future__ import annotations

import pytest
import torch

from mvvdp_core.model.checkpoint import build_transformer
from mvvdp_core.model.config import MVVDPConfig
from mvvdp_core.train.memory import GB, memory_plan, saved_activation_bytes


@pytest.fixture(scope="module")
def wan22_plans():
    config = MVVDPConfig.wan22_ti2v_5b()
    with_checkpointing = memory_plan(config, batch=1, mode="lora", checkpointing=True, name="wan22")
    without = memory_plan(config, batch=1, mode="lora", checkpointing=False, name="wan22")
    return config, with_checkpointing, without


def test_wan22_parameter_counts(wan22_plans):
    config, plan, _ = wan22_plans
    assert abs(plan.base_parameters - 4.9998e9) < 1e6
    assert abs(plan.lora_parameters - 80.6e6) < 0.1e6
    dim, layers = 24 * 128, 30
    # per block: view embedding (6 views), LayerNorm, fused qkv, output, q/k RMS norms, gate
    per_block = 6 * dim + 2 * dim + (3 * dim * dim + 3 * dim) + (dim * dim + dim) + 2 * dim + dim
    assert plan.view_attention_parameters == layers * per_block  # 1.1338 B
    assert abs(plan.head_parameters - 169e6) < 1e6
    parts = plan.lora_parameters + plan.view_attention_parameters + plan.head_parameters
    assert plan.trained_parameters == parts
    assert config.view_attention_style == "wan"


def test_wan22_training_config_fits_80_gb_only_with_checkpointing(wan22_plans):
    _, plan, without = wan22_plans
    assert plan.fits(80), plan.table()
    # frozen base in bf16 (~10 GB) + float32 trained weights, their gradients and two AdamW moments
    assert plan.weights > 2 * plan.base_parameters
    assert plan.optimizer == 2 * plan.gradients == 8 * plan.trained_parameters
    assert 0 < plan.activations < without.activations / 10
    assert not without.fits(80) and without.peak > 80 * GB
    assert "| peak |" in plan.table()


def test_meta_activation_count_equals_the_real_one_on_cpu():
    """The meta-device measurement counts what a real forward pass saves for backward, or a little more: on
    meta, attention takes the math path and keeps its probabilities, which fused kernels do not."""
    config = MVVDPConfig.tiny()
    shape = (1, config.num_views, config.latent_channels, config.latent_frames, config.latent_size,
             config.latent_size)  # fmt: skip
    counts = []
    for device in ("cpu", "meta"):
        torch.manual_seed(0)
        with torch.device(device):
            model = build_transformer(config).train()
            latents, text = torch.zeros(shape), torch.zeros(1, config.text_len, config.text_dim)
            timestep = torch.full((1,), 500.0)
        run = lambda m=model, x=latents, t=timestep, e=text: m(x, t, e).square().mean()  # noqa: E731
        counts.append(saved_activation_bytes(run, list(model.parameters())))
    real, meta = counts
    assert 0 < real <= meta <= 1.15 * real


def test_the_wan22_training_settings_file_fits_80_gb(capsys: pytest.CaptureFixture[str]):
    from pathlib import Path

    from mvvdp_core.cli import dry_run, parse_train_args

    settings_file = Path(__file__).resolve().parent.parent / "config" / "train_wan22.yaml"
    _, settings, _ = parse_train_args(["--settings", str(settings_file), "--base-model", "/models/wan"])
    assert settings.gradient_checkpointing and settings.global_batch == 64 and settings.batch_size == 1
    assert dry_run(settings, gpu_gb=80) == 0
    printed = capsys.readouterr().out
    assert "64 micro-batch(es) of 1" in printed and "fits in 80 GB" in printed
