"""Multi-view transformer: parity with the base at init, view mixing, timesteps, LoRA, trainable set."""

import copy
import re

import pytest
import torch
from diffusers import WanTransformer3DModel

from mvvdp_core.model.checkpoint import build_transformer
from mvvdp_core.model.config import MVVDPConfig
from mvvdp_core.model.lora import trainable_parameters
from mvvdp_core.model.view_attention import TokenLayout, ViewAttention

CONFIG = MVVDPConfig.tiny()


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    base = WanTransformer3DModel(**CONFIG.transformer).eval()
    reference = copy.deepcopy(base)
    model = build_transformer(CONFIG, base).eval()
    return reference, model


def _inputs(batch: int = 2):
    gen = torch.Generator().manual_seed(1)
    c, f, s = CONFIG.latent_channels, CONFIG.latent_frames, CONFIG.latent_size
    latents = torch.randn(batch, CONFIG.num_views, c, f, s, s, generator=gen)
    text = torch.randn(batch, CONFIG.text_len, CONFIG.text_dim, generator=gen)
    return latents, torch.tensor([700.0, 300.0][:batch]), text


@torch.no_grad()
def test_init_equals_base_model(models):
    reference, model = models
    latents, timestep, text = _inputs()
    out = model(latents, timestep, text)
    assert out.shape == latents.shape
    b, v = latents.shape[:2]
    per_token = model.token_timesteps(timestep, b, *latents.shape[3:], cond_frames=1)
    expected = reference(
        hidden_states=latents.flatten(0, 1),
        timestep=per_token,
        encoder_hidden_states=text.repeat_interleave(v, 0),
        return_dict=False,
    )[0]
    torch.testing.assert_close(out.flatten(0, 1), expected, atol=1e-6, rtol=0)


def test_token_timesteps_zero_on_condition_frame(models):
    _, model = models
    steps = model.token_timesteps(torch.tensor([500.0]), 1, 7, 4, 4, cond_frames=1)
    tokens_per_frame = (4 // 2) * (4 // 2)
    assert steps.shape == (CONFIG.num_views, 7 * tokens_per_frame)
    assert bool((steps[:, :tokens_per_frame] == 0).all()) and bool((steps[:, tokens_per_frame:] == 500).all())


@torch.no_grad()
def test_views_independent_at_init_and_mixed_after_training_step(models):
    _, model = models
    model = copy.deepcopy(model)
    latents, timestep, text = _inputs(1)
    changed = latents.clone()
    changed[:, 0, :, 1:] += 1.0  # perturb view 0's future frames only
    base_out, changed_out = model(latents, timestep, text), model(changed, timestep, text)
    torch.testing.assert_close(base_out[:, 1:], changed_out[:, 1:], atol=1e-6, rtol=0)
    for module in model.view_attention:
        torch.nn.init.normal_(module.out.weight, std=0.1)
    base_out, changed_out = model(latents, timestep, text), model(changed, timestep, text)
    assert (base_out[:, 1:] - changed_out[:, 1:]).abs().max() > 1e-3


def test_trainable_set_is_lora_and_view_attention_exactly(models):
    _, model = models
    names = set(trainable_parameters(model))
    layers = CONFIG.transformer["num_layers"]
    expected_lora = set()
    for i in range(layers):
        for attn in ("attn1", "attn2"):
            for proj in ("to_q", "to_k", "to_v", "to_out.0"):
                expected_lora |= {f"base.blocks.{i}.{attn}.{proj}.lora_{ab}.default.weight" for ab in "AB"}
        for proj in ("ffn.net.0.proj", "ffn.net.2"):
            expected_lora |= {f"base.blocks.{i}.{proj}.lora_{ab}.default.weight" for ab in "AB"}
    expected_view = {f"view_attention.{n}" for n, _ in model.view_attention.named_parameters()}
    assert names == expected_lora | expected_view
    lora_modules = [n for n, _ in model.named_modules() if n.endswith("lora_A")]
    assert not any("view_attention" in n for n in lora_modules)
    assert all(re.fullmatch(CONFIG.lora_targets, n.removeprefix("base.").rsplit(".lora_A", 1)[0])
               for n in lora_modules)  # fmt: skip
    rank = model.base.blocks[0].attn1.to_q.lora_A["default"].weight.shape[0]
    assert rank == CONFIG.lora_rank


def test_bad_inputs(models):
    _, model = models
    latents, timestep, text = _inputs()
    with pytest.raises(ValueError, match="latents"):
        model(latents[:, :3], timestep, text)
    with pytest.raises(ValueError, match="timestep"):
        model(latents, torch.tensor([1.0, 2.0, 3.0]), text)
    with pytest.raises(ValueError, match="text"):
        model(latents, timestep, text[0])


def test_real_preset_matches_wan22_ti2v_5b():
    config = MVVDPConfig.wan22_ti2v_5b()
    with torch.device("meta"):
        base = WanTransformer3DModel(**config.transformer)
    total = sum(p.numel() for p in base.parameters())
    assert abs(total - 4.9998e9) < 1e6
    assert config.latent_frames == 7 and config.latent_size == 16 and config.num_views == 6
    restored = MVVDPConfig.from_json(config.to_json())
    assert restored == config


@torch.no_grad()
def test_view_attention_knows_views_and_positions():
    torch.manual_seed(0)
    attention = ViewAttention(dim=32, num_heads=2, num_views=3)
    torch.nn.init.normal_(attention.out.weight, std=0.2)
    layout = TokenLayout(views=3, frames=2, height=2, width=2)
    tokens = torch.randn(3, 2 * 4, 32)  # B*V = 3, T*H*W = 8
    out = attention(tokens, layout)
    assert out.shape == tokens.shape
    # Frames do not mix: changing frame 1 leaves frame 0 of every view unchanged.
    changed = tokens.clone()
    changed[:, 4:] += 1.0
    torch.testing.assert_close(attention(changed, layout)[:, :4], out[:, :4])
    # Swapping the contents of two views does not just swap the outputs: the views are told apart.
    swapped = attention(tokens[[1, 0, 2]], layout)
    assert (swapped[[1, 0, 2]] - out).abs().max() > 1e-4
    with pytest.raises(ValueError, match="views"):
        attention(torch.randn(4, 8, 32), TokenLayout(views=4, frames=2, height=2, width=2))


# The "wan" style: initialised from the pretrained self-attention, zero-started gate -------------------------
WAN_STYLE = MVVDPConfig.tiny(view_attention_style="wan")


def _wan_style_model(seed: int = 0):
    torch.manual_seed(seed)
    base = WanTransformer3DModel(**WAN_STYLE.transformer).eval()
    reference = copy.deepcopy(base)
    return reference, build_transformer(WAN_STYLE, base).eval()


@torch.no_grad()
def test_untrained_wan_style_model_is_the_base_model_on_each_view():
    reference, model = _wan_style_model()
    latents, timestep, text = _inputs()
    b, v = latents.shape[:2]
    per_token = model.token_timesteps(timestep, b, *latents.shape[3:], cond_frames=1)
    expected = reference(
        hidden_states=latents.flatten(0, 1), timestep=per_token,
        encoder_hidden_states=text.repeat_interleave(v, 0), return_dict=False,
    )[0]  # fmt: skip
    out = model(latents, timestep, text)
    assert torch.equal(out.flatten(0, 1), expected)  # exactly: the gate is zero
    for attention, block in zip(model.view_attention, model.base.blocks, strict=True):
        q, k, _ = attention.qkv.weight.chunk(3)
        assert torch.equal(q, block.attn1.to_q.base_layer.weight)
        assert torch.equal(k, block.attn1.to_k.base_layer.weight)
        assert torch.equal(attention.out.weight, block.attn1.to_out[0].base_layer.weight)
        assert torch.equal(attention.norm_q.weight, block.attn1.norm_q.weight)
        assert not attention.gate.any()
    # With the gates open the views mix: view 0's future frames change the other views' outputs.
    for attention in model.view_attention:
        attention.gate.fill_(0.5)
    changed = latents.clone()
    changed[:, 0, :, 1:] += 1.0
    opened, opened_changed = model(latents, timestep, text), model(changed, timestep, text)
    assert (opened - out).abs().max() > 1e-3
    assert (opened[:, 1:] - opened_changed[:, 1:]).abs().max() > 1e-3


def test_wan_style_gate_receives_the_first_gradient():
    _, model = _wan_style_model()
    model.train()
    latents, timestep, text = _inputs(1)
    model(latents, timestep, text).square().mean().backward()
    gates = [a.gate.grad for a in model.view_attention]
    assert all(g is not None and g.abs().max() > 0 for g in gates)
    # Behind a closed gate the copied projections get no gradient yet.
    assert all(not a.qkv.weight.grad.any() for a in model.view_attention)


@pytest.mark.parametrize("style", ["plain", "wan"])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(style):
    config = MVVDPConfig.tiny(view_attention_style=style)
    torch.manual_seed(0)
    model = build_transformer(config).train()
    with torch.no_grad():  # open the paths that start closed so every trained weight gets a gradient
        for attention in model.view_attention:
            torch.nn.init.normal_(attention.out.weight, std=0.1)
            if style == "wan":
                attention.gate.fill_(0.3)
    checkpointed = copy.deepcopy(model).enable_gradient_checkpointing()
    latents, timestep, text = _inputs()
    losses, grads = [], []
    for m in (model, checkpointed):
        loss = m(latents, timestep, text).square().mean()
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad for n, p in m.named_parameters() if p.requires_grad})
    assert torch.equal(losses[0], losses[1])
    assert set(grads[0]) == set(grads[1]) and all(g is not None for g in grads[1].values())
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-5, atol=1e-7, msg=name)
    view_grads = [g for n, g in grads[1].items() if n.startswith("view_attention.")]
    assert view_grads and all(g.abs().max() > 0 for g in view_grads)


def test_checkpointing_stores_fewer_activations():
    torch.manual_seed(0)
    model = build_transformer(CONFIG).train()
    latents, timestep, text = _inputs()

    def saved_elements(m) -> int:
        count = 0

        def pack(t: torch.Tensor) -> torch.Tensor:
            nonlocal count
            count += t.numel()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            m(latents, timestep, text)
        return count

    full = saved_elements(model)
    model.enable_gradient_checkpointing()
    assert saved_elements(model) < full / 2


def test_cast_keeps_wans_float32_parts():
    from mvvdp_core.model.transformer import cast_transformer

    torch.manual_seed(0)
    model = cast_transformer(build_transformer(CONFIG), torch.bfloat16)
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    assert dtypes["base.blocks.0.scale_shift_table"] == torch.float32
    assert dtypes["base.condition_embedder.time_embedder.linear_1.weight"] == torch.float32
    assert dtypes["base.blocks.0.norm2.weight"] == torch.float32
    assert dtypes["base.blocks.0.attn1.to_q.base_layer.weight"] == torch.bfloat16
    assert dtypes["view_attention.0.qkv.weight"] == torch.bfloat16
    assert model.base.rope.freqs_cos.dtype != torch.bfloat16
    latents, timestep, text = _inputs()
    with torch.no_grad():
        out = model(latents.bfloat16(), timestep, text.bfloat16())
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    from mvvdp_core.model.checkpoint import build_model_parts

    parts = build_model_parts(CONFIG, seed=0).to("cpu", torch.bfloat16)
    assert {p.dtype for p in parts.vae.parameters()} == {torch.float32}  # the VAE keeps its dtype
    assert {p.dtype for p in parts.head.parameters()} == {torch.bfloat16}
    assert parts.transformer.base.blocks[0].scale_shift_table.dtype == torch.float32


def test_wan_style_checkpoint_round_trip_and_older_configs_load_as_plain(tmp_path):
    import json

    from mvvdp_core.model.checkpoint import build_model_parts, load_checkpoint, save_checkpoint

    parts = build_model_parts(WAN_STYLE, seed=0)
    with torch.no_grad():
        for attention in parts.transformer.view_attention:
            attention.gate.normal_()
    save_checkpoint(parts, WAN_STYLE, tmp_path / "wan")
    loaded, config = load_checkpoint(tmp_path / "wan")
    assert config.view_attention_style == "wan"
    latents, timestep, text = _inputs(1)
    with torch.no_grad():
        expected = parts.transformer.eval()(latents, timestep, text)
        assert torch.equal(loaded.transformer.eval()(latents, timestep, text), expected)
    # A config written before the field existed: plain view attention (no gate), as it was trained.
    plain = build_model_parts(CONFIG, seed=0)
    save_checkpoint(plain, CONFIG, tmp_path / "plain")
    data = json.loads((tmp_path / "plain" / "config.json").read_text())
    del data["view_attention_style"]
    (tmp_path / "plain" / "config.json").write_text(json.dumps(data))
    loaded, config = load_checkpoint(tmp_path / "plain")
    assert config.view_attention_style == "plain"
    assert not any("gate" in n for n, _ in loaded.transformer.view_attention.named_parameters())


def test_wan22_preset_uses_the_gated_style_and_small_presets_do_not():
    assert MVVDPConfig.wan22_ti2v_5b().view_attention_style == "wan"
    assert MVVDPConfig.tiny().view_attention_style == MVVDPConfig.small().view_attention_style == "plain"
    with pytest.raises(ValueError, match="heads"):
        MVVDPConfig.tiny(view_attention_style="wan", view_attention_heads=1)


@pytest.mark.parametrize("style", ["plain", "wan"])
def test_each_block_with_its_view_attention_compiles_as_one_graph(style):
    """torch.compile traces a Wan block and its view attention together, without graph breaks (the eager
    backend checks the trace without code generation), and the result is unchanged."""
    config = MVVDPConfig.tiny(view_attention_style=style)
    torch.manual_seed(0)
    model = build_transformer(config).eval()
    latents, timestep, text = _inputs(1)
    with torch.no_grad():
        expected = model(latents, timestep, text)
        model.compile_blocks(backend="eager", fullgraph=True)
        assert torch.equal(model(latents, timestep, text), expected)
