"""`mvvdp` command: one entry point; every subcommand's options live here, the work in library functions.

Each subcommand is a function `(argv) -> exit status` that parses its options and calls the library. Library
modules are imported when their subcommand runs, so `mvvdp --help` stays fast. The ROS subcommands
(sim-demo, bringup) are mvvdp_ros modules' own `main(argv)`, loaded by name: mvvdp_core never imports ROS.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, field, fields, make_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import tyro
import yaml

if TYPE_CHECKING:
    from mvvdp_core.evaluation.closed_loop import EpisodeOutcome
    from mvvdp_core.train.loop import TrainSettings

Command = Callable[[list[str]], int]


# ---- demo ---------------------------------------------------------------------------------------------
DEMO_DESCRIPTION = (
    "`mvvdp demo`: a synthetic tabletop seen by three cameras, merged, projected into the three views.\n\n"
    "Writes the three RGB views, the three depth views and the end-effector heatmaps over the RGB views as "
    "PNGs.\n"
)


def demo_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="mvvdp demo", description=DEMO_DESCRIPTION)
    parser.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder for the PNGs")
    parser.add_argument("--points", type=int, default=60000, help="table points (the scene scales with it)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.points < 100:
        parser.error("--points must be at least 100")
    from mvvdp_core.demo import EE_POSITION, render_demo

    started = time.perf_counter()
    result = render_demo(args.out, args.points, args.seed)
    print(f"merged {result.points} points from {result.cameras} cameras; projected on {result.device}")
    print(f"end effector {EE_POSITION} back-projected within {result.error_mm:.2f} mm")
    for path in result.paths:
        print(path)
    print(f"done in {time.perf_counter() - started:.1f} s")
    return 0


# ---- tiny-checkpoint ----------------------------------------------------------------------------------
def tiny_checkpoint_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="mvvdp tiny-checkpoint", description="build and save a tiny random model"
    )
    parser.add_argument("out", type=Path, help="checkpoint folder to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--task", action="append", help="task name to give a random text embedding (repeatable)"
    )
    args = parser.parse_args(argv)
    from mvvdp_core.model.checkpoint import write_tiny_checkpoint

    parts = write_tiny_checkpoint(args.out, seed=args.seed, tasks=args.task)
    print(f"wrote tiny checkpoint to {args.out} (tasks: {sorted(parts.text_embeddings)})")
    return 0


def upgrade_checkpoint_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="mvvdp upgrade-checkpoint",
        description="convert a checkpoint folder in the older layout (view_attention.safetensors, "
        "head.safetensors, base/) into the current one (transformer/, vae/, head/ diffusers folders)",
    )
    parser.add_argument("old", type=Path, help="checkpoint folder in the older layout (or a training run)")
    parser.add_argument("new", type=Path, help="folder to write (may be OLD: converted in place)")
    args = parser.parse_args(argv)
    from mvvdp_core.model.checkpoint import CheckpointError, upgrade_checkpoint

    try:
        out = upgrade_checkpoint(args.old, args.new)
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {out} (the current checkpoint layout)")
    return 0


# ---- record -------------------------------------------------------------------------------------------
def record_command(argv: list[str]) -> int:
    from mvvdp_core.sim.pick import CUBE_LAYOUTS, PickTask

    parser = argparse.ArgumentParser(
        prog="mvvdp record",
        description="`mvvdp record`: scripted pick demonstrations in the simulated FR3 scene, written as "
        "episodes.",
    )
    parser.add_argument("--out", required=True, help="dataset folder (episodes are added to it)")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--control-period", type=float, default=0.1, help="seconds between recorded steps")
    parser.add_argument("--camera-width", type=int, default=320)
    parser.add_argument("--camera-height", type=int, default=240)
    parser.add_argument("--num-objects", type=int, default=PickTask.num_objects,
                        help="cubes on the table: the red target cube plus distractors")
    parser.add_argument("--detour", type=float, nargs=2, metavar=("MIN", "MAX"), default=None,
                        help="recovery demonstrations: go first to a random point MIN-MAX metres beside the "
                        "cube, then pick; training learns the correction from there on, never the detour")
    parser.add_argument("--layout", choices=CUBE_LAYOUTS, default="random",
                        help="target cube placement: random per scene seed, or spread over the task's region "
                        "(a grid of cells, one cube in each drawn cell) so few demonstrations cover it")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: half the cores)")
    args = parser.parse_args(argv)
    if args.detour is not None and not 0 <= args.detour[0] <= args.detour[1]:
        parser.error(f"--detour needs 0 <= MIN <= MAX metres, got {args.detour}")
    from mvvdp_core.data.episode import Episode
    from mvvdp_core.data.record import record_pick_demos
    from mvvdp_core.threads import set_torch_threads

    set_torch_threads(args.threads)
    paths = record_pick_demos(
        args.out, args.episodes, args.seed, args.control_period, (args.camera_width, args.camera_height),
        task=PickTask(num_objects=args.num_objects),
        detour_offset=None if args.detour is None else tuple(args.detour), layout=args.layout,
    )
    successes = sum(bool(Episode(p).success) for p in paths)
    print(f"recorded {len(paths)} episodes into {args.out}: {successes}/{len(paths)} successful picks")
    return 0


# ---- check-calibration --------------------------------------------------------------------------------
def check_calibration_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="mvvdp check-calibration",
        description="`mvvdp check-calibration`: do the cameras' clouds agree where they overlap? "
        "(ICP, Open3D)",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--sim", action="store_true", help="render the simulated scene's three cameras")
    source.add_argument("--episode", help="a recorded episode folder (camera clouds and their extrinsics)")
    parser.add_argument("--step", type=int, default=0, help="episode step to check (default 0)")
    parser.add_argument("--seed", type=int, default=0, help="scene seed with --sim")
    parser.add_argument("--cameras", help="calibration YAML to check instead of the source's extrinsics")
    parser.add_argument("--reference", help="camera the others are registered onto (default: the first)")
    parser.add_argument("--voxel-size", type=float, default=0.005, help="ICP downsampling voxel (m)")
    parser.add_argument("--max-distance", type=float, default=0.03, help="ICP correspondence distance (m)")
    parser.add_argument("--tolerance-mm", type=float, default=5.0, help="largest acceptable mean shift")
    parser.add_argument("--tolerance-deg", type=float, default=1.0, help="largest acceptable rotation")
    parser.add_argument("--min-fitness", type=float, default=0.3, help="smallest acceptable ICP fitness")
    parser.add_argument("--json", help="write the results to this JSON file")
    args = parser.parse_args(argv)
    from mvvdp_core.calibration_check import calibration_sources, check_calibration

    try:
        episode = None if args.sim else args.episode
        clouds, extrinsics, workspace = calibration_sources(episode, args.step, args.seed, args.cameras)
        results = check_calibration(
            clouds, extrinsics, args.reference, workspace, args.voxel_size, args.max_distance
        )
    except (RuntimeError, ValueError, FileNotFoundError) as err:
        print(f"mvvdp check-calibration: {err}", file=sys.stderr)
        return 2
    print(f"{'camera':<12} {'onto':<12} {'points':>7} {'shift mm':>9} {'rot deg':>8} {'fitness':>8} "
          f"{'rmse mm':>8}  verdict")
    ok = True
    for r in results:
        good = r.within(args.tolerance_mm, args.tolerance_deg, args.min_fitness)
        ok &= good
        verdict = "ok" if good else "CHECK"
        print(f"{r.camera:<12} {r.reference:<12} {r.points:>7} {r.mean_shift_mm:>9.2f} "
              f"{r.rotation_deg:>8.3f} {r.fitness:>8.3f} {r.inlier_rmse_mm:>8.2f}  {verdict}")
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=2))
    return 0 if ok else 1


# ---- mcap-to-episodes ---------------------------------------------------------------------------------
def mcap_to_episodes_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="mvvdp mcap-to-episodes", description="convert MCAP episodes into "
                                     "episode folders (the training input)")
    parser.add_argument("mcap", nargs="+", type=Path, help="MCAP files written by the recorder")
    parser.add_argument("--out", type=Path, required=True, help="dataset folder for the episode folders")
    args = parser.parse_args(argv)
    from mvvdp_core.data.episode import Episode
    from mvvdp_core.data.mcap_episodes import mcap_to_episode

    for path in args.mcap:
        root = mcap_to_episode(path, args.out)
        print(f"{path} -> {root} ({len(Episode(root))} steps)")
    return 0


# ---- encode-prompts -----------------------------------------------------------------------------------
def encode_prompts_command(argv: list[str]) -> int:
    from mvvdp_core.model.text import DTYPES

    parser = argparse.ArgumentParser(
        prog="mvvdp encode-prompts",
        description="encode task instructions with a local umT5 encoder into a checkpoint",
    )
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint folder to update")
    parser.add_argument(
        "--text-encoder", required=True, help="umT5 encoder folder, or a Wan2.2 diffusers folder"
    )
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder (default: found next to it)")
    parser.add_argument(
        "--task", action="append", required=True, metavar='NAME="instruction"', help="repeatable"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    args = parser.parse_args(argv)
    from mvvdp_core.model.checkpoint import TEXT_FILE
    from mvvdp_core.model.text import encode_checkpoint_prompts, parse_task_prompts

    try:
        prompts = parse_task_prompts(args.task)
    except ValueError as error:
        parser.error(str(error))
    checkpoint, embeddings, tasks = encode_checkpoint_prompts(
        args.checkpoint, prompts, args.text_encoder, args.tokenizer, device=args.device,
        dtype=DTYPES[args.dtype],
    )  # fmt: skip
    print(f"encoded {sorted(embeddings)} into {checkpoint / TEXT_FILE} (tasks now: {tasks})")
    return 0


# ---- train --------------------------------------------------------------------------------------------
# Settings are TrainSettings fields (declared once, in the dataclass: `--lr-warmup` for lr_warmup, help from
# its comments), parsed by tyro. They come from TrainSettings' defaults, then a resumed run's saved settings
# (--resume), then an optional YAML file (--settings), then the flags given. Several GPUs: `accelerate launch
# -m mvvdp_core.cli train ...` (accelerate handles the processes).
TRAIN_DESCRIPTION = "`mvvdp train`: train the video model and the rotation/gripper head on recorded episodes."


@dataclass
class TrainRun:
    """What `mvvdp train` reads and writes, beside the training settings."""

    data: list[str] = field(default_factory=list)  # folder(s) of recorded episodes (required)
    out: str | None = None  # output folder: checkpoints, tensorboard, plots (required)
    # print the memory plan of these settings on one CUDA process and exit
    dry_run: Annotated[bool, tyro.conf.FlagCreatePairsOff] = False
    # continue from the latest checkpoint in --out, with the run's saved settings unless given here
    resume: Annotated[bool, tyro.conf.FlagCreatePairsOff] = False
    settings: Path | None = None  # YAML file with TrainSettings keys
    # instruction of a recorded task (with --text-encoder, else random embeddings)
    prompt: Annotated[list[str], tyro.conf.UseAppendAction, tyro.conf.arg(metavar='NAME="instruction"')] = (
        field(default_factory=list)
    )
    # model config field, e.g. image_size=128 or transformer='{"num_layers": 6}'
    override: Annotated[list[str], tyro.conf.UseAppendAction, tyro.conf.arg(metavar="FIELD=JSON")] = field(
        default_factory=list
    )


def _read_settings_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"cannot read training settings {path}: {error}") from error


def _checked_settings(loaded: Any, where: str) -> dict[str, Any]:
    from mvvdp_core.train.loop import TrainSettings

    if not isinstance(loaded, dict):
        raise ValueError(f"training settings {where} must be a mapping of TrainSettings keys")
    known = {f.name for f in fields(TrainSettings)}
    unknown = sorted(set(loaded) - known)
    if unknown:
        raise ValueError(f"unknown training settings in {where}: {unknown}; known: {sorted(known)}")
    return loaded


def load_settings_file(path: Path) -> dict[str, Any]:
    return _checked_settings(_read_settings_yaml(path), str(path))


def load_stage_settings(path: Path) -> list[dict[str, Any]]:
    """Training stages from a YAML file: a mapping of TrainSettings keys is one stage; a mapping with
    `stages` (a list of such mappings) and optionally `common` (keys every stage shares) is several, run
    in order, each from the previous one's weights."""
    loaded = _read_settings_yaml(path)
    if not (isinstance(loaded, dict) and "stages" in loaded):
        return [load_settings_file(path)]
    extra = sorted(set(loaded) - {"stages", "common"})
    if extra:
        raise ValueError(f"staged training settings {path} take `stages` and `common`, not {extra}")
    stages, common = loaded["stages"], _checked_settings(loaded.get("common") or {}, f"{path} (common)")
    if not isinstance(stages, list) or not stages:
        raise ValueError(f"`stages` in {path} must be a non-empty list of mappings")
    return [{**common, **_checked_settings(stage or {}, f"{path} (stage {k + 1})")}
            for k, stage in enumerate(stages)]


def _overrides(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--override takes FIELD=JSON, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _unchecked_settings(values: dict[str, Any]) -> TrainSettings:
    """TrainSettings holding these values over the defaults, not validated yet: the command line's defaults
    (a settings file may lean on a flag, e.g. wan22 on --base-model; the parsed result is validated)."""
    from mvvdp_core.train.loop import TrainSettings

    settings = object.__new__(TrainSettings)
    for item in fields(TrainSettings):
        default = item.default_factory() if item.default is MISSING else item.default  # type: ignore[misc]
        settings.__dict__[item.name] = values.get(item.name, default)
    return settings


def parse_train_args(
    argv: list[str], console: bool = True
) -> tuple[TrainRun, TrainSettings, dict[str, Any] | None]:
    """The run options, the TrainSettings and, with --resume, the run's saved settings (None without).

    A first look reads the run options alone (where a resumed run's settings and the YAML file are); the full
    parse then takes them as the defaults the flags given override."""
    from mvvdp_core.model.text import parse_task_prompts
    from mvvdp_core.train.loop import TrainSettings, saved_settings

    run, _ = tyro.cli(TrainRun, args=argv, return_unknown_args=True, add_help=False,
                      console_outputs=console)
    saved = saved_settings(run.out) if run.resume and run.out else None
    values: dict[str, Any] = dict(saved or {})
    values.update(load_settings_file(run.settings) if run.settings else {})
    if run.prompt:
        values["prompts"] = parse_task_prompts(run.prompt)
    if run.override:
        values["config_overrides"] = {**values.get("config_overrides", {}), **_overrides(run.override)}
    command = make_dataclass("TrainCommand", [
        ("run", Annotated[TrainRun, tyro.conf.OmitArgPrefixes]),
        ("settings", Annotated[TrainSettings, tyro.conf.OmitArgPrefixes]),
    ])  # fmt: skip
    parsed = tyro.cli(command, args=argv, prog="mvvdp train", description=TRAIN_DESCRIPTION,
                      default=command(TrainRun(), _unchecked_settings(values)), console_outputs=console)
    return parsed.run, parsed.settings, saved


def dry_run(settings: TrainSettings, gpu_gb: float = 80.0) -> int:
    """Print the memory plan of one training process with these settings (CUDA assumed); 0 when it fits."""
    import torch

    from mvvdp_core.model.config import MVVDPConfig
    from mvvdp_core.train.memory import GB, memory_plan

    config = MVVDPConfig.preset(settings.config, **settings.config_overrides)
    cuda = torch.device("cuda")
    precision = settings.precision(cuda)
    compute = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    checkpointing = (
        settings.gradient_checkpointing if settings.gradient_checkpointing is not None
        else settings.config == "wan22"
    )  # fmt: skip
    plan = memory_plan(
        config, settings.batch_size, settings.training_mode, checkpointing, settings.frozen_base_dtype(cuda),
        compute, name=settings.config,
    )  # fmt: skip
    print(plan.table())
    accumulation = settings.accumulation(1)
    print(f"\n{accumulation} micro-batch(es) of {settings.batch_size} per optimiser step on one process "
          f"(global batch {accumulation * settings.batch_size}); peak {plan.peak / GB:.1f} GB "
          f"{'fits' if plan.fits(gpu_gb) else 'does NOT fit'} in {gpu_gb:.0f} GB")
    return 0 if plan.fits(gpu_gb) else 1


def train_command(argv: list[str]) -> int:
    run, settings, saved = parse_train_args(argv)
    if run.dry_run:
        return dry_run(settings)
    if not run.data or not run.out:
        print("mvvdp train: --data and --out are required", file=sys.stderr)
        return 2
    from mvvdp_core.train.loop import SETTINGS_FILE, changed_settings, train

    if saved is not None:
        changed = changed_settings(saved, settings)
        listed = ", ".join(f"{name} {old} -> {new}" for name, (old, new) in changed.items()) or "none"
        print(f"resuming with the settings of {Path(run.out) / SETTINGS_FILE}; overridden: {listed}")
    result = train(run.data, run.out, settings, resume=run.resume)
    print(
        f"trained steps {result.start_step + 1}..{result.end_step} ({result.mode}); checkpoint "
        f"{result.checkpoint}; {result.parameters / 1e6:.2f} M parameters ({result.trainable / 1e6:.3f} M "
        "trained)"
        + (f"; validation position error {100 * result.val_position_error:.1f} cm"
           if result.val_position_error is not None else "")
    )
    return 0


# ---- memory-plan --------------------------------------------------------------------------------------
def memory_plan_command(argv: list[str]) -> int:
    from mvvdp_core.train.memory import DTYPES

    parser = argparse.ArgumentParser(
        prog="mvvdp memory-plan", description="training memory of a model config and batch (meta device)"
    )
    parser.add_argument("--config", default="wan22", choices=["tiny", "small", "wan22"])
    parser.add_argument("--batch", type=int, default=1, help="samples per process")
    parser.add_argument("--mode", choices=["lora", "full"], default=None, help="default: lora for wan22")
    parser.add_argument("--no-checkpointing", action="store_true", help="store every block's activations")
    parser.add_argument("--base-dtype", choices=sorted(DTYPES), default="bf16", help="frozen base (lora)")
    parser.add_argument("--compute-dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--gpu-gb", type=float, default=80.0, help="memory to check the peak against")
    args = parser.parse_args(argv)
    from mvvdp_core.model.config import MVVDPConfig
    from mvvdp_core.train.memory import GB, memory_plan

    config = MVVDPConfig.preset(args.config)
    mode = args.mode or ("lora" if args.config == "wan22" else "full")
    plan = memory_plan(
        config, args.batch, mode, not args.no_checkpointing, DTYPES[args.base_dtype],
        DTYPES[args.compute_dtype], name=args.config,
    )  # fmt: skip
    print(plan.table())
    verdict = "fits" if plan.fits(args.gpu_gb) else "does NOT fit"
    print(f"\npeak {plan.peak / GB:.1f} GB {verdict} in {args.gpu_gb:.0f} GB")
    return 0 if plan.fits(args.gpu_gb) else 1


# ---- evaluate -----------------------------------------------------------------------------------------
@dataclass
class EvaluateSettings:
    """`mvvdp evaluate`: closed-loop pick evaluation of a checkpoint on the simulated FR3."""

    checkpoint: str  # checkpoint folder or training run folder
    episodes: int = 10  # episodes (one scene seed each)
    seed: int = 1000  # first scene seed (use seeds not trained on)
    replan_steps: int | None = None  # steps of each chunk run before re-planning; None: the whole chunk
    num_steps: int | None = None  # denoising steps; None: the model's
    time_limit: float = 12.0  # seconds per episode
    task: str | None = None  # task name of the text embeddings; None: pick
    num_objects: int | None = None  # cubes on the table (target plus distractors); None: the task's default
    camera_width: int = 320  # camera image width
    camera_height: int = 240  # camera image height
    json: str | None = None  # write the results (and these settings) to this JSON file
    threads: int | None = None  # torch CPU threads; None: half the cores


def evaluate_command(argv: list[str]) -> int:
    from mvvdp_core.sim.pick import PickTask

    args = tyro.cli(EvaluateSettings, args=argv, prog="mvvdp evaluate")

    from mvvdp_core.evaluation.closed_loop import evaluate_policy
    from mvvdp_core.policy import MVVDPPolicy
    from mvvdp_core.threads import set_torch_threads
    from mvvdp_core.train.predictor import make_chunk_predictor

    set_torch_threads(args.threads)
    chosen = {"name": args.task, "num_objects": args.num_objects}
    task = PickTask(**{key: value for key, value in chosen.items() if value is not None})
    policy = MVVDPPolicy.from_checkpoint(args.checkpoint)
    if task.name not in policy.tasks:
        sys.exit(f"mvvdp evaluate: the checkpoint has no task {task.name!r} (it knows {policy.tasks}); "
                 "pass --task")
    predict = make_chunk_predictor(policy, args.num_steps)

    def report(outcome: EpisodeOutcome) -> None:
        print(f"seed {outcome.seed}: success={outcome.success} lift={outcome.lift:.3f} m "
              f"distance={outcome.distance:.3f} m", flush=True)

    started = time.perf_counter()
    result = evaluate_policy(predict, args.episodes, args.seed, replan_steps=args.replan_steps,
                             time_limit=args.time_limit, task=task,
                             camera_size=(args.camera_width, args.camera_height), progress=report)
    seconds = time.perf_counter() - started
    print(result.table())
    chunks = sum(e.chunks for e in result.episodes)
    print(f"{chunks} chunks in {seconds:.0f} s of wall time ({chunks / seconds:.2f} chunks/s, observation, "
          f"prediction and simulation included)")
    if args.json:
        report = {**result.to_json(), "settings": asdict(args)}
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
        print(f"results written to {args.json}")
    return 0


# ---- metaworld ----------------------------------------------------------------------------------------
def metaworld_command(argv: list[str]) -> int:
    from mvvdp_core.evaluation.metaworld_harness import EVAL_SEED, TASKS, run_harness

    parser = argparse.ArgumentParser(
        prog="mvvdp metaworld",
        description="Meta-World seven-task harness (paper Table 1): collect expert demos with RGB-D cameras, "
        "train, evaluate.",
    )
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), help="Meta-World v3 task names")
    parser.add_argument("--demos", type=int, default=5, help="expert demonstrations per task")
    parser.add_argument("--trials", type=int, default=25, help="evaluation trials per task")
    parser.add_argument("--max-steps", type=int, default=600, help="environment steps per trial")
    parser.add_argument("--config", default="small", choices=["tiny", "small", "wan22"], help="model preset")
    parser.add_argument("--eval-seed", type=int, default=EVAL_SEED, help="seed of the evaluation's initial "
                        "states (the demonstrations use another)")
    parser.add_argument("--lr", type=float, default=None, help="learning rate (default: TrainSettings')")
    parser.add_argument("--augment-copies", type=int, default=2, help="fixed augmented copies per demo")
    parser.add_argument("--base-model", default=None, help="local Wan2.2 diffusers folder (wan22)")
    parser.add_argument("--train-steps", type=int, default=1000, help="optimiser steps for each module")
    parser.add_argument("--camera-resolution", type=int, default=128, help="RGB-D camera pixels per side")
    parser.add_argument("--steps-per-chunk", type=int, default=24, help="chunk targets run per prediction")
    parser.add_argument("--vae-steps", type=int, default=None, help="VAE fitting steps (tiny: default 300)")
    parser.add_argument("--vae-from", default=None,
                        help="start from the fitted VAE of this checkpoint (e.g. mvvdp_core/checkpoints/"
                        "pick_small); --vae-steps then fine-tunes it")
    parser.add_argument("--future-frames", type=int, default=None, help="chunk length (model default 24)")
    parser.add_argument("--inference-steps", type=int, default=None, help="denoising steps (default: 5)")
    parser.add_argument("--out", required=True, help="output folder (demos, checkpoint, results)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: half the cores)")
    parser.add_argument("--train-settings", type=Path, default=None,
                        help="YAML file of TrainSettings keys (as `mvvdp train --settings`) that replace the "
                        "harness's own, e.g. heatmap_blob_weight: 30; or `stages:` (a list of such mappings, "
                        "with `common:` keys) trained one after another, e.g. config/metaworld_staged.yaml")
    parser.add_argument("--checkpoint", default=None,
                        help="evaluate this checkpoint (or run folder) instead of collecting and training")
    args = parser.parse_args(argv)
    stages = None if args.train_settings is None else load_stage_settings(args.train_settings)
    print(run_harness(**{**vars(args), "train_settings": stages}))
    return 0


# ---- dispatch -----------------------------------------------------------------------------------------
def _ros_command(module: str) -> Command:
    """A subcommand implemented by an mvvdp_ros module's `main(argv)`."""

    def run(argv: list[str]) -> int:
        return int(importlib.import_module(module).main(argv) or 0)

    return run


SUBCOMMANDS: dict[str, tuple[Command, str]] = {
    "sim-demo": (
        _ros_command("mvvdp_ros.sim_demo"), "simulated robot + graph: preview a chunk, approve it, track it"
    ),
    "demo": (demo_command, "project a synthetic scene into the three views and write PNGs"),
    "bringup": (_ros_command("mvvdp_ros.bringup"), "start the ROS 2 graph (simulated robot by default)"),
    "tiny-checkpoint": (tiny_checkpoint_command, "build and save a tiny random checkpoint"),
    "upgrade-checkpoint": (upgrade_checkpoint_command, "convert an older-layout checkpoint folder"),
    "record": (record_command, "record demonstrations from the simulated robot"),
    "check-calibration": (check_calibration_command, "do the cameras' clouds agree? (ICP, Open3D)"),
    "mcap-to-episodes": (mcap_to_episodes_command, "MCAP episodes -> episode folders"),
    "encode-prompts": (encode_prompts_command, "encode task instructions into a checkpoint (local umT5)"),
    "train": (train_command, "train the video model LoRA and the rotation/gripper head"),
    "memory-plan": (memory_plan_command, "training memory of a config and batch (meta device)"),
    "evaluate": (evaluate_command, "closed-loop pick evaluation (simulated FR3)"),
    "metaworld": (metaworld_command, "Meta-World seven-task collect/train/evaluate"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        width = max(map(len, SUBCOMMANDS))
        lines = [f"  {name:<{width}}  {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
        print("usage: mvvdp <command> [options]\n\ncommands:\n" + "\n".join(lines))
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    command, _ = SUBCOMMANDS[argv[0]]
    return int(command(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
