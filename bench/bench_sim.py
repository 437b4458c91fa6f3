"""Speed of the simulated FR3: ms per physics step (with pose tracking) and per three-camera cloud render.

python bench/bench_sim.py [--width 320 --height 240 --steps 2000 --renders 20]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from mvvdp_core.sim.franka import FrankaSim, SimConfig  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--steps", type=int, default=2000, help="physics steps to time")
    parser.add_argument("--renders", type=int, default=20, help="three-camera renders to time")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.renders < 1:
        parser.error("--steps and --renders must be positive")

    with FrankaSim(SimConfig(width=args.width, height=args.height)) as sim:
        start_pos, quat = sim.ee_pose()
        step_times = []
        for i in tqdm(range(args.steps), desc="physics", unit="step"):
            if i % 500 == 0:  # keep the arm moving so the IK does real work
                sim.set_target_pose(start_pos + [0.1 * np.sin(i), 0.1 * np.cos(i), -0.1], quat)
            t0 = time.perf_counter()
            sim.step(1)
            step_times.append(time.perf_counter() - t0)

        sim.render_clouds()  # first render creates the GL context
        render_times = []
        for _ in tqdm(range(args.renders), desc="render", unit="frame"):
            t0 = time.perf_counter()
            sim.render_clouds()
            render_times.append(time.perf_counter() - t0)

    step_ms = 1e3 * np.asarray(step_times)
    render_ms = 1e3 * np.asarray(render_times)
    gl = os.environ.get("MUJOCO_GL")
    print(
        f"physics step ({1 / sim.timestep:.0f} Hz, incl. IK): median {np.median(step_ms):.3f} ms, "
        f"p95 {np.percentile(step_ms, 95):.3f} ms; "
        f"real-time factor {sim.timestep * 1e3 / np.median(step_ms):.1f}x"
    )
    print(
        f"3-camera render {args.width}x{args.height} ({gl}): median {np.median(render_ms):.1f} ms, "
        f"p95 {np.percentile(render_ms, 95):.1f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
