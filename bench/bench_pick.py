"""Pick task figures: scripted demonstrator success per seed range, replay of recorded demos through the
executor path (ChunkExecutor + SafetyFilter + simulated FR3) against the demos' own success, and the
demonstrator's plan served as chunks in closed loop (oracle predictor).

python bench/bench_pick.py [--demo-seeds 0:50 1000:1050] [--replay 10 --replay-seed 2000]
    [--oracle 10 --oracle-seed 3000] [--num-objects 1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile

import torch

from mvvdp_core.data.episode import list_episodes
from mvvdp_core.data.record import record_pick_demos, run_pick_demo
from mvvdp_core.evaluation.closed_loop import evaluate_policy, oracle_predictor, replay_episode
from mvvdp_core.sim.pick import PickScript, PickTask


def seed_range(text: str) -> range:
    start, stop = (int(v) for v in text.split(":"))
    return range(start, stop)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--demo-seeds", nargs="*", type=seed_range, default=[range(0, 50), range(1000, 1050)],
                        help="seed ranges start:stop for the demonstrator (no rendering)")
    parser.add_argument("--replay", type=int, default=10, help="demos to record (64x48 cameras) and replay")
    parser.add_argument("--replay-seed", type=int, default=2000)
    parser.add_argument("--oracle", type=int, default=10, help="closed-loop episodes of the oracle predictor")
    parser.add_argument("--oracle-seed", type=int, default=3000)
    parser.add_argument("--num-objects", type=int, default=PickTask.num_objects)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    task, script = PickTask(num_objects=args.num_objects), PickScript()

    sim = task.make_sim(32, 32)
    try:
        for seeds in args.demo_seeds:
            failures = []
            for seed in seeds:
                sim.reset(seed)
                success, lift = run_pick_demo(sim, task, script, 0.1)
                if not success:
                    failures.append(f"{seed} (lift {lift:.3f} m)")
            done = len(seeds) - len(failures)
            failed = f"; failed: {', '.join(failures)}" if failures else ""
            print(f"demonstrator seeds {seeds.start}-{seeds.stop - 1}: {done}/{len(seeds)} "
                  f"({100 * done / len(seeds):.0f} %){failed}")
    finally:
        sim.close()

    if args.replay > 0:
        with tempfile.TemporaryDirectory() as out:
            record_pick_demos(out, args.replay, args.replay_seed, camera_size=(64, 48), task=task)
            demos = replays = both = 0
            for episode in list_episodes(out):
                outcome = replay_episode(episode)
                demos += bool(episode.success)
                replays += outcome.success
                both += bool(episode.success) and outcome.success
                print(f"  seed {episode.meta['seed']}: demo {episode.success}, replay {outcome.success} "
                      f"(lift {outcome.lift:.3f} m, final ee-cube distance {outcome.distance:.3f} m, "
                      f"largest distance from the recorded path {outcome.tracking_error:.3f} m)")
            last = args.replay_seed + args.replay - 1
            print(f"replay through the executor, seeds {args.replay_seed}-{last}: "
                  f"{replays}/{args.replay} lifted; demos {demos}/{args.replay}; both {both}")

    if args.oracle > 0:
        with task.make_sim(48, 32) as sim:
            for replan in (None, 8):
                result = evaluate_policy(oracle_predictor(sim, task), args.oracle, args.oracle_seed, sim=sim,
                                         replan_steps=replan, time_limit=7.2)
                print(f"oracle closed loop (re-plan after {replan or 'all 24'} steps), seeds "
                      f"{args.oracle_seed}-{args.oracle_seed + args.oracle - 1}: "
                      f"{sum(e.success for e in result.episodes)}/{args.oracle}, "
                      f"mean final ee-cube distance {result.mean_distance:.3f} m")
    return 0


if __name__ == "__main__":
    sys.exit(main())
