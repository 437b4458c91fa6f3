"""The pick task: one scene definition, the scripted demonstrator succeeds on any seed, the success check."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from mvvdp_core.data.episode import list_episodes
from mvvdp_core.data.record import record_pick_demos, run_pick_demo
from mvvdp_core.sim.franka import FrankaSim
from mvvdp_core.sim.pick import (
    PickScript,
    PickTask,
    detour_point,
    detour_targets,
    grasp_yaw,
    pick_targets,
    spread_positions,
)

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


@pytest.mark.parametrize("count", [1, 7, 20, 50])
def test_spread_positions_put_one_cube_in_each_drawn_cell_of_a_grid_over_the_region(count: int) -> None:
    (x0, x1), (y0, y1) = region = TASK.region
    rng = np.random.default_rng(count)
    points = spread_positions(region, count, rng)
    assert points.shape == (count, 2)
    assert ((points >= [x0, y0]) & (points <= [x1, y1])).all()
    columns = max(1, min(count, round(math.sqrt(count * (x1 - x0) / (y1 - y0)))))
    rows = math.ceil(count / columns)
    cell = np.floor((points - [x0, y0]) / [(x1 - x0) / columns, (y1 - y0) / rows]).astype(int)
    assert len({tuple(c) for c in cell}) == count  # never two in one cell
    # A band of the grid's rows misses at most the grid's few empty cells: no band is left bare.
    band_counts = np.bincount(cell[:, 1], minlength=rows)
    assert band_counts.min() >= columns - (columns * rows - count)
    np.testing.assert_array_equal(points, spread_positions(region, count, np.random.default_rng(count)))
    with pytest.raises(ValueError, match="count"):
        spread_positions(region, 0, rng)
    with pytest.raises(ValueError, match="region"):
        spread_positions(((0.5, 0.4), (0.0, 0.1)), 3, rng)


def test_reset_places_the_target_where_asked_and_keeps_the_seeds_yaw(sim: FrankaSim) -> None:
    sim.reset(7)
    _, quat = TASK.target_pose(sim)
    sim.reset(7, first_object_xy=(0.4, -0.2))
    position, placed_quat = TASK.target_pose(sim)
    np.testing.assert_allclose(position[:2], [0.4, -0.2], atol=1e-9)
    np.testing.assert_allclose(placed_quat, quat, atol=1e-12)
    for bad in [(0.9, 0.0), (0.5, math.nan), (0.5,)]:
        with pytest.raises(ValueError, match="first_object_xy"):
            sim.reset(7, first_object_xy=bad)


def test_spread_recording_grasps_the_cubes_at_the_spread_positions(tmp_path: Path) -> None:
    record_pick_demos(tmp_path, 3, seed=40, camera_size=(32, 32), layout="spread")
    expected = spread_positions(TASK.region, 3, np.random.default_rng([40, 2]))
    for episode, xy in zip(list_episodes(tmp_path), expected, strict=True):
        assert episode.success and episode.meta["layout"] == "spread"
        grasp = episode.ee_positions()[np.argmax(episode.gripper_closed())]
        np.testing.assert_allclose(grasp[:2], xy, atol=0.01)  # the hand closes on the cube placed there
    with pytest.raises(ValueError, match="layout"):
        record_pick_demos(tmp_path, 1, layout="grid")
