"""The ROS 2 graph of the stack, described once: which nodes run, with which parameter files and overrides.

Two runners read this description: launch/bringup.launch.py (ROS 2 launch, when installed) and
`mvvdp bringup` (mvvdp_ros.bringup, plain processes). No ROS imports here.

    sim robot (sim only) --clouds, ee pose, gripper--> perception --views--> policy --chunk--> executor
    executor --target pose, gripper width--> robot / sim robot
"""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mvvdp_core.checkpoint_paths import checkpoint_image_size

PACKAGE = "mvvdp_ros"
MODES = ("preview", "auto")


@dataclass(frozen=True)
class NodeSpec:
    """One node of the graph. `module` runs it as `python -m module`; `executable` is its console script.
    namespace: relative ("" = none) so that a parent launch's namespace is prepended to it."""

    name: str
    module: str
    executable: str
    params_files: tuple[Path, ...] = ()
    parameters: dict[str, Any] = field(default_factory=dict)
    remaps: tuple[tuple[str, str], ...] = ()
    namespace: str = ""

    def ros_arguments(self) -> list[str]:
        """`--ros-args ...` for this node: node name, namespace, parameter files, overrides, remaps."""
        args = ["--ros-args", "-r", f"__node:={self.name}"]
        if self.namespace:
            args += ["-r", f"__ns:=/{self.namespace}"]
        for path in self.params_files:
            args += ["--params-file", str(path)]
        for key, value in self.parameters.items():
            args += ["-p", f"{key}:={format_parameter(value)}"]
        for source, target in self.remaps:
            args += ["-r", f"{source}:={target}"]
        return args

    def command(self, python: str = sys.executable) -> list[str]:
        return [python, "-m", self.module, *self.ros_arguments()]


def normalize_namespace(namespace: str) -> str:
    """'/robot1/' or 'robot1' -> 'robot1' (ROS name tokens: letters, digits, underscores; '/' between)."""
    name = namespace.strip().strip("/")
    tokens = name.split("/") if name else []
    for token in tokens:
        if not token or not (token[0].isalpha() or token[0] == "_") or not token.replace("_", "").isalnum():
            raise ValueError(f"invalid namespace {namespace!r}: use letters, digits and underscores")
    return name


def parse_remap(rule: str) -> tuple[str, str]:
    """'from:=to' -> (from, to)."""
    source, sep, target = rule.partition(":=")
    if not (sep and source and target):
        raise ValueError(f"a remapping is FROM:=TO, got {rule!r}")
    return source, target


def parse_params_files(items: list[str] | tuple[str, ...]) -> dict[str, list[str]]:
    """['executor=/a.yaml', ...] -> {'executor': ['/a.yaml', ...]}."""
    files: dict[str, list[str]] = {}
    for item in items:
        node, sep, path = item.partition("=")
        if not (sep and node and path):
            raise ValueError(f"a parameter file is NODE=FILE, got {item!r}")
        files.setdefault(node, []).append(path)
    return files


def format_parameter(value: Any) -> str:
    """A parameter value in the YAML flow syntax `--ros-args -p name:=value` parses."""
    if isinstance(value, str):
        return yaml.safe_dump(value, default_style='"').strip()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_parameter(v) for v in value) + "]"
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def default_config_dir() -> Path:
    """The checkout's config/ folder, else share/mvvdp_ros/config of the install prefix (pip or colcon)."""
    here = Path(__file__).resolve()
    candidates = [here.parents[1] / "config"]  # source checkout
    ament = os.environ.get("AMENT_PREFIX_PATH", "")
    prefixes = [Path(sys.prefix)] + [Path(p) for p in ament.split(os.pathsep) if p]
    if len(here.parents) > 4:
        prefixes.append(here.parents[4])  # <prefix>/lib/pythonX.Y/site-packages/mvvdp_core/graph.py
    candidates += [prefix / "share" / PACKAGE / "config" for prefix in prefixes]
    for folder in candidates:
        if (folder / "policy.yaml").is_file():
            return folder
    raise FileNotFoundError(f"no mvvdp config folder in {[str(c) for c in candidates]}")


def tf2_installed() -> bool:
    """Whether tf2_ros (Python) is installed; else perception reads the extrinsics from the calibration."""
    return importlib.util.find_spec("tf2_ros") is not None


def default_sim_checkpoint(sim: bool) -> str:
    """With the simulated robot and no checkpoint given: the shipped small pick model (if installed)."""
    if not sim:
        return ""
    from mvvdp_core.checkpoints import shipped_checkpoint

    try:
        return str(shipped_checkpoint())
    except FileNotFoundError:
        return ""


def build_graph(
    sim: bool = True,
    mode: str = "preview",
    checkpoint: str = "",
    out_dir: str = "",
    config_dir: Path | str | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
    namespace: str = "",
    remaps: list[str] | tuple[str, ...] = (),
    params_files: dict[str, list[str]] | None = None,
    autostart: bool = True,
) -> list[NodeSpec]:
    """The nodes to start. overrides: node name -> parameters that win over the files. namespace: every node
    runs in it (their relative topic and service names follow; the drivers' absolute ones stay). remaps:
    'FROM:=TO' rules applied to every node. params_files: node name -> parameter files read after the
    node's default one (e.g. executor_fr3.yaml, from the config folder, for a real FR3). autostart false:
    the lifecycle nodes (perception, policy, executor) wait unconfigured for a lifecycle manager."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    namespace = normalize_namespace(namespace)
    rules = tuple(parse_remap(rule) for rule in remaps)
    config = Path(config_dir) if config_dir else default_config_dir()
    cameras = config / ("cameras_sim.yaml" if sim else "cameras.yaml")
    overrides = dict(overrides or {})
    # A relative file that is not found from the working directory is looked up in the config folder.
    extra = {name: tuple(Path(f) if Path(f).is_absolute() or Path(f).is_file() else config / f for f in files)
             for name, files in (params_files or {}).items()}
    unknown = (set(overrides) | set(extra)) - {"sim_robot", "perception", "policy", "executor"}
    if unknown:
        raise ValueError(f"overrides for unknown nodes {sorted(unknown)}")
    for path in (cameras, config / "perception.yaml", config / "policy.yaml", config / "executor.yaml",
                 *(f for files in extra.values() for f in files)):
        if not path.is_file():
            raise FileNotFoundError(f"graph configuration file missing: {path}")

    def files(name: str, default: str | None) -> tuple[Path, ...]:
        return ((config / default,) if default else ()) + extra.get(name, ())

    def params(name: str, base: dict[str, Any]) -> dict[str, Any]:
        managed = {} if autostart or name == "sim_robot" else {"autostart": False}
        return {**base, **managed, **overrides.get(name, {})}

    checkpoint = checkpoint or default_sim_checkpoint(sim)
    random_model = sim and not checkpoint  # a tiny random model: its heatmaps have no peak, confidence 0
    executor = {"mode": mode, **({"min_step_confidence": 0.0} if random_model else {})}
    nodes = []
    if sim:
        nodes.append(NodeSpec("sim_robot", "mvvdp_ros.sim_robot_node", "sim_robot_node",
                              files("sim_robot", None), params("sim_robot", {}), rules, namespace))
    # Views are projected at the resolution the model consumes (the policy resizes any other, a skew from
    # training); overrides can still set another.
    perception: dict[str, Any] = {"cameras_file": str(cameras)}
    if not tf2_installed():
        perception["use_tf"] = False
    if checkpoint and (view_size := checkpoint_image_size(checkpoint)):
        perception["resolution"] = view_size
    nodes += [
        NodeSpec("perception", "mvvdp_ros.perception_node", "perception_node",
                 files("perception", "perception.yaml"), params("perception", perception), rules, namespace),
        NodeSpec("policy", "mvvdp_ros.policy_node", "policy_node", files("policy", "policy.yaml"),
                 params("policy", {"checkpoint": checkpoint, "mode": mode, "output_dir": out_dir,
                                   "create_tiny_checkpoint": random_model}), rules, namespace),
        NodeSpec("executor", "mvvdp_ros.executor_node", "executor_node", files("executor", "executor.yaml"),
                 params("executor", executor), rules, namespace),
    ]
    return nodes
