"""`mvvdp train` command line: settings files, flags, bad input, one real run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from test_train_loop import record_line_episode

from mvvdp_core.cli import main as mvvdp
from mvvdp_core.cli import parse_train_args
from mvvdp_core.train.loop import TrainSettings, latest_checkpoint

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"


def test_settings_files_and_flags(tmp_path: Path) -> None:
    _, settings, _ = parse_train_args(
        ["--data", "d", "--out", "o", "--settings", str(CONFIG_DIR / "train_tiny.yaml"), "--steps", "7"]
    )
    assert settings.config == "tiny" and settings.steps == 7  # the flag wins over the file
    assert settings.lr == 1e-4 and settings.weight_decay == 0.0 and settings.head_weight_decay == 1e-5
    _, wan, _ = parse_train_args(
        ["--data", "d", "--out", "o", "--settings", str(CONFIG_DIR / "train_wan22.yaml"), "--base-model", "m"]
    )
    assert wan.base_model == "m" and wan.mixed_precision == "bf16" and wan.gradient_checkpointing
    bad = tmp_path / "bad.yaml"
    bad.write_text("stepz: 3\n")
    with pytest.raises(ValueError, match="stepz"):
        parse_train_args(["--data", "d", "--out", "o", "--settings", str(bad)])
    with pytest.raises(ValueError, match="base-model"):
        TrainSettings(config="wan22")
    with pytest.raises(ValueError, match="config"):
        TrainSettings(config="huge")


def test_the_documented_flags_parse() -> None:
    run, settings, saved = parse_train_args([
        "--data", "a", "b", "--out", "o", "--config", "small", "--steps", "8000", "--lr", "3e-4",
        "--head-lr", "3e-4", "--lr-warmup", "200", "--lr-schedule", "cosine", "--vae-steps", "500",
        "--augment-copies", "2", "--start-stride", "4", "--threads", "2", "--checkpoint-every", "1000",
        "--keep-checkpoints", "8", "--no-gradient-checkpointing", "--no-tf32", "--no-augment",
        "--include-failed", "--mixed-precision", "no", "--workspace-center", "0.5", "0", "0.1",
        "--override", "image_size=64", "--override", "future_frames=4", "--global-batch", "4",
    ])  # fmt: skip
    assert run.data == ["a", "b"] and run.out == "o" and not run.resume and saved is None
    assert settings.config == "small" and settings.lr == 3e-4 and settings.lr_schedule == "cosine"
    assert settings.vae_steps == 500 and settings.augment_copies == 2 and settings.threads == 2
    assert settings.gradient_checkpointing is False and not settings.tf32 and not settings.augment
    assert settings.include_failed and settings.workspace_center == (0.5, 0.0, 0.1)
    assert settings.config_overrides == {"image_size": 64, "future_frames": 4} and settings.global_batch == 4
    assert parse_train_args(["--gradient-checkpointing"])[1].gradient_checkpointing is True
    assert parse_train_args([])[1].gradient_checkpointing is None
    with pytest.raises(SystemExit):
        parse_train_args(["--config", "huge"], console=False)
    with pytest.raises(SystemExit):  # TrainSettings' own checks
        parse_train_args(["--steps", "0"], console=False)


def test_mvvdp_train_runs_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = record_line_episode(tmp_path / "data", steps=5)
    settings = tmp_path / "settings.yaml"
    settings.write_text(yaml.safe_dump({"config_overrides": {"future_frames": 4}, "vae_steps": 0,
                                        "progress": False, "val_episodes": 1, "augment": True}))
    out = tmp_path / "run"
    common = ["train", "--data", str(data), "--out", str(out), "--config", "tiny"]
    common += ["--settings", str(settings)]
    assert mvvdp([*common, "--steps", "2"]) == 0
    assert "trained steps 1..2" in capsys.readouterr().out
    assert mvvdp([*common, "--steps", "3", "--resume"]) == 0
    assert "trained steps 3..3" in capsys.readouterr().out
    assert latest_checkpoint(out).name == "step_0000003"
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        mvvdp(["train", "--data", str(tmp_path / "missing"), "--out", str(out), "--steps", "1"])


def test_resume_keeps_the_run_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = record_line_episode(tmp_path / "data", steps=5)
    out = tmp_path / "run"
    first = ["train", "--data", str(data), "--out", str(out), "--steps", "1", "--vae-steps", "0",
             "--override", "future_frames=4", "--no-progress", "--val-episodes", "1", "--lr", "3e-4",
             "--lr-schedule", "cosine", "--augment-copies", "1", "--start-stride", "2", "--no-augment"]
    assert mvvdp(first) == 0
    capsys.readouterr()
    saved = out / "train_settings.json"
    assert mvvdp(["train", "--data", str(data), "--out", str(out), "--resume", "--steps", "2"]) == 0
    printed = capsys.readouterr().out
    assert "overridden: steps 1 -> 2" in printed and "trained steps 2..2" in printed
    kept = json.loads(saved.read_text())
    assert kept["lr"] == 3e-4 and kept["lr_schedule"] == "cosine" and kept["steps"] == 2
    assert kept["augment_copies"] == 1 and kept["start_stride"] == 2 and kept["augment"] is False
    assert kept["config"] == "tiny" and kept["config_overrides"] == {"future_frames": 4}
    assert mvvdp(["train", "--data", str(data), "--out", str(out), "--resume", "--steps", "3",
                  "--lr", "1e-4"]) == 0
    assert "lr 0.0003 -> 0.0001" in capsys.readouterr().out
    now = json.loads(saved.read_text())
    assert now["lr"] == 1e-4 and now["lr_schedule"] == "cosine" and now["steps"] == 3
    with pytest.raises(ValueError, match="config 'tiny'"):
        mvvdp(["train", "--data", str(data), "--out", str(out), "--resume", "--steps", "4",
               "--config", "small"])
    assert json.loads(saved.read_text()) == now  # a refused resume leaves the run's settings alone
