"""`mvvdp check-calibration`: do the cameras' clouds agree where they overlap? (ICP, Open3D)

Each camera's cloud is put into the base frame through its extrinsic and registered onto a reference
camera's cloud with point-to-plane ICP, both cropped to the workspace cube and voxel-downsampled. The
correction ICP finds is what that camera's extrinsic is off by relative to the reference: for calibrations
that agree it is the identity. Reported per camera: how far the correction moves the overlapping points
(mean, millimetres), its rotation (degrees), ICP's fitness (share of points with a partner within
max_distance) and inlier RMSE.

    mvvdp check-calibration --sim                          # the simulated scene, config/cameras_sim.yaml
    mvvdp check-calibration --episode data/pick/episode_000000 --step 0 [--cameras config/cameras.yaml]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mvvdp_core.geometry import Workspace
from mvvdp_core.geometry.cloud_filter import import_open3d, to_open3d


@dataclass(frozen=True)
class PairCheck:
    camera: str
    reference: str
    points: int  # source points inside the workspace after downsampling
    correction: list[list[float]]  # (4, 4) in the base frame: moves the camera's cloud onto the reference
    mean_shift_mm: float  # mean displacement of the camera's points under the correction
    rotation_deg: float
    fitness: float
    inlier_rmse_mm: float

    def within(self, tolerance_mm: float, tolerance_deg: float, min_fitness: float) -> bool:
        return (self.mean_shift_mm <= tolerance_mm and self.rotation_deg <= tolerance_deg
                and self.fitness >= min_fitness)


def _in_base(points: np.ndarray, base_T_camera: np.ndarray) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    points = points[np.isfinite(points).all(axis=1)]
    return points @ base_T_camera[:3, :3].T + base_T_camera[:3, 3]


def _crop(points: np.ndarray, workspace: Workspace | None) -> np.ndarray:
    if workspace is None:
        return points
    center = np.asarray(workspace.center, dtype=np.float64)
    return points[(np.abs(points - center) <= workspace.edge / 2).all(axis=1)]


def check_calibration(clouds: Mapping[str, np.ndarray], extrinsics: Mapping[str, np.ndarray],
                      reference: str | None = None, workspace: Workspace | None = None,
                      voxel_size: float = 0.005, max_distance: float = 0.03,
                      iterations: int = 100) -> list[PairCheck]:
    """clouds: camera -> points (N, 3) or (H, W, 3) in its camera frame (NaN = no return); extrinsics:
    camera -> base_T_camera (4, 4). Registers every other camera onto `reference` (default: the first)."""
    o3d = import_open3d()
    names = list(clouds)
    if set(names) != set(extrinsics):
        raise ValueError(f"clouds for {sorted(names)} but extrinsics for {sorted(extrinsics)}")
    if len(names) < 2:
        raise ValueError("a calibration check needs at least two cameras")
    reference = names[0] if reference is None else reference
    if reference not in clouds:
        raise ValueError(f"reference camera {reference!r} not among {names}")
    if not (voxel_size > 0 and max_distance > 0):
        raise ValueError("voxel_size and max_distance must be > 0")
    registration = o3d.pipelines.registration

    def prepared(name: str):
        points = _crop(_in_base(clouds[name], np.asarray(extrinsics[name], dtype=np.float64)), workspace)
        cloud = to_open3d(points).voxel_down_sample(voxel_size)
        if len(cloud.points) < 10:
            raise ValueError(f"camera {name}: {len(cloud.points)} points in the workspace, too few for ICP")
        cloud.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=4 * voxel_size, max_nn=30))
        return cloud

    target = prepared(reference)
    results = []
    for name in names:
        if name == reference:
            continue
        source = prepared(name)
        fit = registration.registration_icp(
            source, target, max_distance, np.eye(4), registration.TransformationEstimationPointToPlane(),
            registration.ICPConvergenceCriteria(relative_fitness=1e-9, relative_rmse=1e-9,
                                                max_iteration=iterations))
        correction = np.asarray(fit.transformation)
        points = np.asarray(source.points)
        moved = points @ correction[:3, :3].T + correction[:3, 3]
        cos = np.clip((np.trace(correction[:3, :3]) - 1.0) / 2.0, -1.0, 1.0)
        results.append(PairCheck(
            camera=name, reference=reference, points=len(points), correction=correction.tolist(),
            mean_shift_mm=float(np.linalg.norm(moved - points, axis=1).mean() * 1000.0),
            rotation_deg=float(np.degrees(np.arccos(cos))), fitness=float(fit.fitness),
            inlier_rmse_mm=float(fit.inlier_rmse * 1000.0)))
    return results


def _sim_clouds(seed: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], Workspace]:
    from mvvdp_core.graph import default_config_dir
    from mvvdp_core.perception import load_cameras
    from mvvdp_core.sim.franka import FrankaSim

    _base, cameras = load_cameras(default_config_dir() / "cameras_sim.yaml")
    with FrankaSim() as sim:
        sim.reset(seed=seed)
        rendered = dict(zip(sim.camera_names, sim.render_clouds(), strict=True))
        workspace = sim.workspace
    clouds = {c.name: rendered[c.name][0] for c in cameras}
    return clouds, {c.name: c.base_T_camera for c in cameras}, workspace


def _episode_clouds(folder: str, step: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    from mvvdp_core.data.episode import Episode

    recorded = Episode(folder).step(step)
    return ({n: c.points for n, c in recorded.clouds.items()},
            {n: c.base_T_camera for n, c in recorded.clouds.items()})


def calibration_sources(
    episode: str | None = None, step: int = 0, seed: int = 0, cameras: str | Path | None = None
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], Workspace]:
    """Camera clouds, their extrinsics and the workspace to check: a recorded episode's step, or (episode
    None) the simulated scene of `seed`; with `cameras` the extrinsics come from that calibration YAML."""
    if episode is None:
        clouds, extrinsics, workspace = _sim_clouds(seed)
    else:
        (clouds, extrinsics), workspace = _episode_clouds(episode, step), Workspace()
    if cameras:
        from mvvdp_core.perception import load_cameras

        _base, loaded = load_cameras(cameras)
        calibration = {c.name: c.base_T_camera for c in loaded}
        missing = sorted(set(clouds) - set(calibration))
        if missing:
            raise ValueError(f"{cameras} has no extrinsics for {missing}")
        extrinsics = {name: calibration[name] for name in clouds}
    return clouds, extrinsics, workspace
