"""Chunk execution logic without ROS: approval, staleness, timing, watchdog, stop."""

import numpy as np
import pytest

from mvvdp_core.execution import ChunkExecutor, ExecutorConfig, TimedChunk
from mvvdp_core.safety import PoseTarget, SafetyLimits

IDENTITY = np.array([0.0, 0.0, 0.0, 1.0])
HOME = PoseTarget(np.array([0.5, 0.0, 0.4]), IDENTITY, 1.0)


def chunk(chunk_id: int = 1, stamp: float = 10.0, steps: int = 4, dx: float = 0.01) -> TimedChunk:
    positions = np.array([[0.5 + dx * (i + 1), 0.0, 0.4] for i in range(steps)])
    return TimedChunk(chunk_id, stamp, positions, np.tile(IDENTITY, (steps, 1)), np.ones(steps),
                      0.1 * np.arange(1, steps + 1))


def executor(mode: str = "preview", **kwargs) -> ChunkExecutor:
    core = ChunkExecutor(ExecutorConfig(mode=mode, **kwargs), SafetyLimits())
    core.update_state(HOME, 10.0)
    core.heartbeat(10.0)
    return core


def test_pending_chunk_never_moves_until_approved() -> None:
    core = executor()
    core.offer(chunk(), "pending", 10.0)
    assert core.tick(10.05, 0.05).target is None
    ok, message = core.approve(1, True, 10.05)
    assert ok, message
    command = core.tick(10.1, 0.05)
    assert command.state == "executing" and command.step == 0
    np.testing.assert_allclose(command.target.position, [0.51, 0.0, 0.4])


def test_steps_follow_time_from_start_after_approval() -> None:
    core = executor()
    core.offer(chunk(), "pending", 10.0)
    core.update_state(HOME, 20.0)
    core.heartbeat(20.0)
    assert core.approve(1, True, 20.0)[0]  # timing starts at approval in preview mode
    for now, step in [(20.05, 0), (20.15, 1), (20.25, 2), (20.35, 3), (20.6, 3)]:
        core.update_state(HOME, now)
        core.heartbeat(now)
        command = core.tick(now, 0.05)
        assert command.step == step, now
    core.update_state(HOME, 21.0)
    core.heartbeat(21.0)
    assert core.tick(21.0, 0.05).state == "hold"  # finished after settle_time


def test_rejected_unknown_and_stale_chunks() -> None:
    core = executor(approval_timeout=5.0)
    core.offer(chunk(1), "pending", 10.0)
    core.offer(chunk(2), "pending", 10.0)
    assert core.approve(1, False, 10.1) == (True, "chunk 1: rejected by the operator")
    assert not core.approve(1, True, 10.1)[0]
    ok, message = core.approve(2, True, 16.0)
    assert not ok and "too old" in message


def test_auto_mode_drops_stale_and_skips_past_steps() -> None:
    core = executor("auto", max_chunk_age=0.25)
    assert "stale" in core.offer(chunk(1, stamp=9.5), "auto", 10.0)
    assert "ignored" in core.offer(chunk(2), "pending", 10.0)
    core.offer(chunk(3, stamp=9.85), "auto", 10.0)
    command = core.tick(10.0, 0.05)  # 0.15 s after the observation: step 1 (due at 0.2 s) is next
    assert command.chunk_id == 3 and command.step == 1


def test_watchdog_holds_on_lost_heartbeat_and_stale_state() -> None:
    core = executor(heartbeat_timeout=0.2, ee_timeout=0.2)
    core.offer(chunk(dx=0.02), "pending", 10.0)
    core.approve(1, True, 10.0)
    moving = core.tick(10.05, 0.05)
    assert moving.state == "executing"
    core.update_state(HOME, 10.3)
    command = core.tick(10.3, 0.05)  # heartbeat last at 10.0
    assert command.state == "hold" and "heartbeat" in command.reason
    np.testing.assert_allclose(command.target.position, HOME.position)
    assert core.running is None

    core = executor(ee_timeout=0.2)
    core.offer(chunk(), "pending", 10.0)
    core.approve(1, True, 10.0)
    core.heartbeat(10.3)
    assert "end-effector" in core.tick(10.3, 0.05).reason


def test_stop_cancels_and_holds_current_pose() -> None:
    core = executor()
    core.offer(chunk(), "pending", 10.0)
    core.approve(1, True, 10.0)
    core.tick(10.05, 0.05)
    core.stop(10.06)
    command = core.tick(10.1, 0.05)
    assert command.state == "hold" and core.running is None
    np.testing.assert_allclose(command.target.position, HOME.position)
    assert not core.approve(1, True, 10.1)[0]


def test_nan_step_holds_instead_of_moving() -> None:
    core = executor()
    bad = chunk()
    bad.positions[2] = np.nan
    core.offer(bad, "pending", 10.0)
    core.approve(1, True, 10.0)
    assert core.tick(10.05, 0.05).state == "executing"
    core.update_state(HOME, 10.25)
    core.heartbeat(10.25)
    command = core.tick(10.25, 0.05)
    assert command.state == "hold" and "non-finite" in command.reason


def test_malformed_chunks_and_config_are_named() -> None:
    with pytest.raises(ValueError, match="positions"):
        TimedChunk(1, 0.0, np.zeros((3, 3)), np.zeros((4, 4)), np.ones(4), np.arange(4.0))
    with pytest.raises(ValueError, match="non-decreasing"):
        TimedChunk(1, 0.0, np.zeros((2, 3)), np.zeros((2, 4)), np.ones(2), np.array([0.2, 0.1]))
    with pytest.raises(ValueError, match="mode"):
        ExecutorConfig(mode="fast")
