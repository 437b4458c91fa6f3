"""Training reads only successful episodes: `load_episodes` skips those whose summary says success False."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mvvdp_core.data.recorder import Recorder
from mvvdp_core.step import CameraCloud, Step
from mvvdp_core.train.loop import load_episodes


def _episode(root: Path, success: bool | None) -> None:
    writer = Recorder(root).start_episode(["cam"], task="pick")
    cloud = CameraCloud(np.zeros((4, 3), np.float32), np.zeros((4, 3), np.uint8), np.eye(4))
    writer.add_step(Step({"cam": cloud}, np.array([0.5, 0.0, 0.3]), np.eye(3), 0.08, False, 0.0))
    if success is not None:
        writer.close(success=success)
    else:
        writer.__exit__(None, None, None)  # interrupted: no summary, success unknown


def test_unsuccessful_episodes_are_skipped_and_counted(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for success in (True, False, None, False):
        _episode(tmp_path, success)
    episodes = load_episodes(tmp_path)
    assert [e.success for e in episodes] == [True, None]
    assert "skipped 2 of 4 episodes" in capsys.readouterr().out


def test_only_failed_episodes_is_an_error(tmp_path: Path) -> None:
    _episode(tmp_path, False)
    with pytest.raises(ValueError, match="successful"):
        load_episodes(tmp_path)
