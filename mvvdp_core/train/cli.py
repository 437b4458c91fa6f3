"""`mvvdp train`: train the video-model LoRA and the rotation/gripper head on recorded episodes.

Settings come from defaults, then an optional YAML file (--settings, keys of TrainSettings), then the flags.
Several GPUs: `accelerate launch -m mvvdp_core.cli train ...` (accelerate handles the processes).
"""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from mvvdp_core.model.text import parse_task_prompts
from mvvdp_core.train.loop import TrainSettings, train


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mvvdp train", description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, nargs="+", help="folder(s) of recorded episodes")
    parser.add_argument("--out", required=True, help="output folder: checkpoints, tensorboard, plots")
    parser.add_argument("--config", choices=["tiny", "wan22"], default=None, help="model preset")
    parser.add_argument("--base-model", default=None, help="local Wan2.2-TI2V-5B diffusers folder (wan22)")
    parser.add_argument(
        "--text-encoder", default=None, help="local umT5 encoder (or Wan2.2 diffusers) folder for --prompt"
    )
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder (default: next to the encoder)")
    parser.add_argument(
        "--prompt", action="append", default=None, metavar='NAME="instruction"',
        help="instruction of a recorded task (repeatable; with --text-encoder, else random embeddings)",
    )  # fmt: skip
    parser.add_argument("--steps", type=int, default=None, help="total optimiser steps")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    parser.add_argument("--settings", type=Path, default=None, help="YAML file with TrainSettings keys")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--vae-steps", type=int, default=None, help="VAE fitting steps (random base only)")
    parser.add_argument("--checkpoint-every", type=int, default=None)
    parser.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default=None)
    parser.add_argument("--num-workers", type=int, default=None)
    parser.add_argument("--seed", type=int, default=None)
    return parser


def load_settings_file(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"cannot read training settings {path}: {error}") from error
    if not isinstance(loaded, dict):
        raise ValueError(f"training settings {path} must be a mapping of TrainSettings keys")
    known = {f.name for f in fields(TrainSettings)}
    unknown = sorted(set(loaded) - known)
    if unknown:
        raise ValueError(f"unknown training settings in {path}: {unknown}; known: {sorted(known)}")
    return loaded


def settings_from_args(args: argparse.Namespace) -> TrainSettings:
    values: dict[str, Any] = load_settings_file(args.settings) if args.settings else {}
    flags = {
        "config": args.config, "base_model": args.base_model, "steps": args.steps,
        "batch_size": args.batch_size, "vae_steps": args.vae_steps, "checkpoint_every": args.checkpoint_every,
        "mixed_precision": args.mixed_precision, "num_workers": args.num_workers, "seed": args.seed,
        "text_encoder": args.text_encoder, "tokenizer": args.tokenizer,
        "prompts": parse_task_prompts(args.prompt) if args.prompt else None,
    }  # fmt: skip
    values.update({k: v for k, v in flags.items() if v is not None})
    return TrainSettings(**values)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = train(args.data, args.out, settings_from_args(args), resume=args.resume)
    print(
        f"trained steps {result.start_step + 1}..{result.end_step}; checkpoint {result.checkpoint}; "
        f"{result.parameters / 1e6:.2f} M parameters ({result.trainable / 1e6:.3f} M trained)"
        + (f"; validation position error {100 * result.val_position_error:.1f} cm"
           if result.val_position_error is not None else "")
    )
    return 0
