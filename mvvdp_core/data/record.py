"""`mvvdp record`: scripted pick demonstrations in the simulated FR3 scene, written as episodes.

Each demonstration picks one cube: above it, down to it, close the gripper, lift. The end-effector target
moves through these waypoints (the simulator's controller limits the speed) and every control period one step
is recorded: the three camera clouds with their extrinsics, the end-effector pose and the gripper.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from mvvdp_core.data.episode import CameraCloud, Step
from mvvdp_core.data.recorder import Recorder
from mvvdp_core.geometry.workspace import Workspace
from mvvdp_core.rotations import quaternion_to_matrix

if TYPE_CHECKING:
    from mvvdp_core.sim.franka import FrankaSim

PICK_TASK = "pick up the cube"


@dataclass(frozen=True)
class PickScript:
    """Waypoint timing of one scripted pick, in control periods."""

    approach_height: float = 0.12  # metres above the cube centre
    grasp_height: float = 0.0
    lift_height: float = 0.15
    approach_steps: int = 12
    descend_steps: int = 8
    close_steps: int = 4
    lift_steps: int = 8

    @property
    def total_steps(self) -> int:
        return self.approach_steps + self.descend_steps + self.close_steps + self.lift_steps


def pick_targets(cube: np.ndarray, script: PickScript) -> list[tuple[np.ndarray, bool]]:
    """(target position, gripper closed) for every control period of the script."""
    above = cube + [0.0, 0.0, script.approach_height]
    grasp = cube + [0.0, 0.0, script.grasp_height]
    lifted = cube + [0.0, 0.0, script.lift_height]
    plan = [(above, False)] * script.approach_steps + [(grasp, False)] * script.descend_steps
    plan += [(grasp, True)] * script.close_steps + [(lifted, True)] * script.lift_steps
    return plan


def record_step(sim: FrankaSim, gripper_closed: bool) -> Step:
    """The simulator's current state as a recorded step."""
    extrinsics = sim.camera_extrinsics()
    clouds = {
        name: CameraCloud(points, colors, extrinsics[name])
        for name, (points, colors) in zip(sim.camera_names, sim.render_clouds(), strict=True)
    }
    position, quat = sim.ee_pose()
    return Step(clouds, position, quaternion_to_matrix(quat), sim.gripper_width(), gripper_closed, sim.time)


def record_pick_demos(
    out: str | Path,
    episodes: int,
    seed: int = 0,
    control_period: float = 0.1,
    camera_size: tuple[int, int] = (320, 240),
    script: PickScript | None = None,
) -> list[Path]:
    """Record `episodes` scripted picks (scene seeds seed, seed + 1, ...); returns the episode folders."""
    from mvvdp_core.sim.franka import MAX_GRIPPER_WIDTH, FrankaSim, SimConfig

    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    script = script or PickScript()
    workspace = Workspace()
    sim = FrankaSim(SimConfig(width=camera_size[0], height=camera_size[1]), workspace)
    physics_steps = max(int(round(control_period / sim.timestep)), 1)
    recorder = Recorder(out)
    paths = []
    try:
        for k in tqdm(range(episodes), desc="record"):
            sim.reset(seed + k)
            cubes = sim.object_poses()
            name = sorted(cubes)[k % len(cubes)]
            cube = cubes[name][0]
            _, start_quat = sim.ee_pose()
            writer = recorder.start_episode(
                list(sim.camera_names), task="pick", instruction=PICK_TASK, seed=seed + k, target=name,
                control_period=control_period, workspace_center=list(workspace.center),
                workspace_edge=workspace.edge,
            )  # fmt: skip
            closed = False
            for target, close in pick_targets(cube, script):
                writer.add_step(record_step(sim, closed))
                closed = close
                sim.set_target_pose(target, start_quat)
                sim.set_gripper_width(0.0 if close else MAX_GRIPPER_WIDTH)
                sim.step(physics_steps)
            writer.add_step(record_step(sim, closed))
            lifted = sim.object_poses()[name][0][2] > cube[2] + 0.5 * script.lift_height
            writer.close(success=bool(lifted))
            paths.append(writer.root)
    finally:
        sim.close()
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mvvdp record", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="dataset folder (episodes are added to it)")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--control-period", type=float, default=0.1, help="seconds between recorded steps")
    parser.add_argument("--camera-width", type=int, default=320)
    parser.add_argument("--camera-height", type=int, default=240)
    args = parser.parse_args(argv)
    paths = record_pick_demos(
        args.out, args.episodes, args.seed, args.control_period, (args.camera_width, args.camera_height)
    )
    print(f"recorded {len(paths)} episodes into {args.out}")
    return 0
