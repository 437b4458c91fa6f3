"""The pick task: one scene definition, the scripted demonstrator's plan and the success check.

Recording (`mvvdp record`), replay and closed-loop evaluation (`mvvdp_core.evaluation.closed_loop`) and the
simulated bringup (`sim_robot` node) all build their scene from `PickTask`: the red cube `object0` is always
the target, optionally among distractor cubes, placed uniformly in `region` with a random yaw.

Success (`PickTask.pick_success`): the target cube's centre is at least `min_lift` above its resting height
at every sample of a final hold of `hold_time` seconds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
from scipy.spatial.transform import Rotation, Slerp

if TYPE_CHECKING:
    from mvvdp_core.sim.franka import FrankaSim, SimConfig

# One planned control period: target position (3,), target quaternion xyzw (4,), gripper closed.
PlanStep = tuple[np.ndarray, np.ndarray, bool]


@dataclass(frozen=True)
class PickTask:
    """Scene and success definition of "pick up the red cube"."""

    name: str = "pick"  # task key of the episodes and of the policy's text embeddings
    instruction: str = "pick up the red cube"
    target: str = "object0"  # the red cube
    num_objects: int = 1  # the target plus num_objects - 1 distractor cubes
    region: tuple[tuple[float, float], tuple[float, float]] = ((0.35, 0.65), (-0.25, 0.25))  # x, y (m)
    max_yaw: float = math.pi  # cube yaw drawn in [-max_yaw, max_yaw] (radians)
    min_lift: float = 0.05  # metres above the resting height
    hold_time: float = 0.5  # seconds the cube must stay lifted at the end

    def __post_init__(self) -> None:
        if not 1 <= self.num_objects <= 5:
            raise ValueError(f"num_objects must be in [1, 5] (the red cube plus distractors), "
                             f"got {self.num_objects}")
        if self.target != "object0":
            raise ValueError(f"the pick target is the red cube object0, got {self.target!r}")
        if not (self.min_lift > 0 and self.hold_time >= 0):
            raise ValueError(f"min_lift must be > 0 and hold_time >= 0, "
                             f"got {self.min_lift} and {self.hold_time}")

    def scene_meta(self) -> dict[str, object]:
        """The scene fields an episode's meta records (JSON), read back by `from_meta`."""
        return {"task": self.name, "instruction": self.instruction, "target": self.target,
                "num_objects": self.num_objects, "region": [list(r) for r in self.region],
                "max_yaw": self.max_yaw}

    @classmethod
    def from_meta(cls, meta: dict[str, object]) -> PickTask:
        """The task an episode was recorded with (fields missing from older episodes take the defaults)."""
        fields = {}
        for key, name in (("task", "name"), ("instruction", "instruction"), ("num_objects", "num_objects"),
                          ("max_yaw", "max_yaw")):
            if key in meta:
                fields[name] = meta[key]
        if "region" in meta:
            (x0, x1), (y0, y1) = meta["region"]  # type: ignore[misc]
            fields["region"] = ((float(x0), float(x1)), (float(y0), float(y1)))
        return cls(**fields)  # type: ignore[arg-type]

    def sim_config(self, width: int = 320, height: int = 240, **overrides: object) -> SimConfig:
        """The simulator configuration of this task's scene (cameras width x height)."""
        from mvvdp_core.sim.franka import SimConfig

        config = SimConfig(width=width, height=height, num_objects=self.num_objects,
                           object_region=self.region, object_max_yaw=self.max_yaw)
        return replace(config, **overrides) if overrides else config

    def make_sim(self, width: int = 320, height: int = 240) -> FrankaSim:
        from mvvdp_core.sim.franka import FrankaSim

        return FrankaSim(self.sim_config(width, height))

    def target_pose(self, sim: FrankaSim) -> tuple[np.ndarray, np.ndarray]:
        """The target cube's centre (3,) and quaternion xyzw (4,)."""
        poses = sim.object_poses()
        if self.target not in poses:
            raise ValueError(f"the scene has no {self.target} (objects: {sorted(poses)})")
        return poses[self.target]

    def hold_samples(self, period: float) -> int:
        """How many samples, `period` seconds apart, cover the final hold (both ends included)."""
        return int(math.ceil(self.hold_time / period - 1e-9)) + 1

    def pick_success(self, rest_height: float, heights: Sequence[float]) -> bool:
        """True when every cube-centre height sampled over the final hold is >= rest_height + min_lift."""
        heights = np.asarray(heights, dtype=np.float64)
        if heights.size == 0 or not np.isfinite(heights).all() or not np.isfinite(rest_height):
            return False
        return bool(heights.min() >= rest_height + self.min_lift)


@dataclass(frozen=True)
class PickScript:
    """The scripted demonstrator: above the cube (hand turned to the cube's faces), down, close, lift, hold.

    The target moves along straight segments slower than the simulated controller's speed limit (0.3 m/s), so
    the arm follows it closely, and dwells after each segment so the arm has arrived before the gripper acts.
    """

    approach_height: float = 0.10  # metres above the cube centre
    grasp_height: float = 0.0  # fingertip centre relative to the cube centre
    lift_height: float = 0.15
    speed: float = 0.2  # m/s from the start to above the cube
    slow_speed: float = 0.1  # m/s going down to the cube and lifting it
    angular_speed: float = 1.0  # rad/s turning the hand
    settle_time: float = 0.3  # s dwelling at the end of a motion before the next phase
    close_time: float = 0.6  # s at the grasp pose with the gripper closing before lifting
    hold_time: float = 0.5  # s holding the lifted cube at the end

    def __post_init__(self) -> None:
        for name in ("speed", "slow_speed", "angular_speed"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("settle_time", "close_time", "hold_time"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0 seconds, got {getattr(self, name)!r}")


def grasp_yaw(cube_quaternion: np.ndarray) -> float:
    """The cube's yaw folded into [-45, 45) degrees, in radians: the hand turn that puts the fingers on
    two opposite faces."""
    yaw = float(Rotation.from_quat(np.asarray(cube_quaternion, dtype=np.float64)).as_euler("xyz")[2])
    return (yaw + math.pi / 4) % (math.pi / 2) - math.pi / 4


def pick_targets(
    start_position: np.ndarray,
    start_quaternion: np.ndarray,
    cube_position: np.ndarray,
    cube_quaternion: np.ndarray,
    script: PickScript,
    control_period: float,
) -> list[PlanStep]:
    """The demonstrator's target for every control period, from the start pose of the end effector.

    The hand keeps its start orientation turned about the vertical by `grasp_yaw` of the cube.
    """
    if not control_period > 0:
        raise ValueError(f"control_period must be > 0 seconds, got {control_period!r}")
    start = np.asarray(start_position, dtype=np.float64)
    cube = np.asarray(cube_position, dtype=np.float64)
    start_rot = Rotation.from_quat(np.asarray(start_quaternion, dtype=np.float64))
    turn = grasp_yaw(cube_quaternion)
    grasp_rot = Rotation.from_euler("z", turn) * start_rot
    above = cube + [0.0, 0.0, script.approach_height]
    grasp = cube + [0.0, 0.0, script.grasp_height]
    lifted = cube + [0.0, 0.0, script.lift_height]
    plan: list[PlanStep] = []

    def periods(seconds: float) -> int:
        return int(math.ceil(seconds / control_period - 1e-9))

    def move(a: np.ndarray, b: np.ndarray, rot_a: Rotation, rot_b: Rotation, speed: float,
             closed: bool) -> None:
        angle = float((rot_a.inv() * rot_b).magnitude())
        n = max(periods(max(np.linalg.norm(b - a) / speed, angle / script.angular_speed)), 1)
        slerp = Slerp([0.0, 1.0], Rotation.concatenate([rot_a, rot_b]))
        for j in range(1, n + 1):
            plan.append((a + (b - a) * (j / n), slerp(j / n).as_quat(), closed))

    def dwell(position: np.ndarray, rot: Rotation, seconds: float, closed: bool) -> None:
        plan.extend((position.copy(), rot.as_quat(), closed) for _ in range(periods(seconds)))

    move(start, above, start_rot, grasp_rot, script.speed, False)
    dwell(above, grasp_rot, script.settle_time, False)
    move(above, grasp, grasp_rot, grasp_rot, script.slow_speed, False)
    dwell(grasp, grasp_rot, script.settle_time, False)
    dwell(grasp, grasp_rot, script.close_time, True)
    move(grasp, lifted, grasp_rot, grasp_rot, script.slow_speed, True)
    dwell(lifted, grasp_rot, script.hold_time, True)
    return plan


CUBE_LAYOUTS = ("random", "spread")  # recorded episodes: a cube per scene seed, or `spread_positions`


def spread_positions(region: Sequence[Sequence[float]], count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` (x, y) cube positions spread over `region` ((x_min, x_max), (y_min, y_max)): a grid of cells
    shaped like the region, `count` of its cells drawn without replacement, one uniform point in each.

    Independent uniform draws leave gaps and clusters; a policy learns the positions its demonstrations
    cover."""
    bounds = np.asarray(region, dtype=np.float64)
    if bounds.shape != (2, 2) or not np.isfinite(bounds).all() or np.any(bounds[:, 0] > bounds[:, 1]):
        raise ValueError(f"region must be ((x_min, x_max), (y_min, y_max)), got {region!r}")
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    width, depth = np.maximum(bounds[:, 1] - bounds[:, 0], 1e-9)
    columns = int(np.clip(round(math.sqrt(count * width / depth)), 1, count))
    rows = math.ceil(count / columns)
    cells = rng.choice(columns * rows, size=count, replace=False)
    corner = np.stack([cells % columns, cells // columns], axis=1).astype(np.float64)
    unit = (corner + rng.uniform(size=(count, 2))) / [columns, rows]
    return bounds[:, 0] + unit * (bounds[:, 1] - bounds[:, 0])


def detour_point(rng: np.random.Generator, cube_position: np.ndarray, offset: tuple[float, float],
                 heights: tuple[float, float] = (0.04, 0.14)) -> np.ndarray:
    """A point beside the cube where a wrong approach could have ended: `offset` (min, max) metres from the
    cube's vertical in a random direction, `heights` (min, max) metres above its centre."""
    low, high = offset
    if not 0 <= low <= high:
        raise ValueError(f"detour offset must satisfy 0 <= min <= max metres, got {offset}")
    if not 0 <= heights[0] <= heights[1]:
        raise ValueError(f"detour heights must satisfy 0 <= min <= max metres, got {heights}")
    angle = rng.uniform(-math.pi, math.pi)
    radius = rng.uniform(low, high)
    return np.asarray(cube_position, dtype=np.float64) + [
        radius * math.cos(angle), radius * math.sin(angle), rng.uniform(*heights)
    ]


def detour_targets(
    start_position: np.ndarray,
    start_quaternion: np.ndarray,
    point: np.ndarray,
    script: PickScript,
    control_period: float,
) -> list[PlanStep]:
    """Straight to `point` at the approach speed with the start orientation and the gripper open, then a
    settle: the opening of a recovery demonstration, whose pick (`pick_targets` from `point`) follows."""
    if not control_period > 0:
        raise ValueError(f"control_period must be > 0 seconds, got {control_period!r}")
    start = np.asarray(start_position, dtype=np.float64)
    point = np.asarray(point, dtype=np.float64)
    quaternion = np.asarray(start_quaternion, dtype=np.float64)
    n = max(int(math.ceil(np.linalg.norm(point - start) / script.speed / control_period - 1e-9)), 1)
    settle = int(math.ceil(script.settle_time / control_period - 1e-9))
    plan = [(start + (point - start) * (j / n), quaternion.copy(), False) for j in range(1, n + 1)]
    return plan + [(point.copy(), quaternion.copy(), False) for _ in range(settle)]
