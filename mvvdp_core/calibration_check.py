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

import argparse
import json
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mvvdp check-calibration", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--sim", action="store_true", help="render the simulated scene's three cameras")
    source.add_argument("--episode", help="a recorded episode folder (camera clouds and their extrinsics)")
    parser.add_argument("--step", type=int, default=0, help="episode step to check (default 0)")
    parser.add_argument("--seed", type=int, default=0, help="scene seed with --sim")
    parser.add_argument("--cameras", help="calibration YAML to check instead of the source's extrinsics")
    parser.add_argument("--reference", help="camera the others are registered onto (default: the first)")
    parser.add_argument("--voxel-size", type=float, default=0.005, help="ICP downsampling voxel (m)")
    parser.add_argument("--max-distance", type=float, default=0.03, help="ICP correspondence distance (m)")
    parser.add_argument("--tolerance-mm", type=float, default=5.0, help="largest acceptable mean shift")
    parser.add_argument("--tolerance-deg", type=float, default=1.0, help="largest acceptable rotation")
    parser.add_argument("--min-fitness", type=float, default=0.3, help="smallest acceptable ICP fitness")
    parser.add_argument("--json", help="write the results to this JSON file")
    args = parser.parse_args(argv)
    try:
        if args.sim:
            clouds, extrinsics, workspace = _sim_clouds(args.seed)
        else:
            (clouds, extrinsics), workspace = _episode_clouds(args.episode, args.step), Workspace()
        if args.cameras:
            from mvvdp_core.perception import load_cameras

            _base, cameras = load_cameras(args.cameras)
            calibration = {c.name: c.base_T_camera for c in cameras}
            missing = sorted(set(clouds) - set(calibration))
            if missing:
                raise ValueError(f"{args.cameras} has no extrinsics for {missing}")
            extrinsics = {name: calibration[name] for name in clouds}
        results = check_calibration(clouds, extrinsics, args.reference, workspace, args.voxel_size,
                                    args.max_distance)
    except (RuntimeError, ValueError, FileNotFoundError) as err:
        print(f"mvvdp check-calibration: {err}", file=sys.stderr)
        return 2
    print(f"{'camera':<12} {'onto':<12} {'points':>7} {'shift mm':>9} {'rot deg':>8} {'fitness':>8} "
          f"{'rmse mm':>8}  verdict")
    ok = True
    for r in results:
        good = r.within(args.tolerance_mm, args.tolerance_deg, args.min_fitness)
        ok &= good
        verdict = "ok" if good else "CHECK"
        print(f"{r.camera:<12} {r.reference:<12} {r.points:>7} {r.mean_shift_mm:>9.2f} "
              f"{r.rotation_deg:>8.3f} {r.fitness:>8.3f} {r.inlier_rmse_mm:>8.2f}  {verdict}")
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
