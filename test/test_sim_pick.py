"""The pick task: one scene definition, the scripted demonstrator succeeds on any seed, the success check."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from mvvdp_core.data.record import run_pick_demo
from mvvdp_core.sim.franka import FrankaSim
from mvvdp_core.sim.pick import PickScript, PickTask, detour_point, detour_targets, grasp_yaw, pick_targets

TASK = PickTask()


@pytest.fixture(scope="module")
def sim() -> FrankaSim:
    with TASK.make_sim(32, 32) as sim:
        yield sim


# Seeds 1, 4, 5 and 9 failed with the earlier fixed-step script (cube far away or turned ~45 degrees).
FIXED_SEEDS = (1, 4, 5, 9)
RANDOM_SEEDS = tuple(int(s) for s in np.random.default_rng().integers(0, 2**31 - 1, size=3))


@pytest.mark.parametrize("seed", FIXED_SEEDS + RANDOM_SEEDS)
def test_scripted_demonstrator_lifts_and_holds_the_red_cube(sim: FrankaSim, seed: int) -> None:
    sim.reset(seed)
    success, lift = run_pick_demo(sim, TASK, PickScript(), 0.1)
    assert success, f"seed {seed}: lift {lift:.3f} m"
    assert lift > 0.1  # lifted 15 cm, held


def test_scene_follows_the_task_definition(sim: FrankaSim) -> None:
    assert sorted(sim.object_poses()) == ["object0"]  # one cube by default, the red one
    (x0, x1), (y0, y1) = TASK.region
    for seed in range(20):
        sim.reset(seed)
        position, _ = TASK.target_pose(sim)
        assert x0 <= position[0] <= x1 and y0 <= position[1] <= y1
    with PickTask(num_objects=3).make_sim(32, 32) as crowded:
        assert sorted(crowded.object_poses()) == ["object0", "object1", "object2"]
    task = PickTask(num_objects=2, region=((0.4, 0.5), (-0.1, 0.1)), max_yaw=0.3)
    assert PickTask.from_meta(task.scene_meta()) == task
    assert PickTask.from_meta({}) == TASK


def test_pick_success_needs_the_whole_hold_above_5cm() -> None:
    rest = 0.025
    assert TASK.pick_success(rest, [0.08, 0.076, 0.0751])
    assert not TASK.pick_success(rest, [0.08, 0.0749])  # slipped under 5 cm at the end
    assert not TASK.pick_success(rest, [0.07, 0.08])  # not yet lifted at the start of the hold
    assert not TASK.pick_success(rest, [])
    assert not TASK.pick_success(rest, [0.08, math.nan])
    assert TASK.hold_samples(0.1) == 6 and TASK.hold_samples(0.05) == 11


def test_grasp_yaw_folds_the_cube_yaw_to_the_nearest_faces() -> None:
    for yaw_deg, expected in ((10, 10), (80, -10), (-100, -10), (135, -45), (44, 44), (180, 0)):
        quat = Rotation.from_euler("z", yaw_deg, degrees=True).as_quat()
        assert math.degrees(grasp_yaw(quat)) == pytest.approx(expected, abs=1e-9)


def test_plan_turns_the_hand_and_closes_only_at_the_grasp_pose() -> None:
    start = np.array([0.3, 0.0, 0.5])
    down = Rotation.from_euler("x", 180, degrees=True)
    cube = np.array([0.5, 0.1, 0.025])
    cube_quat = Rotation.from_euler("z", 30, degrees=True).as_quat()
    script = PickScript()
    plan = pick_targets(start, down.as_quat(), cube, cube_quat, script, 0.1)
    steps = np.diff([p for p, _, _ in plan], axis=0, prepend=[start])
    assert np.linalg.norm(steps, axis=1).max() <= script.speed * 0.1 + 1e-9  # slower than the controller
    first_close = next(i for i, (_, _, closed) in enumerate(plan) if closed)
    # Dwelt at the grasp pose for the settle time before closing.
    assert all(np.allclose(plan[i][0], cube) for i in range(first_close - 3, first_close))
    turn = Rotation.from_quat(plan[first_close][1]) * down.inv()
    np.testing.assert_allclose(turn.as_rotvec(degrees=True), [0, 0, 30], atol=1e-6)
    np.testing.assert_allclose(plan[-1][0], cube + [0, 0, script.lift_height])
    with pytest.raises(ValueError, match="control_period"):
        pick_targets(start, down.as_quat(), cube, cube_quat, script, 0.0)


def test_bad_task_definitions_are_named() -> None:
    with pytest.raises(ValueError, match="num_objects"):
        PickTask(num_objects=0)
    with pytest.raises(ValueError, match="object0"):
        PickTask(target="object1")
    with pytest.raises(ValueError, match="object_region"):
        PickTask(region=((0.7, 0.3), (0.0, 0.1))).sim_config()


def test_detour_points_lie_in_the_ring_beside_the_cube_and_the_plan_reaches_them() -> None:
    rng = np.random.default_rng(3)
    cube = np.array([0.5, -0.1, 0.025])
    points = np.stack([detour_point(rng, cube, (0.03, 0.08)) for _ in range(500)])
    radius = np.linalg.norm(points[:, :2] - cube[:2], axis=1)
    height = points[:, 2] - cube[2]
    assert radius.min() >= 0.03 and radius.max() <= 0.08 and radius.max() - radius.min() > 0.04
    assert height.min() >= 0.04 and height.max() <= 0.14
    angles = np.arctan2(*(points[:, :2] - cube[:2]).T[::-1])
    assert np.histogram(angles, bins=4, range=(-math.pi, math.pi))[0].min() > 80  # every direction
    start, down = np.array([0.3, 0.0, 0.5]), Rotation.from_euler("x", 180, degrees=True).as_quat()
    script = PickScript()
    opening = detour_targets(start, down, points[0], script, 0.1)
    steps = np.diff([p for p, _, _ in opening], axis=0, prepend=[start])
    assert np.linalg.norm(steps, axis=1).max() <= script.speed * 0.1 + 1e-9
    assert all(np.allclose(p, points[0]) for p, _, _ in opening[-3:])  # settles there, hand open
    assert not any(closed for _, _, closed in opening)
    with pytest.raises(ValueError, match="offset"):
        detour_point(rng, cube, (0.08, 0.03))
    with pytest.raises(ValueError, match="heights"):
        detour_point(rng, cube, (0.03, 0.08), heights=(-0.01, 0.1))
