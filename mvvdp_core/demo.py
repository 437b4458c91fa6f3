"""`mvvdp demo`: a synthetic tabletop seen by three cameras, merged, projected into the three views.

Writes the three RGB views, the three depth views and the end-effector heatmaps over the RGB views as PNGs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from mvvdp_core.geometry import (  # noqa: E402
    Workspace,
    backproject_heatmaps,
    colorize_heatmaps,
    ee_heatmaps,
    merge_clouds,
    project_views,
)

EE_POSITION = (0.42, 0.08, 0.30)


def _box_surface(rng: np.random.Generator, lo, hi, count: int) -> np.ndarray:
    """Points uniformly on the surface of an axis-aligned box."""
    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    size = hi - lo
    areas = np.array([size[1] * size[2], size[0] * size[2], size[0] * size[1]])
    axis = rng.choice(3, size=count, p=areas / areas.sum())
    points = lo + rng.random((count, 3)) * size
    side = rng.integers(0, 2, size=count)
    points[np.arange(count), axis] = np.where(side == 1, hi[axis], lo[axis])
    return points


def synthetic_scene(rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Table plane, three coloured boxes and a gripper-like blob: base-frame points (N, 3), uint8 colours."""
    parts = []
    table = np.column_stack([rng.uniform(0.0, 1.0, count), rng.uniform(-0.5, 0.5, count), np.zeros(count)])
    parts.append((table, (150, 110, 70)))
    for (cx, cy, half, height), colour in zip(
        [(0.55, -0.2, 0.05, 0.10), (0.7, 0.15, 0.04, 0.16), (0.35, -0.05, 0.06, 0.06)],
        [(220, 40, 40), (40, 180, 60), (40, 80, 220)],
        strict=True,
    ):
        box = _box_surface(rng, (cx - half, cy - half, 0.0), (cx + half, cy + half, height), count // 4)
        parts.append((box, colour))
    direction = rng.normal(size=(count // 4, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    blob = np.asarray(EE_POSITION) + direction * np.array([0.03, 0.05, 0.04])
    finger = np.column_stack(
        [np.full(count // 8, EE_POSITION[0]), rng.uniform(-0.05, 0.05, count // 8) + EE_POSITION[1],
         rng.uniform(0.34, 0.5, count // 8)]
    )  # fmt: skip
    parts += [(blob, (230, 230, 230)), (finger, (90, 90, 90))]
    points = np.concatenate([p for p, _ in parts])
    colours = np.concatenate([np.tile(np.array(c, dtype=np.uint8), (len(p), 1)) for p, c in parts])
    noise = rng.integers(-12, 13, colours.shape)
    colours = np.clip(colours.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    return points, colours


def look_at(eye, target) -> np.ndarray:
    """base_T_cam of a camera at eye looking at target (z forward, x right, y down)."""
    eye, target = np.asarray(eye, dtype=np.float64), np.asarray(target, dtype=np.float64)
    forward = (target - eye) / np.linalg.norm(target - eye)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    mat = np.eye(4)
    mat[:3, :3] = np.column_stack([right, down, forward])
    mat[:3, 3] = eye
    return mat


def synthetic_cameras(rng: np.random.Generator, points: np.ndarray, colours: np.ndarray):
    """Split the scene among three cameras and express each share in its camera's frame, with clutter."""
    target = (0.5, 0.0, 0.1)
    extrinsics = [look_at(eye, target) for eye in [(1.4, 0.0, 0.8), (0.6, -0.9, 0.7), (0.6, 0.9, 0.7)]]
    share = rng.integers(0, 3, size=len(points))
    clouds, cloud_colours = [], []
    for cam, base_T_cam in enumerate(extrinsics):
        base = points[share == cam] + rng.normal(scale=0.001, size=(int((share == cam).sum()), 3))
        base = np.concatenate([base, rng.uniform(2, 4, size=(50, 3)), np.full((5, 3), np.nan)])  # clutter
        rot, trans = base_T_cam[:3, :3], base_T_cam[:3, 3]
        clouds.append(((base - trans) @ rot).astype(np.float32))
        extra = np.zeros((55, 3), dtype=np.uint8)
        cloud_colours.append(np.concatenate([colours[share == cam], extra]))
    return clouds, cloud_colours, extrinsics


@dataclass(frozen=True)
class DemoResult:
    points: int  # merged points
    cameras: int
    device: str  # where the views were projected
    error_mm: float  # back-projected end effector vs EE_POSITION
    paths: list[Path]  # the PNGs written


def render_demo(out: Path, points: int = 60000, seed: int = 0) -> DemoResult:
    """Build the synthetic scene (`points` table points), merge, project and write the PNGs into out."""
    if points < 100:
        raise ValueError(f"points must be at least 100, got {points}")
    rng = np.random.default_rng(seed)
    workspace = Workspace()
    scene, colours = synthetic_scene(rng, points)
    clouds, cloud_colours, extrinsics = synthetic_cameras(rng, scene, colours)
    merged, point_colours = merge_clouds(clouds, cloud_colours, extrinsics, workspace)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    views = project_views(merged.to(device), point_colours.to(device), workspace)
    rgb, depth = views.rgb.cpu(), views.depth.cpu()
    heatmaps = ee_heatmaps(torch.tensor(EE_POSITION), workspace, sigma=3.0)
    recovered = backproject_heatmaps(heatmaps.unsqueeze(0), workspace).positions[0]
    heat_rgb = colorize_heatmaps(heatmaps)

    out.mkdir(parents=True, exist_ok=True)
    names = workspace.views
    paths = [out / "views_rgb.png", out / "views_depth.png", out / "ee_heatmap_overlay.png"]
    for path, kind in zip(paths, ("rgb", "depth", "overlay"), strict=True):
        fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 4.3))
        for v, (ax, name) in enumerate(zip(np.atleast_1d(axes), names, strict=True)):
            if kind == "rgb":
                ax.imshow(rgb[v].permute(1, 2, 0).numpy())
            elif kind == "depth":
                shown = np.where(np.isfinite(depth[v].numpy()), depth[v].numpy(), np.nan)
                ax.imshow(shown, cmap="viridis", vmin=0.0, vmax=workspace.edge)
            else:
                weight = (heatmaps[v] / heatmaps[v].max()).clamp(0, 1).sqrt().unsqueeze(0)
                blend = rgb[v] * (1 - 0.7 * weight) + heat_rgb[v] * 0.7 * weight
                ax.imshow(blend.permute(1, 2, 0).numpy())
            ax.set_title(f"{name} ({kind})")
            ax.axis("off")
        fig.tight_layout()
        fig.savefig(path, dpi=80)
        plt.close(fig)
    error_mm = 1000 * math.dist(recovered.tolist(), EE_POSITION)
    return DemoResult(len(merged), len(clouds), device, error_mm, paths)
