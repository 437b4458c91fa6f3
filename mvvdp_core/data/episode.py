"""Episode format on disk: crash-safe while recording, fast to index when training.

One episode is one directory::

    meta.json          written once when the episode starts (atomic rename)
    steps/000000.npz   one uncompressed npz per step: per camera, camera-frame points, colours, extrinsics
    index.jsonl        append-only, one JSON line per completed step (ee pose, gripper, time, file name)
    summary.json       written when the episode is closed normally (length, success)

A step counts as recorded once its index line is on disk. The step file is written to a temporary name,
fsynced and renamed before its index line is appended and fsynced, so a process killed at any moment leaves
every completed step readable and at most one orphan step file (ignored). A torn last index line is ignored.

Camera points are kept in each camera's own frame with its base_T_camera extrinsics, so an SE(3) augmentation
only has to move the extrinsics and the end-effector pose; the points are never rewritten.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mvvdp_core.fileio import atomic_write_bytes, fsync_dir
from mvvdp_core.step import CameraCloud, Step

# The step types and the file helpers are defined in mvvdp_core.step and mvvdp_core.fileio; training code
# reaches them through this module too.
__all__ = [
    "FORMAT_VERSION", "INDEX_NAME", "META_NAME", "STEPS_DIR", "SUMMARY_NAME", "CameraCloud", "Episode",
    "EpisodeFormatError", "Step", "StepRecord", "atomic_write_bytes", "fsync_dir", "index_line",
    "list_episodes", "step_arrays",
]

FORMAT_VERSION = 1
INDEX_NAME = "index.jsonl"
META_NAME = "meta.json"
SUMMARY_NAME = "summary.json"
STEPS_DIR = "steps"


class EpisodeFormatError(ValueError):
    """An episode directory or one of its files is missing, corrupt or inconsistent."""


@dataclass(frozen=True)
class StepRecord:
    """What the index holds for one step: enough to build targets without opening the step file."""

    index: int
    file: str
    timestamp: float
    ee_position: np.ndarray
    ee_rotation: np.ndarray
    gripper_width: float
    gripper_closed: bool


def step_arrays(step: Step) -> dict[str, np.ndarray]:
    """Flatten a step into named arrays for one npz file."""
    arrays: dict[str, np.ndarray] = {}
    for name, cloud in step.clouds.items():
        arrays[f"cloud__{name}__points"] = cloud.points
        arrays[f"cloud__{name}__colors"] = cloud.colors
        arrays[f"cloud__{name}__base_T_camera"] = cloud.base_T_camera
    for key, value in step.extras.items():
        arrays[f"extra__{key}"] = np.asarray(value)
    return arrays


def index_line(record_index: int, file: str, step: Step) -> str:
    entry = {
        "i": record_index,
        "file": file,
        "t": float(step.timestamp),
        "ee_position": step.ee_position.tolist(),
        "ee_rotation": step.ee_rotation.reshape(-1).tolist(),
        "gripper_width": float(step.gripper_width),
        "gripper_closed": bool(step.gripper_closed),
    }
    return json.dumps(entry, separators=(",", ":")) + "\n"


class Episode:
    """Read-only view of one recorded episode (complete or cut short by a crash)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        meta_path = self.root / META_NAME
        if not meta_path.is_file():
            raise EpisodeFormatError(f"{self.root} is not an episode: {META_NAME} is missing")
        try:
            self.meta: dict[str, Any] = json.loads(meta_path.read_text())
        except json.JSONDecodeError as exc:
            raise EpisodeFormatError(f"{meta_path} is not valid JSON: {exc}") from exc
        if self.meta.get("format_version") != FORMAT_VERSION:
            raise EpisodeFormatError(
                f"{meta_path}: format_version {self.meta.get('format_version')!r}, expected {FORMAT_VERSION}"
            )
        train_from = self.meta.get("train_from_step", 0)
        if isinstance(train_from, bool) or not isinstance(train_from, int) or train_from < 0:
            raise EpisodeFormatError(
                f"{meta_path}: train_from_step must be an integer >= 0, got {train_from!r}"
            )
        self.train_from_step: int = train_from  # first step a training sample may condition on
        self.records: list[StepRecord] = self._read_index()
        summary_path = self.root / SUMMARY_NAME
        self.summary: dict[str, Any] | None = (
            json.loads(summary_path.read_text()) if summary_path.is_file() else None
        )

    def _read_index(self) -> list[StepRecord]:
        path = self.root / INDEX_NAME
        if not path.is_file():
            return []
        records: list[StepRecord] = []
        lines = path.read_bytes().split(b"\n")
        for number, raw in enumerate(lines):
            if not raw.strip():
                continue
            last = number == len(lines) - 1  # no newline after it: a torn write, ignore
            try:
                entry = json.loads(raw)
            except json.JSONDecodeError as exc:
                if last:
                    break
                raise EpisodeFormatError(f"{path}: line {number + 1} is corrupt: {exc}") from exc
            if last:
                break
            if entry.get("i") != len(records):
                raise EpisodeFormatError(f"{path}: line {number + 1} has step {entry.get('i')}, "
                                         f"expected {len(records)}")
            records.append(
                StepRecord(
                    index=int(entry["i"]),
                    file=str(entry["file"]),
                    timestamp=float(entry["t"]),
                    ee_position=np.asarray(entry["ee_position"], dtype=np.float64),
                    ee_rotation=np.asarray(entry["ee_rotation"], dtype=np.float64).reshape(3, 3),
                    gripper_width=float(entry["gripper_width"]),
                    gripper_closed=bool(entry["gripper_closed"]),
                )
            )
        return records

    def __len__(self) -> int:
        return len(self.records)

    @property
    def cameras(self) -> list[str]:
        return list(self.meta.get("cameras", []))

    @property
    def success(self) -> bool | None:
        return None if self.summary is None else bool(self.summary.get("success"))

    def ee_positions(self) -> np.ndarray:
        """(T, 3) end-effector positions of every step."""
        return np.stack([r.ee_position for r in self.records]) if self.records else np.zeros((0, 3))

    def ee_rotations(self) -> np.ndarray:
        """(T, 3, 3) end-effector rotations of every step."""
        return np.stack([r.ee_rotation for r in self.records]) if self.records else np.zeros((0, 3, 3))

    def gripper_closed(self) -> np.ndarray:
        """(T,) commanded gripper state, 1.0 = closed."""
        return np.array([float(r.gripper_closed) for r in self.records])

    def step(self, index: int) -> Step:
        """Load one step with its clouds."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"step {index} out of range for an episode of {len(self)} steps")
        record = self.records[index]
        path = self.root / STEPS_DIR / record.file
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files}
        except (OSError, ValueError, EOFError) as exc:
            raise EpisodeFormatError(f"step file {path} is unreadable: {exc}") from exc
        clouds: dict[str, CameraCloud] = {}
        extras: dict[str, np.ndarray] = {}
        for key in arrays:
            kind, *rest = key.split("__")
            if kind == "cloud" and rest[1] == "points":
                name = rest[0]
                clouds[name] = CameraCloud(
                    arrays[key], arrays[f"cloud__{name}__colors"], arrays[f"cloud__{name}__base_T_camera"]
                )
            elif kind == "extra":
                extras[rest[0]] = arrays[key]
        return Step(
            clouds=clouds,
            ee_position=record.ee_position,
            ee_rotation=record.ee_rotation,
            gripper_width=record.gripper_width,
            gripper_closed=record.gripper_closed,
            timestamp=record.timestamp,
            extras=extras,
        )

    def __iter__(self) -> Iterator[Step]:
        for index in range(len(self)):
            yield self.step(index)


def list_episodes(root: str | os.PathLike[str], min_steps: int = 1) -> list[Episode]:
    """Every episode directory directly under root (sorted by name) holding at least min_steps steps."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset directory {root} does not exist")
    episodes = [Episode(p) for p in sorted(root.iterdir()) if (p / META_NAME).is_file()]
    return [e for e in episodes if len(e) >= min_steps]
