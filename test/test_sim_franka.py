"""FrankaSim: kinematics against the published DH table, pose tracking, gripper, clouds, camera config."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from mvvdp_core.geometry.clouds import merge_clouds
from mvvdp_core.geometry.workspace import Workspace
from mvvdp_core.sim.franka import (
    FR3_DH,
    FR3_JOINT_LIMITS,
    MAX_GRIPPER_WIDTH,
    TABLE_TOP_Z,
    FrankaSim,
    SimConfig,
    camera_config_entries,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sim() -> FrankaSim:
    franka = FrankaSim()
    yield franka
    franka.close()


def _dh_tcp_pose(q: np.ndarray) -> np.ndarray:
    """Fingertip pose from the modified DH table, flange 0.107 m, hand -45 deg about z, TCP 0.1034 m."""

    def rot_x(a: float) -> np.ndarray:
        t = np.eye(4)
        t[1:3, 1:3] = [[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]
        return t

    def rot_z(a: float) -> np.ndarray:
        t = np.eye(4)
        t[:2, :2] = [[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]
        return t

    def trans(x: float, z: float) -> np.ndarray:
        t = np.eye(4)
        t[0, 3], t[2, 3] = x, z
        return t

    pose = np.eye(4)
    for (a, d, alpha), theta in zip(FR3_DH, q, strict=True):
        pose = pose @ rot_x(alpha) @ trans(a, 0.0) @ rot_z(theta) @ trans(0.0, d)
    return pose @ trans(0.0, 0.107) @ rot_z(-math.pi / 4) @ trans(0.0, 0.1034)


def _quat_to_matrix(xyzw: np.ndarray) -> np.ndarray:
    x, y, z, w = xyzw
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def _quat_about(axis: np.ndarray, angle: float) -> np.ndarray:
    axis = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    return np.concatenate([axis * math.sin(angle / 2), [math.cos(angle / 2)]])


def _quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ax, ay, az, aw = a
    bx, by, bz, bw = b
    return np.array(
        [
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
            aw * bw - ax * bx - ay * by - az * bz,
        ]
    )


def _angle_between(q1: np.ndarray, q2: np.ndarray) -> float:
    return 2 * math.acos(min(1.0, abs(float(np.dot(q1, q2)))))


def test_kinematics_match_published_dh_table(sim: FrankaSim) -> None:
    rng = np.random.default_rng(3)
    limits = np.array(FR3_JOINT_LIMITS)
    for _ in range(20):
        q = rng.uniform(limits[:, 0], limits[:, 1])
        expected = _dh_tcp_pose(q)
        pos, quat = sim.forward_kinematics(q)
        np.testing.assert_allclose(pos, expected[:3, 3], atol=1e-9)
        np.testing.assert_allclose(_quat_to_matrix(quat), expected[:3, :3], atol=1e-9)
    # The documented FR3 ready pose puts the flange-plus-hand TCP at (0.307, 0, 0.487), pointing down.
    sim.reset(0)
    pos, quat = sim.ee_pose()
    np.testing.assert_allclose(pos, [0.3069, 0.0, 0.4869], atol=5e-4)
    np.testing.assert_allclose(_quat_to_matrix(quat)[:, 2], [0, 0, -1], atol=1e-6)


def test_arm_reaches_target_poses(sim: FrankaSim) -> None:
    sim.reset(1)
    home_pos, home_quat = sim.ee_pose()
    targets = [
        (home_pos + [0.15, 0.2, -0.25], home_quat),
        (np.array([0.55, -0.2, 0.2]), _quat_mul(_quat_about([0, 0, 1], 0.7), home_quat)),
        (np.array([0.45, 0.1, 0.35]), _quat_mul(_quat_about([1, 1, 0], 0.35), home_quat)),
    ]
    for target_pos, target_quat in targets:
        sim.set_target_pose(target_pos, target_quat)
        sim.step(int(2.5 / sim.timestep))
        pos, quat = sim.ee_pose()
        assert np.linalg.norm(pos - target_pos) < 0.005, (pos, target_pos)
        assert math.degrees(_angle_between(quat, target_quat)) < 2.0
        limits = np.array(FR3_JOINT_LIMITS)
        q = sim.joint_positions()
        assert np.all(q > limits[:, 0]) and np.all(q < limits[:, 1])


def test_motion_is_gradual(sim: FrankaSim) -> None:
    sim.reset(2)
    start, quat = sim.ee_pose()
    sim.set_target_pose(start + [0.0, 0.3, 0.0], quat)
    sim.step(int(0.5 / sim.timestep))
    moved = sim.ee_pose()[0][1] - start[1]
    # Bounded at 0.3 m/s, so half a second covers at most 0.15 m but does move.
    assert 0.05 < moved < 0.16


def test_gripper_opens_closes_and_grasps_a_cube(sim: FrankaSim) -> None:
    sim.reset(4)
    assert sim.gripper_width() == pytest.approx(MAX_GRIPPER_WIDTH, abs=1e-6)
    sim.set_gripper_width(0.0)
    sim.step(int(1.0 / sim.timestep))
    assert sim.gripper_width() < 0.002
    sim.set_gripper_width(0.08)
    sim.step(int(1.0 / sim.timestep))
    assert sim.gripper_width() > 0.078

    cube_pos, cube_quat = sim.object_poses()["object0"]
    yaw = 2 * math.atan2(cube_quat[2], cube_quat[3])
    down = _quat_about([1, 0, 0], math.pi)
    grasp_quat = _quat_mul(_quat_about([0, 0, 1], yaw), down)
    sim.set_target_pose(cube_pos + [0, 0, 0.15], grasp_quat)
    sim.step(int(2.5 / sim.timestep))
    sim.set_target_pose(cube_pos + [0, 0, 0.005], grasp_quat)
    sim.step(int(1.5 / sim.timestep))
    sim.set_gripper_width(0.0)
    sim.step(int(1.0 / sim.timestep))
    cube_size = 2 * sim.config.cube_half
    assert sim.gripper_width() == pytest.approx(cube_size, abs=0.004)
    sim.set_target_pose(cube_pos + [0, 0, 0.2], grasp_quat)
    sim.step(int(2.0 / sim.timestep))
    lifted = sim.object_poses()["object0"][0]
    assert lifted[2] > cube_pos[2] + 0.15
    assert np.linalg.norm(lifted - sim.ee_pose()[0]) < 0.02
    # Held still in the air, the only net external force on the hand is the cube's weight.
    sim.step(int(0.5 / sim.timestep))
    weight = sim.model.body("object0").mass[0] * 9.81
    np.testing.assert_allclose(sim.contact_wrench()[:3], [0.0, 0.0, -weight], atol=0.1)


def test_contact_force_is_zero_in_free_space_and_pushes_back_from_the_table(sim: FrankaSim) -> None:
    sim.reset(5)
    start, quat = sim.ee_pose()
    assert np.all(sim.contact_wrench() == 0.0)
    cube = sim.object_poses()["object0"][0]
    away = np.array([cube[0], cube[1] + (0.25 if cube[1] < 0 else -0.25), TABLE_TOP_Z - 0.03])
    sim.set_target_pose(away + [0, 0, 0.15], quat)
    sim.step(int(2.0 / sim.timestep))
    assert np.all(sim.contact_wrench() == 0.0)
    sim.set_target_pose(away, quat)  # 3 cm into the table
    sim.step(int(2.0 / sim.timestep))
    force, reached = sim.contact_wrench()[:3], sim.ee_pose()[0]
    assert reached[2] > TABLE_TOP_Z - 0.005  # the table stops the fingertips
    assert force[2] > 5.0 and abs(force[2]) > 3 * np.linalg.norm(force[:2])  # and pushes straight up


def test_reset_is_reproducible_per_seed(sim: FrankaSim) -> None:
    sim.reset(11)
    first = {k: v[0] for k, v in sim.object_poses().items()}
    sim.reset(12)
    other = {k: v[0] for k, v in sim.object_poses().items()}
    sim.reset(11)
    again = {k: v[0] for k, v in sim.object_poses().items()}
    for name in first:
        np.testing.assert_array_equal(first[name], again[name])
        assert not np.allclose(first[name], other[name])
        assert first[name][2] == pytest.approx(TABLE_TOP_Z + sim.config.cube_half)


@pytest.mark.parametrize(
    ("position", "quat", "message"),
    [
        ([0.4, 0.0, np.nan], [1, 0, 0, 0], "finite"),
        ([0.4, 0.0, 0.3], [np.nan, 0, 0, 1], "finite"),
        ([0.4, 0.0, 0.3], [0.5, 0, 0, 0.5], "unit length"),
        ([0.4, 0.0], [1, 0, 0, 0], "shape"),
        ([0.4, 0.0, 0.3], [1, 0, 0], "shape"),
    ],
)
def test_bad_targets_are_rejected(sim: FrankaSim, position: list, quat: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sim.set_target_pose(np.array(position, dtype=float), np.array(quat, dtype=float))


def test_bad_gripper_and_config_values_are_rejected(sim: FrankaSim) -> None:
    with pytest.raises(ValueError, match="finite"):
        sim.set_gripper_width(float("nan"))
    with pytest.raises(ValueError, match="in \\[0, 0.08\\]"):
        sim.set_gripper_width(0.5)
    with pytest.raises(ValueError, match="width"):
        SimConfig(width=0)
    with pytest.raises(ValueError, match="num_objects"):
        SimConfig(num_objects=9)
    with pytest.raises(ValueError, match="step count"):
        sim.step(-1)


def test_clouds_put_table_and_cube_where_they_are(sim: FrankaSim) -> None:
    sim.reset(5)
    clouds = sim.render_clouds()
    extrinsics = sim.camera_extrinsics()
    assert len(clouds) == 3 and list(extrinsics) == ["zed_front", "zed_left", "zed_right"]
    h, w = sim.config.height, sim.config.width
    for points, colors in clouds:
        assert points.shape == (h, w, 3) and points.dtype == np.float32
        assert colors.shape == (h, w, 3) and colors.dtype == np.uint8
        hit = np.isfinite(points).all(axis=-1)
        assert 0.5 < hit.mean() < 1.0  # sky above the horizon has no return
        assert np.all(points[hit][:, 0] > 0)  # body frame: everything seen lies ahead (x forward)

    merged, colors = merge_clouds(
        [p.reshape(-1, 3) for p, _ in clouds],
        [c.reshape(-1, 3) for _, c in clouds],
        [extrinsics[name] for name in sim.camera_names],
        Workspace(),
    )
    merged, colors = merged.numpy(), colors.numpy()
    # Table top: points near z = 0 away from the robot base and the cubes.
    object_xy = np.array([pose[0][:2] for pose in sim.object_poses().values()])
    far_from_objects = np.min(np.linalg.norm(merged[:, None, :2] - object_xy[None], axis=-1), axis=1) > 0.06
    table = merged[(np.abs(merged[:, 2] - TABLE_TOP_Z) < 0.02) & far_from_objects & (merged[:, 0] > 0.2)]
    assert len(table) > 1000
    assert abs(float(np.median(table[:, 2])) - TABLE_TOP_Z) < 0.005
    assert np.percentile(np.abs(table[:, 2] - TABLE_TOP_Z), 95) < 0.005

    # The red cube: its top face's centre is the cube centre raised by half an edge.
    cube_center, _ = sim.object_poses()["object0"]
    half = sim.config.cube_half
    red = (colors[:, 0] > 2 * colors[:, 1]) & (colors[:, 0] > 2 * colors[:, 2])
    top = merged[red & (np.abs(merged[:, 2] - (cube_center[2] + half)) < 0.004)]
    assert len(top) >= 5
    np.testing.assert_allclose(top[:, :2].mean(axis=0), cube_center[:2], atol=0.01)
    # Every red point lies on the cube (within its circumscribed sphere plus a pixel's slack).
    assert np.all(np.linalg.norm(merged[red] - cube_center, axis=1) < half * math.sqrt(3) + 0.01)


def test_camera_yaml_matches_the_simulation(sim: FrankaSim) -> None:
    with open(REPO / "config" / "cameras_sim.yaml") as f:
        config = yaml.safe_load(f)
    assert config["base_frame"] == "fr3_link0"
    expected = camera_config_entries(sim)
    assert [c["name"] for c in config["cameras"]] == [c["name"] for c in expected]
    extrinsics = sim.camera_extrinsics()
    for entry, want in zip(config["cameras"], expected, strict=True):
        assert entry["topic"] == want["topic"] and entry["frame_id"] == want["frame_id"]
        pose = extrinsics[entry["name"]]
        np.testing.assert_allclose(entry["translation"], pose[:3, 3], atol=1e-5)
        np.testing.assert_allclose(_quat_to_matrix(np.array(entry["rotation"])), pose[:3, :3], atol=1e-5)
