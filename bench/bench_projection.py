"""Projection speed: ms per call and points/s for three clouds of N points each.

On the CPU the compiled library (`cpu`, cuda/projection_cpu.cpp) and the torch reference (`torch`) against
a plain numpy implementation of the same projection (same pixels, z-ordering keys and splatting; all checked
equal here), each with its speed-up over numpy; on a GPU also the torch reference and the CUDA kernel.
Timings are medians of --repeats calls after a warm-up call; numpy and the CPU paths take turns, so a busy
machine slows them alike. The CPU projections run on --threads threads (project_views' thread budget, 1 by
default); numpy uses one.
Usage: python bench/bench_projection.py [--sizes 100000 1000000] [--repeats 5] [--splat-radius 0.008]
                                        [--threads N]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from tqdm import tqdm

from mvvdp_core.geometry import VIEW_ROTATIONS, ProjectedViews, Workspace, cpu_ext, cuda_ext, project_views
from mvvdp_core.geometry.pixels import splat_extent
from mvvdp_core.geometry.projection import EMPTY_KEY, splat_offsets


def project_numpy(points: np.ndarray, colors: np.ndarray, workspace: Workspace, splat_radius: float):
    """Plain numpy projection: per view a rotation, floor, packed depth|index keys, np.minimum.at, splat."""
    res, edge = workspace.resolution, np.float32(workspace.edge)
    reach, max_d2 = splat_extent(splat_radius, workspace)
    inside = workspace.contains(points)
    index = np.flatnonzero(inside)
    unit = (points[index] - np.asarray(workspace.center, dtype=np.float32)) / edge
    rgb = np.zeros((len(workspace.views), colors.shape[1], res, res), dtype=np.float32)
    depth = np.full((len(workspace.views), res, res), np.inf, dtype=np.float32)
    for v, name in enumerate(workspace.views):
        # einsum, not matmul: BLAS threads would stall on a busy machine and flatter the comparison
        cam = np.einsum("ij,nj->ni", VIEW_ROTATIONS[name].astype(np.float32), unit) + np.float32(0.5)
        col = np.clip(np.floor(cam[:, 0] * np.float32(res)), 0, res - 1).astype(np.int64)
        row = np.clip(np.floor(cam[:, 1] * np.float32(res)), 0, res - 1).astype(np.int64)
        z = np.clip(cam[:, 2] * edge, np.float32(0), edge) + np.float32(0)
        keys = (z.view(np.int32).astype(np.int64) << 32) | index
        image = np.full(res * res, EMPTY_KEY, dtype=np.int64)
        np.minimum.at(image, row * res + col, keys)
        image = image.reshape(res, res)
        padded = np.full((res + 2 * reach, res + 2 * reach), EMPTY_KEY, dtype=np.int64)
        padded[reach : reach + res, reach : reach + res] = image
        result, found = image.copy(), np.zeros((res, res), dtype=bool)
        for _, offsets in splat_offsets(reach, max_d2):
            ring = np.full((res, res), EMPTY_KEY, dtype=np.int64)
            for dy, dx in offsets:
                near = padded[reach + dy : reach + dy + res, reach + dx : reach + dx + res]
                ring = np.minimum(ring, np.where((near >> 32) < (image >> 32), near, EMPTY_KEY))
            take = ~found & (ring != EMPTY_KEY)
            result[take] = ring[take]
            found |= take
        hit = result != EMPTY_KEY
        depth[v][hit] = (result[hit] >> 32).astype(np.int32).view(np.float32)
        rgb[v][:, hit] = colors[result[hit] & 0xFFFFFFFF].T
    return ProjectedViews(rgb=torch.from_numpy(rgb), depth=torch.from_numpy(depth))


def time_calls(fns: list, repeats: int, device: torch.device) -> list[float]:
    """Median seconds per call of each function after one warm-up call each. The functions take turns, so a
    machine shared with other work slows them alike and their ratio holds."""
    timings: list[list[float]] = [[] for _ in fns]
    for fn in fns:
        fn()
    for _ in range(repeats):
        for fn, times in zip(fns, timings, strict=True):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
    return [sorted(times)[len(times) // 2] for times in timings]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[100_000, 1_000_000], help="points per camera"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--splat-radius", type=float, default=0.008)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads of the CPU projection (0: torch's setting)"
    )
    args = parser.parse_args(argv)
    threads = args.threads if args.threads > 0 else None
    workspace = Workspace()
    lower = torch.tensor(workspace.lower, dtype=torch.float32)
    cpu_backends = ["torch"] if cpu_ext.load_library() is None else ["cpu", "torch"]
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
        points_np, colors_np = points.numpy(), colors.numpy()
        reference = project_numpy(points_np, colors_np, workspace, args.splat_radius)
        calls = [lambda p=points_np, c=colors_np: project_numpy(p, c, workspace, args.splat_radius)]
        for backend in cpu_backends:
            ours = project_views(
                points, colors, workspace, args.splat_radius, backend=backend, threads=threads
            )
            if not (torch.equal(ours.depth, reference.depth) and torch.equal(ours.rgb, reference.rgb)):
                raise SystemExit(f"the numpy implementation and project_views(backend={backend!r}) disagree")
            calls.append(
                lambda b=backend, p=points, c=colors: project_views(
                    p, c, workspace, args.splat_radius, backend=b, threads=threads
                )
            )
        seconds = time_calls(calls, args.repeats, torch.device("cpu"))
        rows += [(size, name, "cpu", s) for name, s in zip(["numpy", *cpu_backends], seconds, strict=True)]
        for backend, device in runs[1:]:
            pts, cols = points.to(device), colors.to(device)
            (seconds,) = time_calls(
                [
                    lambda b=backend, p=pts, c=cols: project_views(
                        p, c, workspace, args.splat_radius, backend=b
                    )
                ],
                args.repeats,
                device,
            )
            rows.append((size, backend, device.type, seconds))

    print(
        f"\nprojection of 3 x N points into {len(workspace.views)} views of {workspace.resolution}^2 px, "
        f"splat radius {args.splat_radius} m, torch {torch.__version__}, CPU projection threads "
        f"{threads or torch.get_num_threads()}"
    )
    print(
        f"{'N per camera':>12} {'backend':>8} {'device':>6} {'ms/call':>10} {'Mpoints/s':>10} {'speed-up':>9}"
        "  (speed-up: CPU paths over numpy, cuda over GPU torch)"
    )
    for size, backend, device, seconds in rows:
        ratio = ""
        if backend == "cuda":
            ratio = next(s for n, b, d, s in rows if n == size and b == "torch" and d == device) / seconds
        elif backend in ("cpu", "torch") and device == "cpu":
            ratio = next(s for n, b, d, s in rows if n == size and b == "numpy") / seconds
        ratio = f"{ratio:8.2f}x" if ratio else ""
        rate = 3 * size / seconds / 1e6
        print(f"{size:>12} {backend:>8} {device:>6} {seconds * 1e3:>10.2f} {rate:>10.2f} {ratio:>9}")
    if "cpu" not in cpu_backends:
        print(f"compiled CPU projection not measured: {cpu_ext.unavailable_reason()}")
    if note is not None:
        print(f"CUDA kernel not measured: {note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
