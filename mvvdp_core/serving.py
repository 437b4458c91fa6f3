"""Real-time serving: blending a new action chunk into the running one, and scheduling inference requests.

Both pieces are plain Python on one clock (float seconds); the executor and policy nodes feed them.

Blending at a switch (`blend_chunks`): a chunk's step k is due at the absolute time
stamp + time_from_start[k]. From the switch time on, the executable continuation follows the new chunk's step
times; within the overlap window after the switch, positions are the weighted average
(1 - w) old(t) + w new(t) with w ramping linearly from 0 to 1, orientations are slerped with the same weight
and the gripper takes the new chunk's value from the ramp's midpoint. Steps of the new chunk already due
before the switch are dropped (one due exactly at the switch is kept: the executor aims at it). The old chunk
is read at any time by linear interpolation between its steps (slerp for orientations), held at its ends.

Scheduling (`InferenceScheduler`): the next chunk should be ready when a configured fraction of the running
chunk has been executed, so a request goes out that fraction minus the measured inference latency (an
exponential moving average) after the running chunk's start. Results older than the configured age, or
older than the running chunk's observation, are refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


class TimedSteps(Protocol):
    """What blending reads from a chunk (e.g. `mvvdp_core.execution.TimedChunk`)."""

    stamp: float  # observation time; step k is due at stamp + time_from_start[k]
    time_from_start: np.ndarray  # (T,) non-decreasing seconds
    positions: np.ndarray  # (T, 3) metres
    quaternions: np.ndarray  # (T, 4) xyzw
    gripper: np.ndarray  # (T,) opening in [0, 1]


@dataclass(frozen=True)
class BlendConfig:
    overlap: float = 0.3  # seconds over which the weight ramps from the old chunk to the new one
    max_age: float = 1.0  # a chunk whose observation is older than this at the switch is rejected

    def __post_init__(self) -> None:
        if not (np.isfinite(self.overlap) and self.overlap >= 0):
            raise ValueError(f"overlap must be >= 0 seconds, got {self.overlap!r}")
        if not (np.isfinite(self.max_age) and self.max_age > 0):
            raise ValueError(f"max_age must be > 0 seconds, got {self.max_age!r}")


@dataclass(frozen=True)
class Continuation:
    """The executable steps after a switch, or why there are none.

    Steps are timed from `stamp`, the new chunk's observation stamp, like the new chunk itself.
    """

    accepted: bool
    reason: str = ""
    stamp: float = 0.0
    time_from_start: np.ndarray = field(default_factory=lambda: np.zeros(0))
    positions: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    quaternions: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    gripper: np.ndarray = field(default_factory=lambda: np.zeros(0))
    weights: np.ndarray = field(default_factory=lambda: np.zeros(0))  # weight of the new chunk per step
    first_step: int = 0  # index in the new chunk of the first step kept (the earlier ones were due)

    @property
    def times(self) -> np.ndarray:
        """Absolute due times of the steps."""
        return self.stamp + self.time_from_start


def _check_steps(chunk: TimedSteps, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    times = float(chunk.stamp) + np.asarray(chunk.time_from_start, dtype=np.float64)
    positions = np.asarray(chunk.positions, dtype=np.float64)
    quaternions = np.asarray(chunk.quaternions, dtype=np.float64)
    gripper = np.asarray(chunk.gripper, dtype=np.float64)
    steps = len(times)
    if steps == 0 or times.ndim != 1:
        raise ValueError(f"{what} chunk has no steps")
    if positions.shape != (steps, 3) or quaternions.shape != (steps, 4) or gripper.shape != (steps,):
        raise ValueError(
            f"{what} chunk: positions {positions.shape}, quaternions {quaternions.shape} and gripper "
            f"{gripper.shape} do not match {steps} steps"
        )
    if not all(np.isfinite(a).all() for a in (times, positions, quaternions, gripper)):
        raise ValueError(f"{what} chunk contains NaN or infinite values")
    if np.any(np.diff(times) < 0):
        raise ValueError(f"{what} chunk: time_from_start must be non-decreasing")
    norms = np.linalg.norm(quaternions, axis=1, keepdims=True)
    if np.any(norms < 1e-9):
        raise ValueError(f"{what} chunk has a zero quaternion")
    return times, positions, quaternions / norms, gripper


def slerp(q0: np.ndarray, q1: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Spherical interpolation of unit quaternions (N, 4) with weights (N,) in [0, 1], shortest arc."""
    q0, q1 = np.atleast_2d(q0).astype(np.float64), np.atleast_2d(q1).astype(np.float64)
    weight = np.asarray(weight, dtype=np.float64).reshape(-1, 1)
    dot = np.sum(q0 * q1, axis=1, keepdims=True)
    q1 = np.where(dot < 0, -q1, q1)
    dot = np.abs(dot).clip(max=1.0)
    angle = np.arccos(dot)
    sin = np.sin(angle)
    near = sin < 1e-6  # nearly equal: linear interpolation is exact to first order
    safe = np.where(near, 1.0, sin)
    w0 = np.where(near, 1 - weight, np.sin((1 - weight) * angle) / safe)
    w1 = np.where(near, weight, np.sin(weight * angle) / safe)
    out = w0 * q0 + w1 * q1
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def sample_chunk(chunk: TimedSteps, times: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A chunk's pose and gripper at absolute times: positions linear and orientations slerped between
    steps, held at the ends; the gripper is that of the next step not yet due (as the executor sends it)."""
    step_times, positions, quaternions, gripper = _check_steps(chunk, "sampled")
    times = np.asarray(times, dtype=np.float64).reshape(-1)
    upper = np.searchsorted(step_times, times, side="left").clip(0, len(step_times) - 1)
    lower = (upper - 1).clip(0)
    span = step_times[upper] - step_times[lower]
    fraction = np.where(span > 0, (times - step_times[lower]) / np.where(span > 0, span, 1.0), 1.0)
    fraction = fraction.clip(0.0, 1.0)
    sampled_positions = positions[lower] + fraction[:, None] * (positions[upper] - positions[lower])
    sampled_quaternions = slerp(quaternions[lower], quaternions[upper], fraction)
    return sampled_positions, sampled_quaternions, gripper[upper]


def blend_chunks(
    running: TimedSteps | None, new: TimedSteps, switch_time: float, config: BlendConfig | None = None
) -> Continuation:
    """The executable continuation from `switch_time` on when `new` replaces `running` (see module doc)."""
    config = config or BlendConfig()
    if not np.isfinite(switch_time):
        raise ValueError(f"switch time must be finite, got {switch_time!r}")
    new_times, new_positions, new_quaternions, new_gripper = _check_steps(new, "new")
    age = switch_time - float(new.stamp)
    if age > config.max_age:
        return Continuation(False, f"stale: observation {age:.3f} s old > max_age {config.max_age} s")
    if running is not None and float(new.stamp) < float(running.stamp):
        return Continuation(
            False, f"older than the running chunk (stamp {new.stamp:.3f} < {running.stamp:.3f})"
        )
    keep = new_times >= switch_time  # a step due right at the switch is still ahead
    if not keep.any():
        return Continuation(False, "every step of the new chunk is already due")
    times = new_times[keep]
    positions, quaternions, gripper = new_positions[keep], new_quaternions[keep], new_gripper[keep]
    if running is None or config.overlap == 0:
        weights = np.ones(len(times))
    else:
        weights = ((times - switch_time) / config.overlap).clip(0.0, 1.0)
        old_positions, old_quaternions, old_gripper = sample_chunk(running, times)
        positions = (1 - weights[:, None]) * old_positions + weights[:, None] * positions
        quaternions = slerp(old_quaternions, quaternions, weights)
        gripper = np.where(weights >= 0.5, gripper, old_gripper)
    stamp = float(new.stamp)
    first_step = int(np.argmax(keep))  # kept steps are a suffix: times are non-decreasing
    return Continuation(True, "", stamp, times - stamp, positions, quaternions, gripper, weights, first_step)


# ---- scheduling ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SchedulerConfig:
    request_fraction: float = 0.5  # the next chunk should be ready at this fraction of the running one
    initial_latency: float = 0.4  # latency assumed before the first measurement, seconds
    latency_smoothing: float = 0.3  # EMA weight of a new latency measurement
    max_age: float = 1.0  # a result whose observation is older than this on arrival is refused
    max_in_flight: int = 1
    request_timeout: float = 5.0  # a request without a result after this long is forgotten

    def __post_init__(self) -> None:
        if not 0.0 <= self.request_fraction <= 1.0:
            raise ValueError(f"request_fraction must be in [0, 1], got {self.request_fraction!r}")
        if not 0.0 < self.latency_smoothing <= 1.0:
            raise ValueError(f"latency_smoothing must be in (0, 1], got {self.latency_smoothing!r}")
        for name in ("initial_latency", "max_age", "request_timeout"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value >= 0) or (name != "initial_latency" and value == 0):
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        if int(self.max_in_flight) != self.max_in_flight or self.max_in_flight < 1:
            raise ValueError(f"max_in_flight must be an integer >= 1, got {self.max_in_flight!r}")


@dataclass(frozen=True)
class Request:
    request_id: int
    sent: float  # when the request was made
    observation_stamp: float  # stamp of the observation the chunk will be predicted from


@dataclass(frozen=True)
class Decision:
    accepted: bool
    reason: str = ""
    latency: float | None = None  # measured for this request (None for an unknown request)


class InferenceScheduler:
    """Decides when to request the next chunk and which results to accept.

    The running chunk is described by its start (the time its steps count from: its observation stamp) and
    duration (its last step's time_from_start).
    """

    def __init__(self, config: SchedulerConfig | None = None) -> None:
        self.config = config or SchedulerConfig()
        self.latency = float(self.config.initial_latency)
        self.in_flight: dict[int, Request] = {}
        self.running_stamp: float | None = None
        self.running_duration = 0.0
        self._next_id = 0
        self.measurements = 0

    def next_request_time(self) -> float:
        """When the next request should go out (-inf: now, nothing is running)."""
        if self.running_stamp is None:
            return -np.inf
        ready_at = self.running_stamp + self.config.request_fraction * self.running_duration
        return ready_at - self.latency

    def expire(self, now: float) -> list[Request]:
        """Forget requests older than request_timeout; returns them."""
        lost = [r for r in self.in_flight.values() if now - r.sent > self.config.request_timeout]
        for request in lost:
            del self.in_flight[request.request_id]
        return lost

    def should_request(self, now: float) -> bool:
        self.expire(now)
        if len(self.in_flight) >= self.config.max_in_flight:
            return False
        if self.in_flight and self.running_stamp is not None:
            # one request per running chunk is enough: another in flight already targets this switch
            if max(r.sent for r in self.in_flight.values()) >= self.next_request_time():
                return False
        return now >= self.next_request_time()

    def start_request(self, now: float, observation_stamp: float) -> Request:
        if not (np.isfinite(now) and np.isfinite(observation_stamp)):
            raise ValueError("request and observation times must be finite")
        request = Request(self._next_id, float(now), float(observation_stamp))
        self._next_id += 1
        self.in_flight[request.request_id] = request
        return request

    def finish_request(self, request_id: int, now: float, chunk_stamp: float | None = None) -> Decision:
        """A result (or a failure, chunk_stamp None) came back for a request; decides whether to use it."""
        request = self.in_flight.pop(request_id, None)
        if request is None:
            return Decision(False, f"unknown or expired request {request_id}")
        latency = now - request.sent
        alpha = self.config.latency_smoothing
        self.latency = latency if self.measurements == 0 else alpha * latency + (1 - alpha) * self.latency
        self.measurements += 1
        if chunk_stamp is None:
            return Decision(False, "inference failed", latency)
        return self.check_result(chunk_stamp, now, latency)

    def check_result(self, chunk_stamp: float, now: float, latency: float | None = None) -> Decision:
        age = now - chunk_stamp
        if age > self.config.max_age:
            return Decision(
                False, f"stale: observation {age:.3f} s old > max_age {self.config.max_age} s", latency
            )
        if self.running_stamp is not None and chunk_stamp < self.running_stamp:
            return Decision(False, "older than the running chunk", latency)
        return Decision(True, "", latency)

    def chunk_started(self, stamp: float, duration: float) -> None:
        """A chunk became the running one: its steps count from `stamp` and last `duration` seconds."""
        if not (np.isfinite(stamp) and np.isfinite(duration) and duration >= 0):
            raise ValueError(f"chunk start {stamp!r} and duration {duration!r} must be finite, duration >= 0")
        self.running_stamp, self.running_duration = float(stamp), float(duration)
