"""A good ROS 2 citizen: tf2 frames of the simulated robot, tf2 required where asked for, namespaces and
remapping, parameters that are read-only or applied live."""

import os
import random
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy (ROS 2 wheels) not installed")
pytest.importorskip("mvvdp_msgs.msg", reason="mvvdp_msgs not built (scripts/build_msgs.sh)")

from rclpy.parameter import Parameter  # noqa: E402

from mvvdp_core import graph  # noqa: E402
from mvvdp_core.graph import build_graph, default_config_dir  # noqa: E402
from mvvdp_core.perception import load_cameras  # noqa: E402
from mvvdp_core.rotations import pose_matrix  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def ros():
    os.environ["ROS_DOMAIN_ID"] = str(random.randint(1, 200))
    rclpy.init()
    yield
    rclpy.shutdown()


def test_graph_reads_the_calibration_only_where_tf2_is_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(graph, "tf2_installed", lambda: False)
    for sim in (True, False):
        perception = {s.name: s for s in build_graph(sim=sim, checkpoint="/c")}["perception"]
        assert perception.parameters["use_tf"] is False
    monkeypatch.setattr(graph, "tf2_installed", lambda: True)
    perception = {s.name: s for s in build_graph(sim=True)}["perception"]
    assert "use_tf" not in perception.parameters  # perception.yaml: use_tf true


@pytest.mark.skipif(graph.tf2_installed(), reason="tf2_ros is installed")
def test_use_tf_without_tf2_fails_at_start() -> None:
    from mvvdp_ros.perception_node import PerceptionNode

    cameras = str(default_config_dir() / "cameras_sim.yaml")
    with pytest.raises(RuntimeError, match="tf2_ros is not installed"):
        PerceptionNode(parameter_overrides=[Parameter("cameras_file", value=cameras),
                                            Parameter("use_tf", value=True)])


def test_perception_cloud_filters_need_open3d() -> None:
    """A filter turned on configures with open3d and is refused, with the reason, without it."""
    from mvvdp_core.geometry.cloud_filter import open3d_installed
    from mvvdp_ros.perception_node import PerceptionNode

    overrides = [Parameter("cameras_file", value=str(default_config_dir() / "cameras_sim.yaml")),
                 Parameter("use_tf", value=False), Parameter("voxel_size", value=0.005),
                 Parameter("outlier_neighbors", value=16)]
    if not open3d_installed():
        with pytest.raises(RuntimeError, match="open3d is not usable"):
            PerceptionNode(parameter_overrides=overrides)
        return
    node = PerceptionNode(parameter_overrides=overrides)
    try:
        assert node.active and node.cloud_filter.enabled
        assert (node.cloud_filter.voxel_size, node.cloud_filter.outlier_neighbors) == (0.005, 16)
    finally:
        node.destroy_node()


def test_package_xml_declares_the_ros_imports() -> None:
    """package.xml's exec_depends are exactly the ROS packages that mvvdp_ros and launch/ import."""
    import ast
    import xml.etree.ElementTree as ET
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    modules: set[str] = set()
    for path in [*repo.glob("mvvdp_ros/*.py"), *repo.glob("launch/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                modules.add(node.module.split(".")[0])
    ros_suffixes = ("_msgs", "_srvs", "_interfaces", "_python", "_msgs_py")
    ros_names = {"cv_bridge", "diagnostic_updater"}
    ros = {m for m in modules
           if m.endswith(ros_suffixes) or m.startswith(("rcl", "launch", "tf2_")) or m in ros_names}
    ros = {"tf2_ros_py" if m == "tf2_ros" else m for m in ros}
    declared = {e.text for e in ET.parse(repo / "package.xml").getroot().iter("exec_depend")}
    assert ros <= declared, f"imported but not declared: {sorted(ros - declared)}"
    # rviz2: started by the launch file
    extra = {d for d in declared - ros if not d.startswith("python3-")} - {"rviz2"}
    assert not extra, f"declared but not imported: {sorted(extra)}"


def test_namespace_and_remap_arguments() -> None:
    specs = build_graph(sim=True, namespace="/robot1/", remaps=["mvvdp/stop:=mvvdp/halt"])
    for spec in specs:
        args = spec.ros_arguments()
        assert spec.namespace == "robot1" and "__ns:=/robot1" in args and "mvvdp/stop:=mvvdp/halt" in args
    with pytest.raises(ValueError, match="namespace"):
        build_graph(namespace="robot-1")
    with pytest.raises(ValueError, match="FROM:=TO"):
        build_graph(remaps=["mvvdp/stop"])


@pytest.fixture(scope="module")
def namespaced_graph():
    """perception and executor of the sim graph in namespace robot1, with the stop service remapped."""
    from mvvdp_ros.bringup import GraphProcesses

    specs = [s for s in build_graph(sim=True, namespace="robot1", remaps=["mvvdp/stop:=mvvdp/halt"])
             if s.name in ("perception", "executor")]
    with GraphProcesses(specs):
        probe = rclpy.create_node("citizen_probe")
        try:
            deadline = time.monotonic() + 60.0
            while time.monotonic() < deadline:
                services = dict(probe.get_service_names_and_types())
                topics = dict(probe.get_topic_names_and_types())
                nodes = probe.get_node_names_and_namespaces()
                if ("/robot1/mvvdp/execute" in services and "/robot1/mvvdp/views" in topics
                        and ("executor", "/robot1") in nodes and ("perception", "/robot1") in nodes):
                    break
                rclpy.spin_once(probe, timeout_sec=0.2)
            yield probe
        finally:
            probe.destroy_node()


def test_namespaced_graph_over_dds(namespaced_graph) -> None:
    probe = namespaced_graph
    topics = dict(probe.get_topic_names_and_types())
    services = dict(probe.get_service_names_and_types())
    for name in ("/robot1/mvvdp/views", "/robot1/mvvdp/chunk", "/robot1/mvvdp/executor/state",
                 "/robot1/mvvdp/heartbeat"):
        assert name in topics, (name, sorted(topics))
    # Other drivers' topics stay absolute.
    drivers = ("/franka_robot_state_broadcaster/current_pose",
               "/zed_front/zed_node/point_cloud/cloud_registered", "/diagnostics")
    for name in drivers:
        assert name in topics, (name, sorted(topics))
    assert "/robot1/mvvdp/execute" in services and "/robot1/mvvdp/halt" in services
    assert "/robot1/mvvdp/stop" not in services and "/mvvdp/execute" not in services
    assert ("executor", "/robot1") in probe.get_node_names_and_namespaces()


def test_executor_parameters_read_only_or_live() -> None:
    from mvvdp_ros.executor_node import ExecutorNode

    node = ExecutorNode()
    try:
        refused = node.set_parameters([Parameter("control_rate", value=50.0)])[0]
        assert not refused.successful and node.period == pytest.approx(0.05)
        assert not node.set_parameters([Parameter("chunk_topic", value="x")])[0].successful
        taken = node.set_parameters([Parameter("max_step_translation", value=0.02),
                                     Parameter("ee_timeout", value=0.5)])
        assert all(r.successful for r in taken)
        assert node.core.safety.limits.max_step_translation == 0.02 and node.core.config.ee_timeout == 0.5
        assert node.get_parameter("max_step_translation").value == 0.02
        # Invalid values fail the core's own validation and change nothing.
        for bad in (Parameter("workspace_lower", value=[0.9, -0.5, 0.02]), Parameter("ee_timeout", value=0.0),
                    Parameter("workspace_center", value=[0.5, 0.0])):
            result = node.set_parameters([bad])[0]
            assert not result.successful and result.reason, bad.name
        assert node.core.safety.limits.workspace_lower == (0.15, -0.5, 0.02)
        assert node.core.config.ee_timeout == 0.5 and node.params["ee_timeout"] == 0.5
    finally:
        node.destroy_node()


def test_parameter_service_over_dds(namespaced_graph) -> None:
    from rcl_interfaces.srv import SetParameters

    probe = namespaced_graph
    client = probe.create_client(SetParameters, "/robot1/executor/set_parameters")
    assert client.wait_for_service(timeout_sec=30.0)

    def set_one(name: str, value: float) -> bool:
        request = SetParameters.Request(parameters=[Parameter(name, value=value).to_parameter_msg()])
        future = client.call_async(request)
        rclpy.spin_until_future_complete(probe, future, timeout_sec=30.0)
        return future.result().results[0].successful

    assert not set_one("control_rate", 10.0)  # read-only
    assert set_one("max_tracking_error", 0.05)  # live, valid
    assert not set_one("max_tracking_error", -1.0)  # live, refused by SafetyLimits


def test_fr3_parameter_file_is_read_after_the_default() -> None:
    from mvvdp_ros.executor_node import ExecutorNode

    specs = {s.name: s for s in build_graph(sim=False, checkpoint="/c",
                                            params_files={"executor": ["executor_fr3.yaml"]})}
    executor = specs["executor"]
    assert [p.name for p in executor.params_files] == ["executor.yaml", "executor_fr3.yaml"]
    # Parse it as rcl does, with the franka interface swapped for the topic one (no franka_msgs here).
    args = executor.ros_arguments() + ["-p", "gripper_interface:=topic"]
    node = ExecutorNode(cli_args=args)
    try:
        assert node.params["target_pose_topic"] == "/target_pose"
        assert node.params["franka_gripper_node"] == "/fr3_gripper"
        assert node.params["max_step_translation"] == 0.04  # from executor.yaml
    finally:
        node.destroy_node()
    with pytest.raises(ValueError, match="NODE=FILE"):
        graph.parse_params_files(["executor_fr3.yaml"])


def test_launch_file_passes_namespace_and_parameter_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """The launch file over stand-ins for launch / launch_ros (not installable here)."""
    import importlib.util
    import sys
    import types
    from pathlib import Path

    def module(name: str, **attrs) -> types.ModuleType:
        mod = types.ModuleType(name)
        mod.__dict__.update(attrs)
        monkeypatch.setitem(sys.modules, name, mod)
        return mod

    class Recorded:
        def __init__(self, *args, **kwargs) -> None:
            self.args, self.kwargs = args, kwargs

    class LaunchConfiguration:
        def __init__(self, name: str) -> None:
            self.name = name

        def perform(self, context: dict) -> str:
            return context[self.name]

    module("launch", LaunchDescription=Recorded)
    module("launch.actions", DeclareLaunchArgument=Recorded, OpaqueFunction=Recorded)
    module("launch.substitutions", LaunchConfiguration=LaunchConfiguration)
    module("launch_ros")
    module("launch_ros.actions", Node=Recorded)
    path = Path(__file__).resolve().parents[1] / "launch" / "bringup.launch.py"
    spec = importlib.util.spec_from_file_location("bringup_launch", path)
    launch_file = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launch_file)
    description = launch_file.generate_launch_description()
    declared = {a.args[0] for a in description.args[0][:-1]}
    assert {"namespace", "params_files"} <= declared
    context = {name: default for name, (default, _) in launch_file.ARGUMENTS.items()}
    context.update(sim="false", checkpoint="/c", namespace="robot1",
                   params_files="executor=executor_fr3.yaml")
    nodes = {n.kwargs["name"]: n.kwargs for n in launch_file._nodes(context)}
    assert set(nodes) == {"perception", "policy", "executor"}
    assert all(n["namespace"] == "robot1" for n in nodes.values())
    for name, node in nodes.items():  # the console script (colcon install) or `python -m module`
        if "package" in node:
            assert (node["package"], node["executable"]) == ("mvvdp_ros", f"{name}_node")
        else:
            assert node["executable"] == sys.executable
            assert node["arguments"] == ["-m", f"mvvdp_ros.{name}_node"]
    files = [Path(p).name for p in nodes["executor"]["parameters"][:-1]]
    assert files == ["executor.yaml", "executor_fr3.yaml"]


@pytest.mark.skipif(graph.tf2_installed(), reason="tf2_ros is installed")
def test_perception_process_without_tf2_exits_with_one_line() -> None:
    import subprocess
    import sys

    cameras = default_config_dir() / "cameras_sim.yaml"
    cmd = [sys.executable, "-m", "mvvdp_ros.perception_node", "--ros-args", "-p", f"cameras_file:={cameras}",
           "-p", "use_tf:=true"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "tf2_ros is not installed" in result.stderr and "Traceback" not in result.stderr


def test_sim_robot_sends_its_frames_where_tf2_msgs_exists(monkeypatch: pytest.MonkeyPatch) -> None:
    """The TF path of the sim robot with a stand-in for tf2_msgs/TFMessage (not installable here)."""
    from rclpy.node import Node

    from mvvdp_ros import sim_robot_node

    class TFMessage:
        def __init__(self, transforms: list) -> None:
            self.transforms = transforms

    class Recorder:
        def __init__(self, topic: str) -> None:
            self.topic, self.sent = topic, []

        def publish(self, msg) -> None:
            self.sent.append(msg)

    recorders: dict[str, Recorder] = {}
    real = Node.create_publisher

    def create_publisher(self, msg_type, topic, *args, **kwargs):
        if msg_type is TFMessage:
            return recorders.setdefault(topic, Recorder(topic))
        return real(self, msg_type, topic, *args, **kwargs)

    monkeypatch.setattr(sim_robot_node, "tf_message_type", lambda: TFMessage)
    monkeypatch.setattr(Node, "create_publisher", create_publisher)
    node = sim_robot_node.SimRobotNode(parameter_overrides=[
        Parameter("camera_width", value=32), Parameter("camera_height", value=24)])
    try:
        static = recorders["/tf_static"].sent
        assert len(static) == 1
        base, cameras = load_cameras(default_config_dir() / "cameras_sim.yaml")
        sent = {t.child_frame_id: t for t in static[0].transforms}
        assert set(sent) == {c.frame_id for c in cameras}
        for camera in cameras:
            t = sent[camera.frame_id]
            tr, q = t.transform.translation, t.transform.rotation
            assert t.header.frame_id == base
            np.testing.assert_allclose(pose_matrix([tr.x, tr.y, tr.z], [q.x, q.y, q.z, q.w]),
                                       camera.base_T_camera, atol=1e-5)
        node._publish_state()
        (ee,) = recorders["/tf"].sent[-1].transforms
        position, _ = node.sim.ee_pose()
        assert (ee.header.frame_id, ee.child_frame_id) == ("fr3_link0", "fr3_hand_tcp")
        np.testing.assert_allclose([ee.transform.translation.x, ee.transform.translation.y,
                                    ee.transform.translation.z], position)
    finally:
        node.destroy_node()
