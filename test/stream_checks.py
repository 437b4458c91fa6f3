"""Checks on the executor's target stream as a test node receives it.

The controller topic keeps only the latest target (history depth 1), so a reader on a busy machine misses
some. Targets stamped dt apart are at most ceil(dt / period) control periods apart, which bounds how far the
commands may have moved between two received ones."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def steps_and_periods(stamps: Sequence[float], positions: Sequence[np.ndarray], period: float
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Distance between consecutive received targets, and the most control periods that can separate them."""
    steps = np.linalg.norm(np.diff(np.asarray(positions, float).reshape(-1, 3), axis=0), axis=1)
    periods = np.maximum(np.ceil(np.diff(np.asarray(stamps, float)) / period - 1e-6), 1.0)
    return steps, periods


def largest_step_per_period(stamps: Sequence[float], positions: Sequence[np.ndarray], period: float) -> float:
    """Largest move between received targets per control period that can have passed (0 for < 2 targets)."""
    if len(stamps) < 2:
        return 0.0
    steps, periods = steps_and_periods(stamps, positions, period)
    return float((steps / periods).max())
