"""Executor and safety filter together: every command (steps and holds) passes the filter; holds move to the
measured pose after a restart or a jump; the gripper acts at the chunk's step."""

import numpy as np

from mvvdp_core.execution import ChunkExecutor, ExecutorConfig, TimedChunk
from mvvdp_core.safety import PoseTarget, SafetyLimits

IDENTITY = np.array([0.0, 0.0, 0.0, 1.0])
DT = 0.05  # 20 Hz


def at(x: float, gripper: float = 1.0) -> PoseTarget:
    return PoseTarget(np.array([x, 0.0, 0.4]), IDENTITY, gripper)


def far_chunk(steps: int = 24, gripper: np.ndarray | None = None, x: float = 0.8) -> TimedChunk:
    positions = np.tile([x, 0.0, 0.4], (steps, 1))
    grip = np.ones(steps) if gripper is None else np.asarray(gripper, float)
    return TimedChunk(1, 0.0, positions, np.tile(IDENTITY, (steps, 1)), grip, 0.1 * np.arange(1, steps + 1))


def started(chunk: TimedChunk, measured: PoseTarget) -> ChunkExecutor:
    core = ChunkExecutor(ExecutorConfig(), SafetyLimits())
    core.update_state(measured, 0.0)
    core.heartbeat(0.0)
    core.offer(chunk, "pending", 0.0)
    assert core.approve(chunk.chunk_id, True, 0.0)[0]
    return core


def tick(core: ChunkExecutor, now: float, measured: PoseTarget):
    core.update_state(measured, now)
    core.heartbeat(now)
    return core.tick(now, DT)


def test_commands_run_ahead_of_a_lagging_arm_up_to_the_tracking_bound() -> None:
    core = started(far_chunk(), at(0.5))
    xs = [tick(core, k * DT, at(0.5)).target.position[0] for k in range(6)]
    # 2.5 cm per period from the previous command, never more than 10 cm from the measured 0.5.
    np.testing.assert_allclose(xs, [0.525, 0.55, 0.575, 0.6, 0.6, 0.6], atol=1e-12)


def test_hold_target_passes_the_filter() -> None:
    core = started(far_chunk(), at(0.5))
    for k in range(3):
        tick(core, k * DT, at(0.5))  # last command 0.575
    core.update_state(at(0.45), 0.15)  # the arm was pushed back (12.5 cm < 14 cm: not a jump)
    core.stop(0.15)  # hold latched at the measured 0.45
    command = tick(core, 0.15, at(0.45))
    # From the last command 0.575 at most 2.5 cm towards the hold target: 0.55 (within 10 cm of 0.45).
    assert command.state == "hold" and "translation" in command.limited
    assert command.target.position[0] == np.float64(0.55)
    xs = [tick(core, 0.2 + k * DT, at(0.45)).target.position[0] for k in range(5)]
    np.testing.assert_allclose(xs, [0.525, 0.5, 0.475, 0.45, 0.45], atol=1e-12)


def test_a_jump_of_the_measured_pose_moves_the_hold_to_it() -> None:
    core = started(far_chunk(steps=2, x=0.5), at(0.5))
    for k in range(30):  # the chunk finishes and settles: hold at its last command 0.5
        command = tick(core, k * DT, at(0.5))
    assert command.state == "hold"
    np.testing.assert_allclose(command.target.position, [0.5, 0.0, 0.4])
    command = tick(core, 1.5, at(0.7))  # 20 cm away: beyond 10 cm + 4 cm
    assert command.state == "hold" and "jumped" in command.reason
    np.testing.assert_allclose(command.target.position, [0.7, 0.0, 0.4])


def test_after_the_robot_state_resumes_the_hold_is_the_measured_pose() -> None:
    core = started(far_chunk(steps=2, x=0.5), at(0.5))
    for k in range(30):
        tick(core, k * DT, at(0.5))
    core.heartbeat(2.0)
    assert core.tick(2.0, DT).state == "hold"  # state 0.55 s old: stale (ee_timeout 0.25 s)
    command = tick(core, 2.05, at(0.53))  # back, 3 cm from the old hold
    assert command.state == "hold" and "resumed" in command.reason
    np.testing.assert_allclose(command.target.position, [0.53, 0.0, 0.4])


def test_gripper_closes_at_the_step_the_chunk_says() -> None:
    gripper = np.ones(24)
    gripper[5:] = 0.0  # step 5 (due at 0.6 s) closes
    core = started(far_chunk(gripper=gripper, x=0.5), at(0.5))
    closes = [k * DT for k in range(24) if tick(core, k * DT, at(0.5)).target.gripper == 0.0]
    # Step 5 is aimed at from 0.5 s (after step 4's time) on: the close goes out in that first period.
    assert closes[0] > 0.5 - 1e-9 and closes[0] < 0.5 + DT + 1e-9


def test_a_close_right_after_an_opening_waits_for_the_debounce_and_no_longer() -> None:
    gripper = np.zeros(24)
    gripper[:2] = 1.0  # open, then closed from step 2 (0.3 s) on
    core = started(far_chunk(gripper=gripper, x=0.5), at(0.5, gripper=0.0))  # the gripper starts closed
    values = [tick(core, k * DT, at(0.5)).target.gripper for k in range(10)]
    # The chunk's first open acts at once (no earlier switch in this execution); the close due 0.2 s later
    # waits for gripper_min_hold (0.5 s = 10 periods) after that opening, and goes out in the 11th period.
    assert values[0] == 1.0 and values[:10].count(0.0) == 0
    more = [tick(core, k * DT, at(0.5)).target.gripper for k in range(10, 14)]
    assert more == [0.0, 0.0, 0.0, 0.0]
