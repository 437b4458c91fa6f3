"""Lifecycle and actions of the executor over DDS: a node started with autostart false waits unconfigured,
sends nothing until activated, deactivation holds the arm through the safety filter and then goes quiet,
cleanup removes its interfaces; the Execute action reports progress and its cancel holds the arm."""

import os
import random
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy (ROS 2 wheels) not installed")
pytest.importorskip("mvvdp_msgs.action", reason="mvvdp_msgs not built (scripts/build_msgs.sh)")

from geometry_msgs.msg import PoseStamped  # noqa: E402
from lifecycle_msgs.msg import State, Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402
from rclpy.action import ActionClient  # noqa: E402
from ros_probe import ProbeNode  # noqa: E402
from std_msgs.msg import Header, String  # noqa: E402
from stream_checks import largest_step_per_period  # noqa: E402

from mvvdp_core.graph import build_graph  # noqa: E402
from mvvdp_msgs.action import Execute as ExecuteAction  # noqa: E402
from mvvdp_msgs.msg import ActionChunk  # noqa: E402
from mvvdp_msgs.srv import Execute  # noqa: E402
from mvvdp_ros.bringup import GraphProcesses  # noqa: E402
from mvvdp_ros.conversions import pose_to_msg, sec_to_stamp  # noqa: E402

HOME = np.array([0.5, 0.0, 0.4])
PERIOD = 0.05  # the executor's control period
MAX_STEP = 0.5 * PERIOD  # max_linear_velocity x control period


class Operator(ProbeNode):
    """The robot's and the operator's side: ee pose and heartbeat out; targets and states in; lifecycle
    services and the Execute action and service of the executor."""

    def __init__(self) -> None:
        super().__init__("lifecycle_operator")
        self.pose_pub = self.create_publisher(PoseStamped, "/franka_robot_state_broadcaster/current_pose", 10)
        self.beat_pub = self.create_publisher(Header, "/mvvdp/heartbeat", 10)
        self.chunk_pub = self.create_publisher(ActionChunk, "/mvvdp/chunk", 10)
        self.targets: list[tuple[float, np.ndarray, float]] = []  # (received, position, header stamp)
        self.states: list[tuple[float, str]] = []
        target_topic = "/cartesian_impedance_controller/target_pose"
        self.create_subscription(PoseStamped, target_topic, self._on_target, 10)
        self.create_subscription(String, "/mvvdp/executor/state",
                                 lambda m: self.states.append((time.monotonic(), m.data)), 10)
        self.create_timer(0.02, self._publish)
        self.change = self.create_client(ChangeState, "/executor/change_state")
        self.get = self.create_client(GetState, "/executor/get_state")
        self.execute = self.create_client(Execute, "/mvvdp/execute")
        self.action = ActionClient(self, ExecuteAction, "/mvvdp/execute")

    def _publish(self) -> None:
        pose = PoseStamped(pose=pose_to_msg(HOME, [0.0, 0.0, 0.0, 1.0]))
        pose.header.frame_id = "fr3_link0"
        pose.header.stamp = self.get_clock().now().to_msg()
        self.pose_pub.publish(pose)
        self.beat_pub.publish(Header(stamp=pose.header.stamp))

    def _on_target(self, msg: PoseStamped) -> None:
        p, stamp = msg.pose.position, msg.header.stamp.sec + 1e-9 * msg.header.stamp.nanosec
        self.targets.append((time.monotonic(), np.array([p.x, p.y, p.z]), stamp))

    def state(self) -> int:
        return self.call(self.get, GetState.Request()).current_state.id

    def transition(self, transition: int) -> bool:
        return self.call(self.change, ChangeState.Request(transition=Transition(id=transition))).success

    def send_chunk(self, chunk_id: int, dx: float = 0.01, steps: int = 4) -> None:
        msg = ActionChunk(chunk_id=chunk_id, status="pending", confidence=0.9)
        msg.header.stamp = sec_to_stamp(self.get_clock().now().nanoseconds * 1e-9)
        msg.header.frame_id = "fr3_link0"
        msg.poses = [pose_to_msg(HOME + [dx * (i + 1), 0, 0], [0.0, 0.0, 0.0, 1.0]) for i in range(steps)]
        msg.gripper = [1.0] * steps
        msg.time_from_start = [0.1 * (i + 1) for i in range(steps)]
        msg.step_confidence = [0.9] * steps
        self.chunk_pub.publish(msg)
        self.spin_until(lambda: False, 0.3)

    def targets_since(self, since: float) -> np.ndarray:
        return np.array([p for t, p, _ in self.targets if t > since]).reshape(-1, 3)

    def largest_step_per_period(self, since: float) -> float:
        received = [(stamp, p) for t, p, stamp in self.targets if t > since]
        return largest_step_per_period([s for s, _ in received], [p for _, p in received], PERIOD)


@pytest.fixture(scope="module")
def operator():
    os.environ["ROS_DOMAIN_ID"] = str(random.randint(1, 200))
    specs = [s for s in build_graph(sim=False, mode="preview", autostart=False) if s.name == "executor"]
    assert specs[0].parameters["autostart"] is False
    with GraphProcesses(specs):
        rclpy.init()
        node = Operator()
        try:
            assert node.get.wait_for_service(timeout_sec=30.0), "executor did not start"
            yield node
        finally:
            node.destroy_node()
            rclpy.shutdown()


def test_transitions_gate_the_commands(operator: Operator) -> None:
    op = operator
    assert op.state() == State.PRIMARY_STATE_UNCONFIGURED
    assert not op.execute.wait_for_service(timeout_sec=1.0)  # nothing is served before configure
    assert op.transition(Transition.TRANSITION_CONFIGURE)
    assert op.state() == State.PRIMARY_STATE_INACTIVE
    op.send_chunk(1)
    refused = op.call(op.execute, Execute.Request(chunk_id=1, approve=True))
    assert not refused.success and "inactive" in refused.message
    op.spin_until(lambda: False, 1.0)
    assert op.targets == [] and op.states == []  # an inactive executor commands nothing

    assert op.transition(Transition.TRANSITION_ACTIVATE)
    assert op.state() == State.PRIMARY_STATE_ACTIVE
    assert op.spin_until(lambda: bool(op.states), 30.0)
    op.send_chunk(2, dx=0.01, steps=40)
    assert op.call(op.execute, Execute.Request(chunk_id=2, approve=True)).success
    assert op.spin_until(lambda: len(op.targets_since(0)) >= 10, 30.0)
    assert op.targets_since(0)[:, 0].max() > HOME[0] + 0.02  # the chunk is running

    # Deactivate: the hold goes out through the filter (steps of at most MAX_STEP) and ends at the
    # measured pose; then nothing more is sent.
    before = time.monotonic() - 0.06
    assert op.transition(Transition.TRANSITION_DEACTIVATE)
    assert op.state() == State.PRIMARY_STATE_INACTIVE
    op.spin_until(lambda: False, 2.5)
    holding = op.targets_since(before)
    assert len(holding) >= 1
    assert op.largest_step_per_period(before) <= MAX_STEP + 1e-9
    np.testing.assert_allclose(holding[-1], HOME, atol=1e-9)
    quiet = time.monotonic()
    op.spin_until(lambda: False, 1.0)
    assert len(op.targets_since(quiet)) == 0

    # Activating again keeps the hold latched: holds at the measured pose, no chunk resumes.
    assert op.transition(Transition.TRANSITION_ACTIVATE)
    again = time.monotonic()
    assert op.spin_until(lambda: len(op.targets_since(again)) >= 5, 30.0)
    np.testing.assert_allclose(op.targets_since(again), np.tile(HOME, (len(op.targets_since(again)), 1)),
                               atol=1e-9)
    assert op.states[-1][1].startswith("hold")

    # Cleanup (from inactive) removes the executor's interfaces; configure brings them back.
    assert op.transition(Transition.TRANSITION_DEACTIVATE)
    assert op.transition(Transition.TRANSITION_CLEANUP)
    assert op.state() == State.PRIMARY_STATE_UNCONFIGURED
    assert op.spin_until(lambda: not op.execute.service_is_ready(), 30.0)
    assert op.transition(Transition.TRANSITION_CONFIGURE)
    assert op.transition(Transition.TRANSITION_ACTIVATE)
    assert op.execute.wait_for_service(timeout_sec=10.0)


def test_execute_action_reports_steps_and_finishes(operator: Operator) -> None:
    op = operator
    if op.state() != State.PRIMARY_STATE_ACTIVE:
        for transition in (Transition.TRANSITION_CONFIGURE, Transition.TRANSITION_ACTIVATE):
            op.transition(transition)
    assert op.action.wait_for_server(timeout_sec=30.0)
    op.send_chunk(3, dx=0.01, steps=6)
    feedback: list[ExecuteAction.Feedback] = []
    goal = op.wait(op.action.send_goal_async(ExecuteAction.Goal(chunk_id=3, approve=True),
                                             feedback_callback=lambda m: feedback.append(m.feedback)))
    assert goal.accepted
    result = op.wait(goal.get_result_async()).result
    assert result.success and "finished" in result.message, result.message
    assert result.steps_executed == 6
    assert feedback and {f.num_steps for f in feedback} == {6}
    steps = [f.step for f in feedback]
    assert steps == sorted(steps) and steps[-1] == 5
    # An unknown chunk is refused with the reason.
    goal = op.wait(op.action.send_goal_async(ExecuteAction.Goal(chunk_id=999, approve=True)))
    result = op.wait(goal.get_result_async()).result
    assert not result.success and "unknown chunk 999" in result.message


def test_cancelling_execute_holds_the_arm(operator: Operator) -> None:
    op = operator
    assert op.action.wait_for_server(timeout_sec=30.0)
    op.send_chunk(4, dx=0.01, steps=40)
    started: list[int] = []
    goal = op.wait(op.action.send_goal_async(ExecuteAction.Goal(chunk_id=4, approve=True),
                                             feedback_callback=lambda m: started.append(m.feedback.step)))
    assert goal.accepted
    assert op.spin_until(lambda: len(started) >= 5, 30.0), f"feedback steps {started}"
    cancel_time = time.monotonic()
    op.wait(goal.cancel_goal_async())
    result = op.wait(goal.get_result_async())
    assert result.status == 5  # GoalStatus.STATUS_CANCELED
    assert not result.result.success and "holding" in result.result.message
    op.spin_until(lambda: False, 1.0)
    after = op.targets_since(cancel_time - 0.06)
    assert op.largest_step_per_period(cancel_time - 0.06) <= MAX_STEP + 1e-9
    np.testing.assert_allclose(after[-1], HOME, atol=1e-9)
    assert op.states[-1][1].startswith("hold") and "stop" in op.states[-1][1]


def test_refused_configuration_leaves_the_node_unconfigured() -> None:
    """autostart false: nothing is loaded when built; a configure the node refuses logs why and leaves it
    unconfigured; a good configuration then loads the calibration."""
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter

    from mvvdp_core.graph import default_config_dir
    from mvvdp_ros.perception_node import PerceptionNode

    context = rclpy.Context()  # its own: the module's DDS fixture may hold the default one
    rclpy.init(context=context)
    try:
        node = PerceptionNode(context=context, parameter_overrides=[Parameter("autostart", value=False),
                                                                    Parameter("use_tf", value=False)])
        assert node.lifecycle_state() == "unconfigured" and not hasattr(node, "sync")
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE  # no cameras_file
        assert node.lifecycle_state() == "unconfigured"
        node.destroy_node()
        cameras = str(default_config_dir() / "cameras_sim.yaml")
        node = PerceptionNode(context=context, parameter_overrides=[Parameter("autostart", value=False),
                                                                    Parameter("use_tf", value=False),
                                                                    Parameter("cameras_file", value=cameras)])
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node.lifecycle_state() == "inactive" and list(node.sync.cameras) == [
            "zed_front", "zed_left", "zed_right"]
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS and node.active
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)
