"""`mvvdp train`: train the video model and the rotation/gripper head on recorded episodes.

Settings come from TrainSettings' defaults, then an optional YAML file (--settings, keys of TrainSettings),
then the flags. Every TrainSettings field is a flag (`--lr-warmup` for lr_warmup), declared once, in the
dataclass. Several GPUs: `accelerate launch -m mvvdp_core.cli train ...` (accelerate handles the processes).
"""

from __future__ import annotations

import argparse
import json
import types
import typing
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

import yaml

from mvvdp_core.model.text import parse_task_prompts
from mvvdp_core.train.loop import TrainSettings, train

# Fields whose flag differs from the plain `--name VALUE` form.
BOOLEAN_FLAGS = ("augment", "include_failed", "progress", "tf32", "gradient_checkpointing")
SPECIAL_FLAGS = {"prompts", "config_overrides", "workspace_center", *BOOLEAN_FLAGS}
CHOICES = {"config": ("tiny", "small", "wan22"), "mode": ("auto", "lora", "full"),
           "lr_schedule": ("constant", "cosine"), "mixed_precision": ("auto", "no", "fp16", "bf16"),
           "base_dtype": ("auto", "fp32", "bf16"), "optimizer_state": ("latest", "all")}


def _scalar_type(annotation: Any) -> type:
    """int / float / str from a field's annotation (also `int | None`)."""
    hint = eval(annotation, {}, {}) if isinstance(annotation, str) else annotation  # noqa: S307
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mvvdp train", description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", help="folder(s) of recorded episodes (required)")
    parser.add_argument("--out", help="output folder: checkpoints, tensorboard, plots (required)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the memory plan of these settings on one CUDA process and exit")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    parser.add_argument("--settings", type=Path, default=None, help="YAML file with TrainSettings keys")
    parser.add_argument(
        "--prompt", action="append", default=None, metavar='NAME="instruction"',
        help="instruction of a recorded task (repeatable; with --text-encoder, else random embeddings)",
    )  # fmt: skip
    parser.add_argument("--override", action="append", default=None, metavar="FIELD=JSON",
                        help="model config field, e.g. image_size=128 or transformer='{\"num_layers\": 6}'")
    parser.add_argument("--workspace-center", type=float, nargs=3, default=None, metavar=("X", "Y", "Z"))
    for flag in BOOLEAN_FLAGS:
        name = f"--{flag.replace('_', '-')}"
        parser.add_argument(name, action=argparse.BooleanOptionalAction, default=None)
    for item in fields(TrainSettings):
        if item.name in SPECIAL_FLAGS:
            continue
        default = None if item.default is MISSING else item.default
        parser.add_argument(
            f"--{item.name.replace('_', '-')}", type=_scalar_type(item.type), default=None,
            choices=CHOICES.get(item.name), help=f"default: {default}",
        )  # fmt: skip
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


def _overrides(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--override takes FIELD=JSON, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def settings_from_args(args: argparse.Namespace) -> TrainSettings:
    values: dict[str, Any] = load_settings_file(args.settings) if args.settings else {}
    flags = {f.name: getattr(args, f.name) for f in fields(TrainSettings) if f.name in vars(args)}
    if args.prompt:
        flags["prompts"] = parse_task_prompts(args.prompt)
    if args.override:
        flags["config_overrides"] = {**values.get("config_overrides", {}), **_overrides(args.override)}
    values.update({k: v for k, v in flags.items() if v is not None})
    return TrainSettings(**values)


def dry_run(settings: TrainSettings, gpu_gb: float = 80.0) -> int:
    """Print the memory plan of one training process with these settings (CUDA assumed); 0 when it fits."""
    import torch

    from mvvdp_core.model.config import MVVDPConfig
    from mvvdp_core.train.memory import GB, memory_plan

    config = MVVDPConfig.preset(settings.config, **settings.config_overrides)
    cuda = torch.device("cuda")
    precision = settings.precision(cuda)
    compute = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    checkpointing = (
        settings.gradient_checkpointing if settings.gradient_checkpointing is not None
        else settings.config == "wan22"
    )  # fmt: skip
    plan = memory_plan(
        config, settings.batch_size, settings.training_mode, checkpointing, settings.frozen_base_dtype(cuda),
        compute, name=settings.config,
    )  # fmt: skip
    print(plan.table())
    accumulation = settings.accumulation(1)
    print(f"\n{accumulation} micro-batch(es) of {settings.batch_size} per optimiser step on one process "
          f"(global batch {accumulation * settings.batch_size}); peak {plan.peak / GB:.1f} GB "
          f"{'fits' if plan.fits(gpu_gb) else 'does NOT fit'} in {gpu_gb:.0f} GB")
    return 0 if plan.fits(gpu_gb) else 1


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.dry_run:
        return dry_run(settings_from_args(args))
    if not args.data or not args.out:
        parser.error("--data and --out are required")
    result = train(args.data, args.out, settings_from_args(args), resume=args.resume)
    print(
        f"trained steps {result.start_step + 1}..{result.end_step} ({result.mode}); checkpoint "
        f"{result.checkpoint}; {result.parameters / 1e6:.2f} M parameters ({result.trainable / 1e6:.3f} M "
        "trained)"
        + (f"; validation position error {100 * result.val_position_error:.1f} cm"
           if result.val_position_error is not None else "")
    )
    return 0
