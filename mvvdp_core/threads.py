"""Thread count for long CPU commands (record, evaluate) on a machine shared with other jobs."""

from __future__ import annotations

import os


def set_torch_threads(share: int = 2, most: int = 4) -> int:
    """Give torch max(1, min(most, cpu_count // share)) intra-op threads; returns the count."""
    import torch

    if share < 1 or most < 1:
        raise ValueError(f"share and most must be >= 1, got {share} and {most}")
    threads = max(1, min(most, (os.cpu_count() or 1) // share))
    torch.set_num_threads(threads)
    return threads
