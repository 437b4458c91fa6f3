"""ROS-free closed loop: recorded demos replayed through ChunkExecutor + SafetyFilter on the simulated FR3,
and the scripted plan served as chunks to `evaluate_policy`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mvvdp_core.data.episode import list_episodes
from mvvdp_core.data.record import record_pick_demos
from mvvdp_core.evaluation.closed_loop import (
    EpisodeOutcome,
    Evaluation,
    LoopConfig,
    SimLoop,
    episode_chunks,
    evaluate_policy,
    oracle_predictor,
    replay_episode,
    timed_chunk,
)
from mvvdp_core.execution import ExecutorConfig
from mvvdp_core.safety import DEFAULT_CONTROL_RATE
from mvvdp_core.sim.pick import PickTask


@pytest.fixture(scope="module")
def demos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demos")
    record_pick_demos(out, 2, seed=1, camera_size=(48, 32))  # seed 1: far cube, turned 52 degrees
    return out


def test_replayed_demos_lift_the_cube_as_often_as_the_demos(demos: Path) -> None:
    episodes = list_episodes(demos)
    assert [e.success for e in episodes] == [True, True]
    outcomes = [replay_episode(e) for e in episodes]
    assert [o.success for o in outcomes] == [e.success for e in episodes]
    for outcome in outcomes:
        assert outcome.lift > 0.1 and outcome.distance < 0.02 and outcome.refused == 0
        # The arm follows the recorded path in time: at most ~one step (0.1 s at 0.2 m/s) behind it.
        assert outcome.tracking_error < 0.04


def test_episode_chunks_cover_the_recorded_steps_at_their_times(demos: Path) -> None:
    episode = list_episodes(demos)[0]
    chunks = episode_chunks(episode, 24)
    assert len(chunks) == int(np.ceil((len(episode) - 1) / 24))
    np.testing.assert_allclose(chunks[1].positions[0], episode.ee_positions()[25])
    np.testing.assert_allclose(chunks[0].time_from_start, 0.1 * np.arange(1, 25))
    assert chunks[1].stamp == pytest.approx(2.4)
    np.testing.assert_allclose(chunks[-1].positions[-1], episode.ee_positions()[-1])  # padded with the last
    with pytest.raises(ValueError, match="chunk_steps"):
        episode_chunks(episode, 0)


def test_an_episode_without_its_scene_is_not_replayed(tmp_path: Path) -> None:
    from mvvdp_core.data.recorder import Recorder
    from mvvdp_core.step import CameraCloud, Step

    writer = Recorder(tmp_path).start_episode(["cam"], task="pick", seed=3)  # recorded before PickTask
    cloud = CameraCloud(np.zeros((4, 3), np.float32), np.zeros((4, 3), np.uint8), np.eye(4))
    for t in range(3):
        writer.add_step(Step({"cam": cloud}, np.array([0.5, 0.0, 0.3]), np.eye(3), 0.08, False, 0.1 * t))
    writer.close(success=True)
    with pytest.raises(ValueError, match="num_objects, region missing"):
        replay_episode(writer.root)


def test_oracle_closed_loop_succeeds_with_whole_chunks_and_with_replanning() -> None:
    task = PickTask()
    with task.make_sim(48, 32) as sim:
        whole = evaluate_policy(oracle_predictor(sim, task), 2, seed=1000, sim=sim, time_limit=7.2)
        assert [e.success for e in whole.episodes] == [True, True] and whole.success_rate == 1.0
        assert whole.mean_distance < 0.02 and all(e.chunks == 3 for e in whole.episodes)
        replanned = evaluate_policy(oracle_predictor(sim, task), 1, seed=1002, sim=sim, replan_steps=6,
                                    time_limit=7.2)
        assert replanned.success_rate == 1.0 and replanned.episodes[0].chunks == 12
    report = json.loads(json.dumps(whole.to_json()))
    assert report["success_rate"] == 1.0 and len(report["episodes"]) == 2
    assert "success 2/2" in whole.table()
    # The scripted plan's first chunk ends over the cube (it is lowering onto it), in each scene.
    following = report["cube_following"]
    assert following["episodes"] == 2 and following["mean_goal_to_cube_m"] < 0.03
    for outcome in whole.episodes:
        assert np.isfinite(outcome.cube_xy).all() and np.isfinite(outcome.first_goal_xy).all()


def test_cube_following_measures_where_first_chunks_go() -> None:
    rng = np.random.default_rng(0)
    cubes = rng.uniform([0.4, -0.2], [0.6, 0.2], size=(8, 2))

    def evaluation(goals: np.ndarray) -> Evaluation:
        return Evaluation([EpisodeOutcome(k, False, 0.0, 0.1, 1, 0, cube_xy=tuple(c), first_goal_xy=tuple(g))
                           for k, (c, g) in enumerate(zip(cubes, goals, strict=True))])

    follows = evaluation(cubes + [0.0, 0.05]).cube_following()  # 5 cm beside each cube
    assert follows["corr_x"] == pytest.approx(1.0) and follows["corr_y"] == pytest.approx(1.0)
    assert follows["mean_goal_to_cube_m"] == pytest.approx(0.05)
    assert follows["goal_std_y_m"] == pytest.approx(cubes[:, 1].std())
    blind = evaluation(np.tile([0.5, 0.0], (8, 1))).cube_following()  # one place for every scene
    assert blind["goal_std_x_m"] == 0.0 and np.isnan(blind["corr_x"]) and np.isnan(blind["corr_y"])
    assert blind["mean_goal_to_cube_m"] == pytest.approx(np.linalg.norm(cubes - [0.5, 0.0], axis=1).mean())
    assert "correlation with the cube x nan" in evaluation(np.tile([0.5, 0.0], (8, 1))).table()
    assert Evaluation([]).cube_following() == {"episodes": 0}


def test_loop_runs_at_the_executor_rate_and_rejects_bad_input() -> None:
    task = PickTask()
    with task.make_sim(32, 32) as sim:
        loop = SimLoop(sim)
        assert loop.dt == pytest.approx(1 / DEFAULT_CONTROL_RATE) and loop.physics_steps == 25
        loop.reset(3)
        start = sim.ee_pose()[0]
        loop.run_for(0.5)  # no chunk yet: nothing is sent, the arm stays
        np.testing.assert_allclose(sim.ee_pose()[0], start, atol=2e-3)
        assert loop.now == pytest.approx(0.5)
        chunk = oracle_predictor(sim, task)(loop.observe(), task.name)
        with pytest.raises(ValueError, match="steps"):
            loop.execute(chunk, steps=0)
        bad = timed_chunk(chunk, 7)
        bad.positions[3] = np.nan  # an unsafe step: the executor holds instead of moving there
        loop.execute(bad)
        assert np.isfinite(sim.ee_pose()[0]).all()
        with pytest.raises(ValueError, match="replan_steps"):
            evaluate_policy(oracle_predictor(sim, task), 1, seed=0, sim=sim, replan_steps=0)
    with pytest.raises(ValueError, match="preview"):
        LoopConfig(executor=ExecutorConfig(mode="auto"))


def test_evaluate_command_runs_a_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from mvvdp_core.cli import main as mvvdp
    from mvvdp_core.cli import tiny_checkpoint_command as tiny_checkpoint

    tiny_checkpoint([str(tmp_path / "ck"), "--task", "pick"])
    out = tmp_path / "eval.json"
    argv = ["evaluate", "--checkpoint", str(tmp_path / "ck"), "--episodes", "1", "--seed", "1000",
            "--time-limit", "0.2", "--replan-steps", "2", "--num-steps", "1", "--camera-width", "48",
            "--camera-height", "32", "--json", str(out)]
    assert mvvdp(argv) == 0
    printed = capsys.readouterr().out
    assert "success 0/1" in printed and "mean final distance" in printed
    report = json.loads(out.read_text())
    assert report["episodes"][0]["seed"] == 1000 and report["episodes"][0]["chunks"] == 1
    with pytest.raises(SystemExit):
        mvvdp(argv[:-2] + ["--task", "unknown"])
