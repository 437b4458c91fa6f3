"""Executing action chunks: approval, staleness, timed streaming through the safety filter, watchdog.

`ChunkExecutor` is the executor node's whole logic without ROS: the node feeds it chunks, robot state,
policy heartbeats and service requests, and every control period asks `tick(now, dt)` for the command to send.
Times are float seconds on one clock (the node's ROS clock).

Modes:
  preview  chunks arrive pending; only a chunk approved through `approve()` runs, starting at approval;
  auto     chunks with status "auto" run as they arrive (or `switch_delay` later), their steps timed from the
           observation stamp (steps whose time has passed are skipped), replacing the running chunk: over
           `blend_overlap` seconds after the switch the targets ramp from the running chunk to the new one
           (mvvdp_core.serving.blend_chunks); a chunk older than the running one is dropped.
While a chunk runs, a stale ee state or policy heartbeat cancels it and the executor holds (publishes the
pose latched when holding started, keeps the gripper); so do `stop()` and a chunk that finished and settled.
Before any chunk ran, nothing is sent.

Faults: every chunk is checked whole on arrival (`validate_chunk`) before any of its steps can run; the node
hands a chunk that fails to `reject()`, which cancels whatever runs and holds. `fault()` does the same for
any other failure (an exception in a node callback). `stop()` latches: until `resume()` (or, in preview mode,
the approval of a chunk) only holds go out and auto chunks that arrive are dropped and counted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mvvdp_core.safety import PoseTarget, SafetyFilter, SafetyLimits, UnsafeTargetError
from mvvdp_core.serving import BlendConfig, Continuation, blend_chunks

MODES = ("preview", "auto")


@dataclass(frozen=True)
class TimedChunk:
    """A chunk in executable form: poses as quaternions, gripper opening in [0, 1], times from `stamp`."""

    chunk_id: int
    stamp: float
    positions: np.ndarray  # (T, 3)
    quaternions: np.ndarray  # (T, 4) xyzw
    gripper: np.ndarray  # (T,)
    time_from_start: np.ndarray  # (T,) seconds, non-decreasing
    confidence: float = 0.0

    def __post_init__(self) -> None:
        steps = len(self.time_from_start)
        if steps == 0:
            raise ValueError(f"chunk {self.chunk_id}: no steps")
        shapes = {"positions": (steps, 3), "quaternions": (steps, 4), "gripper": (steps,)}
        for name, shape in shapes.items():
            if np.shape(getattr(self, name)) != shape:
                raise ValueError(f"chunk {self.chunk_id}: {name} must have shape {shape}, "
                                 f"got {np.shape(getattr(self, name))}")
        times = np.asarray(self.time_from_start, dtype=np.float64)
        if not np.isfinite(times).all() or np.any(np.diff(times) < 0) or times[0] < 0:
            raise ValueError(f"chunk {self.chunk_id}: time_from_start must be finite, >= 0, non-decreasing")

    @property
    def duration(self) -> float:
        return float(self.time_from_start[-1])

    def step_at(self, elapsed: float) -> int:
        """Index of the step to aim for `elapsed` s after the chunk's start: the next one not yet due."""
        index = int(np.searchsorted(self.time_from_start, elapsed, side="left"))
        return min(index, len(self.time_from_start) - 1)

    def target(self, index: int) -> PoseTarget:
        position, quaternion = self.positions[index], self.quaternions[index]
        gripper = float(self.gripper[index])
        return PoseTarget(np.asarray(position, float), np.asarray(quaternion, float), gripper)


@dataclass(frozen=True)
class ChunkChecks:
    """What every arriving chunk must satisfy before any of its steps may run."""

    base_frame: str = "fr3_link0"
    lower: tuple[float, float, float] = (0.0, -0.5, -0.1)  # every step inside this box (base frame, m)
    upper: tuple[float, float, float] = (1.0, 0.5, 0.9)
    min_step_confidence: float = 0.05  # every step's confidence at least this
    max_duration: float = 120.0  # last step due at most this long after the observation (s)

    def __post_init__(self) -> None:
        lower, upper = np.asarray(self.lower, float), np.asarray(self.upper, float)
        if lower.shape != (3,) or upper.shape != (3,) or not np.isfinite([lower, upper]).all():
            raise ValueError(f"chunk bounds must be 3 finite numbers each, got {self.lower} and {self.upper}")
        if np.any(lower >= upper):
            raise ValueError(f"chunk bounds: lower {lower.tolist()} not below upper {upper.tolist()}")
        if not 0.0 <= self.min_step_confidence <= 1.0:
            raise ValueError(f"min_step_confidence must be in [0, 1], got {self.min_step_confidence!r}")
        if not self.max_duration > 0:
            raise ValueError(f"max_duration must be > 0 s, got {self.max_duration!r}")


def validate_chunk(chunk: TimedChunk, frame_id: str, step_confidence: np.ndarray, checks: ChunkChecks) -> str:
    """Why the chunk must not run ("" when it may): frame, finite values, unit quaternions, gripper in [0, 1],
    every step inside the bounds, timing, and per-step confidence. Shapes are checked by TimedChunk."""
    steps = len(chunk.time_from_start)
    name = f"chunk {chunk.chunk_id}"
    if frame_id != checks.base_frame:
        return f"{name}: frame {frame_id!r}, expected {checks.base_frame!r}"
    arrays = {"positions": chunk.positions, "quaternions": chunk.quaternions, "gripper": chunk.gripper,
              "step_confidence": step_confidence}
    for key, values in arrays.items():
        bad = ~np.isfinite(np.asarray(values, dtype=np.float64))
        if bad.any():
            return f"{name}: {key} not finite at step {int(np.argwhere(bad)[0][0])}"
    if not np.isfinite(chunk.stamp) or chunk.stamp < 0:
        return f"{name}: stamp {chunk.stamp!r} is not a valid time"
    norms = np.linalg.norm(chunk.quaternions, axis=1)
    if np.any(np.abs(norms - 1.0) > 1e-2):
        return f"{name}: quaternion of step {int(np.argmax(np.abs(norms - 1.0)))} is not unit length"
    if np.any((chunk.gripper < 0) | (chunk.gripper > 1)):
        return f"{name}: gripper values outside [0, 1]"
    outside = np.any((chunk.positions < checks.lower) | (chunk.positions > checks.upper), axis=1)
    if outside.any():
        step = int(np.argmax(outside))
        return (f"{name}: step {step} at {np.round(chunk.positions[step], 3).tolist()} is outside the "
                f"workspace {np.round(checks.lower, 3).tolist()}..{np.round(checks.upper, 3).tolist()}")
    if chunk.duration > checks.max_duration:
        return f"{name}: lasts {chunk.duration:.1f} s > {checks.max_duration} s"
    confidence = np.asarray(step_confidence, dtype=np.float64)
    if confidence.shape != (steps,):
        return f"{name}: {confidence.size} step confidences for {steps} steps"
    low = confidence < checks.min_step_confidence
    if low.any():
        step = int(np.argmax(low))
        return (f"{name}: step {step} confidence {confidence[step]:.3f} < "
                f"min_step_confidence {checks.min_step_confidence}")
    return ""


@dataclass(frozen=True)
class ExecutorConfig:
    """Timing parameters of the executor (seconds)."""

    mode: str = "preview"
    max_chunk_age: float = 1.0  # auto: a chunk older than this (from its stamp) on arrival is dropped
    approval_timeout: float = 120.0  # preview: a pending chunk older than this can no longer be approved
    ee_timeout: float = 0.25  # hold when the last ee state is older than this
    heartbeat_timeout: float = 0.3  # hold a running chunk when the policy's last heartbeat is older
    settle_time: float = 0.5  # keep aiming at the final step this long after the chunk's last step time
    blend_overlap: float = 0.3  # auto: seconds over which a new chunk ramps in from the running one
    switch_delay: float = 0.0  # auto: the running chunk goes on this long after a new one arrives

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"executor mode must be one of {MODES}, got {self.mode!r}")
        for name in ("max_chunk_age", "approval_timeout", "ee_timeout", "heartbeat_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0 seconds, got {getattr(self, name)!r}")
        for name in ("settle_time", "blend_overlap", "switch_delay"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0 seconds, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class Command:
    """What to send this period: a target (None = send nothing) and the state that produced it."""

    target: PoseTarget | None
    state: str  # idle | executing | settling | hold
    reason: str = ""
    chunk_id: int | None = None
    step: int | None = None
    limited: tuple[str, ...] = ()


def _splice(chunk: TimedChunk, continuation: Continuation) -> TimedChunk:
    """The chunk with its steps from continuation.first_step on replaced by the blended ones (step indices
    stay those of the chunk; the earlier steps are already due and never aimed at)."""
    first = continuation.first_step
    positions, quaternions = np.array(chunk.positions, float), np.array(chunk.quaternions, float)
    gripper = np.array(chunk.gripper, float)
    positions[first:], quaternions[first:], gripper[first:] = (
        continuation.positions, continuation.quaternions, continuation.gripper
    )
    return TimedChunk(chunk.chunk_id, chunk.stamp, positions, quaternions, gripper, chunk.time_from_start,
                      chunk.confidence)


class ChunkExecutor:
    def __init__(self, config: ExecutorConfig | None = None, limits: SafetyLimits | None = None) -> None:
        self.config = config or ExecutorConfig()
        self.stopped = False  # latched by stop(), cleared by resume() or an approval in preview mode
        self.rejected_chunks = 0
        self.dropped_while_stopped = 0
        self.safety = SafetyFilter(limits)
        self.pending: dict[int, TimedChunk] = {}
        self.running: TimedChunk | None = None
        self.next_switch: tuple[TimedChunk, float] | None = None  # auto: blended chunk and its switch time
        self._start = 0.0
        self._ee: PoseTarget | None = None
        self._ee_time = -np.inf
        self._heartbeat_time = -np.inf
        self._hold: PoseTarget | None = None
        self._hold_reason = ""
        self._last_command: PoseTarget | None = None
        self._ee_stale = False  # the end-effector state was older than ee_timeout at the last tick
        self.events: list[str] = []  # log lines for the node to print, drained by the node

    # ---- inputs -------------------------------------------------------------------------------------
    def update_state(self, pose: PoseTarget, now: float) -> None:
        self._ee, self._ee_time = pose, now

    def heartbeat(self, now: float) -> None:
        self._heartbeat_time = now

    def offer(self, chunk: TimedChunk, status: str, now: float) -> str:
        """A chunk arrived from the policy; returns what was done with it."""
        cfg = self.config
        if self.stopped and cfg.mode == "auto":
            self.dropped_while_stopped += 1
            return self._log(f"chunk {chunk.chunk_id}: dropped, stopped (resume to run chunks again)")
        if cfg.mode == "preview":
            if status != "pending":
                return self._log(f"chunk {chunk.chunk_id}: status {status!r} ignored in preview mode")
            self.pending[chunk.chunk_id] = chunk
            for old in sorted(self.pending)[:-8]:  # keep the latest few for approval
                del self.pending[old]
            return self._log(f"chunk {chunk.chunk_id}: pending approval")
        if status != "auto":
            return self._log(f"chunk {chunk.chunk_id}: status {status!r} ignored in auto mode")
        age = now - chunk.stamp
        if age > cfg.max_chunk_age:
            return self._log(f"chunk {chunk.chunk_id}: dropped, stale ({age:.3f} s > {cfg.max_chunk_age} s)")
        if age > chunk.duration:
            return self._log(f"chunk {chunk.chunk_id}: dropped, all steps are past due")
        switch = now + cfg.switch_delay if self.running is not None else now
        blend = BlendConfig(overlap=cfg.blend_overlap, max_age=cfg.max_chunk_age + cfg.switch_delay)
        result = blend_chunks(self.running, chunk, switch, blend)
        if not result.accepted:
            return self._log(f"chunk {chunk.chunk_id}: dropped, {result.reason}")
        blended = _splice(chunk, result)
        if self.next_switch is not None:
            self._log(f"chunk {self.next_switch[0].chunk_id}: superseded by chunk {chunk.chunk_id}")
        if switch > now:
            self.next_switch = (blended, switch)
            return self._log(f"chunk {chunk.chunk_id}: switching at {switch:.3f} (auto)")
        self.next_switch = None
        self._run(blended, start=chunk.stamp)
        blending = f", blended over {cfg.blend_overlap} s" if result.weights.min() < 1 else ""
        return self._log(f"chunk {chunk.chunk_id}: executing (auto{blending})")

    def approve(self, chunk_id: int, approve: bool, now: float) -> tuple[bool, str]:
        """Operator's decision on a pending chunk (preview mode)."""
        if self.config.mode != "preview":
            return False, "approval is only used in preview mode"
        chunk = self.pending.pop(chunk_id, None)
        if chunk is None:
            return False, f"unknown chunk {chunk_id} (pending: {sorted(self.pending)})"
        if not approve:
            return True, self._log(f"chunk {chunk_id}: rejected by the operator")
        age = now - chunk.stamp
        if age > self.config.approval_timeout:
            return False, self._log(f"chunk {chunk_id}: too old to execute ({age:.1f} s)")
        problem = self._hold_cause(now, need_heartbeat=True)
        if problem:
            return False, self._log(f"chunk {chunk_id}: not executed, {problem}")
        resumed = ", resumed after stop" if self.stopped else ""
        self.stopped = False  # approving a chunk is the operator's explicit resume
        self._run(chunk, start=now)
        return True, self._log(f"chunk {chunk_id}: approved, executing{resumed}")

    def stop(self, now: float) -> str:
        """Cancel any chunk and hold the current pose until `resume()` (or an approval in preview mode)."""
        self.pending.clear()
        self.running = None
        self.next_switch = None
        self.stopped = True
        self._enter_hold("stop requested")
        return self._log("stopped: holding the current pose until resumed")

    def resume(self, now: float) -> str:
        """Lift the stop latch: auto chunks that arrive from now on run again (preview: approvals do)."""
        if not self.stopped:
            return self._log("resume: not stopped")
        self.stopped = False
        return self._log("resumed: holding until the next chunk runs")

    def reject(self, chunk_id: int, reason: str, now: float) -> str:
        """A chunk failed validation: it never runs, whatever runs is cancelled, the arm holds."""
        self.rejected_chunks += 1
        self.pending.pop(chunk_id, None)
        return self.fault(f"chunk {chunk_id} rejected: {reason}", now)

    def fault(self, reason: str, now: float) -> str:
        """Cancel any running or scheduled chunk and hold (a bad chunk, a failed callback). An idle executor
        stays idle: it has commanded nothing, so nothing moves."""
        if self.running is None and self.next_switch is None and self._hold is None:
            return self._log(f"idle, nothing to cancel: {reason}")
        if self.running is not None:
            self._log(f"chunk {self.running.chunk_id}: cancelled")
        self.running = None
        self.next_switch = None
        self._enter_hold(reason)
        return self._log(f"holding: {reason}")

    # ---- control period -----------------------------------------------------------------------------
    def tick(self, now: float, dt: float) -> Command:
        """The command for the control period starting at `now`. Every target sent (chunk steps, blended
        steps, holds) goes through the one safety filter: steps limited relative to the last command, within a
        tracking bound of the measured pose. When the robot state resumes after going stale, or the measured
        pose jumps beyond the tracking bound, the hold moves to the measured pose."""
        if self._ee is None:
            return Command(None, "idle", "no end-effector state yet")
        stale = now - self._ee_time > self.config.ee_timeout
        if self._ee_stale and not stale and self._hold is not None:
            # The robot state came back (e.g. the robot restarted): hold where it is, not at an old pose.
            self._enter_hold("robot state resumed: holding the measured pose", at=self._ee, restart=True)
        self._ee_stale = stale
        if self.next_switch is not None and now >= self.next_switch[1]:
            chunk, _switch = self.next_switch  # cancelling, stopping or an unsafe target clear it
            self.next_switch = None
            self._run(chunk, start=chunk.stamp)
            self._log(f"chunk {chunk.chunk_id}: executing (auto, switched)")
        problem = self._hold_cause(now, need_heartbeat=True) if self.running is not None else ""
        if problem:
            self._log(f"chunk {self.running.chunk_id}: cancelled, {problem}")
            self.running = None
            self.next_switch = None
            self._enter_hold(problem)
        if self.running is None:
            if self._hold is None:
                self.safety.reset()  # nothing sent: the next command starts from the measured pose
                return Command(None, "idle")
            return self._hold_command(dt)
        chunk = self.running
        elapsed = now - self._start
        if elapsed > chunk.duration + self.config.settle_time:
            self.running = None
            self._log(f"chunk {chunk.chunk_id}: finished")
            self._enter_hold("chunk finished", at=self._last_command)
            return self._hold_command(dt)
        index = chunk.step_at(elapsed)  # step i is aimed at until its time_from_start
        try:
            result = self.safety.filter(chunk.target(index), self._ee, dt)
        except UnsafeTargetError as err:
            self.running = None
            self.next_switch = None
            self._enter_hold(f"unsafe target in chunk {chunk.chunk_id} step {index}: {err}")
            self._log(self._hold_reason)
            return self._hold_command(dt)
        self._last_command = result.target
        state = "executing" if elapsed <= chunk.duration else "settling"
        return Command(result.target, state, "", chunk.chunk_id, index, result.limited)

    # ---- internals ----------------------------------------------------------------------------------
    def _hold_cause(self, now: float, need_heartbeat: bool) -> str:
        ee_age = now - self._ee_time
        if ee_age > self.config.ee_timeout:
            return f"end-effector state stale ({ee_age:.3f} s)"
        beat_age = now - self._heartbeat_time
        if need_heartbeat and beat_age > self.config.heartbeat_timeout:
            return f"policy heartbeat lost ({beat_age:.3f} s)"
        return ""

    def _run(self, chunk: TimedChunk, start: float) -> None:
        if self.running is None:
            # A new execution: its first open/close acts at once. Motion stays limited relative to the last
            # command sent (the hold), or to the measured pose when nothing was sent yet.
            held = self._hold if self._hold is not None else self._ee
            self.safety.reset_gripper(held.gripper if held is not None else None)
        self.running, self._start = chunk, start
        self._hold = None

    def _enter_hold(self, reason: str, at: PoseTarget | None = None, restart: bool = False) -> None:
        """Latch the hold target: `at` (default: the measured pose), keeping the gripper last commanded.
        A hold already latched is kept unless `at` is given; `restart` also makes the next command start from
        the measured pose."""
        if self._hold is not None and at is None:
            return  # keep the first latched pose
        base = at if at is not None else self._ee
        if base is None:
            return
        gripper = self._last_command.gripper if self._last_command is not None else base.gripper
        self._hold = PoseTarget(np.array(base.position, float), np.array(base.quaternion, float), gripper)
        self._hold_reason = reason
        if restart:
            self.safety.reset(gripper)
            self._log(reason)

    def _hold_command(self, dt: float) -> Command:
        """The hold target through the safety filter. When the measured pose has jumped beyond the tracking
        bound (a restart, a collision), the hold moves to the measured pose instead of pulling back."""
        assert self._hold is not None and self._ee is not None
        if self.safety.out_of_tracking(self._hold, self._ee):
            self._enter_hold("measured pose jumped beyond the tracking bound: holding the measured pose",
                             at=self._ee, restart=True)
        try:
            result = self.safety.filter(self._hold, self._ee, dt)
        except UnsafeTargetError as err:  # nothing is sent rather than a bad target
            return Command(None, "hold", f"{self._hold_reason}; hold target not sent: {err}")
        self._last_command = result.target
        return Command(result.target, "hold", self._hold_reason, limited=result.limited)

    def _log(self, message: str) -> str:
        self.events.append(message)
        return message
