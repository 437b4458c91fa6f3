"""Fault injection over DDS against the nodes as processes: bad chunks, stop/resume, absurd requests, liveness
under CPU load, unusable and oversized clouds, exceptions in callbacks.

A test node plays the robot (an end-effector pose at 50 Hz, standing still) and, where the policy does not
run, the policy's heartbeat; it watches the executor's targets, state and /diagnostics. "The arm moved"
means a target left the pose the robot stands at. Waits are generous; nothing asserts wall-clock speed.
"""

import os
import random
import signal
import threading
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy (ROS 2 wheels) not installed")
pytest.importorskip("mvvdp_msgs.msg", reason="mvvdp_msgs not built (scripts/build_msgs.sh)")

from conftest import cpu_load  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from geometry_msgs.msg import PoseStamped  # noqa: E402
from rclpy.duration import Duration  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.qos import LivelinessPolicy, QoSProfile, qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import PointCloud2  # noqa: E402
from std_msgs.msg import Header, String  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from mvvdp_core.actions import ActionChunk as CoreChunk  # noqa: E402
from mvvdp_core.graph import build_graph  # noqa: E402
from mvvdp_core.model import MVVDPConfig, build_model_parts, save_checkpoint  # noqa: E402
from mvvdp_msgs.msg import ActionChunk  # noqa: E402
from mvvdp_msgs.srv import Execute, Preview  # noqa: E402
from mvvdp_ros.bringup import GraphProcesses  # noqa: E402
from mvvdp_ros.conversions import chunk_to_msg, pose_to_msg  # noqa: E402
from mvvdp_ros.guard import GuardedNode  # noqa: E402
from mvvdp_ros.pointcloud import cloud_to_msg  # noqa: E402

HOME = np.array([0.307, 0.0, 0.487])
HOME_QUAT = np.array([1.0, 0.0, 0.0, 0.0])  # gripper pointing down: Euler (pi, 0, 0)
MOVED = 1e-4  # m: a target further than this from HOME means the arm was told to move
CAMERAS = ("zed_front", "zed_left", "zed_right")


class Robot(Node):
    """The robot (ee pose), optionally the policy's heartbeat, and the observer of the executor."""

    def __init__(self, heartbeat: bool) -> None:
        super().__init__("fault_injector")
        self.heartbeat = heartbeat
        self.targets: list[tuple[float, np.ndarray]] = []
        self.states: list[tuple[float, str]] = []
        self.diagnostics: list[tuple[str, str, dict]] = []
        target_topic = "/cartesian_impedance_controller/target_pose"
        self.create_subscription(PoseStamped, target_topic, self._on_target, 50)
        self.create_subscription(String, "/mvvdp/executor/state",
                                 lambda m: self.states.append((time.monotonic(), m.data)), 200)
        self.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 50)
        self.pose_pub = self.create_publisher(PoseStamped, "/franka_robot_state_broadcaster/current_pose",
                                              qos_profile_sensor_data)
        if heartbeat:  # any publisher on the topic would keep the executor's view of the policy live
            beat_qos = QoSProfile(depth=1, liveliness=LivelinessPolicy.AUTOMATIC,
                                  liveliness_lease_duration=Duration(seconds=0.25))
            self.beat_pub = self.create_publisher(Header, "/mvvdp/heartbeat", beat_qos)
        else:  # watch the policy's heartbeat: it starts when the policy node is active
            self.beats: list[float] = []
            self.create_subscription(Header, "/mvvdp/heartbeat",
                                     lambda _msg: self.beats.append(time.monotonic()), 10)
        self.chunk_pub = self.create_publisher(ActionChunk, "/mvvdp/chunk", 10)
        self.cloud_pubs = {
            name: self.create_publisher(PointCloud2, f"/{name}/zed_node/point_cloud/cloud_registered",
                                        qos_profile_sensor_data)
            for name in CAMERAS
        }
        self.triggers = {name: self.create_client(Trigger, f"/mvvdp/{name}") for name in ("stop", "resume")}
        self.execute = self.create_client(Execute, "/mvvdp/execute")
        self.preview = self.create_client(Preview, "/mvvdp/preview")
        self.create_timer(0.02, self._publish_pose)
        self.create_timer(0.05, self._beat)

    def _on_target(self, msg: PoseStamped) -> None:
        p = msg.pose.position
        self.targets.append((time.monotonic(), np.array([p.x, p.y, p.z])))

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for s in msg.status:
            self.diagnostics.append((s.name, s.message, {kv.key: kv.value for kv in s.values}))

    def _publish_pose(self) -> None:
        pose = PoseStamped(pose=pose_to_msg(HOME, HOME_QUAT))
        pose.header.stamp, pose.header.frame_id = self.get_clock().now().to_msg(), "fr3_link0"
        self.pose_pub.publish(pose)

    def _beat(self) -> None:
        if self.heartbeat:
            self.beat_pub.publish(Header(stamp=self.get_clock().now().to_msg()))

    def now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def chunk(self, chunk_id: int, status: str, offset=(0.0, 0.03, 0.0), duration: float = 2.4,
              confidence: float = 0.9, frame: str = "fr3_link0") -> ActionChunk:
        """A 24-step chunk from HOME towards HOME + offset, stamped now."""
        ramp = np.linspace(0.0, 1.0, 24)[:, None]
        core = CoreChunk(
            positions=HOME + ramp * np.asarray(offset), euler=np.tile([np.pi, 0.0, 0.0], (24, 1)),
            gripper=np.ones(24), time_from_start=np.linspace(duration / 24, duration, 24), stamp=self.now(),
            confidence=confidence, step_confidence=np.full(24, confidence), chunk_id=chunk_id,
        )  # fmt: skip
        return chunk_to_msg(core, frame, status)

    def moved_since(self, since: float) -> float:
        """Largest distance of a target sent after `since` from HOME (0 when none)."""
        return max((float(np.linalg.norm(p - HOME)) for t, p in list(self.targets) if t > since), default=0.0)

    def state(self) -> str:
        return self.states[-1][1] if self.states else ""


def wait_until(condition, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def call(client, request, timeout: float = 60.0):
    assert client.wait_for_service(timeout_sec=timeout), f"service {client.srv_name} not available"
    future = client.call_async(request)
    assert wait_until(future.done, timeout), f"no response from {client.srv_name}"
    return future.result()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("faults") / "checkpoint"
    config = MVVDPConfig.tiny(num_inference_steps=1)
    save_checkpoint(build_model_parts(config, seed=0, tasks=["default"]), config, path)
    return path


def start(names: tuple[str, ...], mode: str, tmp, heartbeat: bool, checkpoint="", overrides=None):
    """The named nodes of the sim graph as processes plus the Robot node spinning in a thread."""
    os.environ["ROS_DOMAIN_ID"] = str(random.randint(1, 200))
    overrides = {"executor": {"min_step_confidence": 0.05}, **(overrides or {})}  # shipped, not the sim's 0
    graph = build_graph(sim=True, mode=mode, checkpoint=str(checkpoint), overrides=overrides)
    specs = [s for s in graph if s.name in names]
    procs = GraphProcesses(specs, log_dir=tmp / "logs").start()
    try:
        rclpy.init()
        robot = Robot(heartbeat)
    except BaseException:
        procs.stop()
        raise
    executor = SingleThreadedExecutor()
    executor.add_node(robot)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()

    def close() -> None:
        executor.shutdown()
        robot.destroy_node()
        rclpy.shutdown()
        thread.join(timeout=5)
        procs.stop()

    return robot, procs, close


# ---- executor, auto mode ---------------------------------------------------------------------------------
@pytest.fixture(scope="class")
def auto_executor(tmp_path_factory):
    robot, procs, close = start(("executor",), "auto", tmp_path_factory.mktemp("auto"), heartbeat=True)
    try:
        assert wait_until(lambda: robot.triggers["stop"].service_is_ready(), 60), "executor did not start"
        assert wait_until(lambda: robot.state().startswith("idle"), 30)
        yield robot
    finally:
        close()


class TestAutoExecutor:
    def test_bad_chunks_are_rejected_whole_and_the_arm_holds(self, auto_executor) -> None:
        robot = auto_executor
        robot.diagnostics.clear()
        since = time.monotonic()
        bad = {1: robot.chunk(1, "auto", frame="camera"), 2: robot.chunk(2, "auto", offset=(2.0, 0.0, 0.0)),
               3: robot.chunk(3, "auto", confidence=0.01), 4: robot.chunk(4, "auto")}
        bad[4].poses[12].position.y = float("nan")  # steps 0-11 are fine: none of them may run
        for msg in bad.values():
            robot.chunk_pub.publish(msg)
        # distinct messages: the latest status is also sent again every second
        rejected = lambda: len({m for n, m, _ in robot.diagnostics  # noqa: E731
                                if n == "executor: safety" and "rejected" in m})
        assert wait_until(lambda: rejected() >= 4), robot.diagnostics
        reasons = " | ".join(m for _, m, _ in robot.diagnostics)
        for text in ("frame 'camera'", "outside the workspace", "confidence 0.010", "not finite at step 12"):
            assert text in reasons, reasons
        time.sleep(1.0)
        assert robot.moved_since(since) < MOVED, "a step of a rejected chunk was sent"
        assert robot.state().startswith(("idle", "hold"))  # idle at first: nothing was commanded
        # the node survived all of it: a good chunk runs and moves the arm, stop still answers
        robot.chunk_pub.publish(robot.chunk(5, "auto"))
        assert wait_until(lambda: "chunk=5" in robot.state(), 20), robot.states[-3:]
        assert call(robot.triggers["stop"], Trigger.Request()).success


    def test_a_live_policy_that_stops_beating_is_held_after_the_grace(self, auto_executor) -> None:
        """DDS liveliness holds (the process lives) but no heartbeat message comes: a hung policy."""
        robot = auto_executor
        call(robot.triggers["resume"], Trigger.Request())
        robot.chunk_pub.publish(robot.chunk(40, "auto", duration=60.0))
        assert wait_until(lambda: "chunk=40" in robot.state(), 20)
        robot.heartbeat = False
        try:
            assert wait_until(lambda: "heartbeat" in robot.state(), 20), robot.state()
        finally:
            robot.heartbeat = True
            time.sleep(1.0)  # heartbeats reach the executor again before the next test's chunks

    def test_stop_latches_until_resume_in_auto_mode(self, auto_executor) -> None:
        robot = auto_executor
        call(robot.triggers["resume"], Trigger.Request())
        robot.chunk_pub.publish(robot.chunk(10, "auto"))
        assert wait_until(lambda: "chunk=10" in robot.state(), 20)
        assert call(robot.triggers["stop"], Trigger.Request()).success
        stopped = time.monotonic()
        time.sleep(0.3)
        held = robot.targets[-1][1]
        for chunk_id in (11, 12, 13):  # fresh auto chunks keep coming after the stop
            robot.chunk_pub.publish(robot.chunk(chunk_id, "auto"))
            time.sleep(0.5)
        after = [p for t, p in list(robot.targets) if t > stopped + 0.3]
        assert after and max(np.linalg.norm(p - held) for p in after) < 1e-9, "the arm moved after stop"
        assert not any("chunk=1" in s for t, s in robot.states if t > stopped + 0.1)
        counters = [v for n, _m, v in robot.diagnostics if n == "executor: safety"][-1]
        assert int(counters["dropped_while_stopped"]) >= 3 and counters["stopped"] == "True"
        assert call(robot.triggers["resume"], Trigger.Request()).success
        robot.chunk_pub.publish(robot.chunk(14, "auto"))
        assert wait_until(lambda: "chunk=14" in robot.state(), 20), "no chunk ran after resume"


# ---- policy + executor, preview mode, under CPU load ---------------------------------------------------
@pytest.fixture(scope="class")
def preview_graph(tmp_path_factory, checkpoint):
    tmp = tmp_path_factory.mktemp("preview")
    robot, procs, close = start(("policy", "executor"), "preview", tmp, False, checkpoint)
    try:
        assert wait_until(lambda: robot.preview.service_is_ready(), 120), "policy did not start"
        assert wait_until(lambda: robot.triggers["stop"].service_is_ready(), 60), "executor did not start"
        # Configured is not active: on a busy machine activation (and DDS matching) can lag the services.
        assert wait_until(lambda: len(robot.beats) >= 5, 60), "the policy never published a heartbeat"
        heard = lambda: any(n == "executor: safety" and v.get("policy_heard") == "True"  # noqa: E731
                            for n, _m, v in list(robot.diagnostics))
        assert wait_until(heard, 60), "the executor never heard the policy's heartbeat"
        yield robot, procs
    finally:
        close()


class TestPreviewGraph:
    def test_preview_refuses_absurd_requests_and_keeps_serving(self, preview_graph) -> None:
        robot, procs = preview_graph
        for steps in (100_000, 1_000_000_000, 51):
            response = call(robot.preview, Preview.Request(task="", num_steps=steps))
            assert not response.success and "max_denoising_steps" in response.message, response.message
        response = call(robot.preview, Preview.Request(task="x" * 10_000, num_steps=1))
        assert not response.success and "unknown task" in response.message
        response = call(robot.preview, Preview.Request(task="", num_steps=1))  # no views here: refused, alive
        assert not response.success and "no views" in response.message, response.message
        assert "policy" not in procs.exited()


    def test_bad_preview_chunk_is_rejected_on_arrival_and_cannot_be_approved(self, preview_graph) -> None:
        robot, _procs = preview_graph
        since = time.monotonic()
        msg = robot.chunk(20, "pending")
        msg.poses[5].orientation.w = float("nan")
        robot.chunk_pub.publish(msg)
        assert wait_until(lambda: any("chunk 20 rejected" in m for _, m, _ in robot.diagnostics))
        result = call(robot.execute, Execute.Request(chunk_id=20, approve=True))
        assert not result.success and "unknown chunk" in result.message
        time.sleep(0.5)
        assert robot.moved_since(since) < MOVED


    def test_policy_stays_live_under_cpu_load_and_a_killed_one_holds(self, preview_graph) -> None:
        robot, procs = preview_graph
        with cpu_load(2):
            robot.chunk_pub.publish(robot.chunk(30, "pending", duration=60.0))
            time.sleep(0.5)
            result = call(robot.execute, Execute.Request(chunk_id=30, approve=True))
            assert result.success, result.message
            approved = time.monotonic()
            assert wait_until(lambda: "chunk=30" in robot.state(), 10)
            time.sleep(8.0)  # the default heartbeat_timeout (0.3 s) while two processes burn both cores
            states = [s for t, s in list(robot.states) if t > approved]
            assert not any("heartbeat" in s for s in states), [s for s in states if "heartbeat" in s][:3]
            assert "chunk=30" in robot.state(), robot.state()
            procs.signal_node("policy", signal.SIGKILL)
            killed = time.monotonic()
            assert wait_until(lambda: "heartbeat" in robot.state(), 10), robot.state()
            held_at = next(t for t, s in robot.states if t > killed and "heartbeat" in s)
            print(f"policy killed under load: hold after {held_at - killed:.3f} s")
            time.sleep(0.5)
            held = [p for t, p in list(robot.targets) if t > held_at + 0.1]
            assert held and np.ptp(np.array(held), axis=0).max() < 1e-9


# ---- perception -----------------------------------------------------------------------------------------
@pytest.fixture(scope="class")
def perception(tmp_path_factory):
    overrides = {"perception": {"use_tf": False, "max_points_per_camera": 20_000, "camera_timeout": 30.0}}
    robot, _procs, close = start(("perception",), "preview", tmp_path_factory.mktemp("perception"),
                                 heartbeat=False, overrides=overrides)
    try:
        yield robot
    finally:
        close()


class TestPerception:
    def test_clouds_without_usable_points_or_too_many_are_rejected(self, perception) -> None:
        robot = perception
        frame = "zed_front_left_camera_frame"
        far = np.full((16, 16, 3), 1e30, np.float32)
        colors = np.zeros((16, 16, 3), np.uint8)
        near = np.random.default_rng(0).uniform([1, -0.5, -0.5], [2, 0.5, 0.5], (16, 16, 3))
        near = near.astype(np.float32)
        huge = np.zeros((200, 200, 3), np.float32) + np.float32(1.5)
        reasons = lambda: " | ".join(m for n, m, _ in robot.diagnostics if n.endswith("zed_front"))  # noqa: E731
        for _ in range(50):
            stamp = robot.get_clock().now().to_msg()
            robot.cloud_pubs["zed_front"].publish(cloud_to_msg(far, colors, frame, stamp))
            swapped = cloud_to_msg(near, colors, frame, stamp)
            swapped.is_bigendian = True  # little-endian data announced as big-endian
            robot.cloud_pubs["zed_front"].publish(swapped)
            big = cloud_to_msg(huge, np.zeros_like(huge, np.uint8), frame, stamp)
            robot.cloud_pubs["zed_front"].publish(big)
            if reasons().count("usable (within") >= 2 and "max_points 20000" in reasons():
                break
            time.sleep(0.3)
        assert reasons().count("usable (within") >= 2, reasons()
        assert "40000 points > max_points 20000" in reasons(), reasons()


# ---- the guard itself --------------------------------------------------------------------------------------
def test_a_callback_that_raises_is_caught_and_the_node_keeps_serving(tmp_path) -> None:
    os.environ["ROS_DOMAIN_ID"] = str(random.randint(1, 200))
    rclpy.init()
    try:
        class Faulty(GuardedNode):
            def __init__(self) -> None:
                super().__init__("faulty")
                self.errors: list[str] = []
                self.seen: list[str] = []
                self.create_subscription(String, "/faulty", self._on_msg, 10)
                self.create_service(Trigger, "/faulty/call", self._on_call)

            def _on_msg(self, msg: String) -> None:
                self.seen.append(msg.data)
                if msg.data == "boom":
                    raise RuntimeError("boom")

            def _on_call(self, _request, _response):
                raise KeyError("broken service")

            def on_callback_error(self, where: str, error: Exception) -> None:
                self.errors.append(where)

        node, client_node = Faulty(), Node("caller")
        pub = client_node.create_publisher(String, "/faulty", 10)
        client = client_node.create_client(Trigger, "/faulty/call")
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        executor.add_node(client_node)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and pub.get_subscription_count() == 0:
            executor.spin_once(timeout_sec=0.05)
        for data in ("boom", "after"):
            pub.publish(String(data=data))
        future = client.call_async(Trigger.Request()) if client.wait_for_service(timeout_sec=10) else None
        while time.monotonic() < deadline and not (len(node.seen) >= 2 and future and future.done()):
            executor.spin_once(timeout_sec=0.05)
        assert node.seen == ["boom", "after"] and "_on_msg" in node.errors
        assert future.result().success is False and "broken service" in future.result().message
        executor.shutdown()
        node.destroy_node()
        client_node.destroy_node()
    finally:
        rclpy.shutdown()
