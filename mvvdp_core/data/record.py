"""`mvvdp record`: scripted pick demonstrations in the simulated FR3 scene, written as episodes.

Each demonstration follows the pick task's scripted plan (`mvvdp_core.sim.pick`): above the red cube with the
hand turned to its faces, down to it, close the gripper, lift, hold. Every control period one step is recorded
(the three camera clouds with their extrinsics, the end-effector pose, the gripper) and then that period's
target is sent. The episode's summary holds `success` from `PickTask.pick_success`.

Recovery demonstrations (`detour_offset`) first go to a random point beside the cube, where a wrong approach
could have ended, and pick from there. Their meta's `train_from_step` is the step at which the arm has
reached that point: training conditions only on steps from there on, so a policy learns the correction and
never the detour.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from mvvdp_core.data.recorder import EpisodeWriter, Recorder
from mvvdp_core.geometry.workspace import Workspace
from mvvdp_core.rotations import quaternion_to_matrix
from mvvdp_core.sim.pick import (
    CUBE_LAYOUTS,
    PickScript,
    PickTask,
    PlanStep,
    detour_point,
    detour_targets,
    pick_targets,
    spread_positions,
)
from mvvdp_core.step import CameraCloud, Step

if TYPE_CHECKING:
    from mvvdp_core.sim.franka import FrankaSim

__all__ = ["PickScript", "PickTask", "PlanStep", "demo_plan", "pick_targets", "record_pick_demos",
           "record_step", "run_pick_demo"]


def demo_plan(
    sim: FrankaSim,
    task: PickTask,
    script: PickScript,
    control_period: float,
    detour: np.ndarray | None = None,
) -> list[PlanStep]:
    """The scripted plan for the scene as it is now (call right after `sim.reset`), through the point
    `detour` first when given (the first `len(detour_targets(...))` steps)."""
    cube_position, cube_quaternion = task.target_pose(sim)
    start_position, start_quaternion = sim.ee_pose()
    opening: list[PlanStep] = []
    if detour is not None:
        opening = detour_targets(start_position, start_quaternion, detour, script, control_period)
        start_position = opening[-1][0]
    return opening + pick_targets(start_position, start_quaternion, cube_position, cube_quaternion, script,
                                  control_period)


def record_step(sim: FrankaSim, gripper_closed: bool) -> Step:
    """The simulator's current state as a recorded step."""
    extrinsics = sim.camera_extrinsics()
    clouds = {
        name: CameraCloud(points, colors, extrinsics[name])
        for name, (points, colors) in zip(sim.camera_names, sim.render_clouds(), strict=True)
    }
    position, quat = sim.ee_pose()
    return Step(clouds, position, quaternion_to_matrix(quat), sim.gripper_width(), gripper_closed, sim.time)


def run_pick_demo(
    sim: FrankaSim,
    task: PickTask,
    script: PickScript,
    control_period: float,
    observe: Callable[[bool], object] | None = None,
    plan: list[PlanStep] | None = None,
) -> tuple[bool, float]:
    """Run the scripted pick on the scene as reset (or `plan`, a `demo_plan` of it); returns (success, final
    lift of the cube in metres).

    `observe(gripper_closed)` is called at the start of every control period, before its target is sent, and
    once at the end (the recorder writes a step there).
    """
    from mvvdp_core.sim.franka import MAX_GRIPPER_WIDTH

    physics_steps = max(int(round(control_period / sim.timestep)), 1)
    rest_height = float(task.target_pose(sim)[0][2])
    closed, heights = False, []
    if plan is None:
        plan = demo_plan(sim, task, script, control_period)
    for position, quaternion, close in plan:
        if observe is not None:
            observe(closed)
        heights.append(float(task.target_pose(sim)[0][2]))
        closed = close
        sim.set_target_pose(position, quaternion)
        sim.set_gripper_width(0.0 if close else MAX_GRIPPER_WIDTH)
        sim.step(physics_steps)
    if observe is not None:
        observe(closed)
    heights.append(float(task.target_pose(sim)[0][2]))
    success = task.pick_success(rest_height, heights[-task.hold_samples(control_period):])
    return success, heights[-1] - rest_height


def record_pick_demos(
    out: str | Path,
    episodes: int,
    seed: int = 0,
    control_period: float = 0.1,
    camera_size: tuple[int, int] = (320, 240),
    script: PickScript | None = None,
    task: PickTask | None = None,
    detour_offset: tuple[float, float] | None = None,
    layout: str = "random",
) -> list[Path]:
    """Record `episodes` scripted picks (scene seeds seed, seed + 1, ...); returns the episode folders.

    `layout` places the target cube: "random" draws it from the scene seed, "spread" spreads the episodes'
    cubes over the task's region (`spread_positions`, drawn from `seed`); the yaw comes from the scene seed.

    With `detour_offset` (min, max metres) every pick is a recovery demonstration through a point that far
    from the cube's vertical (`detour_point`, drawn from the scene seed)."""
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    if not control_period > 0:
        raise ValueError(f"control_period must be > 0 seconds, got {control_period!r}")
    if layout not in CUBE_LAYOUTS:
        raise ValueError(f"layout must be one of {CUBE_LAYOUTS}, got {layout!r}")
    script = script or PickScript()
    task = task or PickTask()
    cube_xy = None if layout == "random" else spread_positions(task.region, episodes,
                                                                 np.random.default_rng([seed, 2]))
    workspace = Workspace()
    sim = task.make_sim(*camera_size)
    recorder = Recorder(out)
    paths = []
    try:
        for k in tqdm(range(episodes), desc="record"):
            sim.reset(seed + k, first_object_xy=None if cube_xy is None else cube_xy[k])
            detour, recovery = None, {}
            if detour_offset is not None:
                rng = np.random.default_rng([seed + k, 1])
                detour = detour_point(rng, task.target_pose(sim)[0], detour_offset)
                start_position, start_quaternion = sim.ee_pose()
                opening = detour_targets(start_position, start_quaternion, detour, script, control_period)
                recovery = {"train_from_step": len(opening), "detour_point": detour.tolist()}
            plan = demo_plan(sim, task, script, control_period, detour)
            writer = recorder.start_episode(
                list(sim.camera_names), seed=seed + k, control_period=control_period,
                workspace_center=list(workspace.center), workspace_edge=workspace.edge, **task.scene_meta(),
                layout=layout, **recovery,
            )  # fmt: skip
            def observe(closed: bool, writer: EpisodeWriter = writer) -> None:
                writer.add_step(record_step(sim, closed))

            success, lift = run_pick_demo(sim, task, script, control_period, observe, plan)
            writer.close(success=success, final_lift=lift)
            paths.append(writer.root)
    finally:
        sim.close()
    return paths
