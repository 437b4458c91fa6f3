"""`mvvdp record`: scripted picks in the simulated FR3 scene become complete, successful episodes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mvvdp_core.data.episode import list_episodes
from mvvdp_core.data.record import PickScript, main


def test_record_one_pick(tmp_path: Path) -> None:
    argv = ["--out", str(tmp_path), "--episodes", "1", "--camera-width", "64", "--camera-height", "48"]
    assert main(argv) == 0
    (episode,) = list_episodes(tmp_path)
    script = PickScript()
    assert len(episode) == script.total_steps + 1 and episode.success is True
    assert episode.cameras == ["zed_front", "zed_left", "zed_right"]
    positions = episode.ee_positions()
    grasp = script.approach_steps + script.descend_steps
    assert positions[grasp, 2] < positions[0, 2] - 0.2  # went down to the cube
    assert positions[-1, 2] > positions[grasp, 2] + 0.1  # and lifted it
    closed = episode.gripper_closed()
    np.testing.assert_array_equal(closed[: grasp + 1], 0)
    np.testing.assert_array_equal(closed[grasp + 1 :], 1)
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
