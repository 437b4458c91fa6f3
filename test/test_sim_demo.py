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
    assert summary["final_error_m"] <= 0.01
    assert summary["initial_distance_m"] > 0.05 and np.isfinite(summary["final_distance_m"])
    assert any(p.endswith(".gif") for p in summary["preview_files"])
    assert (out / "trajectory.png").stat().st_size > 0
    # Every commanded target leads the arm by at most the 4 cm step limit plus one period of the arm's motion.
    assert summary["max_commanded_step_m"] < 0.08
