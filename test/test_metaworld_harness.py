"""Meta-World harness: camera geometry, action mapping, table format, one task x one trial end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mvvdp_core.actions import ActionChunk
from mvvdp_core.cli import load_stage_settings
from mvvdp_core.cli import metaworld_command as main
from mvvdp_core.data.episode import list_episodes
from mvvdp_core.evaluation.metaworld_harness import (
    EVAL_SEED,
    TASKS,
    TaskEnv,
    TrialResult,
    chunk_to_actions,
    expert_policy,
    metaworld_workspace,
    success_table,
)


def make_chunk(positions: np.ndarray, gripper: list[int]) -> ActionChunk:
    steps = len(positions)
    return ActionChunk(positions, np.zeros((steps, 3)), gripper, 0.1 * np.arange(1, steps + 1), 0.0, 1.0,
                       np.ones(steps))


def test_chunk_targets_become_clipped_position_changes() -> None:
    hand = np.array([0.0, 0.6, 0.2])
    chunk = make_chunk(np.array([[0.004, 0.6, 0.19], [0.5, 0.0, 0.2]]), [1, 0])
    np.testing.assert_allclose(chunk_to_actions(chunk, hand, 0.01, 0), [0.4, 0.0, -1.0, -1.0], atol=1e-6)
    np.testing.assert_allclose(chunk_to_actions(chunk, hand, 0.01, 1), [1.0, -1.0, 0.0, 1.0], atol=1e-6)


def test_success_table_has_the_papers_layout() -> None:
    results = {
        "door-open-v3": [TrialResult(True, 50, 3)] * 3 + [TrialResult(False, 600, 25)],
        "faucet-close-v3": [TrialResult(False, 600, 25)] * 4,
    }
    table = success_table("MV-VDP", results, "demos/task: 5")
    header, rule, row, notes = table.splitlines()
    assert [c.strip() for c in header.split("|")] == ["Method", "door-open", "faucet-close", "Avg (%)"]
    assert [c.strip() for c in row.split("|")] == ["MV-VDP", "3/4", "0/4", "37.50"]
    assert set(rule) <= {"-", "+"} and notes == "demos/task: 5"


def test_cameras_see_the_hand_where_the_env_says_it_is() -> None:
    sim = TaskEnv("door-open-v3", seed=0, camera_resolution=64)
    try:
        obs = sim.reset(0)
        step = sim.observe(obs, gripper_closed=False)
        assert sorted(step.clouds) == ["zed_front", "zed_left", "zed_right"]
        near = 0
        for cloud in step.clouds.values():
            rot = cloud.base_T_camera[:3, :3]
            np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-6)
            assert np.linalg.det(rot) == pytest.approx(1.0, abs=1e-6)
            assert cloud.points[:, 0].min() > 0  # x forward: every return lies in front of the camera
            near += np.linalg.norm(cloud.in_base() - obs[:3], axis=1).min() < 0.04
        assert near >= 2
    finally:
        sim.close()


@pytest.mark.parametrize("task", TASKS)
def test_experts_stay_inside_their_tasks_workspace(task: str) -> None:
    """Training refuses episodes that leave the cube: every expert path (2 variations of the demo seed and
    of the evaluation seed) lies inside its task's cube, and a mixed task set's cube holds each task's."""
    cube = metaworld_workspace([task])
    assert np.all(cube.lower >= metaworld_workspace(TASKS).lower - 1e-9)
    assert np.all(cube.upper <= metaworld_workspace(TASKS).upper + 1e-9)
    for seed in (0, EVAL_SEED):
        sim = TaskEnv(task, seed=seed, camera_resolution=16)
        try:
            for variation in (0, 1):
                obs, expert, success, hand = sim.reset(variation), expert_policy(task), False, []
                for _ in range(500):
                    hand.append(obs[:3])
                    obs, success = sim.step(expert.get_action(obs))
                    if success:
                        break
                assert success, f"{task}: the expert failed variation {variation} of seed {seed}"
                assert cube.contains(np.array(hand)).all(), f"{task}: hand leaves {cube.lower}..{cube.upper}"
        finally:
            sim.close()


def test_one_task_one_trial_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings_file = tmp_path / "train.yaml"  # two stages over the harness's own settings (5 steps)
    settings_file.write_text("common:\n  heatmap_blob_weight: 3.0\nstages:\n  - steps: 2\n"
                             "  - steps: 3\n    start_stride: 4\n")
    common = [
        "--tasks", "button-press-topdown-v3", "--trials", "1", "--max-steps", "8", "--config", "tiny",
        "--inference-steps", "1", "--steps-per-chunk", "4", "--camera-resolution", "48", "--threads", "3",
    ]  # fmt: skip
    argv = [
        *common, "--demos", "1", "--train-steps", "5", "--vae-steps", "2", "--future-frames", "4",
        "--train-settings", str(settings_file), "--out", str(tmp_path),
    ]  # fmt: skip
    threads = torch.get_num_threads()
    try:
        assert main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    assert "; 3 CPU threads" in printed  # --threads reaches the training run
    assert "button-press-topdown" in printed and "Avg (%)" in printed
    assert ("0/1" in printed) or ("1/1" in printed)
    assert "train steps: 2 + 3" in printed and "M parameters" in printed
    first = json.loads((tmp_path / "stage_1" / "train_settings.json").read_text())
    assert first["steps"] == 2 and first["heatmap_blob_weight"] == 3.0 and first["start_stride"] == 2
    assert first["vae_steps"] == 2 and first["init_from"] is None
    saved = json.loads((tmp_path / "model" / "train_settings.json").read_text())
    assert saved["steps"] == 3 and saved["heatmap_blob_weight"] == 3.0 and saved["start_stride"] == 4
    # the second stage starts from the first one's weights, its VAE and its cached latents
    assert saved["init_from"] == saved["vae_from"] == str(tmp_path / "stage_1") and saved["vae_steps"] == 0
    assert saved["latent_cache"] == str(tmp_path / "stage_1" / "latent_cache")
    assert not (tmp_path / "model" / "latent_cache").exists()
    demos = list_episodes(tmp_path / "demos" / "button-press-topdown-v3")
    assert len(demos) == 1 and demos[0].success is True  # the scripted expert succeeded
    assert len(demos[0]) > 10 and demos[0].meta["task"] == "button-press-topdown-v3"
    trials = json.loads((tmp_path / "results.json").read_text())["trials"]["button-press-topdown-v3"]
    assert len(trials) == 1 and 1 <= trials[0]["steps"] <= 8
    assert trials[0]["success"] or trials[0]["chunks"] == 2  # 8 steps, 4 targets per chunk
    # --checkpoint evaluates a trained model without collecting or training.
    try:
        assert main([*common, "--checkpoint", str(tmp_path / "model"), "--out", str(tmp_path / "eval")]) == 0
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    assert f"checkpoint: {tmp_path / 'model'}" in printed and "train steps" not in printed
    assert not (tmp_path / "eval" / "demos").exists()
    evaluated = json.loads((tmp_path / "eval" / "results.json").read_text())["trials"]
    assert len(evaluated["button-press-topdown-v3"]) == 1


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="unknown task 'door-smash-v3'"):
        TaskEnv("door-smash-v3", seed=0)
    with pytest.raises(ValueError, match="unknown task"):
        main(["--tasks", "door-smash-v3", "--out", "/nonexistent"])


def test_stage_settings_files(tmp_path: Path) -> None:
    plain, staged, bad = tmp_path / "plain.yaml", tmp_path / "staged.yaml", tmp_path / "bad.yaml"
    plain.write_text("steps: 7\n")
    assert load_stage_settings(plain) == [{"steps": 7}]
    staged.write_text("common: {lr: 0.001, steps: 1}\nstages:\n  - {}\n  - {steps: 9, ema_decay: 0.9}\n")
    expected = [{"lr": 0.001, "steps": 1}, {"lr": 0.001, "steps": 9, "ema_decay": 0.9}]
    assert load_stage_settings(staged) == expected
    for text, message in [
        ("stages:\n  - {steps: 1}\n  - {stepz: 2}\n", r"stage 2\): \['stepz'\]"),
        ("stages: []\n", "non-empty list"),
        ("stages:\n  - {steps: 1}\nextra: 1\n", r"not \['extra'\]"),
        ("common: {bogus: 1}\nstages:\n  - {steps: 1}\n", r"\(common\): \['bogus'\]"),
        ("stages:\n  - [1, 2]\n", "must be a mapping"),
    ]:
        bad.write_text(text)
        with pytest.raises(ValueError, match=message):
            load_stage_settings(bad)


def test_shipped_staged_recipe_is_valid() -> None:
    from mvvdp_core.train.loop import TrainSettings

    repo = Path(__file__).resolve().parents[1]
    stages = load_stage_settings(repo / "config" / "metaworld_staged.yaml")
    assert [s["steps"] for s in stages] == [1000, 2000, 1000]
    assert (repo / stages[0]["init_from"] / "config.json").is_file()  # the shipped pick model
    for stage in stages:
        TrainSettings(**stage)  # every key and value is accepted
