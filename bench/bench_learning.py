"""Learning figures of the small preset on a CPU: step times (cached latents vs encoding every step) and the
memorisation curve (mean trajectory error on one demonstration vs training steps).

    python bench/bench_learning.py [--steps 600] [--every 100] [--threads 1]

Records one scripted pick, takes the shipped checkpoint's fitted VAE, trains a transformer from scratch and
prints a table: step, mean position error of the predicted chunks (cm), seconds per step.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from mvvdp_core.checkpoints import shipped_checkpoint
from mvvdp_core.data.record import record_pick_demos
from mvvdp_core.model.checkpoint import load_checkpoint
from mvvdp_core.train.loop import TrainSettings, build_data, load_episodes, train, validation_errors

SMALLER = {"num_layers": 2, "num_attention_heads": 2, "attention_head_dim": 32, "ffn_dim": 256}


def settings(steps: int, threads: int, **overrides: object) -> TrainSettings:
    base = dict(
        config="small", config_overrides={"transformer": SMALLER, "view_attention_heads": 2},
        vae_from=str(shipped_checkpoint()), steps=steps, lr=1e-3, lr_warmup=50, head_lr=1e-3,
        augment=False, start_stride=4, checkpoint_every=steps, val_episodes=0, vae_report_samples=0,
        progress=False, threads=threads, keep_checkpoints=100,
    )  # fmt: skip
    base.update(overrides)
    return TrainSettings(**base)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=4242, help="scene seed of the demonstration")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        record_pick_demos(root / "data", 1, seed=args.seed)
        uncached = train(root / "data", root / "fresh", settings(
            5, args.threads, augment=True, augment_copies=0, checkpoint_every=5))
        run = settings(args.steps, args.threads, checkpoint_every=args.every)
        result = train(root / "data", root / "run", run)
        episodes = load_episodes(root / "data")
        rows = []
        for checkpoint in sorted((root / "run" / "checkpoints").glob("step_*")):
            parts, config = load_checkpoint(checkpoint)
            plain = build_data(run, config, episodes, 0).plain
            starts = range(0, len(episodes[0]), 8)
            error = np.mean([validation_errors(parts, config, plain, [0], None, s)[0] for s in starts])
            rows.append((int(checkpoint.name.split("_")[1]), 100 * error))
    print(f"seconds per training step: {result.seconds_per_step:.3f} with cached latents, "
          f"{uncached.seconds_per_step:.3f} rendering + encoding every step (freshly augmented)")
    print("| step | mean trajectory error (cm) |\n| ---: | ---: |")
    for step, error in rows:
        print(f"| {step} | {error:.2f} |")


if __name__ == "__main__":
    main()
