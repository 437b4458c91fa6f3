"""The graph description: node set per mode/sim, and its parameter files and overrides as rcl parses them."""

import importlib.util
import os
import random

import numpy as np
import pytest
import yaml

rclpy = pytest.importorskip("rclpy", reason="rclpy (ROS 2 wheels) not installed")
pytest.importorskip("mvvdp_msgs.msg", reason="mvvdp_msgs not built (scripts/build_msgs.sh)")

os.environ["ROS_DOMAIN_ID"] = str(random.randint(1, 200))

from mvvdp_core.checkpoints import shipped_checkpoint  # noqa: E402
from mvvdp_core.graph import build_graph, default_config_dir, format_parameter  # noqa: E402
from mvvdp_core.perception import load_cameras  # noqa: E402


def test_sim_and_robot_graphs() -> None:
    sim = {s.name: s for s in build_graph(sim=True, mode="auto", checkpoint="", out_dir="/tmp/x")}
    assert list(sim) == ["sim_robot", "perception", "policy", "executor"]
    assert sim["perception"].parameters["cameras_file"].endswith("cameras_sim.yaml")
    # The simulated graph runs the shipped pick model unless told otherwise.
    assert sim["policy"].parameters["checkpoint"] == str(shipped_checkpoint())
    assert sim["policy"].parameters["create_tiny_checkpoint"] is False
    assert sim["policy"].parameters["mode"] == sim["executor"].parameters["mode"] == "auto"
    robot = {s.name: s for s in build_graph(sim=False, checkpoint="/ckpt")}
    assert list(robot) == ["perception", "policy", "executor"]
    assert robot["perception"].parameters["cameras_file"].endswith("/cameras.yaml")
    assert robot["policy"].parameters["create_tiny_checkpoint"] is False
    for spec in robot.values():
        assert all(path.is_file() for path in spec.params_files)
        assert importlib.util.find_spec(spec.module) is not None


def test_views_are_projected_at_the_checkpoints_resolution(tmp_path) -> None:
    def resolution(**kwargs) -> object:
        specs = {s.name: s for s in build_graph(**kwargs)}
        return specs["perception"].parameters.get("resolution")

    assert resolution(sim=True) == 64  # the shipped small model's views
    # A training run folder: its newest checkpoint (the `latest` pointer) decides.
    step = tmp_path / "run" / "checkpoints" / "step_0000010"
    step.mkdir(parents=True)
    (step / "config.json").write_text('{"image_size": 128}')
    (step.parent / "latest").write_text("step_0000010\n")
    assert resolution(sim=False, checkpoint=str(tmp_path / "run")) == 128
    # Unreadable or missing configs leave the file's value (the policy node reports the checkpoint).
    (step / "config.json").write_text("{not json")
    assert resolution(sim=False, checkpoint=str(step)) is None
    assert resolution(sim=False, checkpoint=str(tmp_path / "missing")) is None
    # An explicit override wins.
    overrides = {"perception": {"resolution": 256}}
    assert resolution(sim=True, overrides=overrides) == 256


def test_bad_graph_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="mode"):
        build_graph(mode="fast")
    with pytest.raises(ValueError, match="unknown nodes"):
        build_graph(overrides={"planner": {"x": 1}})
    with pytest.raises(FileNotFoundError, match="configuration file missing"):
        build_graph(config_dir="/nonexistent")


@pytest.mark.parametrize("value", ["true", "1.5", "/mvvdp/preview/{view}/{kind}", "", 3, 0.25, True,
                                   [0.1, -0.2, 0.3], ["a", "b"]])
def test_parameter_values_survive_the_command_line(value) -> None:
    assert yaml.safe_load(format_parameter(value)) == value


def test_files_and_overrides_reach_the_nodes_as_rcl_parses_them() -> None:
    from mvvdp_ros.executor_node import ExecutorNode
    from mvvdp_ros.perception_node import PerceptionNode

    overrides = {"executor": {"workspace_lower": [0.2, -0.1, 0.3], "control_rate": 25.0},
                 "perception": {"resolution": 64, "use_tf": False}}
    specs = {s.name: s for s in build_graph(sim=True, mode="auto", overrides=overrides)}
    files = {name: yaml.safe_load(specs[name].params_files[0].read_text())[f"/**/{name}"]["ros__parameters"]
             for name in ("executor", "perception")}
    rclpy.init()
    try:
        executor = ExecutorNode(cli_args=specs["executor"].ros_arguments())
        perception = PerceptionNode(cli_args=specs["perception"].ros_arguments())
        assert executor.params["mode"] == "auto"
        assert executor.params["control_rate"] == 25.0
        assert executor.params["workspace_lower"] == [0.2, -0.1, 0.3]
        assert executor.params["workspace_upper"] == files["executor"]["workspace_upper"]
        assert executor.params["max_step_translation"] == files["executor"]["max_step_translation"] == 0.04
        assert perception.params["resolution"] == 64 and perception.params["use_tf"] is False
        assert perception.params["max_age"] == files["perception"]["max_age"]
        base, cameras = load_cameras(perception.params["cameras_file"])
        assert base == "fr3_link0" and [c.name for c in cameras] == ["zed_front", "zed_left", "zed_right"]
        executor.destroy_node()
        perception.destroy_node()
    finally:
        rclpy.shutdown()


def test_calibration_files_hold_rigid_transforms() -> None:
    for name in ("cameras.yaml", "cameras_sim.yaml"):
        _base, cameras = load_cameras(default_config_dir() / name)
        for camera in cameras:
            rotation = camera.base_T_camera[:3, :3]
            np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-5)
            # Every camera looks towards the workspace centre (x forward in its body frame).
            to_centre = np.array([0.5, 0.0, 0.4]) - camera.base_T_camera[:3, 3]
            forward = rotation[:, 0]
            assert forward @ to_centre / np.linalg.norm(to_centre) > 0.8, (name, camera.name)


def test_bad_calibration_files_are_named(tmp_path) -> None:
    path = tmp_path / "cams.yaml"
    path.write_text("cameras:\n  - name: a\n    topic: /a\n    frame_id: a\n    translation: [0, 0]\n"
                    "    rotation: [0, 0, 0, 1]\n")
    with pytest.raises(ValueError, match="translation"):
        load_cameras(path)
    path.write_text("cameras:\n  - name: a\n    topic: /a\n    frame_id: a\n    translation: [0, 0, 0]\n"
                    "    rotation: [0, 0, 0, 2]\n")
    with pytest.raises(ValueError, match="unit quaternion"):
        load_cameras(path)
    with pytest.raises(FileNotFoundError):
        load_cameras(tmp_path / "missing.yaml")


def test_executor_names_bad_or_unavailable_gripper_interfaces() -> None:
    from mvvdp_ros.executor_node import ExecutorNode

    rclpy.init()
    try:
        with pytest.raises(ValueError, match="gripper_interface must be"):
            ExecutorNode(cli_args=["--ros-args", "-p", "gripper_interface:=serial"])
        if importlib.util.find_spec("franka_msgs") is None:
            with pytest.raises(ValueError, match="franka_msgs"):
                ExecutorNode(cli_args=["--ros-args", "-p", "gripper_interface:=franka"])
    finally:
        rclpy.shutdown()


def test_config_found_in_pip_and_colcon_install_layouts(tmp_path, monkeypatch) -> None:
    from mvvdp_core import graph

    prefix = tmp_path / "install" / "mvvdp_ros"
    config = prefix / "share" / "mvvdp_ros" / "config"
    config.mkdir(parents=True)
    (config / "policy.yaml").write_text("policy: {}\n")
    module = prefix / "lib" / "python3.11" / "site-packages" / "mvvdp_core" / "graph.py"
    monkeypatch.setattr(graph, "__file__", str(module))
    monkeypatch.setattr(graph.sys, "prefix", str(tmp_path / "python"))  # not an install of this package
    monkeypatch.setenv("AMENT_PREFIX_PATH", "")
    assert graph.default_config_dir() == config  # found from the module's own install prefix
    monkeypatch.setattr(graph, "__file__", str(tmp_path / "elsewhere" / "graph.py"))
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(prefix))
    assert graph.default_config_dir() == config  # found through the ament prefix path
    monkeypatch.setenv("AMENT_PREFIX_PATH", "")
    with pytest.raises(FileNotFoundError, match="no mvvdp config folder"):
        graph.default_config_dir()
