"""`mvvdp record`: scripted picks in the simulated FR3 scene become complete, successful episodes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mvvdp_core.cli import record_command as main
from mvvdp_core.data.dataset import EpisodeDataset, SampleConfig
from mvvdp_core.data.episode import list_episodes
from mvvdp_core.sim.pick import PickTask


def test_record_one_pick(tmp_path: Path) -> None:
    argv = ["--out", str(tmp_path), "--episodes", "1", "--camera-width", "64", "--camera-height", "48"]
    assert main(argv) == 0
    (episode,) = list_episodes(tmp_path)
    assert episode.success is True and episode.summary["final_lift"] > 0.1
    assert episode.cameras == ["zed_front", "zed_left", "zed_right"]
    assert PickTask.from_meta(episode.meta) == PickTask()
    assert episode.meta["instruction"] == "pick up the red cube" and episode.meta["target"] == "object0"
    closed = episode.gripper_closed()
    grasp = int(np.argmax(closed)) - 1  # the last step before the gripper closes
    assert closed[: grasp + 1].sum() == 0 and closed[grasp + 1 :].min() == 1  # closes once, stays closed
    positions = episode.ee_positions()
    assert positions[grasp, 2] < positions[0, 2] - 0.2  # went down to the cube
    assert positions[-1, 2] > positions[grasp, 2] + 0.1  # and lifted it
    widths = [r.gripper_width for r in episode.records]
    assert widths[0] > 0.075 and 0.03 < widths[-1] < 0.06  # closed on a 5 cm cube
    step = episode.step(grasp)
    for cloud in step.clouds.values():
        assert len(cloud.points) > 500
        rot = cloud.base_T_camera[:3, :3]
        np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-6)
    # The cameras see the gripper where the recorded pose says it is.
    nearest = min(np.linalg.norm(c.in_base() - positions[grasp], axis=1).min() for c in step.clouds.values())
    assert nearest < 0.03


# Seed 5's cube is turned ~45 degrees; the random one varies between runs.
@pytest.mark.parametrize("seed", [5, int(np.random.default_rng().integers(0, 2**31 - 1))])
def test_recovery_pick_goes_beside_the_cube_and_trains_on_the_correction_only(
    tmp_path: Path, seed: int
) -> None:
    argv = ["--out", str(tmp_path), "--episodes", "1", "--seed", str(seed), "--camera-width", "48",
            "--camera-height", "32", "--detour", "0.03", "0.08"]
    assert main(argv) == 0
    (episode,) = list_episodes(tmp_path)
    assert episode.success is True, f"seed {seed}"
    start = episode.train_from_step
    detour = np.array(episode.meta["detour_point"])
    positions = episode.ee_positions()
    # At train_from_step the arm has arrived at the detour point, 3-8 cm off the cube's vertical.
    assert np.linalg.norm(positions[start] - detour) < 0.01
    grasp = int(np.argmax(episode.gripper_closed())) - 1  # the hand is on the cube's centre here
    offset = np.linalg.norm(detour[:2] - positions[grasp][:2])
    assert 0.025 < offset < 0.085, f"detour {offset:.3f} m from where the hand grasped"
    # Samples condition only on steps from there on; the unmoved opening is never a condition frame.
    dataset = EpisodeDataset([episode], SampleConfig(start_stride=4))
    assert [s for _e, s in dataset.index] == list(range(start, len(episode), 4))
    assert int(dataset[0]["step"]) == start


def test_bad_detour_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--detour", "0.08", "0.03"])
    assert not list_episodes(tmp_path)
