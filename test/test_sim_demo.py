"""README's main command: `mvvdp sim-demo` runs the whole graph on the simulated robot with the shipped model:
chunk after chunk previewed, approved, executed and tracked, and the pick scored."""

import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="rclpy (ROS 2 wheels) not installed")
pytest.importorskip("mvvdp_msgs.msg", reason="mvvdp_msgs not built (scripts/build_msgs.sh)")


def test_sim_demo_previews_approves_and_tracks(tmp_path) -> None:
    env = dict(os.environ, ROS_DOMAIN_ID=str(random.randint(1, 200)))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "mvvdp_core.cli", "sim-demo", "--out", str(out),
           "--cache-dir", str(tmp_path / "cache"), "--chunks", "3", "--timeout", "240"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["approved"] and len(summary["predicted_positions"]) == 24
    assert 1 <= len(summary["chunks"]) <= 3 and isinstance(summary["success"], bool)
    # Away from contact the arm came to rest within 1 cm of the last target (the first chunk ends in the air).
    assert summary["tracking_checks"] >= 1 and summary["tracking_error_m"] <= 0.01
    assert summary["initial_distance_m"] > 0.05 and np.isfinite(summary["final_distance_m"])
    assert any(p.endswith(".gif") for p in summary["preview_files"])
    assert (out / "trajectory.png").stat().st_size > 0
    # Every commanded target leads the arm by at most the 4 cm step limit plus one period of the arm's motion.
    assert summary["max_commanded_step_m"] < 0.08


def test_tracking_is_judged_away_from_contact_and_at_rest() -> None:
    from mvvdp_ros.sim_demo import CONTACT_FORCE_N, _judge, _still

    ends = [{"error_m": 0.002, "contact_force_n": 0.0, "at_rest": True},
            {"error_m": 0.011, "contact_force_n": 3 * CONTACT_FORCE_N, "at_rest": True},  # on the cube
            {"error_m": 0.004, "contact_force_n": 0.49, "at_rest": True}]  # holding the cube in the air
    judged = _judge(ends)
    assert judged["tracking_error_m"] == 0.004 and judged["tracking_checks"] == 2
    assert judged["contact_checks"] == 1 and judged["max_contact_force_n"] == 3 * CONTACT_FORCE_N
    assert np.isnan(_judge(ends[1:2])["tracking_error_m"])  # nothing to judge: no pass

    at = lambda t, x: (0.0, t, np.array([x, 0.0, 0.0]))  # noqa: E731
    assert not _still([at(0.0, 0.0), at(0.1, 0.0)], 0.3, 5e-4)  # too short a record
    assert _still([at(0.1 * k, 0.0001 * k) for k in range(10)], 0.3, 5e-4)
    assert not _still([at(0.1 * k, 0.001 * k) for k in range(10)], 0.3, 5e-4)  # still moving 1 cm/s
