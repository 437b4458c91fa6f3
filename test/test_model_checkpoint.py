"""Checkpoint folders: save -> load gives identical outputs; missing or corrupt files give clear errors."""

import json
import shutil

import numpy as np
import pytest
import torch
from diffusers import WanTransformer3DModel
from safetensors.torch import load_file, save_file

from mvvdp_core.cli import main as cli_main
from mvvdp_core.model import CheckpointError, MVVDPConfig, build_model_parts, load_checkpoint, save_checkpoint
from mvvdp_core.model.checkpoint import build_transformer, head_kwargs, upgrade_checkpoint
from mvvdp_core.model.head import RotationGripperHead
from mvvdp_core.model.lora import base_state_dict, trainable_parameters
from mvvdp_core.model.transformer import MultiViewWanTransformer
from mvvdp_core.model.vae import VideoVAE
from mvvdp_core.policy import MVVDPPolicy, Observation

CONFIG = MVVDPConfig.tiny()
MODEL_FILES = ("config.json", "diffusion_pytorch_model.safetensors")


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
        "text_embeddings.safetensors",
        *(f"{sub}/{file}" for sub in ("transformer", "vae", "head") for file in MODEL_FILES),
    ):
        assert (path / name).is_file(), name
    assert json.loads((path / "lora/adapter_config.json").read_text())["r"] == CONFIG.lora_rank
    assert json.loads((path / "head/config.json").read_text())["_class_name"] == "RotationGripperHead"
    # The transformer folder holds the base weights without LoRA: the plain class reads it.
    plain = MultiViewWanTransformer.from_pretrained(str(path / "transformer"), local_files_only=True)
    assert not any("lora_" in name for name in plain.state_dict())


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


def test_saved_configs_name_no_source_folder(saved, tmp_path):
    loaded, config = load_checkpoint(saved[1])  # from_pretrained records the folder it read
    assert str(saved[1]) in str(loaded.head.config.get("_name_or_path", ""))
    again = save_checkpoint(loaded, config, tmp_path / "again")
    for config_file in sorted(again.glob("*/config.json")):
        assert "_name_or_path" not in json.loads(config_file.read_text()), config_file
    reloaded, _ = load_checkpoint(again)
    def settings(model):
        return {k: v for k, v in model.config.items() if k != "_name_or_path"}

    assert settings(reloaded.head) == settings(loaded.head) and settings(reloaded.vae) == settings(loaded.vae)


@pytest.mark.parametrize(
    "name",
    [
        "config.json",
        "lora/adapter_config.json",
        "lora/adapter_model.safetensors",
        "transformer/diffusion_pytorch_model.safetensors",
        "head/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
        "text_embeddings.safetensors",
        "transformer/config.json",
        "head/config.json",
    ],
)
def test_missing_file_is_named(saved, tmp_path, name):
    _, path = saved
    copy = shutil.copytree(path, tmp_path / "ckpt")
    (copy / name).unlink()
    with pytest.raises(CheckpointError, match=name):
        load_checkpoint(copy)


@pytest.mark.parametrize(
    "name",
    [
        "config.json",
        "head/diffusion_pytorch_model.safetensors",
        "transformer/diffusion_pytorch_model.safetensors",
        "head/config.json",
        "lora/adapter_model.safetensors",
    ],
)
def test_corrupt_file_is_named(saved, tmp_path, name):
    _, path = saved
    copy = shutil.copytree(path, tmp_path / "ckpt")
    (copy / name).write_bytes(b"\x00garbage{")
    with pytest.raises(CheckpointError, match=name):
        load_checkpoint(copy)


def test_mismatched_weights_are_named(saved, tmp_path):
    _, path = saved
    copy = shutil.copytree(path, tmp_path / "ckpt")
    shutil.copy(copy / "vae" / MODEL_FILES[1], copy / "head" / MODEL_FILES[1])
    with pytest.raises(CheckpointError, match="head/diffusion_pytorch_model.safetensors"):
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


def _write_base_model(parts, folder) -> None:
    """A local diffusers folder (transformer/, vae/) holding the parts' base Wan transformer and VAE."""
    base = WanTransformer3DModel(**CONFIG.transformer)
    base.load_state_dict(base_state_dict(parts.transformer))
    base.save_pretrained(str(folder / "transformer"))
    parts.vae.vae.save_pretrained(str(folder / "vae"))


@torch.no_grad()
def test_base_model_path_checkpoint(saved, tmp_path):
    """A checkpoint pointing at a local diffusers folder stores no base weights and loads the same model."""
    parts, _ = saved
    base_dir = tmp_path / "wan_base"
    reference = load_checkpoint(saved[1])[0]
    _write_base_model(reference, base_dir)
    config = MVVDPConfig.tiny(base_model_path=str(base_dir))
    path = save_checkpoint(parts, config, tmp_path / "ckpt")
    assert not (path / "vae").exists() and not (path / "transformer" / MODEL_FILES[1]).exists()
    assert (path / "transformer" / "view_attention.safetensors").is_file()
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


# diffusers models ------------------------------------------------------------------------------
def _public(config) -> dict:
    """A diffusers config without its private entries, tuples as lists."""
    return json.loads(json.dumps({k: v for k, v in config.items() if not k.startswith("_")}))


@torch.no_grad()
def test_models_round_trip_through_from_pretrained(tmp_path):
    """Each model's save_pretrained folder gives, via its class's from_pretrained, an identical model."""
    torch.manual_seed(0)
    s = CONFIG.latent_size
    transformer = MultiViewWanTransformer(dict(CONFIG.transformer), CONFIG.num_views, 2).eval()
    for param in transformer.view_attention.parameters():  # the output projection starts at zero
        param.add_(0.05 * torch.randn_like(param))
    vae = VideoVAE(CONFIG.vae).eval()
    vae.set_latent_statistics([0.25] * CONFIG.latent_channels, [1.5] * CONFIG.latent_channels)
    head = RotationGripperHead(**head_kwargs(CONFIG)).eval()
    latents = torch.randn(2, 6, CONFIG.latent_channels, CONFIG.latent_frames, s, s)
    text = torch.randn(1, CONFIG.text_len, CONFIG.text_dim)
    peaks = 64 * torch.rand(2, CONFIG.future_frames, CONFIG.num_rgb_views, 2)
    frames = torch.rand(1, 2, 5, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    runs = {
        "transformer": (transformer, lambda m: m(latents, torch.tensor([300.0, 700.0]), text)),
        "vae": (vae, lambda m: m.encode(frames)),
        "head": (head, lambda m: m(latents, peaks)),
    }
    for name, (model, run) in runs.items():
        model.save_pretrained(str(tmp_path / name))
        assert {p.name for p in (tmp_path / name).iterdir()} == set(MODEL_FILES), name
        loaded = type(model).from_pretrained(str(tmp_path / name), local_files_only=True).eval()
        assert _public(loaded.config) == _public(model.config), name
        expected, got = run(model), run(loaded)
        for a, b in zip(expected if isinstance(expected, tuple) else (expected,),
                        got if isinstance(got, tuple) else (got,), strict=True):  # fmt: skip
            torch.testing.assert_close(b, a, rtol=0, atol=0)
    restored = VideoVAE.from_pretrained(str(tmp_path / "vae"), local_files_only=True)
    assert torch.equal(restored.latents_std.flatten(), torch.full((CONFIG.latent_channels,), 1.5))
    assert "latents_mean" in load_file(str(tmp_path / "vae" / MODEL_FILES[1]))


# Older layout ----------------------------------------------------------------------------------
def _save_old_layout(parts, config, path):
    """The older checkpoint layout, as the previous save_checkpoint wrote it."""
    from mvvdp_core.model.lora import lora_config, lora_state_dict

    def save(state, file):
        save_file({k: v.detach().contiguous() for k, v in state.items()}, str(file))

    path.mkdir(parents=True)
    config.save(path / "config.json")
    if config.uses_lora:
        lora_config(config).save_pretrained(str(path / "lora"))
        save(lora_state_dict(parts.transformer), path / "lora" / "adapter_model.safetensors")
    save(parts.transformer.view_attention.state_dict(), path / "view_attention.safetensors")
    save(parts.head.state_dict(), path / "head.safetensors")
    save(parts.text_embeddings, path / "text_embeddings.safetensors")
    if config.base_model_path is None:
        (path / "base" / "transformer").mkdir(parents=True)
        parts.transformer.base.save_config(str(path / "base" / "transformer"))
        save(base_state_dict(parts.transformer), path / "base" / "transformer" / MODEL_FILES[1])
        parts.vae.vae.save_pretrained(str(path / "base" / "vae"))
    return path


@torch.no_grad()
@pytest.mark.parametrize("with_base_path", [False, True])
def test_upgrade_old_layout_gives_identical_policy_outputs(saved, tmp_path, capsys, with_base_path):
    parts, _ = saved
    config = CONFIG
    if with_base_path:
        _write_base_model(parts, tmp_path / "wan_base")
        config = MVVDPConfig.tiny(base_model_path=str(tmp_path / "wan_base"))
    old = _save_old_layout(parts, config, tmp_path / "old")
    (old / "trainer_state.pt").write_bytes(b"state")  # files beside the model come along
    with pytest.raises(CheckpointError, match="mvvdp upgrade-checkpoint"):
        load_checkpoint(old)
    assert cli_main(["upgrade-checkpoint", str(old), str(tmp_path / "new")]) == 0
    assert "new" in capsys.readouterr().out
    new = tmp_path / "new"
    assert (new / "trainer_state.pt").read_bytes() == b"state"
    assert not (new / "base").exists() and not (new / "head.safetensors").exists()
    loaded, loaded_config = load_checkpoint(new)
    assert loaded_config == config
    original = MVVDPPolicy(parts, CONFIG).predict(_observation(), num_steps=2, seed=4)
    restored = MVVDPPolicy(loaded, loaded_config).predict(_observation(), num_steps=2, seed=4)
    torch.testing.assert_close(restored.heatmap_video, original.heatmap_video, rtol=0, atol=0)
    np.testing.assert_array_equal(restored.chunk.positions, original.chunk.positions)
    np.testing.assert_array_equal(restored.chunk.gripper, original.chunk.gripper)
    with pytest.raises(CheckpointError, match="older layout"):
        upgrade_checkpoint(new, tmp_path / "again")


def test_upgrade_in_place(saved, tmp_path):
    parts, _ = saved
    folder = _save_old_layout(parts, CONFIG, tmp_path / "ckpt")
    assert upgrade_checkpoint(folder, folder) == folder
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json", "head", "lora", "text_embeddings.safetensors", "transformer", "vae",
    ]  # fmt: skip
    assert not list(tmp_path.glob(".*"))
    load_checkpoint(folder)
