"""`mvvdp` command: one entry point, each subcommand implemented by a module's `main(argv)`."""

from __future__ import annotations

import importlib
import sys

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "sim-demo": ("mvvdp_ros.sim_demo", "simulated robot + graph: preview a chunk, approve it, track it"),
    "demo": ("mvvdp_core.demo", "project a synthetic scene into the three views and write PNGs"),
    "bringup": ("mvvdp_ros.bringup", "start the ROS 2 graph (simulated robot by default)"),
    "tiny-checkpoint": ("mvvdp_core.model.checkpoint", "build and save a tiny random checkpoint"),
    "record": ("mvvdp_core.data.record", "record demonstrations from the simulated robot"),
    "check-calibration": ("mvvdp_core.calibration_check", "do the cameras' clouds agree? (ICP, Open3D)"),
    "mcap-to-episodes": ("mvvdp_core.data.mcap_episodes", "MCAP episodes -> episode folders"),
    "encode-prompts": ("mvvdp_core.model.text", "encode task instructions into a checkpoint (local umT5)"),
    "train": ("mvvdp_core.train.cli", "train the video model LoRA and the rotation/gripper head"),
    "memory-plan": ("mvvdp_core.train.memory", "training memory of a config and batch (meta device)"),
    "evaluate": ("mvvdp_core.evaluation.closed_loop", "closed-loop pick evaluation (simulated FR3)"),
    "metaworld": ("mvvdp_core.evaluation.metaworld_harness", "Meta-World seven-task collect/train/evaluate"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        width = max(map(len, SUBCOMMANDS))
        lines = [f"  {name:<{width}}  {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
        print("usage: mvvdp <command> [options]\n\ncommands:\n" + "\n".join(lines))
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(SUBCOMMANDS[argv[0]][0])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
