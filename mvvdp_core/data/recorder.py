"""Episode recorder: every added step is durable on disk before add_step returns."""

from __future__ import annotations

import io
import json
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mvvdp_core.data.episode import (
    FORMAT_VERSION,
    INDEX_NAME,
    META_NAME,
    STEPS_DIR,
    SUMMARY_NAME,
    index_line,
    step_arrays,
)
from mvvdp_core.fileio import atomic_write_bytes, atomic_write_json, fsync_dir
from mvvdp_core.step import Step

_EPISODE_NAME = re.compile(r"^episode_(\d{6})$")


class EpisodeWriter:
    """Appends steps to one episode directory; use as a context manager or call close()."""

    def __init__(self, root: Path, meta: Mapping[str, Any]) -> None:
        self.root = root
        (root / STEPS_DIR).mkdir(parents=True, exist_ok=False)
        fsync_dir(root.parent)
        header = {"format_version": FORMAT_VERSION, "created": time.time(), **meta}
        atomic_write_json(root / META_NAME, header)
        self._index = open(root / INDEX_NAME, "ab")  # kept open for the whole episode
        fsync_dir(root)
        self.num_steps = 0
        self._cameras: list[str] | None = list(meta["cameras"]) if "cameras" in meta else None
        self.closed = False

    def add_step(self, step: Step) -> int:
        """Write the step file atomically, then append and fsync its index line. Returns its index."""
        if self.closed:
            raise RuntimeError(f"episode {self.root} is closed")
        if self._cameras is not None and sorted(step.clouds) != sorted(self._cameras):
            raise ValueError(f"step cameras {sorted(step.clouds)} differ from the episode's {self._cameras}")
        name = f"{self.num_steps:06d}.npz"
        buffer = io.BytesIO()
        np.savez(buffer, **step_arrays(step))
        atomic_write_bytes(self.root / STEPS_DIR / name, buffer.getvalue())
        self._index.write(index_line(self.num_steps, name, step).encode())
        self._index.flush()
        os.fsync(self._index.fileno())
        self.num_steps += 1
        return self.num_steps - 1

    def close(self, success: bool | None = None, **info: Any) -> None:
        """Mark the episode finished (summary.json); steps are already on disk either way."""
        if self.closed:
            return
        self._index.close()
        atomic_write_json(self.root / SUMMARY_NAME, {"num_steps": self.num_steps, "success": success, **info})
        self.closed = True

    def __enter__(self) -> EpisodeWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if not self.closed:
            self._index.close()  # interrupted: leave no summary, the steps stay valid
            self.closed = True


class Recorder:
    """Creates numbered episode directories (episode_000000, ...) under one dataset root."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def next_episode_name(self) -> str:
        numbers = [int(m.group(1)) for p in self.root.iterdir() if (m := _EPISODE_NAME.match(p.name))]
        return f"episode_{(max(numbers) + 1) if numbers else 0:06d}"

    def start_episode(self, cameras: list[str], **meta: Any) -> EpisodeWriter:
        """Open a new episode; meta (task, workspace, fps, ...) must be JSON-serialisable."""
        if not cameras:
            raise ValueError("an episode needs at least one camera name")
        json.dumps(meta)  # fail early, naming nothing written yet
        return EpisodeWriter(self.root / self.next_episode_name(), {"cameras": list(cameras), **meta})
