"""Meta-World harness: camera geometry, action mapping, table format, one task x one trial end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mvvdp_core.actions import ActionChunk
from mvvdp_core.cli import metaworld_command as main
from mvvdp_core.data.episode import list_episodes
from mvvdp_core.evaluation.metaworld_harness import (
    TaskEnv,
    TrialResult,
    chunk_to_actions,
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


def test_one_task_one_trial_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings_file = tmp_path / "train.yaml"  # replaces the harness's own settings: 2 steps, not 5
    settings_file.write_text("steps: 2\nheatmap_blob_weight: 3.0\n")
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
    assert "train steps: 2" in printed and "M parameters" in printed
    saved = json.loads((tmp_path / "model" / "train_settings.json").read_text())
    assert saved["steps"] == 2 and saved["heatmap_blob_weight"] == 3.0 and saved["start_stride"] == 2
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
