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
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_VERSION = 1
INDEX_NAME = "index.jsonl"
META_NAME = "meta.json"
SUMMARY_NAME = "summary.json"
STEPS_DIR = "steps"


class EpisodeFormatError(ValueError):
    """An episode directory or one of its files is missing, corrupt or inconsistent."""


@dataclass
class CameraCloud:
    """One camera's cloud: points (N, 3) float32 in the camera frame, colours (N, 3) uint8, base_T_camera."""

    points: np.ndarray
    colors: np.ndarray
    base_T_camera: np.ndarray

    def __post_init__(self) -> None:
        points = np.asarray(self.points, dtype=np.float32)
        colors = np.asarray(self.colors)
        if points.ndim == 3:  # organised H x W x 3 cloud: flatten, keep only returns
            points = points.reshape(-1, 3)
            colors = colors.reshape(-1, 3)
        if points.ndim != 2 or points.shape[1] != 3:
            raise ValueError(f"camera points must be (N, 3) or (H, W, 3), got {points.shape}")
        if colors.shape != points.shape:
            raise ValueError(f"camera colours {colors.shape} must match points {points.shape}")
        if colors.dtype != np.uint8:
            raise ValueError(f"camera colours must be uint8, got {colors.dtype}")
        valid = np.isfinite(points).all(axis=1)
        self.points = np.ascontiguousarray(points[valid])
        self.colors = np.ascontiguousarray(colors[valid])
        self.base_T_camera = check_transform(self.base_T_camera, "base_T_camera")

    def in_base(self, base_T_camera: np.ndarray | None = None) -> np.ndarray:
        """Points (N, 3) in the base frame, through the given extrinsics (default: this camera's own)."""
        transform = self.base_T_camera if base_T_camera is None else base_T_camera
        return (self.points.astype(np.float64) @ transform[:3, :3].T + transform[:3, 3]).astype(np.float32)


@dataclass
class Step:
    """Everything recorded at one control step."""

    clouds: dict[str, CameraCloud]
    ee_position: np.ndarray  # (3,) metres, base frame
    ee_rotation: np.ndarray  # (3, 3) rotation matrix, base_R_ee
    gripper_width: float  # metres between the fingers
    gripper_closed: bool  # commanded state: True = closing/closed
    timestamp: float  # seconds
    extras: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. the demonstrator's raw action

    def __post_init__(self) -> None:
        self.ee_position = np.asarray(self.ee_position, dtype=np.float64).reshape(-1)
        if self.ee_position.shape != (3,) or not np.isfinite(self.ee_position).all():
            raise ValueError(f"ee_position must be 3 finite numbers, got {self.ee_position!r}")
        self.ee_rotation = check_rotation(self.ee_rotation, "ee_rotation")
        if not np.isfinite(self.gripper_width) or self.gripper_width < 0:
            raise ValueError(f"gripper_width must be a finite non-negative width, got {self.gripper_width!r}")
        if not np.isfinite(self.timestamp):
            raise ValueError(f"timestamp must be finite, got {self.timestamp!r}")
        if not self.clouds:
            raise ValueError("a step needs at least one camera cloud")
        for name in self.clouds:
            if not name or "/" in name or "__" in name:
                raise ValueError(f"bad camera name {name!r} (non-empty, no '/' or '__')")


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


def check_transform(matrix: Any, name: str) -> np.ndarray:
    """A (4, 4) rigid transform with an orthonormal rotation, else ValueError naming it."""
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.shape != (4, 4) or not np.isfinite(matrix).all():
        raise ValueError(f"{name} must be a finite 4x4 matrix, got shape {matrix.shape}")
    if not np.allclose(matrix[3], [0, 0, 0, 1], atol=1e-6):
        raise ValueError(f"{name} last row must be [0, 0, 0, 1], got {matrix[3]}")
    check_rotation(matrix[:3, :3], f"{name} rotation")
    return matrix


def check_rotation(matrix: Any, name: str) -> np.ndarray:
    """A (3, 3) proper rotation (orthonormal, det +1), else ValueError naming it."""
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.shape != (3, 3) or not np.isfinite(matrix).all():
        raise ValueError(f"{name} must be a finite 3x3 matrix, got shape {matrix.shape}")
    if not np.allclose(matrix @ matrix.T, np.eye(3), atol=1e-4) or np.linalg.det(matrix) < 0:
        raise ValueError(f"{name} is not a proper rotation matrix")
    return matrix


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary sibling, fsync, rename over path, fsync the directory."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def atomic_write_json(path: Path, payload: Mapping[str, Any]) -> None:
    atomic_write_bytes(path, (json.dumps(payload, indent=1) + "\n").encode())


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
