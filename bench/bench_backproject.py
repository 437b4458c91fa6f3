"""Back-projection: wrong picks with a decoy blob, round-trip error, flagged blank/constant maps, speed.

Decoys: --cases pairs (true point, decoy point >= 5 cm away, both 3 cm inside the cube, fixed seed); the maps
are ee_heatmaps(true) + amplitude * ee_heatmaps(decoy); a pick farther than 2 cm from the true point is wrong.
Speed: ms per call for 24 frames x 3 views at each resolution (median of --repeats after a warm-up).
Usage: python bench/bench_backproject.py [--cases 200] [--repeats 7] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch

from mvvdp_core.geometry import (
    Workspace,
    backproject_heatmaps,
    colorize_heatmaps,
    decolorize_heatmaps,
    ee_heatmaps,
)

AMPLITUDES = (0.8, 0.9, 0.95)
WRONG_M, MARGIN_M, SEPARATION_M, BATCH = 0.02, 0.03, 0.05, 50


def random_points(
    generator: torch.Generator, count: int, workspace: Workspace, margin: float
) -> torch.Tensor:
    lower = torch.tensor(workspace.lower, dtype=torch.float64) + margin
    return lower + torch.rand(count, 3, generator=generator, dtype=torch.float64) * (
        workspace.edge - 2 * margin
    )


def decoy_errors(workspace: Workspace, cases: int, amplitude: float) -> torch.Tensor:
    generator = torch.Generator().manual_seed(2024)
    true = random_points(generator, 4 * cases, workspace, MARGIN_M)
    decoy = random_points(generator, 4 * cases, workspace, MARGIN_M)
    keep = ((true - decoy).norm(dim=-1) >= SEPARATION_M).nonzero().squeeze(1)[:cases]
    true, decoy = true[keep], decoy[keep]
    errors = []
    for start in range(0, len(true), BATCH):
        t, d = true[start : start + BATCH], decoy[start : start + BATCH]
        maps = ee_heatmaps(t.float(), workspace) + amplitude * ee_heatmaps(d.float(), workspace)
        errors.append((backproject_heatmaps(maps, workspace).positions.double() - t).norm(dim=-1))
    return torch.cat(errors)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    workspace = Workspace()

    print(f"decoy blob in every view, {args.cases} cases, wrong = farther than {WRONG_M * 100:.0f} cm")
    for amplitude in AMPLITUDES:
        error = decoy_errors(workspace, args.cases, amplitude)
        right = error[error <= WRONG_M]
        worst = f"{float(right.max()) * 1e3:.4f} mm" if len(right) else "-"
        print(
            f"  decoy {amplitude:.2f}x: {int((error > WRONG_M).sum())}/{len(error)} wrong, "
            f"right picks within {worst}"
        )

    generator = torch.Generator().manual_seed(5)
    points = random_points(generator, 200, workspace, 0.0)
    maps = ee_heatmaps(points.float(), workspace)
    for name, candidate in (
        ("clean", maps),
        ("through jet colours", decolorize_heatmaps(colorize_heatmaps(maps))),
    ):
        result = backproject_heatmaps(candidate, workspace)
        error = (result.positions.double() - points).norm(dim=-1)
        print(
            f"round trip ({name}, 200 points): max {float(error.max()) * 1e3:.4f} mm, "
            f"min confidence {float(result.confidence.min()):.4f}"
        )
    res = workspace.resolution
    for name, flat in (
        ("blank", torch.zeros(4, 3, res, res)),
        ("constant", torch.full((4, 3, res, res), 0.3)),
    ):
        print(f"{name} maps: confidence {backproject_heatmaps(flat, workspace).confidence.tolist()}")

    print(f"\n24 frames x 3 views, torch threads {torch.get_num_threads()}")
    for resolution in (64, 128, 256):
        ws = Workspace(resolution=resolution)
        frames = random_points(torch.Generator().manual_seed(resolution), 24, ws, 0.0).float()
        video = ee_heatmaps(frames, ws)
        backproject_heatmaps(video, ws)
        timings = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            backproject_heatmaps(video, ws)
            timings.append(time.perf_counter() - start)
        print(f"  {resolution:>3} px: {sorted(timings)[len(timings) // 2] * 1e3:8.1f} ms per call")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
