"""Task-instruction embeddings: a tiny umT5 encoder and tokenizer built here, Wan's padding rule, the
`mvvdp encode-prompts` checkpoint update, training from real embeddings, and clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_train_loop import settings as train_settings
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from tokenizers.processors import TemplateProcessing
from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

from mvvdp_core.cli import main as mvvdp
from mvvdp_core.cli import parse_train_args
from mvvdp_core.cli import tiny_checkpoint_command as tiny_checkpoint
from mvvdp_core.model import CheckpointError, MVVDPConfig, TextEncoderError, encode_prompts
from mvvdp_core.model.checkpoint import TEXT_FILE
from mvvdp_core.model.text import clean_prompt, parse_task_prompt, update_checkpoint_texts
from mvvdp_core.policy import MVVDPPolicy, Observation
from mvvdp_core.train.loop import build_parts

CONFIG = MVVDPConfig.tiny()
WORDS = "push the red button open drawer close blue door pick up cube place on shelf reach".split()
SPECIAL = ["<pad>", "</s>", "<unk>"]  # umT5's order: pad 0, eos 1, unk 2


def make_text_model(root: Path, d_model: int) -> Path:
    """A Wan2.2-style folder: text_encoder/ (tiny random umT5) and tokenizer/ (word-level, eos appended)."""
    vocab = {token: i for i, token in enumerate(SPECIAL + WORDS)}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = Whitespace()
    backend.post_processor = TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    tokenizer.save_pretrained(str(root / "tokenizer"))
    torch.manual_seed(0)
    config = UMT5Config(
        vocab_size=len(vocab), d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=16, dropout_rate=0.0,
    )  # fmt: skip
    UMT5EncoderModel(config).eval().save_pretrained(str(root / "text_encoder"))
    return root


@pytest.fixture(scope="module")
def text_model(tmp_path_factory) -> Path:
    return make_text_model(tmp_path_factory.mktemp("umt5"), CONFIG.text_dim)


def token_ids(words: list[str]) -> torch.Tensor:
    return torch.tensor([[len(SPECIAL) + WORDS.index(w) for w in words] + [1]])


@torch.no_grad()
def unpadded_encoding(root: Path, ids: torch.Tensor) -> torch.Tensor:
    model = UMT5EncoderModel.from_pretrained(str(root / "text_encoder"), local_files_only=True).eval()
    return model(input_ids=ids).last_hidden_state[0]


def test_padding_rule_and_truncation(text_model: Path) -> None:
    short = "push the red button"
    long = "pick up the blue cube place on the shelf"  # 9 words + eos > text_len 8: truncated
    out = encode_prompts({"short": short, "long": long}, text_model, max_length=CONFIG.text_len,
                         text_dim=CONFIG.text_dim, progress=False)  # fmt: skip
    assert set(out) == {"short", "long"}
    for embedding in out.values():
        assert embedding.shape == (CONFIG.text_len, CONFIG.text_dim) and embedding.dtype == torch.float32
    # Real tokens (4 words + eos) match the encoder run without padding; every padded row is exactly zero.
    reference = unpadded_encoding(text_model, token_ids(short.split()))
    torch.testing.assert_close(out["short"][:5], reference, rtol=1e-5, atol=1e-5)
    assert (out["short"][:5].abs().sum(dim=1) > 0).all()
    assert torch.equal(out["short"][5:], torch.zeros(CONFIG.text_len - 5, CONFIG.text_dim))
    # Truncation keeps the first 7 words and the end-of-sequence token: no zero rows.
    truncated = unpadded_encoding(text_model, token_ids(long.split()[:7]))
    torch.testing.assert_close(out["long"], truncated, rtol=1e-5, atol=1e-5)
    # Longer max_length: the same real rows, more zero rows.
    wide = encode_prompts({"short": short}, text_model, max_length=20, progress=False)["short"]
    torch.testing.assert_close(wide[:5], reference, rtol=1e-5, atol=1e-5)
    assert torch.equal(wide[5:], torch.zeros(15, CONFIG.text_dim))


@torch.no_grad()
def test_parity_with_the_wan_pipeline(text_model: Path) -> None:
    """The diffusers Wan pipeline's own prompt encoding, run on the same tiny encoder and tokenizer."""
    from types import SimpleNamespace

    from diffusers import WanPipeline
    from transformers import AutoTokenizer

    prompts = {"a": "push the  red button", "b": "pick up the blue cube place on the shelf", "c": "reach"}
    tokenizer = AutoTokenizer.from_pretrained(str(text_model / "tokenizer"), local_files_only=True)
    encoder = UMT5EncoderModel.from_pretrained(str(text_model / "text_encoder"), local_files_only=True)
    pipeline = SimpleNamespace(tokenizer=tokenizer, text_encoder=encoder)
    reference = WanPipeline._get_t5_prompt_embeds(
        pipeline, list(prompts.values()), max_sequence_length=CONFIG.text_len, device=torch.device("cpu"),
        dtype=torch.float32,
    )  # fmt: skip
    ours = encode_prompts(prompts, text_model, max_length=CONFIG.text_len, progress=False)
    torch.testing.assert_close(torch.stack(list(ours.values())), reference, rtol=1e-5, atol=1e-5)


def test_prompt_cleaning_and_different_prompts(text_model: Path) -> None:
    assert clean_prompt("  open\n the&amp;amp;  drawer ") == "open the& drawer"
    out = encode_prompts(
        {"a": "open the drawer", "b": "  open \n\t the   drawer ", "c": "close the drawer"},
        text_model, max_length=CONFIG.text_len, progress=False,
    )  # fmt: skip
    torch.testing.assert_close(out["a"], out["b"], rtol=0, atol=0)
    assert (out["a"] - out["c"]).abs().max() > 1e-3
    assert torch.equal(out["a"][4:], torch.zeros(CONFIG.text_len - 4, CONFIG.text_dim))


def _observation(task: str) -> Observation:
    return Observation(
        rgb=torch.rand(
            3, 3, CONFIG.image_size, CONFIG.image_size, generator=torch.Generator().manual_seed(1)
        ),
        ee_position=np.array([0.45, 0.05, 0.35]),
        ee_rotation=np.diag([1.0, -1.0, -1.0]),
        gripper=0.8,
        stamp=1.0,
        task=task,
    )


def test_encode_prompts_command_updates_checkpoint(text_model: Path, tmp_path: Path, capsys) -> None:
    checkpoint = tmp_path / "ckpt"
    assert tiny_checkpoint([str(checkpoint), "--task", "default", "--task", "keep"]) == 0
    before = load_file(str(checkpoint / TEXT_FILE))
    code = mvvdp([
        "encode-prompts", "--checkpoint", str(checkpoint), "--text-encoder", str(text_model),
        "--task", "push=push the red button", "--task", "default=open the drawer",
    ])  # fmt: skip
    assert code == 0 and "push" in capsys.readouterr().out
    stored = load_file(str(checkpoint / TEXT_FILE))
    assert set(stored) == {"default", "keep", "push"}
    torch.testing.assert_close(stored["keep"], before["keep"], rtol=0, atol=0)  # untouched task kept
    expected = encode_prompts({"push": "push the red button", "default": "open the drawer"}, text_model,
                              max_length=CONFIG.text_len, progress=False)  # fmt: skip
    for task in ("push", "default"):
        torch.testing.assert_close(stored[task], expected[task], rtol=0, atol=0)
    assert not list(checkpoint.glob(".*tmp*"))  # the atomic write left no temporary file
    # The encoder folder given directly finds the tokenizer beside it.
    assert mvvdp(["encode-prompts", "--checkpoint", str(checkpoint), "--text-encoder",
                  str(text_model / "text_encoder"), "--task", "close=close the blue door"]) == 0  # fmt: skip
    policy = MVVDPPolicy.from_checkpoint(checkpoint)
    assert set(policy.tasks) == {"close", "default", "keep", "push"}
    push = policy.predict(_observation("push"), num_steps=1, seed=3)
    default = policy.predict(_observation("default"), num_steps=1, seed=3)
    assert (push.heatmap_video - default.heatmap_video).abs().max() > 1e-6


def test_width_mismatch_and_missing_folders(text_model: Path, tmp_path: Path) -> None:
    narrow = make_text_model(tmp_path / "narrow", CONFIG.text_dim // 2)
    checkpoint = tmp_path / "ckpt"
    tiny_checkpoint([str(checkpoint)])
    with pytest.raises(TextEncoderError, match=r"hidden size 16, the model's text_dim is 32"):
        mvvdp(["encode-prompts", "--checkpoint", str(checkpoint), "--text-encoder", str(narrow),
               "--task", "push=push the button"])  # fmt: skip
    with pytest.raises(CheckpointError, match=r"needs \(8, 32\)"):
        update_checkpoint_texts(checkpoint, {"push": torch.zeros(CONFIG.text_len, 16)})
    with pytest.raises(TextEncoderError, match="text encoder folder not found"):
        encode_prompts({"a": "push"}, tmp_path / "missing")
    with pytest.raises(TextEncoderError, match="neither an encoder"):
        encode_prompts({"a": "push"}, tmp_path / "ckpt" / "lora")
    with pytest.raises(TextEncoderError, match="tokenizer folder not found"):
        encode_prompts({"a": "push"}, text_model, tokenizer_path=tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="checkpoint folder not found"):
        update_checkpoint_texts(tmp_path / "no_ckpt", {})
    with pytest.raises(ValueError, match="empty"):
        encode_prompts({"a": "  \n "}, text_model)
    with pytest.raises(ValueError, match="no prompts"):
        encode_prompts({}, text_model)
    with pytest.raises(ValueError, match="NAME="):
        parse_task_prompt("push the button")
    assert parse_task_prompt("push=press = hard") == ("push", "press = hard")


def test_training_starts_from_encoded_prompts(text_model: Path, capsys) -> None:
    tasks = ["reach"]
    encoded = train_settings(text_encoder=str(text_model), prompts={"reach": "reach the cube"})
    config = MVVDPConfig.tiny(future_frames=4)
    parts = build_parts(encoded, config, tasks, log=print)
    expected = encode_prompts({"reach": "reach the cube"}, text_model, max_length=config.text_len,
                              progress=False)  # fmt: skip
    torch.testing.assert_close(parts.text_embeddings["reach"], expected["reach"], rtol=0, atol=0)
    assert "umT5" in capsys.readouterr().out
    random_parts = build_parts(train_settings(), config, tasks, log=print)
    assert "random" in capsys.readouterr().out
    assert not torch.equal(random_parts.text_embeddings["reach"], expected["reach"])
    with pytest.raises(ValueError, match=r"missing \['reach'\]"):
        build_parts(train_settings(text_encoder=str(text_model), prompts={"other": "x"}), config, tasks)
    with pytest.raises(ValueError, match="need --text-encoder"):
        train_settings(prompts={"reach": "reach the cube"})
    # The command line fills the same settings.
    _, settings, _ = parse_train_args(["--data", "d", "--out", "o", "--text-encoder", str(text_model),
                                       "--prompt", "reach=reach the cube", "--prompt", "push=push it"])
    assert settings.prompts == {"reach": "reach the cube", "push": "push it"}
    assert settings.text_encoder == str(text_model)
    with pytest.raises(ValueError, match="given twice"):
        parse_train_args(["--data", "d", "--out", "o", "--text-encoder", "m", "--prompt", "a=x",
                          "--prompt", "a=y"])
