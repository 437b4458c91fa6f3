"""Thread counts for CPU work (training, evaluation, recording, projection) on a shared machine."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch


def default_threads() -> int:
    """Half the usable cores, at least one: intra-op threads that compete with other busy processes for
    every core make torch many times slower (measured ~20x on a loaded 2-core machine)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // 2)


def set_torch_threads(threads: int | None = None) -> int:
    """Set torch's intra-op thread count (None: `default_threads()`); returns the count in force."""
    count = default_threads() if threads is None else int(threads)
    if count < 1:
        raise ValueError(f"thread count must be >= 1, got {threads!r}")
    torch.set_num_threads(count)
    return count


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the body with `threads` torch intra-op threads (None: leave the setting), then restore the count.

    The count is process-wide: torch work of other threads during the body runs with it too."""
    if threads is None:
        yield
        return
    if threads < 1:
        raise ValueError(f"thread count must be >= 1, got {threads!r}")
    before = torch.get_num_threads()
    if before == threads:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
