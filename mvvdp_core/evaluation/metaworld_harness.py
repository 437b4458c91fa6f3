"""Meta-World seven-task harness (paper Table 1): collect expert demos with RGB-D cameras, train, evaluate.

Demonstrations come from Meta-World's scripted expert policies, recorded in the project's episode format
(camera-frame clouds + extrinsics, end-effector pose, gripper), so training reads them exactly like robot
data. Evaluation runs a chunk predictor from random initialisations the demos never saw and counts the
benchmark's success flag. Each predicted chunk becomes Meta-World 4-D actions: the position change towards
each target, scaled by the env's action scale and clipped to [-1, 1], plus the gripper effort (+1 closes).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from mvvdp_core.actions import ActionChunk
from mvvdp_core.data.episode import Step
from mvvdp_core.data.recorder import Recorder
from mvvdp_core.geometry.workspace import Workspace
from mvvdp_core.sim.metaworld_cameras import RGBDCameras

TASKS: tuple[str, ...] = (
    "door-open-v3",
    "door-close-v3",
    "button-press-v3",
    "button-press-topdown-v3",
    "faucet-close-v3",
    "faucet-open-v3",
    "handle-press-v3",
)
TASK_INSTRUCTIONS: dict[str, str] = {
    "door-open-v3": "open the door",
    "door-close-v3": "close the door",
    "button-press-v3": "press the button",
    "button-press-topdown-v3": "press the button from the top",
    "faucet-close-v3": "close the faucet",
    "faucet-open-v3": "open the faucet",
    "handle-press-v3": "press the handle down",
}
# Workspace cubes (centre, edge in m) around the Sawyer hand's reach in the experts' demos (measured on seeds
# 0, 1000 and 2000): the five tasks in front of the robot stay within x -0.21..0.18, y 0.39..0.89,
# z 0.05..0.43; the door tasks swing the hand out to x -0.50 (close) and +0.45 (open).
FRONT_WORKSPACE = ((0.0, 0.65, 0.2), 0.8)
DOOR_WORKSPACE = ((-0.025, 0.65, 0.2), 1.0)
DOOR_TASKS = frozenset({"door-open-v3", "door-close-v3"})
DEMO_SEED = 0  # Meta-World task seeds: demos and evaluation draw initialisations from different seeds
EVAL_SEED = 1000

ChunkPredictor = Callable[[Step, str], ActionChunk]


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known: {', '.join(TASKS)}")


def metaworld_workspace(tasks: Sequence[str], resolution: int = 256) -> Workspace:
    """The cube the tasks' demos are recorded and trained in: the door tasks' wider one where any of them is
    among the tasks (it holds the other five too), else the front one."""
    for task in tasks:
        _check_task(task)
    center, edge = DOOR_WORKSPACE if DOOR_TASKS.intersection(tasks) else FRONT_WORKSPACE
    return Workspace(center=center, edge=edge, resolution=resolution)


def expert_policy(task: str) -> object:
    """Meta-World's scripted expert for a v3 task name (door-open-v3 -> SawyerDoorOpenV3Policy)."""
    from metaworld import policies

    _check_task(task)
    name = "Sawyer" + "".join(part.capitalize() for part in task.split("-")) + "Policy"
    return getattr(policies, name)()


class TaskEnv:
    """One Meta-World task with seeded random initialisations and the three RGB-D cameras."""

    def __init__(
        self, task: str, seed: int, camera_resolution: int = 128, max_path_length: int = 500
    ) -> None:
        import metaworld

        _check_task(task)
        self.task = task
        self.benchmark = metaworld.MT1(task, seed=seed)
        self.env = self.benchmark.train_classes[task]()
        self.env.max_path_length = max_path_length  # the env refuses to step past it
        self.cameras = RGBDCameras(self.env.model, camera_resolution)
        self.time = 0.0

    @property
    def num_variations(self) -> int:
        return len(self.benchmark.train_tasks)

    def reset(self, variation: int) -> np.ndarray:
        if not 0 <= variation < self.num_variations:
            raise ValueError(f"variation {variation} outside [0, {self.num_variations})")
        self.env.set_task(self.benchmark.train_tasks[variation])
        obs, _ = self.env.reset(seed=variation)
        self.time = 0.0
        return obs

    def step(self, action: np.ndarray) -> tuple[np.ndarray, bool]:
        obs, _, _, _, info = self.env.step(np.asarray(action, dtype=np.float32))
        self.time += self.env.dt
        return obs, bool(info["success"])

    def observe(self, obs: np.ndarray, gripper_closed: bool, action: np.ndarray | None = None) -> Step:
        """The recorded step for the current state: clouds, hand pose (fixed orientation), gripper."""
        extras = {} if action is None else {"action": np.asarray(action, dtype=np.float32)}
        return Step(
            clouds=self.cameras.render(self.env.data),
            ee_position=obs[:3],
            ee_rotation=np.eye(3),
            gripper_width=float(obs[3]) * 0.1,
            gripper_closed=gripper_closed,
            timestamp=self.time,
            extras=extras,
        )

    @property
    def action_scale(self) -> float:
        return float(self.env.action_scale)

    def close(self) -> None:
        self.cameras.close()
        self.env.close()


def collect_demos(
    task: str,
    num_demos: int,
    out_dir: str | Path,
    camera_resolution: int = 128,
    max_steps: int = 500,
    tail_steps: int = 10,
    workspace: Workspace | None = None,
) -> list[Path]:
    """Record num_demos expert episodes (variations 0..num_demos-1 of the demo seed); returns their dirs.

    Recording stops tail_steps after the success flag (the expert keeps its final pose) or at max_steps.
    The episodes carry the workspace cube training uses (default: the task's own, metaworld_workspace).
    """
    workspace = workspace or metaworld_workspace([task])
    if num_demos < 1 or max_steps < 1:
        raise ValueError(f"num_demos and max_steps must be >= 1, got {num_demos}, {max_steps}")
    sim = TaskEnv(task, DEMO_SEED, camera_resolution, max_path_length=max(max_steps, 500))
    recorder = Recorder(out_dir)
    paths = []
    try:
        for demo in tqdm(range(num_demos), desc=f"demos {task}", leave=False):
            expert = expert_policy(task)
            obs = sim.reset(demo)
            writer = recorder.start_episode(
                sim.cameras.names, task=task, instruction=TASK_INSTRUCTIONS[task], variation=demo,
                dt=sim.env.dt, workspace_center=list(workspace.center), workspace_edge=workspace.edge,
            )  # fmt: skip
            success_at = None
            for t in range(max_steps):
                action = np.asarray(expert.get_action(obs), dtype=np.float32)
                writer.add_step(sim.observe(obs, gripper_closed=bool(action[3] > 0), action=action))
                obs, success = sim.step(action)
                if success and success_at is None:
                    success_at = t
                if success_at is not None and t - success_at >= tail_steps:
                    break
            writer.close(success=success_at is not None, success_step=success_at)
            paths.append(writer.root)
    finally:
        sim.close()
    return paths


def chunk_to_actions(chunk: ActionChunk, hand: np.ndarray, action_scale: float, step: int) -> np.ndarray:
    """Meta-World action for chunk target `step` from the current hand position: (dx, dy, dz, grip)."""
    delta = (chunk.positions[step] - np.asarray(hand, dtype=np.float64)) / action_scale
    grip = 1.0 if chunk.gripper[step] == 0 else -1.0  # chunk: 0 = closed; Meta-World: +1 closes
    return np.concatenate([np.clip(delta, -1.0, 1.0), [grip]]).astype(np.float32)


@dataclass
class TrialResult:
    success: bool
    steps: int
    chunks: int


def run_trial(
    sim: TaskEnv, variation: int, predictor: ChunkPredictor, max_steps: int, steps_per_chunk: int = 24
) -> TrialResult:
    """One evaluation episode: predict a chunk, execute up to steps_per_chunk of its targets, repeat."""
    obs = sim.reset(variation)
    gripper_closed = False
    steps = chunks = 0
    while steps < max_steps:
        chunk = predictor(sim.observe(obs, gripper_closed), sim.task)
        chunks += 1
        for k in range(min(steps_per_chunk, len(chunk))):
            action = chunk_to_actions(chunk, obs[:3], sim.action_scale, k)
            gripper_closed = bool(action[3] > 0)
            obs, success = sim.step(action)
            steps += 1
            if success:
                return TrialResult(True, steps, chunks)
            if steps >= max_steps:
                break
    return TrialResult(False, steps, chunks)


def evaluate(
    tasks: Sequence[str],
    predictor: ChunkPredictor,
    trials: int,
    max_steps: int,
    camera_resolution: int = 128,
    steps_per_chunk: int = 24,
    seed: int = EVAL_SEED,
) -> dict[str, list[TrialResult]]:
    """trials episodes per task from the random initialisations of `seed` (not the demonstrations' seed)."""
    if seed == DEMO_SEED:
        raise ValueError(f"evaluation seed {seed} is the demonstrations' seed: pick another")
    results: dict[str, list[TrialResult]] = {}
    for task in tasks:
        sim = TaskEnv(task, seed, camera_resolution, max_path_length=max(max_steps, 500))
        if trials > sim.num_variations:
            raise ValueError(f"at most {sim.num_variations} trials per task, got {trials}")
        try:
            results[task] = [
                run_trial(sim, k, predictor, max_steps, steps_per_chunk)
                for k in tqdm(range(trials), desc=f"eval {task}", leave=False)
            ]
        finally:
            sim.close()
    return results


def success_table(method: str, results: dict[str, list[TrialResult]], notes: str = "") -> str:
    """The paper's Table 1 layout: one row per method, one column per task as 'k/N', and the average."""
    tasks = list(results)
    headers = ["Method", *(t.removesuffix("-v3") for t in tasks), "Avg (%)"]
    counts = [sum(r.success for r in results[t]) for t in tasks]
    rates = [c / max(len(results[t]), 1) for c, t in zip(counts, tasks, strict=True)]
    row = [method, *(f"{c}/{len(results[t])}" for c, t in zip(counts, tasks, strict=True))]
    row.append(f"{100 * float(np.mean(rates)):.2f}")
    widths = [max(len(h), len(v)) for h, v in zip(headers, row, strict=True)]
    lines = [
        " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)),
        "-+-".join("-" * w for w in widths),
        " | ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)),
    ]
    return "\n".join(lines) + (f"\n{notes}" if notes else "")


def run_harness(
    out: str | Path,
    tasks: Sequence[str],
    demos: int,
    trials: int,
    max_steps: int,
    config: str,
    eval_seed: int,
    lr: float | None,
    augment_copies: int,
    base_model: str | None,
    train_steps: int,
    camera_resolution: int,
    steps_per_chunk: int,
    vae_steps: int | None,
    future_frames: int | None,
    inference_steps: int | None,
    seed: int,
    threads: int | None = None,
    vae_from: str | None = None,
    checkpoint: str | None = None,
    train_settings: dict[str, Any] | list[dict[str, Any]] | None = None,
) -> str:
    """Collect demos (where out/demos lacks them), train, evaluate; writes out/results.json and returns the
    success table. With `checkpoint` it only evaluates that checkpoint. train_settings: TrainSettings keys
    that replace the harness's own (e.g. heatmap_blob_weight, init_from), or a list of them: training
    stages run in order into out/stage_1, out/stage_2, ..., the last into out/model; each later stage starts
    from the previous one's weights and reuses the first one's VAE and latent cache unless it says otherwise.
    The options are those of `mvvdp metaworld`."""
    from mvvdp_core.threads import set_torch_threads
    from mvvdp_core.train.loop import TrainSettings, train_from_episodes
    from mvvdp_core.train.predictor import load_chunk_predictor

    set_torch_threads(threads)
    for task in tasks:
        _check_task(task)
    out = Path(out)
    started = time.time()
    if checkpoint is None:
        data_dir = out / "demos"
        workspace = metaworld_workspace(tasks)
        for task in tasks:
            task_dir = data_dir / task
            if not (task_dir.is_dir() and any(task_dir.iterdir())):
                collect_demos(task, demos, task_dir, camera_resolution, workspace=workspace)
        overrides = {} if future_frames is None else {"future_frames": future_frames}
        values: dict[str, Any] = dict(
            config=config, steps=train_steps, base_model=base_model, seed=seed,
            workspace_center=workspace.center, workspace_edge=workspace.edge,
            vae_steps=vae_steps, vae_from=vae_from, config_overrides=overrides,
            checkpoint_every=max(train_steps // 4, 1),
            augment_copies=augment_copies, start_stride=2, lr_warmup=min(200, train_steps // 10),
            threads=threads, **({"lr": lr, "head_lr": lr} if lr else {}),
        )  # fmt: skip
        stages = train_settings if isinstance(train_settings, list) else [train_settings or {}]
        run_dirs = [out / f"stage_{k + 1}" for k in range(len(stages) - 1)] + [out / "model"]
        first_cache = {**values, **stages[0]}.get("latent_cache") or str(run_dirs[0] / "latent_cache")
        steps = []
        for k, (stage, run_dir) in enumerate(zip(stages, run_dirs, strict=True)):
            chained = {} if k == 0 else {
                "init_from": str(run_dirs[k - 1]), "vae_from": str(run_dirs[0]), "vae_steps": 0,
                "latent_cache": first_cache,
            }  # fmt: skip
            settings = {**values, **chained, **stage}
            trained, model_info = train_from_episodes([data_dir / t for t in tasks], run_dir,
                                                      TrainSettings(**settings))
            steps.append(str(settings["steps"]))
        method = f"MV-VDP ({settings['config']})"
        model = (f"model: {settings['config']} ({model_info['parameters'] / 1e6:.2f} M parameters, "
                 f"{model_info['trainable'] / 1e6:.3f} M trained), train steps: {' + '.join(steps)}")
    else:
        trained, model, method = Path(checkpoint), f"checkpoint: {checkpoint}", "MV-VDP (checkpoint)"
    predictor = load_chunk_predictor(trained, inference_steps)
    results = evaluate(tasks, predictor, trials, max_steps, camera_resolution, steps_per_chunk, eval_seed)
    notes = (
        f"demos/task: {demos if checkpoint is None else '-'}, trials/task: {trials} (seed {eval_seed}), "
        f"max steps: {max_steps}, {model}, wall time: {time.time() - started:.0f} s"
    )
    table = success_table(method, results, notes)
    summary = {
        task: [{"success": r.success, "steps": r.steps, "chunks": r.chunks} for r in runs]
        for task, runs in results.items()
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"table": table, "trials": summary}, indent=1))
    return table
