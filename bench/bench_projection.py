"""Projection speed: ms per call and points/s for three clouds of N points each.

Torch reference on CPU always; on a GPU also the torch reference and the CUDA kernel, with their ratio.
Usage: python bench/bench_projection.py [--sizes 100000 1000000] [--repeats 5] [--splat-radius 0.008]
"""

from __future__ import annotations

import argparse
import time

import torch
from tqdm import tqdm

from mvvdp_core.geometry import Workspace, cuda_ext, project_views


def time_call(fn, repeats: int, device: torch.device) -> float:
    """Median seconds per call after one warm-up call."""
    fn()
    timings = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        timings.append(time.perf_counter() - start)
    return sorted(timings)[len(timings) // 2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[100_000, 1_000_000], help="points per camera"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--splat-radius", type=float, default=0.008)
    args = parser.parse_args(argv)
    workspace = Workspace()
    lower = torch.tensor(workspace.lower, dtype=torch.float32)
    runs = [("torch", torch.device("cpu"))]
    if torch.cuda.is_available():
        runs.append(("torch", torch.device("cuda")))
        if cuda_ext.load_extension() is not None:
            runs.append(("cuda", torch.device("cuda")))
    note = cuda_ext.unavailable_reason()

    rows = []
    for size in tqdm(args.sizes, desc="sizes"):
        generator = torch.Generator().manual_seed(size)
        points = lower + torch.rand(3 * size, 3, generator=generator) * workspace.edge  # three cameras
        colors = torch.rand(3 * size, 3, generator=generator)
        for backend, device in runs:
            pts, cols = points.to(device), colors.to(device)
            seconds = time_call(
                lambda b=backend, p=pts, c=cols: project_views(p, c, workspace, args.splat_radius, backend=b),
                args.repeats,
                device,
            )
            rows.append((size, backend, device.type, seconds))

    print(
        f"\nprojection of 3 x N points into {len(workspace.views)} views of {workspace.resolution}^2 px, "
        f"splat radius {args.splat_radius} m, torch {torch.__version__}, threads {torch.get_num_threads()}"
    )
    print(
        f"{'N per camera':>12} {'backend':>8} {'device':>6} {'ms/call':>10} {'Mpoints/s':>10} {'vs torch':>9}"
    )
    for size, backend, device, seconds in rows:
        reference = next(s for n, b, d, s in rows if n == size and b == "torch" and d == device)
        ratio = f"{reference / seconds:8.1f}x" if backend == "cuda" else ""
        rate = 3 * size / seconds / 1e6
        print(f"{size:>12} {backend:>8} {device:>6} {seconds * 1e3:>10.2f} {rate:>10.2f} {ratio:>9}")
    if note is not None:
        print(f"CUDA kernel not measured: {note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
