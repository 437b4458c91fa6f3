"""Episode format and recorder: round trips, crash safety under SIGKILL, corrupt input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from mvvdp_core.data.dataset import EpisodeDataset, SampleConfig
from mvvdp_core.data.episode import Episode, EpisodeFormatError, list_episodes
from mvvdp_core.data.recorder import Recorder
from mvvdp_core.step import CameraCloud, Step

CAMERAS = ["zed_front", "zed_left", "zed_right"]


def make_step(index: int) -> Step:
    """Deterministic step content so a reader can check every field."""
    rng = np.random.default_rng(index)
    clouds = {}
    for k, name in enumerate(CAMERAS):
        points = rng.normal(size=(6, 5, 3)).astype(np.float32)
        points[0, 0] = np.nan  # a pixel without a return
        colors = rng.integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
        extrinsic = np.eye(4)
        extrinsic[:3, 3] = [k, index, 0.5]
        clouds[name] = CameraCloud(points, colors, extrinsic)
    angle = 0.1 * index
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    return Step(clouds, [0.5, 0.01 * index, 0.3], rot, 0.08 - 0.001 * index, index % 2 == 1, 0.1 * index,
                extras={"action": np.array([index, 0, 0, 1.0])})


def assert_same_step(loaded: Step, expected: Step) -> None:
    assert sorted(loaded.clouds) == sorted(expected.clouds)
    for name, cloud in expected.clouds.items():
        np.testing.assert_array_equal(loaded.clouds[name].points, cloud.points)
        np.testing.assert_array_equal(loaded.clouds[name].colors, cloud.colors)
        np.testing.assert_array_equal(loaded.clouds[name].base_T_camera, cloud.base_T_camera)
    np.testing.assert_allclose(loaded.ee_position, expected.ee_position)
    np.testing.assert_allclose(loaded.ee_rotation, expected.ee_rotation)
    assert loaded.gripper_closed == expected.gripper_closed
    assert loaded.gripper_width == pytest.approx(expected.gripper_width)
    assert loaded.timestamp == pytest.approx(expected.timestamp)
    np.testing.assert_array_equal(loaded.extras["action"], expected.extras["action"])


def test_round_trip_and_index(tmp_path: Path) -> None:
    recorder = Recorder(tmp_path)
    with recorder.start_episode(CAMERAS, task="unit") as writer:
        for i in range(4):
            assert writer.add_step(make_step(i)) == i
        writer.close(success=True)
    with recorder.start_episode(CAMERAS, task="unit") as writer:
        writer.add_step(make_step(7))
    episodes = list_episodes(tmp_path)
    assert [e.root.name for e in episodes] == ["episode_000000", "episode_000001"]
    first = episodes[0]
    assert len(first) == 4 and first.success is True and first.meta["task"] == "unit"
    assert episodes[1].success is None  # closed without a summary: still readable
    for i, step in enumerate(first):
        assert_same_step(step, make_step(i))
        assert step.clouds["zed_front"].points.shape == (29, 3)  # the NaN pixel was dropped
    np.testing.assert_allclose(first.ee_positions()[:, 1], [0.0, 0.01, 0.02, 0.03])
    np.testing.assert_array_equal(first.gripper_closed(), [0, 1, 0, 1])


def test_torn_index_line_is_ignored_and_corruption_is_named(tmp_path: Path) -> None:
    writer = Recorder(tmp_path).start_episode(CAMERAS)
    for i in range(3):
        writer.add_step(make_step(i))
    writer.close()
    index = tmp_path / "episode_000000" / "index.jsonl"
    with open(index, "ab") as handle:
        handle.write(b'{"i":3,"file":"000003.npz","t":0.')  # a write cut short
    assert len(Episode(index.parent)) == 3
    lines = index.read_bytes().split(b"\n")
    lines[1] = b"{garbage"
    index.write_bytes(b"\n".join(lines))
    with pytest.raises(EpisodeFormatError, match="line 2 is corrupt"):
        Episode(index.parent)
    (index.parent / "meta.json").write_text("{not json")
    with pytest.raises(EpisodeFormatError, match="meta.json"):
        Episode(index.parent)


def test_train_from_step_is_read_and_checked(tmp_path: Path) -> None:
    recorder = Recorder(tmp_path)
    for train_from in (2, 3):
        writer = recorder.start_episode(CAMERAS, train_from_step=train_from)
        for i in range(3):
            writer.add_step(make_step(i))
        writer.close(success=True)
    first, past_the_end = list_episodes(tmp_path)
    assert first.train_from_step == 2 and Episode(tmp_path / "episode_000000").train_from_step == 2
    with pytest.raises(ValueError, match="end before their train_from_step"):
        EpisodeDataset([first, past_the_end], SampleConfig())
    meta = tmp_path / "episode_000000" / "meta.json"
    for bad in (-1, 1.5, "2", True):
        meta.write_text(json.dumps({**json.loads(meta.read_text()), "train_from_step": bad}))
        with pytest.raises(EpisodeFormatError, match="train_from_step"):
            Episode(meta.parent)


def test_corrupt_step_file_is_named(tmp_path: Path) -> None:
    writer = Recorder(tmp_path).start_episode(CAMERAS)
    writer.add_step(make_step(0))
    writer.close()
    step_file = tmp_path / "episode_000000" / "steps" / "000000.npz"
    step_file.write_bytes(b"not an npz")
    with pytest.raises(EpisodeFormatError, match="000000.npz"):
        Episode(step_file.parent.parent).step(0)


def test_bad_input_is_rejected(tmp_path: Path) -> None:
    cloud = make_step(0).clouds["zed_front"]
    with pytest.raises(ValueError, match="uint8"):
        CameraCloud(cloud.points, cloud.colors.astype(np.float32), cloud.base_T_camera)
    with pytest.raises(ValueError, match="base_T_camera"):
        CameraCloud(cloud.points, cloud.colors, np.ones((4, 4)))
    with pytest.raises(ValueError, match="ee_position"):
        Step({"zed_front": cloud}, [np.nan, 0, 0], np.eye(3), 0.0, False, 0.0)
    with pytest.raises(ValueError, match="ee_rotation"):
        Step({"zed_front": cloud}, [0, 0, 0], 2 * np.eye(3), 0.0, False, 0.0)
    with pytest.raises(ValueError, match="gripper_width"):
        Step({"zed_front": cloud}, [0, 0, 0], np.eye(3), -0.01, False, 0.0)
    # Closed fingers pressed together read a hair below 0 (contact, encoder noise): a width of 0.
    assert Step({"zed_front": cloud}, [0, 0, 0], np.eye(3), -3e-4, True, 0.0).gripper_width == 0.0
    writer = Recorder(tmp_path).start_episode(["zed_front"])
    with pytest.raises(ValueError, match="cameras"):
        writer.add_step(make_step(0))


CHILD = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {test_dir!r})
    from test_data_episode import CAMERAS, make_step
    from mvvdp_core.data.recorder import Recorder
    writer = Recorder({root!r}).start_episode(CAMERAS, task="killed")
    i = 0
    while True:
        writer.add_step(make_step(i))
        print(i, flush=True)
        i += 1
    """
)


def test_sigkill_mid_episode_keeps_every_completed_step(tmp_path: Path) -> None:
    code = CHILD.format(test_dir=str(Path(__file__).parent), root=str(tmp_path))
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=dict(os.environ))
    assert child.stdout is not None
    reported = -1
    while reported < 5:
        line = child.stdout.readline()
        assert line, "recording child exited early"
        reported = int(line)
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL
    episode = Episode(tmp_path / "episode_000000")
    assert episode.summary is None  # it never closed
    assert len(episode) >= reported + 1
    for i in range(len(episode)):
        assert_same_step(episode.step(i), make_step(i))
