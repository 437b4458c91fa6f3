"""Open3D cloud filters and the ICP calibration check on synthetic clouds with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from mvvdp_core.geometry import Workspace
from mvvdp_core.geometry.cloud_filter import CloudFilter, filter_cloud, open3d_installed, open3d_problem

needs_open3d = pytest.mark.skipif(not open3d_installed(), reason=f"open3d is not usable: {open3d_problem()}")


def test_filter_settings_are_checked_and_off_by_default() -> None:
    assert not CloudFilter().enabled
    points, colors = np.zeros((4, 3), np.float32), np.zeros((4, 3), np.uint8)
    same = filter_cloud(points, colors, CloudFilter())
    assert same[0] is points and same[1] is colors  # off: untouched, Open3D not needed
    for bad in ({"voxel_size": -0.01}, {"outlier_neighbors": -1}, {"outlier_neighbors": 2.5},
                {"outlier_std_ratio": 0.0}):
        with pytest.raises(ValueError):
            CloudFilter(**bad)


@pytest.mark.skipif(open3d_installed(), reason="open3d is installed")
def test_a_filter_without_open3d_names_the_package() -> None:
    with pytest.raises(RuntimeError, match="open3d is not usable"):
        filter_cloud(np.zeros((4, 3), np.float32), np.zeros((4, 3), np.uint8), CloudFilter(voxel_size=0.01))


@needs_open3d
def test_voxel_downsampling_averages_each_voxel() -> None:
    rng = np.random.default_rng(0)
    centres = np.array([0.2, -0.1, 0.3]) + np.arange(5)[:, None] * np.array([0.1, 0.0, 0.0])
    # 40 points within 0.5 mm of each centre; voxel boundaries fall ~5 cm from every centre.
    points = (centres.repeat(40, axis=0) + rng.uniform(-5e-4, 5e-4, (200, 3))).astype(np.float32)
    colors = rng.integers(0, 256, (200, 3), dtype=np.uint8)
    points[7] = np.nan  # dropped before downsampling
    out_points, out_colors = filter_cloud(points, colors, CloudFilter(voxel_size=0.1))
    assert out_points.dtype == np.float32 and out_colors.dtype == np.uint8
    assert len(out_points) == 5
    order = np.argsort(out_points[:, 0])
    for k, i in enumerate(order):
        members = [j for j in range(40 * k, 40 * k + 40) if j != 7]
        np.testing.assert_allclose(out_points[i], points[members].mean(axis=0), atol=1e-6)
        np.testing.assert_allclose(out_colors[i], colors[members].mean(axis=0), atol=0.51)


@needs_open3d
def test_statistical_outlier_removal_drops_isolated_points() -> None:
    rng = np.random.default_rng(1)
    plane = np.column_stack([rng.uniform(0, 0.3, 3000), rng.uniform(0, 0.3, 3000), np.zeros(3000)])
    strays = np.column_stack([rng.uniform(0, 0.3, 20), rng.uniform(0, 0.3, 20), rng.uniform(0.1, 0.3, 20)])
    points = np.vstack([plane, strays]).astype(np.float32)
    colors = np.zeros((len(points), 3), np.float32)
    colors[3000:] = 1.0
    out_points, out_colors = filter_cloud(points, colors, CloudFilter(outlier_neighbors=20,
                                                                      outlier_std_ratio=2.0))
    assert out_colors.dtype == np.float32
    assert not (out_colors == 1.0).any() and np.abs(out_points[:, 2]).max() < 1e-6  # every stray dropped
    assert len(out_points) >= 0.97 * 3000  # the plane stays


@needs_open3d
def test_projection_with_filters_keeps_the_scene() -> None:
    from mvvdp_core.perception import CloudFrame, project_observation

    rng = np.random.default_rng(2)
    workspace = Workspace(resolution=32)
    cube = rng.uniform(-0.1, 0.1, (5000, 3)) + np.array([0.5, 0.0, 0.3])
    points = cube.astype(np.float32)
    colors = np.full((5000, 3), 200, np.uint8)
    frames = [CloudFrame("cam", 0.0, "cam_frame", points, colors)]
    plain = project_observation(frames, [np.eye(4)], workspace, backend="torch")
    cleaned = project_observation(frames, [np.eye(4)], workspace, backend="torch",
                                  cloud_filter=CloudFilter(voxel_size=0.02, outlier_neighbors=10))
    hit_plain, hit_cleaned = torch.isfinite(plain.depth), torch.isfinite(cleaned.depth)
    # The same silhouette within a couple of pixels: most pixels agree, nothing appears outside it.
    assert (hit_plain & hit_cleaned).sum() >= 0.8 * hit_plain.sum()
    assert (hit_cleaned & ~hit_plain).sum() <= 0.1 * hit_plain.sum()


def _surface_samples(rng: np.random.Generator, n: int) -> np.ndarray:
    """n points on a table (z = 0), two boxes and a ball, by area."""
    boxes = [((0.35, -0.25, 0.0), (0.55, -0.05, 0.2)), ((0.6, 0.05, 0.0), (0.75, 0.3, 0.3))]
    faces = [((0.1, -0.45, 0.0), (0.9, 0.45, 0.0))]
    for low, high in boxes:
        (x0, y0, z0), (x1, y1, z1) = low, high
        faces += [((x0, y0, z1), (x1, y1, z1)), ((x0, y0, z0), (x0, y1, z1)), ((x1, y0, z0), (x1, y1, z1)),
                  ((x0, y0, z0), (x1, y0, z1)), ((x0, y1, z0), (x1, y1, z1))]
    sizes = np.array([np.prod([h - lo for lo, h in zip(low, high, strict=True) if h > lo])
                      for low, high in faces])
    ball_area = 4 * np.pi * 0.07**2
    share = np.append(sizes, ball_area) / (sizes.sum() + ball_area)
    counts = rng.multinomial(n, share)
    parts = [rng.uniform(low, high, (c, 3)) for (low, high), c in zip(faces, counts[:-1], strict=True)]
    direction = rng.normal(size=(counts[-1], 3))
    ball = np.array([0.3, 0.25, 0.12]) + 0.07 * direction / np.linalg.norm(direction, axis=1, keepdims=True)
    return np.vstack([*parts, ball])


def _camera(position: tuple[float, float, float], yaw_deg: float) -> np.ndarray:
    """base_T_camera looking down at the table from `position` (x forward in the camera frame)."""
    transform = np.eye(4)
    transform[:3, :3] = Rotation.from_euler("zy", [yaw_deg, 35.0], degrees=True).as_matrix()
    transform[:3, 3] = position
    return transform


def _synthetic_views(seed: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Two cameras, each with its own independent samples of the scene, in its own frame."""
    rng = np.random.default_rng(seed)
    extrinsics = {"a": _camera((1.5, 0.0, 0.9), 180.0), "b": _camera((0.5, 1.3, 0.9), -90.0)}
    clouds = {}
    for name, transform in extrinsics.items():
        base = _surface_samples(rng, 60_000)
        inverse = np.linalg.inv(transform)
        clouds[name] = (base @ inverse[:3, :3].T + inverse[:3, 3]).astype(np.float32)
    return clouds, extrinsics


@needs_open3d
def test_icp_agrees_with_a_correct_calibration() -> None:
    from mvvdp_core.calibration_check import check_calibration

    clouds, extrinsics = _synthetic_views(3)
    (result,) = check_calibration(clouds, extrinsics, workspace=Workspace())
    assert (result.camera, result.reference) == ("b", "a")
    assert result.mean_shift_mm < 1.0 and result.rotation_deg < 0.1 and result.fitness > 0.9


@needs_open3d
@pytest.mark.parametrize(("offset_mm", "rotation_deg"), [((6.0, -4.0, 3.0), 0.0), ((-3.0, 5.0, -2.0), 1.5)])
def test_icp_recovers_a_known_extrinsic_error(offset_mm: tuple[float, ...], rotation_deg: float) -> None:
    from mvvdp_core.calibration_check import check_calibration

    clouds, extrinsics = _synthetic_views(4)
    error = np.eye(4)  # camera b's calibration is off by this base-frame motion
    error[:3, :3] = Rotation.from_euler("z", rotation_deg, degrees=True).as_matrix()
    error[:3, 3] = np.array(offset_mm) / 1000.0
    wrong = {"a": extrinsics["a"], "b": error @ extrinsics["b"]}
    (result,) = check_calibration(clouds, wrong, workspace=Workspace())
    correction = np.array(result.correction)
    # The correction undoes the error: applied after it, every point of the scene is back within 2 mm.
    residual = correction @ error
    scene = _surface_samples(np.random.default_rng(5), 2000)
    moved = scene @ residual[:3, :3].T + residual[:3, 3]
    assert np.linalg.norm(moved - scene, axis=1).max() < 2e-3
    assert abs(result.rotation_deg - rotation_deg) < 0.1
    assert not result.within(tolerance_mm=1.0, tolerance_deg=0.1, min_fitness=0.3)


@needs_open3d
def test_calibration_command_on_the_simulated_scene(tmp_path) -> None:
    """The sim's own calibration passes; the CLI exits 0 and writes one result per other camera."""
    import json

    from mvvdp_core.cli import check_calibration_command as main

    pytest.importorskip("mujoco", reason="mujoco is not installed")
    out = tmp_path / "check.json"
    assert main(["--sim", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    assert {r["camera"] for r in results} == {"zed_left", "zed_right"}
    assert all(r["mean_shift_mm"] < 5.0 and r["fitness"] > 0.8 for r in results)


@needs_open3d
def test_calibration_command_on_a_recorded_step(tmp_path, capsys) -> None:
    """A recorded step agrees with its own extrinsics (exit 0); a calibration file with camera b 8 mm off
    is flagged (exit 1), and the JSON holds the correction."""
    import json

    import yaml

    from mvvdp_core.cli import check_calibration_command as main
    from mvvdp_core.data.episode import CameraCloud, Step
    from mvvdp_core.data.recorder import Recorder

    clouds, extrinsics = _synthetic_views(6)
    step = Step(clouds={n: CameraCloud(clouds[n], np.zeros_like(clouds[n], np.uint8), extrinsics[n])
                        for n in ("a", "b")},
                ee_position=np.zeros(3), ee_rotation=np.eye(3), gripper_width=0.08, gripper_closed=False,
                timestamp=0.0)
    with Recorder(tmp_path / "data").start_episode(["a", "b"]) as writer:
        writer.add_step(step)
    episode = str(tmp_path / "data" / "episode_000000")
    assert main(["--episode", episode]) == 0
    wrong = extrinsics["b"].copy()
    wrong[:3, 3] += [0.008, 0.0, 0.0]
    entries = [{"name": n, "topic": f"/{n}", "frame_id": f"{n}_frame", "translation": t[:3, 3].tolist(),
                "rotation": Rotation.from_matrix(t[:3, :3]).as_quat().tolist()}
               for n, t in (("a", extrinsics["a"]), ("b", wrong))]
    calibration = tmp_path / "cameras.yaml"
    calibration.write_text(yaml.safe_dump({"base_frame": "fr3_link0", "cameras": entries}))
    out = tmp_path / "check.json"
    capsys.readouterr()
    assert main(["--episode", episode, "--cameras", str(calibration), "--json", str(out)]) == 1
    assert "CHECK" in capsys.readouterr().out
    (result,) = json.loads(out.read_text())
    np.testing.assert_allclose(np.array(result["correction"])[:3, 3], [-0.008, 0.0, 0.0], atol=1.5e-3)
