"""Closed loop on the simulated FR3 without ROS: chunks -> ChunkExecutor (+ SafetyFilter) -> FrankaSim.

`SimLoop` does what the executor node and the sim robot node do over ROS, with the same core logic and the
same defaults: every control period (DEFAULT_CONTROL_RATE, 20 Hz) it feeds the executor the measured
end-effector pose and gripper opening, asks `ChunkExecutor.tick` for the command and sends it to the simulated
controller (target pose, gripper width), then steps the physics to the next period. Chunks are offered and
approved as the preview workflow does (an approved chunk starts at once and replaces a running one).

- `replay_episode`: a recorded episode cut into chunks of its recorded steps, replayed from its initial scene;
- `evaluate_policy`: a policy `(Step, task) -> ActionChunk` in closed loop on held-out scenes;
- `oracle_predictor`: the scripted demonstrator's plan served as chunks (tests `evaluate_policy` without a
  model);
- `mvvdp evaluate`: `evaluate_policy` for a checkpoint, a per-episode table and the success rate.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from mvvdp_core.actions import ActionChunk
from mvvdp_core.data.episode import Episode, Step
from mvvdp_core.data.record import demo_plan, record_step
from mvvdp_core.execution import ChunkExecutor, ExecutorConfig, TimedChunk
from mvvdp_core.rotations import euler_to_quaternion, matrix_to_quaternion, quaternion_to_euler
from mvvdp_core.safety import DEFAULT_CONTROL_RATE, PoseTarget, SafetyLimits
from mvvdp_core.sim.franka import MAX_GRIPPER_WIDTH, FrankaSim
from mvvdp_core.sim.pick import PickScript, PickTask

Predictor = Callable[[Step, str], ActionChunk]
CHUNK_STEPS = 24  # steps per chunk, as the policy predicts them


@dataclass(frozen=True)
class LoopConfig:
    """The executor node's settings that matter in simulation (its defaults)."""

    control_rate: float = DEFAULT_CONTROL_RATE  # Hz
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)  # preview mode: offer + approve
    limits: SafetyLimits = field(default_factory=SafetyLimits)
    gripper_open_width: float = MAX_GRIPPER_WIDTH  # m sent for "open"
    gripper_closed_width: float = 0.0  # m sent for "closed"

    def __post_init__(self) -> None:
        if not (np.isfinite(self.control_rate) and self.control_rate > 0):
            raise ValueError(f"control_rate must be > 0 Hz, got {self.control_rate!r}")
        if self.executor.mode != "preview":
            raise ValueError("the closed loop approves each chunk itself: the executor mode must be preview")
        if not self.gripper_open_width > self.gripper_closed_width >= 0:
            raise ValueError("gripper widths must satisfy open > closed >= 0")

    @property
    def period(self) -> float:
        return 1.0 / self.control_rate


def timed_chunk(chunk: ActionChunk, chunk_id: int | None = None) -> TimedChunk:
    """Core ActionChunk (absolute Euler xyz, gripper 0/1) -> the executor's TimedChunk, as the ROS message
    path converts it (mvvdp_ros.conversions.chunk_to_msg / chunk_from_msg)."""
    return TimedChunk(
        chunk_id=int(chunk.chunk_id if chunk_id is None else chunk_id),
        stamp=float(chunk.stamp),
        positions=np.asarray(chunk.positions, dtype=np.float64),
        quaternions=euler_to_quaternion(np.asarray(chunk.euler, dtype=np.float64)),
        gripper=np.asarray(chunk.gripper, dtype=np.float64),
        time_from_start=np.asarray(chunk.time_from_start, dtype=np.float64),
        confidence=float(chunk.confidence),
    )


class SimLoop:
    """A FrankaSim driven through ChunkExecutor at the control rate, clocked by the simulation."""

    def __init__(self, sim: FrankaSim, config: LoopConfig | None = None) -> None:
        self.sim = sim
        self.config = config or LoopConfig()
        self.physics_steps = max(int(round(self.config.period / sim.timestep)), 1)
        self.executor = ChunkExecutor(self.config.executor, self.config.limits)
        self._ticks = 0
        self._next_id = 1
        self.refused: list[str] = []  # chunks the executor did not run, with its reason
        self.trace: list[tuple[float, np.ndarray]] = [(0.0, sim.ee_pose()[0])]  # (time, measured position)

    @property
    def dt(self) -> float:
        """Seconds per control period (a whole number of physics steps)."""
        return self.physics_steps * self.sim.timestep

    @property
    def now(self) -> float:
        """Seconds since the last reset, on the executor's clock (ticks x dt)."""
        return self._ticks * self.dt

    def reset(self, seed: int | None) -> None:
        """New scene for `seed` and a fresh executor (nothing sent before the first chunk)."""
        self.sim.reset(seed)
        self.executor = ChunkExecutor(self.config.executor, self.config.limits)
        self._ticks = 0
        self.refused.clear()
        self.trace = [(0.0, self.sim.ee_pose()[0])]

    def gripper_closed(self) -> bool:
        """The last commanded gripper state (as recorded in a Step)."""
        command = self.executor.safety.last_command
        return command is not None and command.gripper < self.config.limits.gripper_threshold

    def observe(self) -> Step:
        """The current observation, rendered like a recorded step."""
        return record_step(self.sim, self.gripper_closed())

    def measured(self) -> PoseTarget:
        """The measured ee pose and gripper opening, as the executor node builds them from the topics."""
        position, quaternion = self.sim.ee_pose()
        cfg = self.config
        span = cfg.gripper_open_width - cfg.gripper_closed_width
        opening = float(np.clip((self.sim.gripper_width() - cfg.gripper_closed_width) / span, 0.0, 1.0))
        return PoseTarget(position, quaternion, opening)

    def tick(self) -> None:
        """One control period: state in, the executor's command out to the controller, physics on."""
        now = self.now
        self.executor.update_state(self.measured(), now)
        self.executor.heartbeat(now)  # the policy is this process: always alive
        command = self.executor.tick(now, self.dt)
        self.executor.events.clear()
        if command.target is not None:
            cfg = self.config
            self.sim.set_target_pose(command.target.position, command.target.quaternion)
            span = cfg.gripper_open_width - cfg.gripper_closed_width
            self.sim.set_gripper_width(cfg.gripper_closed_width + command.target.gripper * span)
        self.sim.step(self.physics_steps)
        self._ticks += 1
        self.trace.append((self.now, self.sim.ee_pose()[0]))

    def position_at(self, time: float) -> np.ndarray:
        """The measured end-effector position at the control period boundary nearest `time`."""
        times = np.array([t for t, _ in self.trace])
        return self.trace[int(np.argmin(np.abs(times - time)))][1]

    def run_for(self, seconds: float, on_tick: Callable[[], None] | None = None) -> None:
        """Tick for `seconds` (rounded to whole periods), calling on_tick after each period."""
        for _ in range(max(int(math.ceil(seconds / self.dt - 1e-9)), 0)):
            self.tick()
            if on_tick is not None:
                on_tick()

    def execute(self, chunk: ActionChunk | TimedChunk, steps: int | None = None) -> bool:
        """Offer and approve a chunk now, then run until its step `steps` (default: the last) is due.

        Returns whether the executor accepted it; a refused chunk is logged in `refused` and the robot keeps
        doing what it did (holding, or nothing before the first chunk) for that time.
        """
        timed = timed_chunk(chunk, self._next_id) if isinstance(chunk, ActionChunk) else chunk
        self._next_id = timed.chunk_id + 1
        count = len(timed.time_from_start) if steps is None else int(steps)
        if not 1 <= count <= len(timed.time_from_start):
            raise ValueError(f"steps must be in [1, {len(timed.time_from_start)}], got {steps!r}")
        now = self.now
        self.executor.update_state(self.measured(), now)
        self.executor.heartbeat(now)
        self.executor.offer(timed, "pending", now)
        accepted, message = self.executor.approve(timed.chunk_id, True, now)
        self.executor.events.clear()
        if not accepted:
            self.refused.append(message)
        self.run_for(float(timed.time_from_start[count - 1]))
        return accepted

    def hold(self, seconds: float, task: PickTask) -> list[float]:
        """Stop (hold the measured pose, keep the gripper) for `seconds`; the target cube's height at the
        start and after every period."""
        self.executor.stop(self.now)
        self.executor.events.clear()
        heights = [float(task.target_pose(self.sim)[0][2])]
        self.run_for(seconds, lambda: heights.append(float(task.target_pose(self.sim)[0][2])))
        return heights


@dataclass(frozen=True)
class EpisodeOutcome:
    """One closed-loop or replayed episode."""

    seed: int
    success: bool
    lift: float  # final height of the target cube above its resting height (m)
    distance: float  # final distance between the end effector and the cube centre (m)
    chunks: int  # chunks offered
    refused: int  # chunks the executor did not run
    tracking_error: float = math.nan  # replay: largest distance between the arm and the recorded step (m)
    cube_xy: tuple[float, float] = (math.nan, math.nan)  # the target cube's resting position (m)
    first_goal_xy: tuple[float, float] = (math.nan, math.nan)  # where the first chunk ends (m)


@dataclass(frozen=True)
class Evaluation:
    """Per-episode outcomes and the mean figures."""

    episodes: list[EpisodeOutcome]

    @property
    def success_rate(self) -> float:
        return float(np.mean([e.success for e in self.episodes])) if self.episodes else 0.0

    @property
    def mean_lift(self) -> float:
        return float(np.mean([e.lift for e in self.episodes])) if self.episodes else math.nan

    @property
    def mean_distance(self) -> float:
        return float(np.mean([e.distance for e in self.episodes])) if self.episodes else math.nan

    def cube_following(self) -> dict[str, float]:
        """Does the first chunk go where the cube is? Across episodes: the mean xy distance between the first
        chunk's end and the cube, the spread (std) of each, and their correlation per axis (NaN with fewer
        than 3 episodes or no spread). A policy blind to the cube ends its first chunks in one place."""
        cubes = np.array([e.cube_xy for e in self.episodes], dtype=float).reshape(-1, 2)
        goals = np.array([e.first_goal_xy for e in self.episodes], dtype=float).reshape(-1, 2)
        keep = np.isfinite(cubes).all(axis=1) & np.isfinite(goals).all(axis=1)
        cubes, goals = cubes[keep], goals[keep]
        if not len(cubes):
            return {"episodes": 0}
        distance = float(np.linalg.norm(goals - cubes, axis=1).mean())
        figures: dict[str, float] = {"episodes": len(cubes), "mean_goal_to_cube_m": distance}
        for axis, name in enumerate("xy"):
            goal_std, cube_std = float(goals[:, axis].std()), float(cubes[:, axis].std())
            varied = len(cubes) >= 3 and goal_std > 1e-9 and cube_std > 1e-9
            corr = float(np.corrcoef(goals[:, axis], cubes[:, axis])[0, 1]) if varied else math.nan
            figures[f"goal_std_{name}_m"], figures[f"cube_std_{name}_m"] = goal_std, cube_std
            figures[f"corr_{name}"] = corr
        return figures

    def to_json(self) -> dict[str, object]:
        return {"success_rate": self.success_rate, "mean_lift": self.mean_lift,
                "mean_distance": self.mean_distance, "cube_following": self.cube_following(),
                "episodes": [asdict(e) for e in self.episodes]}

    def table(self) -> str:
        lines = [f"{'episode':>7} {'seed':>10} {'success':>7} {'lift_m':>7} {'dist_m':>7} {'chunks':>6}"]
        for k, e in enumerate(self.episodes):
            lines.append(f"{k:>7} {e.seed:>10} {str(e.success):>7} {e.lift:>7.3f} {e.distance:>7.3f} "
                         f"{e.chunks:>6}")
        lines.append(f"success {sum(e.success for e in self.episodes)}/{len(self.episodes)} "
                     f"({100 * self.success_rate:.0f} %), mean final distance {self.mean_distance:.3f} m, "
                     f"mean lift {self.mean_lift:.3f} m")
        f = self.cube_following()
        if f["episodes"]:
            lines.append(f"first chunks end {100 * f['mean_goal_to_cube_m']:.1f} cm from the cube on "
                         "average; "
                         f"spread x/y {100 * f['goal_std_x_m']:.1f}/{100 * f['goal_std_y_m']:.1f} cm against "
                         f"the cubes' {100 * f['cube_std_x_m']:.1f}/{100 * f['cube_std_y_m']:.1f} cm; "
                         f"correlation with the cube x {f['corr_x']:.2f}, y {f['corr_y']:.2f}")
        return "\n".join(lines)


def _outcome(loop: SimLoop, task: PickTask, seed: int, start_cube: np.ndarray, chunks: int,
             first_goal: np.ndarray) -> EpisodeOutcome:
    heights = loop.hold(task.hold_time, task)
    cube = task.target_pose(loop.sim)[0]
    distance = float(np.linalg.norm(loop.sim.ee_pose()[0] - cube))
    rest_height = float(start_cube[2])
    return EpisodeOutcome(seed, task.pick_success(rest_height, heights), heights[-1] - rest_height, distance,
                          chunks, len(loop.refused), cube_xy=(float(start_cube[0]), float(start_cube[1])),
                          first_goal_xy=(float(first_goal[0]), float(first_goal[1])))


def episode_chunks(episode: Episode, chunk_steps: int = CHUNK_STEPS) -> list[TimedChunk]:
    """The episode's recorded steps as chunks: chunk c is observed at step c * chunk_steps and holds the
    poses and gripper states of the next chunk_steps steps (the last one repeated past the end), step k at
    k * control_period."""
    if chunk_steps < 1:
        raise ValueError(f"chunk_steps must be >= 1, got {chunk_steps}")
    if len(episode) < 2:
        raise ValueError(f"episode {episode.root} has {len(episode)} steps; a replay needs at least 2")
    period = float(episode.meta.get("control_period", 0.1))
    positions = episode.ee_positions()
    quaternions = matrix_to_quaternion(episode.ee_rotations())
    opening = 1.0 - episode.gripper_closed()
    last = len(episode) - 1
    chunks = []
    for c, start in enumerate(range(0, last, chunk_steps)):
        index = np.minimum(np.arange(start + 1, start + chunk_steps + 1), last)
        chunks.append(TimedChunk(c + 1, start * period, positions[index], quaternions[index], opening[index],
                                 period * np.arange(1, chunk_steps + 1)))
    return chunks


def replay_episode(
    episode: Episode | str | Path,
    chunk_steps: int = CHUNK_STEPS,
    config: LoopConfig | None = None,
    sim: FrankaSim | None = None,
) -> EpisodeOutcome:
    """Replay a recorded episode chunk by chunk through the executor from its initial scene (same seed and
    task scene); success from `PickTask.pick_success` after a final hold."""
    episode = episode if isinstance(episode, Episode) else Episode(episode)
    missing = [key for key in ("seed", "num_objects", "region") if key not in episode.meta]
    if missing:
        raise ValueError(f"episode {episode.root} does not record its pick scene "
                         f"({', '.join(missing)} missing from its meta); it cannot be replayed")
    task = PickTask.from_meta(episode.meta)
    chunks = episode_chunks(episode, chunk_steps)
    own = sim is None
    sim = sim or task.make_sim(32, 32)  # nothing is rendered in a replay
    try:
        loop = SimLoop(sim, config)
        seed = int(episode.meta["seed"])
        loop.reset(seed)
        start_cube = task.target_pose(sim)[0]
        for c, chunk in enumerate(chunks):  # run each chunk up to the episode's last step
            loop.execute(chunk, steps=min(chunk_steps, len(episode) - 1 - c * chunk_steps))
        period = float(chunks[0].time_from_start[0])
        recorded = episode.ee_positions()
        error = max(float(np.linalg.norm(loop.position_at(k * period) - recorded[k]))
                    for k in range(len(episode)))
        outcome = _outcome(loop, task, seed, start_cube, len(chunks), chunks[0].positions[-1])
        return replace(outcome, tracking_error=error)
    finally:
        if own:
            sim.close()


def evaluate_policy(
    predict: Predictor,
    episodes: int,
    seed: int,
    *,
    replan_steps: int | None = None,
    time_limit: float = 12.0,
    task: PickTask | None = None,
    config: LoopConfig | None = None,
    sim: FrankaSim | None = None,
    camera_size: tuple[int, int] = (320, 240),
    progress: Callable[[EpisodeOutcome], None] | None = None,
) -> Evaluation:
    """Closed loop on `episodes` scenes (seeds seed, seed + 1, ...; pick seeds not used for training).

    Each cycle observes, predicts a chunk and executes its first `replan_steps` steps (default: all), until
    `time_limit` seconds have passed; then the executor holds for the task's hold time and the episode is
    scored with `PickTask.pick_success`.
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    if replan_steps is not None and replan_steps < 1:
        raise ValueError(f"replan_steps must be >= 1, got {replan_steps}")
    if not time_limit > 0:
        raise ValueError(f"time_limit must be > 0 seconds, got {time_limit!r}")
    task = task or PickTask()
    own = sim is None
    sim = sim or task.make_sim(*camera_size)
    outcomes = []
    try:
        loop = SimLoop(sim, config)
        for k in range(episodes):
            loop.reset(seed + k)
            start_cube = task.target_pose(sim)[0]
            chunks, first_goal = 0, np.full(3, math.nan)
            while loop.now < time_limit - 1e-9:
                chunk = predict(loop.observe(), task.name)
                if chunks == 0:
                    first_goal = np.asarray(chunk.positions[-1], dtype=float)
                chunks += 1
                steps = len(chunk) if replan_steps is None else min(replan_steps, len(chunk))
                loop.execute(chunk, steps=steps)
            outcome = _outcome(loop, task, seed + k, start_cube, chunks, first_goal)
            outcomes.append(outcome)
            if progress is not None:
                progress(outcome)
    finally:
        if own:
            sim.close()
    return Evaluation(outcomes)


def oracle_predictor(
    sim: FrankaSim,
    task: PickTask | None = None,
    script: PickScript | None = None,
    control_period: float = 0.1,
    horizon: int = CHUNK_STEPS,
) -> Predictor:
    """The scripted demonstrator's plan as chunks (the policy's format): planned from the scene of `sim`
    when an episode starts (an observation at time 0), then served from the observation's time on.
    Chunk step i (at i * control_period) is the plan's target for the period ending then."""
    task = task or PickTask()
    script = script or PickScript()
    state: dict[str, list] = {}

    def predict(step: Step, _task: str) -> ActionChunk:
        if "plan" not in state or step.timestamp < 0.5 * control_period:
            state["plan"] = demo_plan(sim, task, script, control_period)
        plan = state["plan"]
        first = int(round(step.timestamp / control_period))
        index = np.minimum(np.arange(first, first + horizon), len(plan) - 1)
        quaternions = np.stack([plan[i][1] for i in index])
        return ActionChunk(
            positions=np.stack([plan[i][0] for i in index]),
            euler=quaternion_to_euler(quaternions),
            gripper=np.array([0 if plan[i][2] else 1 for i in index]),
            time_from_start=control_period * np.arange(1, horizon + 1),
            stamp=step.timestamp,
            confidence=1.0,
            step_confidence=np.ones(horizon),
        )

    return predict
