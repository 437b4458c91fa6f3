"""Policy latency: point cloud in -> action chunk out, per stage, and peak memory.

python bench/bench_policy.py --config tiny                 # CPU, tiny random model
python bench/bench_policy.py --config wan22 --device cuda  # Wan2.2-TI2V-5B sizes, random weights, bf16

Stages: projection (cloud -> three views), heatmaps, encode (VAE, six condition frames), each denoising
step, decode (heatmap views; RGB views only with the preview), back-projection, head. Each configuration
(denoising steps x preview on/off) runs --warmup times untimed, then --repeats times; medians are printed.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time

import numpy as np
import torch
from tqdm import tqdm

from mvvdp_core.geometry.projection import project_views
from mvvdp_core.model import MVVDPConfig, build_model_parts
from mvvdp_core.policy import MVVDPPolicy, Observation

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def synthetic_cloud(config: MVVDPConfig, num_points: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A table plane plus a few boxes inside the workspace, coloured, as a merged camera cloud would be."""
    rng = np.random.default_rng(seed)
    ws = config.workspace()
    lo, hi = ws.lower, ws.upper
    table = rng.uniform(lo, hi, (num_points, 3))
    table[:, 2] = lo[2] + 0.05 * ws.edge
    boxes = table[: num_points // 4].copy()
    boxes[:, 2] = rng.uniform(lo[2] + 0.05 * ws.edge, lo[2] + 0.2 * ws.edge, len(boxes))
    points = np.concatenate([table[num_points // 4 :], boxes]).astype(np.float32)
    colors = rng.integers(0, 256, (num_points, 3), dtype=np.uint8)
    return points, colors


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB -> GiB (process RSS)


def run_once(
    policy: MVVDPPolicy,
    points: torch.Tensor,
    colors: torch.Tensor,
    steps: int,
    preview: bool,
    seed: int,
    stamp: float = 0.0,
) -> dict[str, float]:
    """One cloud -> chunk pass with per-stage timings; a new stamp makes a new observation (condition
    encoded again even where the policy caches it)."""
    device = policy.device
    sync(device)
    start = time.perf_counter()
    views = project_views(points, colors, policy.workspace)
    sync(device)
    projection = time.perf_counter() - start
    ws = policy.workspace
    obs = Observation(
        rgb=views.rgb.clamp(0, 1),
        ee_position=np.asarray(ws.center) + [0.05, -0.05, 0.1],
        ee_rotation=np.diag([1.0, -1.0, -1.0]),
        gripper=1.0,
        stamp=stamp,
        task=policy.tasks[0],
    )
    out = policy.predict(obs, num_steps=steps, return_video=preview, seed=seed)
    sync(device)
    timings = dict(out.timings)
    timings["projection"] = projection
    timings["cloud_to_chunk"] = time.perf_counter() - start
    timings["step_mean"] = timings["denoise"] / steps
    return timings


COLUMNS = [
    ("projection", "project"),
    ("heatmaps", "heatmap"),
    ("encode", "encode"),
    ("step_mean", "step"),
    ("denoise", "denoise"),
    ("decode_heatmaps", "dec_hm"),
    ("decode_rgb", "dec_rgb"),
    ("backproject", "backproj"),
    ("head", "head"),
    ("cloud_to_chunk", "total"),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", choices=("tiny", "wan22"), default="tiny")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cpu for tiny, cuda for wan22)")
    parser.add_argument(
        "--dtype", choices=tuple(DTYPES), default=None, help="default: float32 tiny, bf16 wan22"
    )
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--points", type=int, default=200_000)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--allow-cpu", action="store_true", help="run the 5B configuration on a CPU anyway")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0 or min(args.steps) < 1 or args.points < 1:
        parser.error("--repeats, --steps and --points must be positive, --warmup non-negative")

    device = torch.device(args.device or ("cuda" if args.config == "wan22" else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU available; use --device cpu", file=sys.stderr)
        return 2
    if args.config == "wan22" and device.type == "cpu" and not args.allow_cpu:
        print(
            "refusing to run the 5B Wan2.2 configuration on a CPU (tens of GB of memory, minutes per step); "
            "run it on a GPU or pass --allow-cpu",
            file=sys.stderr,
        )
        return 2
    dtype = DTYPES[args.dtype or ("bfloat16" if args.config == "wan22" else "float32")]
    config = MVVDPConfig.tiny() if args.config == "tiny" else MVVDPConfig.wan22_ti2v_5b()

    build_start = time.perf_counter()
    with torch.device(device):  # random weights created where they will run
        parts = build_model_parts(config, seed=0)
    policy = MVVDPPolicy(parts.to(device, dtype), config)
    print(f"built {args.config} ({dtype}, {device}) in {time.perf_counter() - build_start:.1f} s")
    if device.type == "cuda":
        print(f"device: {torch.cuda.get_device_name(device)}")
        torch.cuda.reset_peak_memory_stats(device)
    points_np, colors_np = synthetic_cloud(config, args.points)
    points, colors = torch.from_numpy(points_np).to(device), torch.from_numpy(colors_np).to(device)

    rows = []
    configurations = [(steps, preview) for steps in args.steps for preview in (False, True)]
    for steps, preview in tqdm(configurations, desc="configurations"):
        for i in range(args.warmup):
            run_once(policy, points, colors, steps, preview, seed=i)
        runs = [run_once(policy, points, colors, steps, preview, seed=i) for i in range(args.repeats)]
        medians = {key: statistics.median(run.get(key, 0.0) for run in runs) for key, _ in COLUMNS}
        rows.append((steps, preview, medians))

    header = f"{'steps':>5} {'preview':>7} " + " ".join(f"{label:>9}" for _, label in COLUMNS)
    print(
        f"\n{args.config} on {device} ({dtype}), {args.points} points, median of {args.repeats}, milliseconds"
    )
    print(header)
    for steps, preview, medians in rows:
        cells = " ".join(f"{1000 * medians[key]:9.1f}" for key, _ in COLUMNS)
        print(f"{steps:>5} {'yes' if preview else 'no':>7} {cells}")
    kind = "GPU allocated" if device.type == "cuda" else "process RSS"
    print(f"peak memory: {peak_memory_gib(device):.2f} GiB ({kind})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
