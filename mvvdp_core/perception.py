"""Perception logic without ROS: camera calibration file, per-cloud checks, stamp synchronisation, views.

The perception node feeds every camera cloud to `CloudSynchronizer.add`, which rejects bad clouds with a
reason (wrong frame, stamp in the future or too old, more than `max_points` points, too few usable points)
and keeps only the usable points of a good one: finite and between `min_range` and `max_range` from the
camera (a cloud decoded with the wrong byte order or field layout has almost none: its coordinates come out
as ~1e-40 or ~1e30); `take_synced` returns one cloud per
camera once all cameras have a cloud within the sync tolerance. `project_observation` merges such a set into
the base frame, crops it to the workspace and projects the views (mvvdp_core.geometry).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from mvvdp_core.cameras import CameraSpec
from mvvdp_core.geometry import ProjectedViews, Workspace, merge_clouds, project_views
from mvvdp_core.geometry.cloud_filter import CloudFilter, filter_cloud
from mvvdp_core.rotations import pose_matrix


def load_cameras(path: str | Path) -> tuple[str, list[CameraSpec]]:
    """Read a camera calibration file -> (base frame, cameras).

    Format: `base_frame: <frame>` and `cameras:` a list of {name, topic, frame_id, translation [x, y, z] m,
    rotation [x, y, z, w]} giving base_T_camera for each camera's cloud frame.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"camera calibration file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML ({err})") from err
    if not isinstance(data, dict) or not isinstance(data.get("cameras"), list) or not data["cameras"]:
        raise ValueError(f"{path}: expected a mapping with a non-empty 'cameras' list")
    cameras = []
    for i, entry in enumerate(data["cameras"]):
        missing = [k for k in ("name", "topic", "frame_id", "translation", "rotation") if k not in entry]
        if missing:
            raise ValueError(f"{path}: camera {i} lacks {missing}")
        translation = np.asarray(entry["translation"], dtype=np.float64)
        if translation.shape != (3,) or not np.isfinite(translation).all():
            raise ValueError(f"{path}: camera {entry['name']}: translation must be 3 finite numbers")
        try:
            matrix = pose_matrix(translation, np.asarray(entry["rotation"], dtype=np.float64))
        except ValueError as err:
            raise ValueError(f"{path}: camera {entry['name']}: {err}") from err
        cameras.append(CameraSpec(str(entry["name"]), str(entry["topic"]), str(entry["frame_id"]), matrix))
    names = [c.name for c in cameras]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: duplicate camera names {names}")
    return str(data.get("base_frame", "fr3_link0")), cameras


@dataclass(frozen=True)
class CloudFrame:
    camera: str
    stamp: float
    frame_id: str
    points: np.ndarray  # (N, 3) camera frame
    colors: np.ndarray  # (N, 3) uint8


@dataclass(frozen=True)
class SyncConfig:
    """Seconds: stamps of one set within `tolerance`; clouds older than `max_age` or more than
    `future_tolerance` ahead of now are rejected; a camera silent for `camera_timeout` is reported missing.
    Metres: a point is usable between `min_range` and `max_range` from its camera. A cloud of more than
    `max_points` points is rejected before it is decoded, so is one where fewer than `min_usable_fraction` of
    the finite points are usable."""

    tolerance: float = 0.05
    max_age: float = 0.5
    future_tolerance: float = 0.05
    camera_timeout: float = 1.0
    min_range: float = 0.05
    max_range: float = 40.0
    max_points: int = 1_000_000
    min_usable_fraction: float = 0.5  # of the finite points; bytes read in the wrong order pass ~3 %

    def __post_init__(self) -> None:
        for name in ("tolerance", "max_age", "future_tolerance", "camera_timeout", "min_range"):
            if not (np.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {getattr(self, name)!r}")
        if not (np.isfinite(self.max_range) and self.max_range > self.min_range):
            raise ValueError(f"max_range must be finite and > min_range, got {self.max_range!r}")
        if not 0.0 <= self.min_usable_fraction <= 1.0:
            raise ValueError(f"min_usable_fraction must be in [0, 1], got {self.min_usable_fraction!r}")
        if not self.max_points >= 1:
            raise ValueError(f"max_points must be >= 1, got {self.max_points!r}")


class CloudSynchronizer:
    def __init__(self, cameras: list[CameraSpec], config: SyncConfig | None = None) -> None:
        if not cameras:
            raise ValueError("at least one camera is needed")
        self.cameras = {c.name: c for c in cameras}
        self.config = config or SyncConfig()
        self.latest: dict[str, CloudFrame] = {}
        self.last_seen: dict[str, float] = {}
        self.last_synced_stamp = -np.inf

    def check_size(self, camera: str, num_points: int) -> str | None:
        """Why a cloud of num_points must not even be decoded, or None."""
        if num_points > self.config.max_points:
            return f"{camera}: cloud of {num_points} points > max_points {self.config.max_points}"
        return None

    def add(self, frame: CloudFrame, now: float) -> str | None:
        """Store a cloud (its usable points); returns the reason it was rejected, or None."""
        camera = self.cameras.get(frame.camera)
        if camera is None:
            return f"unknown camera {frame.camera!r}"
        self.last_seen[frame.camera] = now
        if frame.frame_id != camera.frame_id:
            return f"{frame.camera}: wrong frame_id {frame.frame_id!r}, expected {camera.frame_id!r}"
        age = now - frame.stamp
        if age < -self.config.future_tolerance:
            return f"{frame.camera}: stamp {-age:.3f} s in the future"
        if age > self.config.max_age:
            return f"{frame.camera}: stale cloud ({age:.3f} s old > max_age {self.config.max_age} s)"
        points = np.asarray(frame.points)
        if points.ndim != 2 or points.shape[1] != 3 or len(points) == 0:
            return f"{frame.camera}: empty cloud"
        size = self.check_size(frame.camera, len(points))
        if size:
            return size
        finite = np.isfinite(points).all(axis=1)
        if not finite.any():
            return f"{frame.camera}: cloud holds no finite point (all NaN)"
        with np.errstate(over="ignore", invalid="ignore"):
            distance = np.linalg.norm(points.astype(np.float64), axis=1)
        usable = finite & (distance >= self.config.min_range) & (distance <= self.config.max_range)
        if usable.sum() < max(1.0, self.config.min_usable_fraction * finite.sum()):
            return (f"{frame.camera}: {usable.sum()} of {finite.sum()} finite points usable (within "
                    f"{self.config.min_range}..{self.config.max_range} m of the camera); wrong byte order or "
                    f"field layout?")
        if not usable.all():
            frame = CloudFrame(frame.camera, frame.stamp, frame.frame_id, points[usable],
                               np.asarray(frame.colors)[usable])
        self.latest[frame.camera] = frame
        return None

    def missing(self, now: float) -> list[str]:
        """Cameras that have sent nothing for camera_timeout seconds."""
        limit = self.config.camera_timeout
        return [n for n in self.cameras if now - self.last_seen.get(n, -np.inf) > limit]

    def take_synced(self, now: float) -> tuple[list[CloudFrame] | None, str | None]:
        """One fresh cloud per camera within the tolerance (in camera order), or None and why not."""
        absent = [n for n in self.cameras if n not in self.latest]
        if absent:
            return None, f"waiting for {absent}"
        frames = [self.latest[n] for n in self.cameras]
        stamps = np.array([f.stamp for f in frames])
        if now - stamps.min() > self.config.max_age:
            return None, f"stale set: oldest cloud {now - stamps.min():.3f} s old"
        if stamps.max() - stamps.min() > self.config.tolerance:
            return None, f"stamps spread {stamps.max() - stamps.min():.3f} s > tolerance"
        if stamps.max() <= self.last_synced_stamp:
            return None, "no new clouds"
        self.last_synced_stamp = float(stamps.max())
        return frames, None


def project_observation(
    frames: list[CloudFrame],
    extrinsics: list[np.ndarray],
    workspace: Workspace,
    splat_radius: float = 0.008,
    backend: str = "auto",
    cloud_filter: CloudFilter | None = None,
    threads: int | None = 1,
) -> ProjectedViews:
    """Merge the clouds (camera frames, base_T_camera extrinsics), crop them to the workspace, optionally
    clean the merged cloud (voxel downsampling, outlier removal; Open3D) and project the workspace views.

    threads: torch CPU threads of the projection on the CPU (project_views; None: torch's setting)."""
    clouds, colors = [f.points for f in frames], [f.colors for f in frames]
    points, colors = merge_clouds(clouds, colors, extrinsics, workspace)
    if cloud_filter is not None and cloud_filter.enabled:
        kept_points, kept_colors = filter_cloud(points.cpu().numpy(), colors.cpu().numpy(), cloud_filter)
        if len(kept_points) == 0:
            raise ValueError("the cloud filters left no points")
        points = torch.from_numpy(kept_points).to(points.device)
        colors = torch.from_numpy(kept_colors).to(colors.device)
    return project_views(points, colors, workspace, splat_radius, backend=backend, threads=threads)
