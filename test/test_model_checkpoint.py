"""Checkpoint folders: save -> load gives identical outputs; missing or corrupt files give clear errors."""

import json
import shutil

import numpy as np
import pytest
import torch

from mvvdp_core.cli import main as cli_main
from mvvdp_core.model import CheckpointError, MVVDPConfig, build_model_parts, load_checkpoint, save_checkpoint
from mvvdp_core.model.checkpoint import build_transformer
from mvvdp_core.model.lora import trainable_parameters
from mvvdp_core.policy import MVVDPPolicy, Observation

CONFIG = MVVDPConfig.tiny()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    parts = build_model_parts(CONFIG, seed=3, tasks=["default", "push button"])
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # move LoRA B and view-attention outputs off zero so they matter
        for name, param in trainable_parameters(parts.transformer).items():
            if "lora_B" in name or ".out." in name:
                param.copy_(0.05 * torch.randn(param.shape, generator=generator))
    path = save_checkpoint(parts, CONFIG, tmp_path_factory.mktemp("ckpt") / "tiny")
    return parts, path


def _observation() -> Observation:
    return Observation(
        rgb=torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1)),
        ee_position=np.array([0.5, -0.1, 0.3]),
        ee_rotation=np.eye(3),
        gripper=0.0,
        stamp=3.0,
        task="push button",
    )


def test_folder_layout(saved):
    _, path = saved
    for name in (
        "config.json",
        "lora/adapter_config.json",
        "lora/adapter_model.safetensors",
        "view_attention.safetensors",
        "head.safetensors",
        "text_embeddings.safetensors",
        "base/transformer/config.json",
        "base/transformer/diffusion_pytorch_model.safetensors",
        "base/vae/config.json",
    ):
        assert (path / name).is_file(), name
    assert json.loads((path / "lora/adapter_config.json").read_text())["r"] == CONFIG.lora_rank


@torch.no_grad()
def test_save_load_identical_outputs(saved):
    parts, path = saved
    loaded, config = load_checkpoint(path)
    assert config == CONFIG
    assert set(loaded.text_embeddings) == {"default", "push button"}
    s = CONFIG.latent_size
    latents = torch.randn(1, 6, CONFIG.latent_channels, CONFIG.latent_frames, s, s)
    text = parts.text_embeddings["default"][None]
    timestep = torch.tensor([400.0])
    torch.testing.assert_close(
        loaded.transformer(latents, timestep, text),
        parts.transformer(latents, timestep, text),
        rtol=0,
        atol=1e-6,
    )
    # The LoRA and view-attention weights were non-zero: the output differs from the bare base model.
    bare = build_transformer(CONFIG, loaded.transformer.base.__class__(**CONFIG.transformer))
    bare.base.load_state_dict(
        {k: v for k, v in loaded.transformer.base.state_dict().items() if "lora_" not in k}, strict=False
    )
    assert (bare(latents, timestep, text) - parts.transformer(latents, timestep, text)).abs().max() > 1e-4
    original = MVVDPPolicy(parts, CONFIG).predict(_observation(), num_steps=2, seed=4)
    restored = MVVDPPolicy(loaded, config).predict(_observation(), num_steps=2, seed=4)
    torch.testing.assert_close(restored.heatmap_video, original.heatmap_video, rtol=0, atol=1e-6)
    np.testing.assert_allclose(restored.chunk.positions, original.chunk.positions, atol=1e-6)
    np.testing.assert_array_equal(restored.chunk.gripper, original.chunk.gripper)


@pytest.mark.parametrize(
    "name",
    [
        "config.json",
        "lora/adapter_config.json",
        "lora/adapter_model.safetensors",
        "view_attention.safetensors",
        "head.safetensors",
        "text_embeddings.safetensors",
        "base/transformer/config.json",
    ],
)
def test_missing_file_is_named(saved, tmp_path, name):
    _, path = saved
    copy = shutil.copytree(path, tmp_path / "ckpt")
    (copy / name).unlink()
    with pytest.raises(CheckpointError, match=name.split("/")[-1]):
        load_checkpoint(copy)


@pytest.mark.parametrize(
    "name",
    ["config.json", "head.safetensors", "view_attention.safetensors", "lora/adapter_model.safetensors"],
)
def test_corrupt_file_is_named(saved, tmp_path, name):
    _, path = saved
    copy = shutil.copytree(path, tmp_path / "ckpt")
    (copy / name).write_bytes(b"\x00garbage{")
    with pytest.raises(CheckpointError, match=name.split("/")[-1]):
        load_checkpoint(copy)


def test_mismatched_weights_are_named(saved, tmp_path):
    _, path = saved
    copy = shutil.copytree(path, tmp_path / "ckpt")
    shutil.copy(copy / "view_attention.safetensors", copy / "head.safetensors")
    with pytest.raises(CheckpointError, match="head.safetensors"):
        load_checkpoint(copy)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nowhere")


def test_tiny_checkpoint_command(tmp_path, capsys):
    out = tmp_path / "cmd"
    assert cli_main(["tiny-checkpoint", str(out), "--seed", "2", "--task", "stack blocks"]) == 0
    assert "stack blocks" in capsys.readouterr().out
    policy = MVVDPPolicy.from_checkpoint(out)
    assert policy.tasks == ["stack blocks"]
    assert policy.config == CONFIG


@torch.no_grad()
def test_base_model_path_checkpoint(saved, tmp_path):
    """A checkpoint pointing at a local diffusers folder stores no base weights and loads the same model."""
    parts, _ = saved
    base_dir = tmp_path / "wan_base"
    reference = load_checkpoint(saved[1])[0]
    transformer_dir = base_dir / "transformer"
    transformer_dir.mkdir(parents=True)
    shutil.copytree(saved[1] / "base" / "transformer", transformer_dir, dirs_exist_ok=True)
    reference.vae.vae.save_pretrained(str(base_dir / "vae"))
    config = MVVDPConfig.tiny(base_model_path=str(base_dir))
    path = save_checkpoint(parts, config, tmp_path / "ckpt")
    assert not (path / "base").exists()
    loaded, loaded_config = load_checkpoint(path)
    assert loaded_config.base_model_path == str(base_dir)
    s = CONFIG.latent_size
    latents = torch.randn(1, 6, CONFIG.latent_channels, CONFIG.latent_frames, s, s)
    text = parts.text_embeddings["default"][None]
    torch.testing.assert_close(
        loaded.transformer(latents, torch.tensor([250.0]), text),
        parts.transformer(latents, torch.tensor([250.0]), text),
        rtol=0,
        atol=1e-6,
    )
    # A config that disagrees with the base model's own config is refused, naming the difference.
    other = dict(CONFIG.transformer, num_layers=3)
    json_config = json.loads((path / "config.json").read_text())
    json_config["transformer"] = other
    (path / "config.json").write_text(json.dumps(json_config))
    with pytest.raises(CheckpointError, match="num_layers"):
        load_checkpoint(path)


def test_training_run_folder_and_latest_pointer_resolve_to_the_newest_checkpoint(saved, tmp_path):
    parts, path = saved
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copytree(path, run / "checkpoints" / "step_0000007")
    (run / "checkpoints" / "latest").write_text("step_0000007\n")
    for given in (run, run / "checkpoints" / "latest"):
        loaded, _ = load_checkpoint(given)
        assert set(loaded.text_embeddings) == set(parts.text_embeddings)
        for task, embedding in parts.text_embeddings.items():
            torch.testing.assert_close(loaded.text_embeddings[task], embedding)
    (run / "checkpoints" / "latest").write_text("")
    with pytest.raises(CheckpointError, match="empty checkpoint pointer"):
        load_checkpoint(run)
