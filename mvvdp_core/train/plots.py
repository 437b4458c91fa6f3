"""Predicted vs true end-effector trajectory plot for one validation episode (PNG)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_trajectories(
    predicted: np.ndarray,
    true: np.ndarray,
    path: str | Path,
    title: str = "",
    condition: np.ndarray | None = None,
) -> Path:
    """predicted, true (T, 3) positions in metres -> a PNG with x/y/z over the chunk and a top-down path."""
    predicted, true = np.asarray(predicted, dtype=np.float64), np.asarray(true, dtype=np.float64)
    if predicted.ndim != 2 or predicted.shape[1] != 3 or predicted.shape != true.shape:
        raise ValueError(f"trajectories must both be (T, 3), got {predicted.shape} and {true.shape}")
    path = Path(path)
    steps = np.arange(1, len(true) + 1)
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    for axis, name in enumerate("xyz"):
        ax = axes[axis]
        ax.plot(steps, true[:, axis], "k-", label="true")
        ax.plot(steps, predicted[:, axis], "r--", label="predicted")
        if condition is not None:
            ax.axhline(float(condition[axis]), color="0.6", lw=0.8, label="condition")
        ax.set_xlabel("future frame")
        ax.set_ylabel(f"{name} (m)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    ax = axes[3]
    ax.plot(true[:, 0], true[:, 1], "k-o", ms=2, label="true")
    ax.plot(predicted[:, 0], predicted[:, 1], "r--o", ms=2, label="predicted")
    ax.set_xlabel("x (m)")
    ax.set_ylabel("y (m)")
    ax.set_aspect("equal", adjustable="datalim")
    ax.grid(alpha=0.3)
    error = float(np.linalg.norm(predicted - true, axis=1).mean())
    fig.suptitle(f"{title}  mean position error {100 * error:.1f} cm".strip())
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
