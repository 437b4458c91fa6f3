"""Pieces of scripts/gpu-check.sh that need the model: each writes one markdown fragment.

python bench/gpu_check.py parity --out DIR        # untrained gated multi-view model = base model per view
python bench/gpu_check.py train-step --out DIR    # LoRA training steps at 5B: step time, peak memory
python bench/gpu_check.py report --out DIR        # join the fragments into DIR/gpu_check.md

--cpu-smoke runs the same code with the tiny model on the CPU (a few seconds), to exercise the script
without a GPU. Weights are random and built on the device; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from mvvdp_core.model.checkpoint import build_head, build_transformer
from mvvdp_core.model.config import MVVDPConfig
from mvvdp_core.train.head import head_objective
from mvvdp_core.train.loop import prepare_frozen_base
from mvvdp_core.train.memory import GB, memory_plan
from mvvdp_core.train.video import video_loss

FRAGMENTS = ["environment", "tests", "parity", "serving", "train_step"]


def setup(args: argparse.Namespace) -> tuple[MVVDPConfig, torch.device]:
    if args.cpu_smoke:
        torch.set_num_threads(1)
        return MVVDPConfig.tiny(view_attention_style="wan"), torch.device("cpu")
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU (use --cpu-smoke to exercise the script on a CPU)")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return MVVDPConfig.wan22_ti2v_5b(), torch.device("cuda")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gb(device: torch.device) -> str:
    if device.type != "cuda":
        return "n/a (CPU)"
    return f"{torch.cuda.max_memory_allocated(device) / GB:.1f} GB allocated, " \
           f"{torch.cuda.max_memory_reserved(device) / GB:.1f} GB reserved"


def inputs(config: MVVDPConfig, batch: int, device: torch.device, seed: int = 0):
    generator = torch.Generator(device=device).manual_seed(seed)
    shape = (batch, config.num_views, config.latent_channels, config.latent_frames, config.latent_size,
             config.latent_size)  # fmt: skip
    latents = torch.randn(shape, generator=generator, device=device)
    text = torch.randn(batch, config.text_len, config.text_dim, generator=generator, device=device)
    return latents, text


@torch.no_grad()
def parity(args: argparse.Namespace) -> str:
    """The gated model before training against the base model run on each view, in the serving dtype."""
    config, device = setup(args)
    dtype = torch.float32 if args.cpu_smoke else torch.bfloat16
    torch.manual_seed(0)
    with torch.device(device):
        model = build_transformer(config).eval()
    from mvvdp_core.model.transformer import cast_transformer

    cast_transformer(model, dtype)
    latents, text = inputs(config, 1, device)
    latents, text = latents.to(dtype), text.to(dtype)
    timestep = torch.tensor([600.0], device=device)
    out = model(latents, timestep, text)
    b, v = latents.shape[:2]
    per_token = model.token_timesteps(timestep, b, *latents.shape[3:], cond_frames=1)
    base = model.base(hidden_states=latents.flatten(0, 1), timestep=per_token,
                      encoder_hidden_states=text.repeat_interleave(v, 0), return_dict=False)[0]  # fmt: skip
    diff = (out.flatten(0, 1).float() - base.float()).abs().max().item()
    for attention in model.view_attention:
        attention.gate.fill_(0.1)
    opened = (model(latents, timestep, text).float() - out.float()).abs().max().item()
    ok = diff == 0.0 and opened > 0
    name = str(dtype).removeprefix("torch.")
    return (
        "## Gated view attention before training\n\n| check | value |\n| --- | --- |\n"
        f"| max abs(multi-view model - base model per view), {name} | {diff:.3g} |\n"
        f"| max change once the gates open (0.1) | {opened:.3g} |\n| verdict | {'pass' if ok else 'FAIL'} |\n"
    )


def _train_steps(
    config: MVVDPConfig, device: torch.device, checkpointing: bool, steps: int
) -> tuple[float, str]:
    """LoRA + view attention + head training steps on random latents; median seconds per step, peak."""
    torch.manual_seed(0)
    with torch.device(device):
        model = build_transformer(config).train()
        head = build_head(config).train()
    prepare_frozen_base(model, torch.bfloat16)
    model.enable_gradient_checkpointing(checkpointing)
    trained = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
    optimizer = torch.optim.AdamW(trained, lr=1e-4)
    latents, text = inputs(config, 1, device)
    ws = config.workspace()
    t = config.future_frames
    positions = torch.tensor(ws.center, device=device).expand(1, 1 + t, 3).clone()
    rotation_bins = torch.zeros(1, t, 3, dtype=torch.long, device=device)
    gripper = torch.ones(1, 1 + t, dtype=torch.long, device=device)
    generator = torch.Generator().manual_seed(0)  # the training loop's noise comes from a CPU generator
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    seconds = []
    for _ in range(steps + 1):  # the first is a warm-up
        sync(device)
        start = time.perf_counter()
        with autocast:
            vloss = video_loss(model, latents, text, config.num_train_timesteps, config.flow_shift,
                               config.rgb_loss_weight, generator)
        vloss.total.backward()
        with autocast:
            hloss = head_objective(head, latents, positions, rotation_bins, gripper, ws, 0.05, generator)
        hloss.total.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        seconds.append(time.perf_counter() - start)
        if not torch.isfinite(vloss.total.detach()):
            raise FloatingPointError("non-finite video loss")
    return sorted(seconds[1:])[len(seconds[1:]) // 2], peak_gb(device)


def train_step(args: argparse.Namespace) -> str:
    config, device = setup(args)
    plan = memory_plan(config, batch=1, mode="lora", checkpointing=True)
    rows = []
    for checkpointing in (True, False) if args.without_checkpointing else (True,):
        try:
            seconds, peak = _train_steps(config, device, checkpointing, args.steps)
            rows.append(f"| {'on' if checkpointing else 'off'} | {seconds:.2f} | {peak} |")
        except torch.cuda.OutOfMemoryError:
            rows.append(f"| {'on' if checkpointing else 'off'} | - | out of memory |")
        if device.type == "cuda":
            torch.cuda.empty_cache()
    name = f"{'tiny (CPU smoke)' if args.cpu_smoke else 'wan22 5B'}, bf16 autocast, bf16 frozen base"
    return (
        f"## Training step, {name}: LoRA + view attention + head trained, batch 1\n\n"
        "| activation checkpointing | s / step (median) | peak memory |\n| --- | ---: | --- |\n"
        + "\n".join(rows)
        + f"\n\nMemory plan of this configuration (`mvvdp memory-plan`): peak {plan.peak / GB:.1f} GB "
        f"(activations {plan.activations / GB:.1f} GB, reserve {plan.reserve / GB:.1f} GB included).\n"
    )


def report(args: argparse.Namespace) -> str:
    out = Path(args.out)
    parts = [f"# GPU check ({'CPU smoke run, tiny model' if args.cpu_smoke else 'one GPU'})\n"]
    for name in FRAGMENTS:
        file = out / f"{name}.md"
        parts.append(file.read_text() if file.is_file() else f"## {name}\n\nnot run (no fragment written)\n")
    return "\n".join(parts)


def environment(args: argparse.Namespace) -> str:
    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "device": "cpu"}
    if torch.cuda.is_available() and not args.cpu_smoke:
        info["device"] = torch.cuda.get_device_name(0)
        info["memory"] = f"{torch.cuda.get_device_properties(0).total_memory / GB:.0f} GB"
    return "## Environment\n\n```\n" + json.dumps(info, indent=1) + "\n```\n"


COMMANDS = {"environment": environment, "parity": parity, "train-step": train_step, "report": report}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=sorted(COMMANDS))
    parser.add_argument("--out", required=True, help="folder of the markdown fragments")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny model on the CPU")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps (after one warm-up)")
    parser.add_argument("--without-checkpointing", action="store_true",
                        help="also time a training step without activation checkpointing")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = COMMANDS[args.command](args)
    name = "gpu_check" if args.command == "report" else args.command.replace("-", "_")
    (out / f"{name}.md").write_text(text)
    print(text)
    return 1 if "FAIL" in text and args.command == "parity" else 0


if __name__ == "__main__":
    sys.exit(main())
