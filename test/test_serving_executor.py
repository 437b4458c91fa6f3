"""The executor in auto mode with blending (no ROS): continuous targets across switches, stale and older
chunks dropped, a delayed switch keeps the running chunk exact until then."""

import numpy as np
import pytest

from mvvdp_core.execution import ChunkExecutor, ExecutorConfig, TimedChunk
from mvvdp_core.safety import PoseTarget, SafetyLimits

IDENTITY = np.array([0.0, 0.0, 0.0, 1.0])
PERIOD = 0.05  # control period
STEP_LIMIT = 0.04
# Limits loose enough that the safety filter never smooths anything: continuity must come from blending.
LOOSE = SafetyLimits(max_step_translation=1.0, max_linear_velocity=100.0)
VELOCITY = np.array([0.04, 0.02, 0.0])  # m/s, the motion every chunk agrees on


def _chunk(chunk_id: int, stamp: float, offset: np.ndarray, steps: int = 24) -> TimedChunk:
    t = 0.1 * np.arange(1, steps + 1)
    positions = np.array([0.4, 0.0, 0.4]) + offset + np.outer(stamp + t, VELOCITY)
    return TimedChunk(chunk_id, stamp, positions, np.tile(IDENTITY, (steps, 1)), np.ones(steps), t, 0.9)


def _drive(core: ChunkExecutor, arrivals: dict[int, TimedChunk], start: float, end: float):
    """Ticks the executor at the control rate with an ee that follows its targets; chunks arrive on ticks."""
    commands = []
    ee = PoseTarget(np.array([0.4, 0.0, 0.4]) + start * VELOCITY, IDENTITY, 1.0)
    for tick in range(int(round(start / PERIOD)), int(round(end / PERIOD))):
        now = tick * PERIOD
        core.update_state(ee, now)
        core.heartbeat(now)
        if tick in arrivals:
            core.offer(arrivals[tick], "auto", now)
        command = core.tick(now, PERIOD)
        if command.target is not None:
            commands.append((now, command))
            ee = command.target
    return commands


def _scenario(overlap: float):
    rng = np.random.default_rng(1)
    core = ChunkExecutor(ExecutorConfig(mode="auto", max_chunk_age=1.0, blend_overlap=overlap), LOOSE)
    arrivals = {}
    for i in range(6):  # a chunk every 0.8 s, predicted from an observation 0.35 s before its arrival
        arrive = 1.0 + 0.8 * i
        offset = np.zeros(3) if i == 0 else rng.uniform(-0.05, 0.05, 3)
        arrivals[int(round(arrive / PERIOD))] = _chunk(i + 1, arrive - 0.35, offset)
    return core, _drive(core, arrivals, 1.0, 6.5)


def _jumps(commands) -> np.ndarray:
    positions = np.array([c.target.position for _, c in commands])
    return np.linalg.norm(np.diff(positions, axis=0), axis=1)


def test_blended_switches_stay_under_the_step_limit():
    core, commands = _scenario(overlap=0.3)
    ids = [c.chunk_id for _, c in commands]
    assert sorted(set(ids)) == [1, 2, 3, 4, 5, 6] and ids == sorted(ids)  # every chunk ran, in order
    assert all(c.state in ("executing", "settling") for _, c in commands)  # never held or idle in between
    assert all(not c.limited for _, c in commands)  # the safety filter changed nothing
    assert _jumps(commands).max() <= STEP_LIMIT
    assert any("blended over 0.3 s" in e for e in core.events)
    _, hard = _scenario(overlap=0.0)
    assert _jumps(hard).max() > STEP_LIMIT  # the same chunks switched hard would jump


def test_after_the_window_the_new_chunk_runs_exactly():
    core = ChunkExecutor(ExecutorConfig(mode="auto", blend_overlap=0.3), LOOSE)
    first, second = _chunk(1, 0.9, np.zeros(3)), _chunk(2, 1.6, np.array([0.0, 0.03, 0.0]))
    commands = _drive(core, {20: first, 36: second}, 1.0, 3.0)
    for _now, command in commands:
        chunk = first if command.chunk_id == 1 else second
        exact = chunk.positions[command.step]
        due = chunk.stamp + chunk.time_from_start[command.step]
        if command.chunk_id == 1 or due >= 1.8 + 0.3 - 1e-9:
            np.testing.assert_allclose(command.target.position, exact, atol=1e-12)
        else:  # inside the window: between the two chunks
            assert np.linalg.norm(command.target.position - exact) > 0.005


def test_stale_and_older_chunks_are_dropped_and_never_run():
    core = ChunkExecutor(ExecutorConfig(mode="auto", max_chunk_age=0.5), LOOSE)
    arrivals = {
        20: _chunk(1, 0.9, np.zeros(3)),
        22: _chunk(3, 0.85, np.zeros(3)),  # fresh enough, but older than the running chunk's observation
        30: _chunk(2, 0.3, np.zeros(3)),  # 1.2 s old on arrival
        40: _chunk(4, 1.8, np.zeros(3)),
    }
    commands = _drive(core, arrivals, 1.0, 2.5)
    assert {c.chunk_id for _, c in commands} == {1, 4}
    assert any("chunk 2: dropped, stale" in e for e in core.events)
    assert any("chunk 3: dropped, older than the running chunk" in e for e in core.events)


def test_delayed_switch_keeps_the_running_chunk_until_then():
    core = ChunkExecutor(ExecutorConfig(mode="auto", switch_delay=0.2, blend_overlap=0.2), LOOSE)
    first, second = _chunk(1, 0.9, np.zeros(3)), _chunk(2, 1.4, np.array([0.0, 0.02, 0.0]))
    commands = _drive(core, {20: first, 30: second}, 1.0, 2.5)
    switched = [now for now, c in commands if c.chunk_id == 2]
    assert switched[0] == pytest.approx(1.7)
    for now, command in commands:
        if now < 1.7:
            np.testing.assert_allclose(command.target.position, first.positions[command.step], atol=1e-12)
    assert _jumps(commands).max() <= STEP_LIMIT


def test_delayed_switch_still_happens_after_the_running_chunk_finished():
    config = ExecutorConfig(mode="auto", switch_delay=0.3, settle_time=0.0, max_chunk_age=2.0)
    core = ChunkExecutor(config, LOOSE)
    short, second = _chunk(1, 0.95, np.zeros(3), steps=3), _chunk(2, 1.1, np.zeros(3))
    commands = _drive(core, {20: short, 22: second}, 1.0, 2.0)
    assert [c.state for now, c in commands if 1.25 < now < 1.4] == ["hold", "hold"]  # first one done
    assert {c.chunk_id for now, c in commands if now >= 1.4} == {2}


def test_bad_blend_parameters_are_named():
    with pytest.raises(ValueError, match="blend_overlap"):
        ExecutorConfig(blend_overlap=-1.0)
    with pytest.raises(ValueError, match="switch_delay"):
        ExecutorConfig(switch_delay=float("nan"))
