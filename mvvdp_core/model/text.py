"""Task-instruction embeddings from a local umT5 encoder, the text conditioning Wan2.2 was trained with.

Prompts are encoded once, offline, and stored in a checkpoint's text_embeddings.safetensors; the robot
never runs the encoder. The encoding follows Wan's rule: clean the prompt (HTML unescape, collapse
whitespace), tokenize with the end-of-sequence token, pad or truncate to max_length tokens, run the encoder
with the attention mask, keep the rows of real tokens and set every padded row to zero.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import torch
from safetensors.torch import save as save_tensors
from tqdm import tqdm

from mvvdp_core.fileio import atomic_write_bytes
from mvvdp_core.model.checkpoint import (
    TEXT_FILE,
    CheckpointError,
    load_config,
    load_tensors,
    resolve_checkpoint,
)

CONFIG_FILE = "config.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "spiece.model")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class TextEncoderError(ValueError):
    """The text encoder or tokenizer folder is missing or does not fit the model."""


def clean_prompt(prompt: str) -> str:
    """Wan's prompt cleaning: fix text when ftfy is installed, unescape HTML twice, collapse whitespace."""
    try:
        import ftfy

        prompt = ftfy.fix_text(prompt)
    except ImportError:
        pass
    prompt = html.unescape(html.unescape(prompt)).strip()
    return re.sub(r"\s+", " ", prompt).strip()


def _has_tokenizer(folder: Path) -> bool:
    return folder.is_dir() and any((folder / name).is_file() for name in TOKENIZER_FILES)


def resolve_folders(
    text_encoder_path: str | Path, tokenizer_path: str | Path | None = None
) -> tuple[Path, Path]:
    """(encoder folder, tokenizer folder) from an encoder folder or a diffusers folder with text_encoder/."""
    given = Path(text_encoder_path)
    if not given.is_dir():
        raise TextEncoderError(f"text encoder folder not found: {given}")
    if (given / CONFIG_FILE).is_file():
        encoder, candidates = given, [given, given.parent / "tokenizer"]
    elif (given / "text_encoder" / CONFIG_FILE).is_file():
        encoder, candidates = given / "text_encoder", [given / "tokenizer"]
    else:
        raise TextEncoderError(
            f"{given} holds neither an encoder ({CONFIG_FILE}) nor a text_encoder/ subfolder with one"
        )
    if tokenizer_path is not None:
        tokenizer = Path(tokenizer_path)
        if not _has_tokenizer(tokenizer):
            raise TextEncoderError(f"tokenizer folder not found or without tokenizer files: {tokenizer}")
        return encoder, tokenizer
    for candidate in candidates:
        if _has_tokenizer(candidate):
            return encoder, candidate
    raise TextEncoderError(
        f"no tokenizer next to {given} (looked in {[str(c) for c in candidates]}); pass the tokenizer folder"
    )


def _check_prompts(prompts: dict[str, str]) -> dict[str, str]:
    if not prompts:
        raise ValueError("no prompts to encode")
    cleaned = {}
    for task, prompt in prompts.items():
        if not isinstance(task, str) or not task.strip():
            raise ValueError(f"task names must be non-empty strings, got {task!r}")
        if not isinstance(prompt, str) or not clean_prompt(prompt):
            raise ValueError(f"instruction for task {task!r} is empty")
        cleaned[task] = clean_prompt(prompt)
    return cleaned


@torch.inference_mode()
def encode_prompts(
    prompts: dict[str, str],
    text_encoder_path: str | Path,
    tokenizer_path: str | Path | None = None,
    max_length: int = 512,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    text_dim: int | None = None,
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """Task -> (max_length, hidden) umT5 embedding on the CPU; rows past the prompt's tokens are zero.

    text_dim, when given, is the model's cross-attention width; an encoder of another width is an error.
    """
    from transformers import AutoTokenizer, UMT5EncoderModel

    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    cleaned = _check_prompts(prompts)
    encoder_dir, tokenizer_dir = resolve_folders(text_encoder_path, tokenizer_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    except (OSError, ValueError) as error:
        raise TextEncoderError(f"cannot load the tokenizer from {tokenizer_dir}: {error}") from error
    if tokenizer.pad_token_id is None:
        raise TextEncoderError(f"tokenizer in {tokenizer_dir} has no padding token")
    try:
        encoder = UMT5EncoderModel.from_pretrained(str(encoder_dir), local_files_only=True, dtype=dtype)
    except (OSError, ValueError, RuntimeError) as error:
        raise TextEncoderError(f"cannot load the umT5 encoder from {encoder_dir}: {error}") from error
    hidden = int(encoder.config.d_model)
    if text_dim is not None and hidden != text_dim:
        raise TextEncoderError(
            f"text encoder in {encoder_dir} has hidden size {hidden}, the model's text_dim is {text_dim}"
        )
    encoder.to(device).eval()
    embeddings = {}
    for task, prompt in tqdm(cleaned.items(), desc="encode prompts", disable=not progress):
        tokens = tokenizer(
            [prompt], padding="max_length", max_length=max_length, truncation=True,
            add_special_tokens=True, return_attention_mask=True, return_tensors="pt",
        )  # fmt: skip
        mask = tokens.attention_mask.to(device)
        states = encoder(input_ids=tokens.input_ids.to(device), attention_mask=mask).last_hidden_state[0]
        length = int(mask[0].gt(0).sum())
        embedding = torch.zeros(max_length, hidden, dtype=dtype)
        embedding[:length] = states[:length].to("cpu", dtype)
        if not torch.isfinite(embedding).all():
            raise TextEncoderError(f"embedding of task {task!r} is not finite (encoder {encoder_dir})")
        embeddings[task] = embedding
    return embeddings


def update_checkpoint_texts(checkpoint: str | Path, embeddings: dict[str, torch.Tensor]) -> list[str]:
    """Add or replace tasks in a checkpoint's text embeddings (atomic rewrite); returns all its tasks."""
    checkpoint = resolve_checkpoint(checkpoint)
    if not checkpoint.is_dir():
        raise CheckpointError(f"checkpoint folder not found: {checkpoint}")
    config = load_config(checkpoint)
    for task, embedding in embeddings.items():
        if embedding.shape != (config.text_len, config.text_dim):
            raise CheckpointError(
                f"embedding for {task!r} has shape {tuple(embedding.shape)}, checkpoint {checkpoint} needs "
                f"({config.text_len}, {config.text_dim}) (text_len, text_dim)"
            )
    file = checkpoint / TEXT_FILE
    stored = load_tensors(file) if file.exists() else {}
    stored.update({task: e.detach().to("cpu", torch.float32).contiguous() for task, e in embeddings.items()})
    atomic_write_bytes(file, save_tensors(stored))
    return sorted(stored)


def parse_task_prompt(text: str) -> tuple[str, str]:
    """'NAME=instruction' -> (NAME, instruction)."""
    name, sep, prompt = text.partition("=")
    if not sep or not name.strip() or not prompt.strip():
        raise ValueError(f"expected NAME=\"instruction\", got {text!r}")
    return name.strip(), prompt


def parse_task_prompts(items: list[str] | None) -> dict[str, str]:
    prompts: dict[str, str] = {}
    for item in items or []:
        name, prompt = parse_task_prompt(item)
        if name in prompts:
            raise ValueError(f"task {name!r} given twice")
        prompts[name] = prompt
    return prompts


def encode_checkpoint_prompts(
    checkpoint: str | Path,
    prompts: dict[str, str],
    text_encoder: str | Path,
    tokenizer: str | Path | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[Path, dict[str, torch.Tensor], list[str]]:
    """Encode prompts (task -> instruction) at the checkpoint's text length and store them in it.

    Returns the checkpoint folder, the new embeddings and every task the checkpoint now holds.
    """
    checkpoint = resolve_checkpoint(checkpoint)
    config = load_config(checkpoint)
    embeddings = encode_prompts(
        prompts, text_encoder, tokenizer, max_length=config.text_len, device=device, dtype=dtype,
        text_dim=config.text_dim,
    )  # fmt: skip
    return checkpoint, embeddings, update_checkpoint_texts(checkpoint, embeddings)
