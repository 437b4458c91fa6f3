"""`mvvdp record`: scripted picks in the simulated FR3 scene become complete, successful episodes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mvvdp_core.cli import record_command as main
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
