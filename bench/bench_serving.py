"""Serving latency of the fast path: point cloud -> action chunk, per stage, at the real model size.

python bench/bench_serving.py                           # Wan2.2-TI2V-5B sizes, random weights, bf16, CUDA
python bench/bench_serving.py --compile                 # + torch.compile "reduce-overhead" (CUDA graphs)
python bench/bench_serving.py --config tiny --allow-cpu # the same table for the tiny model on a CPU

For 1, 2 and 5 denoising steps (--steps), with and without the preview (RGB views decoded too), each run
projects a cloud to the three views, builds a new observation (so the condition is encoded every time, as in
serving) and predicts a chunk with the fast path. Medians of --repeats runs after --warmup untimed runs are
printed as a markdown table with the issue's targets (5 steps <= 0.4 s, 1 step <= 0.15 s, peak GPU memory
<= 16 GB), followed by the projection kernel against the torch reference on the same device.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from bench_policy import COLUMNS, peak_memory_gib, run_once, sync, synthetic_cloud
from tqdm import tqdm

from mvvdp_core.geometry import cuda_ext
from mvvdp_core.geometry.projection import project_views
from mvvdp_core.model import MVVDPConfig, build_model_parts
from mvvdp_core.policy import FastPathOptions, MVVDPPolicy

TARGET_SECONDS = {1: 0.15, 5: 0.4}  # cloud -> chunk, without preview
TARGET_MEMORY_GB = 16.0

def time_projection(
    points: torch.Tensor, colors: torch.Tensor, config: MVVDPConfig, backend: str, repeats: int
) -> float:
    """Median seconds of one projection with the given backend (after one untimed call)."""
    workspace = config.workspace()
    device = points.device
    project_views(points, colors, workspace, backend=backend)
    seconds = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        project_views(points, colors, workspace, backend=backend)
        sync(device)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def markdown_table(rows: list[tuple[int, bool, dict[str, float]]], with_targets: bool) -> str:
    header = ["steps", "preview"] + [label for _, label in COLUMNS] + ["target"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
    for steps, preview, medians in rows:
        target = TARGET_SECONDS.get(steps)
        if target is None or preview or not with_targets:
            verdict = "-"
        else:
            verdict = f"{'met' if medians['cloud_to_chunk'] <= target else 'MISSED'} (<= {1000 * target:.0f})"
        cells = [str(steps), "yes" if preview else "no"]
        cells += [f"{1000 * medians.get(key, 0.0):.1f}" for key, _ in COLUMNS] + [verdict]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", choices=("wan22", "tiny"), default="wan22")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 5])
    parser.add_argument("--points", type=int, default=200_000)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="torch.compile the transformer (CUDA)")
    parser.add_argument("--compile-mode", default="reduce-overhead")
    parser.add_argument(
        "--check-syncs", action="store_true", help="fail if the denoising loop synchronises with the host"
    )
    parser.add_argument(
        "--allow-cpu", action="store_true", help="without a GPU, run the tiny configuration on the CPU"
    )
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0 or min(args.steps) < 1 or args.points < 1:
        parser.error("--repeats, --steps and --points must be positive, --warmup non-negative")

    if torch.cuda.is_available():
        device = torch.device("cuda")
    elif not args.allow_cpu:
        print(
            "no CUDA GPU: this benchmark measures the serving path on a GPU. "
            "Pass --allow-cpu --config tiny to run the tiny model on the CPU.",
            file=sys.stderr,
        )
        return 2
    elif args.config != "tiny":
        print("--allow-cpu runs only the tiny configuration (--config tiny)", file=sys.stderr)
        return 2
    else:
        device = torch.device("cpu")
        torch.set_flush_denormal(True)  # near-empty views make the CPU VAE crawl through denormals
    config = MVVDPConfig.tiny() if args.config == "tiny" else MVVDPConfig.wan22_ti2v_5b()

    build_start = time.perf_counter()
    with torch.device(device):  # random weights created where they will run
        parts = build_model_parts(config, seed=0)
    options = FastPathOptions(
        compile=args.compile, compile_mode=args.compile_mode, check_syncs=args.check_syncs
    )
    policy = MVVDPPolicy(parts, config, fast=options)
    print(f"built {args.config} ({policy.dtype}, {device}) in {time.perf_counter() - build_start:.1f} s")
    if device.type == "cuda":
        print(f"device: {torch.cuda.get_device_name(device)}")
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    points_np, colors_np = synthetic_cloud(config, args.points)
    points, colors = torch.from_numpy(points_np).to(device), torch.from_numpy(colors_np).to(device)

    rows = []
    stamp = 0.0
    configurations = [(steps, preview) for steps in args.steps for preview in (False, True)]
    for steps, preview in tqdm(configurations, desc="configurations"):
        runs = []
        for i in range(args.warmup + args.repeats):
            stamp += 1.0
            timings = run_once(policy, points, colors, steps, preview, seed=int(stamp), stamp=stamp)
            if i >= args.warmup:
                runs.append(timings)
        medians = {key: statistics.median(run.get(key, 0.0) for run in runs) for key, _ in COLUMNS}
        rows.append((steps, preview, medians))
    memory = peak_memory_gib(device)

    print(
        f"\n{args.config} fast path on {device} ({policy.dtype}"
        f"{', compiled ' + args.compile_mode if args.compile and device.type == 'cuda' else ''}), "
        f"{args.points} points, median of {args.repeats} runs, milliseconds\n"
    )
    print(markdown_table(rows, with_targets=args.config == "wan22"))
    if device.type == "cuda":
        verdict = "met" if memory * 2**30 / 1e9 <= TARGET_MEMORY_GB else "MISSED"
        print(f"\npeak GPU memory (max_memory_allocated): {memory:.2f} GiB, target <= 16 GB: {verdict}")
    else:
        print(f"\npeak memory: {memory:.2f} GiB (process RSS; no GPU)")

    reference = time_projection(points, colors, config, "torch", args.repeats)
    kernel_available = device.type == "cuda" and cuda_ext.load_extension() is not None
    print(f"\n| projection ({args.points} points, {device}) | ms |\n|---|---:|")
    print(f"| torch reference | {1000 * reference:.2f} |")
    if kernel_available:
        kernel = time_projection(points, colors, config, "cuda", args.repeats)
        print(f"| CUDA kernel | {1000 * kernel:.2f} |")
        print(f"| speed-up (reference / kernel) | {reference / kernel:.1f}x |")
    else:
        why = "no GPU" if device.type != "cuda" else "the kernel did not build"
        print(f"| CUDA kernel | n/a ({why}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
