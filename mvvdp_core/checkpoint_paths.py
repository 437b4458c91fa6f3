"""Where a checkpoint's files are, without loading a model (no torch import): the launch files use it."""

from __future__ import annotations

import json
from pathlib import Path

CONFIG_FILE = "config.json"
RUN_CHECKPOINTS_DIR = "checkpoints"  # a training run keeps its checkpoints here ...
LATEST_POINTER = "latest"  # ... and names the newest one in this file


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or does not match the model."""


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder as given, or the newest checkpoint of a training run (its folder or its
    checkpoints/latest pointer file)."""
    path = Path(path).expanduser()
    for pointer in (path, path / RUN_CHECKPOINTS_DIR / LATEST_POINTER):
        if pointer.name == LATEST_POINTER and pointer.is_file():
            name = pointer.read_text().strip()
            if not name:
                raise CheckpointError(f"empty checkpoint pointer: {pointer}")
            return pointer.parent / name
    return path


def checkpoint_image_size(path: str | Path) -> int | None:
    """The view resolution (pixels per side) the checkpoint's model consumes; None when its config can't be
    read (the policy node then reports the checkpoint's problem itself)."""
    try:
        size = json.loads((resolve_checkpoint(path) / CONFIG_FILE).read_text())["image_size"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return size if isinstance(size, int) and size > 0 else None
