"""Chunk blending at a switch: continuity, exact old before / exact new after, dropped and rejected chunks."""

from dataclasses import dataclass

import numpy as np
import pytest

from mvvdp_core.rotations import euler_to_quaternion, quaternion_to_matrix
from mvvdp_core.serving import BlendConfig, blend_chunks, sample_chunk, slerp

PERIOD = 0.1
STEPS = 24
STEP_LIMIT = 0.04  # metres per control period, as the safety filter clips


@dataclass
class Steps:
    stamp: float
    time_from_start: np.ndarray
    positions: np.ndarray
    quaternions: np.ndarray
    gripper: np.ndarray


def _chunk(
    stamp: float,
    start: np.ndarray,
    velocity: np.ndarray,
    yaw0: float = 0.0,
    yaw_rate: float = 0.0,
    close_at: float | None = None,
) -> Steps:
    t = PERIOD * np.arange(1, STEPS + 1)
    absolute = stamp + t
    positions = start + np.outer(absolute, velocity)
    euler = np.stack([np.full(STEPS, np.pi), np.zeros(STEPS), yaw0 + yaw_rate * absolute], -1)
    gripper = np.ones(STEPS) if close_at is None else (absolute < close_at).astype(float)
    return Steps(stamp, t, positions, euler_to_quaternion(euler), gripper)


def _angle(q0: np.ndarray, q1: np.ndarray) -> np.ndarray:
    return 2 * np.arccos(np.abs(np.sum(q0 * q1, -1)).clip(max=1))


def test_slerp_hits_ends_and_halves_the_angle():
    q0 = euler_to_quaternion(np.array([[0.0, 0.0, 0.0]]))
    q1 = euler_to_quaternion(np.array([[0.0, 0.0, 1.0]]))
    np.testing.assert_allclose(slerp(q0, q1, np.array([0.0])), q0, atol=1e-12)
    np.testing.assert_allclose(np.abs(slerp(q0, q1, np.array([1.0]))), np.abs(q1), atol=1e-12)
    half = slerp(q0, q1, np.array([0.5]))
    np.testing.assert_allclose(
        quaternion_to_matrix(half[0]),
        quaternion_to_matrix(euler_to_quaternion(np.array([0.0, 0.0, 0.5]))),
        atol=1e-12,
    )
    # the shortest arc is taken for sign-flipped inputs
    np.testing.assert_allclose(_angle(slerp(q0, -q1, np.array([0.5])), q0), [0.5], atol=1e-12)


def test_sample_chunk_interpolates_between_steps_and_holds_at_ends():
    chunk = _chunk(10.0, np.zeros(3), np.array([0.1, 0.0, 0.0]))
    times = np.array([10.0, 10.15, 10.2, 99.0])
    positions, _, _ = sample_chunk(chunk, times)
    np.testing.assert_allclose(positions[:, 0], [1.01, 1.015, 1.02, 0.1 * 12.4], atol=1e-12)


def test_switch_is_continuous_exact_before_and_after_the_window():
    config = BlendConfig(overlap=0.4, max_age=1.0)
    old = _chunk(0.0, np.array([0.5, 0.0, 0.3]), np.array([0.05, 0.0, 0.0]), yaw_rate=0.2, close_at=1.5)
    # the new chunk disagrees by 5 cm and 15 degrees: a hard switch would jump more than the step limit
    new = _chunk(
        0.6,
        np.array([0.5, 0.05, 0.3]),
        np.array([0.05, 0.0, 0.0]),
        yaw0=np.radians(15),
        yaw_rate=0.2,
        close_at=1.3,
    )
    switch = 0.95
    out = blend_chunks(old, new, switch, config)
    assert out.accepted and out.reason == ""
    # steps of the new chunk already due are dropped; the rest keep their absolute times
    new_times = new.stamp + new.time_from_start
    np.testing.assert_allclose(out.times, new_times[new_times >= switch])
    # commanded sequence: the old chunk's steps up to the switch, then the continuation
    old_times = old.stamp + old.time_from_start
    before = old_times <= switch
    commanded = np.concatenate([old.positions[before], out.positions])
    jumps = np.linalg.norm(np.diff(commanded, axis=0), axis=1)
    assert jumps.max() <= STEP_LIMIT
    hard = np.concatenate([old.positions[before], new.positions[new_times >= switch]])
    assert np.linalg.norm(np.diff(hard, axis=0), axis=1).max() > STEP_LIMIT  # the blend is what saves it
    quats = np.concatenate([old.quaternions[before], out.quaternions])
    assert _angle(quats[1:], quats[:-1]).max() < np.radians(10)
    # exact new trajectory after the window, weighted average inside it
    after = out.times >= switch + config.overlap
    np.testing.assert_array_equal(out.positions[after], new.positions[new_times >= switch][after])
    np.testing.assert_allclose(
        np.abs(out.quaternions[after]), np.abs(new.quaternions[new_times >= switch][after])
    )
    inside = ~after
    old_at, _, old_grip = sample_chunk(old, out.times[inside])
    w = (out.times[inside] - switch) / config.overlap
    np.testing.assert_allclose(out.weights[inside], w)
    np.testing.assert_allclose(
        out.positions[inside],
        (1 - w[:, None]) * old_at + w[:, None] * new.positions[new_times >= switch][inside],
    )
    # gripper: the old one before the ramp's midpoint, the new one from it
    new_grip = new.gripper[new_times >= switch]
    expected_grip = np.where(out.weights >= 0.5, new_grip, np.concatenate([old_grip, new_grip[after]]))
    np.testing.assert_array_equal(out.gripper, expected_grip)


def test_many_switches_keep_motion_continuous():
    rng = np.random.default_rng(0)
    config = BlendConfig(overlap=0.3)
    running = _chunk(0.0, np.array([0.5, 0.0, 0.3]), np.array([0.03, 0.02, 0.0]))
    commanded: list[np.ndarray] = []
    now = 0.0
    for _ in range(8):
        switch = now + 0.8
        times = running.stamp + running.time_from_start
        commanded.append(running.positions[(times > now) & (times <= switch)])
        offset = rng.uniform(-0.04, 0.04, 3)
        stamp = switch - 0.3  # predicted from an observation taken 0.3 s before the switch
        new = _chunk(stamp, np.array([0.5, 0.0, 0.3]) + offset, np.array([0.03, 0.02, 0.0]))
        out = blend_chunks(running, new, switch, config)
        assert out.accepted
        running = Steps(out.stamp, out.time_from_start, out.positions, out.quaternions, out.gripper)
        now = switch
    commanded = np.concatenate(commanded)
    assert len(commanded) > 50
    assert np.linalg.norm(np.diff(commanded, axis=0), axis=1).max() <= STEP_LIMIT


def test_first_chunk_and_zero_overlap_take_the_new_chunk_as_is():
    new = _chunk(1.0, np.zeros(3), np.array([0.1, 0, 0]))
    for running, config in (
        (None, BlendConfig()),
        (_chunk(0.5, np.ones(3), np.zeros(3)), BlendConfig(overlap=0)),
    ):
        out = blend_chunks(running, new, 1.25, config)
        assert out.accepted
        np.testing.assert_array_equal(out.positions, new.positions[2:])
        assert out.stamp == new.stamp and out.first_step == 2
        np.testing.assert_allclose(out.time_from_start, new.time_from_start[2:])


def test_rejections_name_the_reason():
    old = _chunk(5.0, np.zeros(3), np.zeros(3))
    stale = blend_chunks(old, _chunk(5.5, np.zeros(3), np.zeros(3)), 6.6, BlendConfig(max_age=1.0))
    assert not stale.accepted and "stale" in stale.reason and len(stale.positions) == 0
    older = blend_chunks(old, _chunk(4.9, np.zeros(3), np.zeros(3)), 5.0)
    assert not older.accepted and "older than the running" in older.reason
    past = blend_chunks(
        None, _chunk(5.0, np.zeros(3), np.zeros(3)), 5.01 + PERIOD * STEPS, BlendConfig(max_age=10)
    )
    assert not past.accepted and "already due" in past.reason


def test_bad_input_is_refused():
    good = _chunk(0.0, np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match="overlap"):
        BlendConfig(overlap=-0.1)
    with pytest.raises(ValueError, match="max_age"):
        BlendConfig(max_age=0)
    bad = _chunk(0.0, np.zeros(3), np.zeros(3))
    bad.positions[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        blend_chunks(good, bad, 0.5)
    short = _chunk(0.0, np.zeros(3), np.zeros(3))
    short.gripper = short.gripper[:-1]
    with pytest.raises(ValueError, match="do not match"):
        blend_chunks(None, short, 0.5)
    with pytest.raises(ValueError, match="switch time"):
        blend_chunks(None, good, float("nan"))
