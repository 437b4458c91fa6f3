"""ROS 2 launch of the mvvdp graph, built from mvvdp_core.graph (the same description `mvvdp bringup` runs).

    ros2 launch mvvdp_ros bringup.launch.py sim:=true mode:=preview checkpoint:=/path/to/ckpt rviz:=false
    ros2 launch mvvdp_ros bringup.launch.py namespace:=robot1   # topics and services under /robot1/mvvdp/...

Each node runs its console script where mvvdp_ros is installed with colcon (found through the ament index),
else `python -m <module>` with the launching Python (mvvdp installed with pip, or a checkout on PYTHONPATH).
"""

from __future__ import annotations

import os
import sys

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from mvvdp_core.graph import PACKAGE, build_graph, default_config_dir, parse_params_files

ARGUMENTS = {
    "sim": ("true", "start the simulated robot and use its camera calibration"),
    "mode": ("preview", "preview (operator approves each chunk) or auto (closed loop)"),
    "checkpoint": ("", "checkpoint folder (sim default: a tiny random checkpoint in the cache)"),
    "out_dir": ("", "folder for preview GIF/PNG files (empty: none)"),
    "config_dir": ("", "folder holding perception/policy/executor/cameras YAML (empty: the package's)"),
    "rviz": ("false", "start RViz with config/mvvdp.rviz"),
    "namespace": ("", "namespace of every node (relative: inside the including launch's namespace)"),
    "autostart": ("true", "configure and activate perception, policy and executor at start (false: they "
                          "wait unconfigured for `ros2 lifecycle set`)"),
    "params_files": ("", "space-separated NODE=FILE parameter files read after the defaults "
                         "(e.g. executor=executor_fr3.yaml from config_dir)"),
}


def _is_true(value: str) -> bool:
    return value.strip().lower() in ("true", "1", "yes", "on")


def _package_config_dir() -> str:
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
    except ImportError:
        return str(default_config_dir())
    try:
        return f"{get_package_share_directory(PACKAGE)}/config"
    except PackageNotFoundError:
        return str(default_config_dir())


def _executable(spec) -> dict:
    """The node's console script where the package is installed with colcon (<prefix>/lib/mvvdp_ros/),
    else `python -m <module>` with this Python (a pip install, a checkout)."""
    try:
        from ament_index_python.packages import get_package_prefix

        script = os.path.join(get_package_prefix(PACKAGE), "lib", PACKAGE, spec.executable)
        if os.access(script, os.X_OK):
            return {"package": PACKAGE, "executable": spec.executable}
    except (ImportError, LookupError):  # LookupError: the package is not in the ament index
        pass
    return {"executable": sys.executable, "arguments": ["-m", spec.module]}


def _nodes(context) -> list:
    arg = {name: LaunchConfiguration(name).perform(context) for name in ARGUMENTS}
    config_dir = arg["config_dir"] or _package_config_dir()
    specs = build_graph(sim=_is_true(arg["sim"]), mode=arg["mode"], checkpoint=arg["checkpoint"],
                        out_dir=arg["out_dir"], config_dir=config_dir, namespace=arg["namespace"],
                        params_files=parse_params_files(arg["params_files"].split()),
                        autostart=_is_true(arg["autostart"]))
    namespace = {"namespace": specs[0].namespace} if specs[0].namespace else {}
    actions = [
        Node(**_executable(spec), name=spec.name, output="screen",
             parameters=[*(str(path) for path in spec.params_files), spec.parameters],
             remappings=list(spec.remaps), **namespace)
        for spec in specs
    ]
    if _is_true(arg["rviz"]):
        actions.append(Node(package="rviz2", executable="rviz2", name="rviz", output="screen",
                            arguments=["-d", f"{config_dir}/mvvdp.rviz"], **namespace))
    return actions


def generate_launch_description() -> LaunchDescription:
    declared = [DeclareLaunchArgument(name, default_value=default, description=description)
                for name, (default, description) in ARGUMENTS.items()]
    return LaunchDescription([*declared, OpaqueFunction(function=_nodes)])
