"""The policy node as a lifecycle node over DDS, with the Preview action: feedback per denoising step, a
cancel that abandons the prediction, the service beside it; deactivation stops the heartbeat and the previews.
Tiny random model; the test publishes the views and the end-effector pose."""

import os
import random
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy (ROS 2 wheels) not installed")
pytest.importorskip("mvvdp_msgs.action", reason="mvvdp_msgs not built (scripts/build_msgs.sh)")

from action_msgs.msg import GoalStatus  # noqa: E402
from geometry_msgs.msg import PoseStamped  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState  # noqa: E402
from rclpy.action import ActionClient  # noqa: E402
from ros_probe import ProbeNode  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from mvvdp_core.cli import tiny_checkpoint_command as build_tiny_checkpoint  # noqa: E402
from mvvdp_core.geometry import Workspace  # noqa: E402
from mvvdp_core.graph import build_graph  # noqa: E402
from mvvdp_msgs.action import Preview as PreviewAction  # noqa: E402
from mvvdp_msgs.msg import ActionChunk, ProjectedViews  # noqa: E402
from mvvdp_msgs.srv import Preview  # noqa: E402
from mvvdp_ros.bringup import GraphProcesses  # noqa: E402
from mvvdp_ros.conversions import pose_to_msg, views_to_msg  # noqa: E402

SIZE = 64  # the tiny model's views


class Viewer(ProbeNode):
    def __init__(self) -> None:
        super().__init__("preview_viewer")
        self.views_pub = self.create_publisher(ProjectedViews, "/mvvdp/views", 1)
        self.pose_pub = self.create_publisher(PoseStamped, "/franka_robot_state_broadcaster/current_pose", 10)
        self.chunks: list[ActionChunk] = []
        self.beats: list[float] = []
        self.create_subscription(ActionChunk, "/mvvdp/chunk", self.chunks.append, 10)
        self.create_subscription(Header, "/mvvdp/heartbeat",
                                 lambda _m: self.beats.append(time.monotonic()), 10)
        self.create_timer(0.1, self._publish)
        self.preview = self.create_client(Preview, "/mvvdp/preview")
        self.action = ActionClient(self, PreviewAction, "/mvvdp/preview")
        self.change = self.create_client(ChangeState, "/policy/change_state")
        workspace = Workspace()
        self._views = (workspace, np.random.default_rng(0).random((3, 3, SIZE, SIZE), dtype=np.float32))

    def _publish(self) -> None:
        now = self.get_clock().now()
        workspace, rgb = self._views
        depth = np.full((3, SIZE, SIZE), np.inf, np.float32)
        self.views_pub.publish(views_to_msg(workspace.views, rgb, depth, workspace.center, workspace.edge,
                                            now.to_msg(), "fr3_link0"))
        pose = PoseStamped(pose=pose_to_msg([0.5, 0.0, 0.4], [1.0, 0.0, 0.0, 0.0]))
        pose.header.frame_id, pose.header.stamp = "fr3_link0", now.to_msg()
        self.pose_pub.publish(pose)

    def transition(self, transition: int) -> bool:
        assert self.change.wait_for_service(timeout_sec=30.0)
        request = ChangeState.Request(transition=Transition(id=transition))
        return self.wait(self.change.call_async(request)).success


@pytest.fixture(scope="module")
def viewer(tmp_path_factory):
    os.environ["ROS_DOMAIN_ID"] = str(random.randint(1, 200))
    checkpoint = tmp_path_factory.mktemp("policy") / "tiny"
    build_tiny_checkpoint([str(checkpoint)])
    specs = [s for s in build_graph(sim=False, mode="preview", checkpoint=str(checkpoint),
                                    overrides={"policy": {"max_denoising_steps": 400}}) if s.name == "policy"]
    with GraphProcesses(specs):
        rclpy.init()
        node = Viewer()
        try:
            assert node.action.wait_for_server(timeout_sec=120.0), "policy did not start"
            matched = lambda: node.views_pub.get_subscription_count() > 0  # noqa: E731
            assert node.spin_until(matched, 30.0), "policy did not subscribe the views"
            node.spin_until(lambda: False, 0.5)  # views and pose delivered
            yield node
        finally:
            node.destroy_node()
            rclpy.shutdown()


def test_preview_action_reports_each_denoising_step(viewer: Viewer) -> None:
    assert viewer.spin_until(lambda: bool(viewer.beats), 30.0)
    feedback: list[tuple[int, int]] = []
    goal = viewer.wait(viewer.action.send_goal_async(
        PreviewAction.Goal(num_steps=3), feedback_callback=lambda m: feedback.append(
            (m.feedback.step, m.feedback.num_steps))))
    assert goal.accepted
    answer = viewer.wait(goal.get_result_async())
    assert answer.status == GoalStatus.STATUS_SUCCEEDED, answer.result.message
    result = answer.result
    assert result.success and len(result.positions) == len(result.gripper) > 0
    assert feedback == [(1, 3), (2, 3), (3, 3)]
    assert viewer.spin_until(lambda: any(c.chunk_id == result.chunk_id for c in viewer.chunks), 10.0)
    # The service still answers the same request.
    assert viewer.preview.wait_for_service(timeout_sec=10.0)
    reply = viewer.wait(viewer.preview.call_async(Preview.Request(num_steps=1)))
    assert reply.success and reply.chunk_id != result.chunk_id
    # A bad request is refused with the reason, as the service refuses it.
    goal = viewer.wait(viewer.action.send_goal_async(PreviewAction.Goal(num_steps=10_000)))
    answer = viewer.wait(goal.get_result_async())
    assert answer.status == GoalStatus.STATUS_ABORTED and "num_steps" in answer.result.message


def test_cancelled_preview_publishes_no_chunk(viewer: Viewer) -> None:
    published = len(viewer.chunks)
    feedback: list[int] = []
    goal = viewer.wait(viewer.action.send_goal_async(
        PreviewAction.Goal(num_steps=400), feedback_callback=lambda m: feedback.append(m.feedback.step)))
    assert viewer.spin_until(lambda: len(feedback) >= 2, 60.0)
    viewer.wait(goal.cancel_goal_async())
    answer = viewer.wait(goal.get_result_async())
    assert answer.status == GoalStatus.STATUS_CANCELED
    assert not answer.result.success and "cancelled after" in answer.result.message
    assert max(feedback) < 400
    viewer.spin_until(lambda: False, 1.0)
    assert len(viewer.chunks) == published


def test_inactive_policy_has_no_heartbeat_and_refuses_previews(viewer: Viewer) -> None:
    assert viewer.transition(Transition.TRANSITION_DEACTIVATE)
    viewer.spin_until(lambda: False, 0.5)
    quiet = time.monotonic()
    reply = viewer.wait(viewer.preview.call_async(Preview.Request(num_steps=1)))
    assert not reply.success and "inactive" in reply.message
    goal = viewer.wait(viewer.action.send_goal_async(PreviewAction.Goal(num_steps=1)))
    assert not goal.accepted
    viewer.spin_until(lambda: False, 1.0)
    assert not [t for t in viewer.beats if t > quiet]
    assert viewer.transition(Transition.TRANSITION_ACTIVATE)
    assert viewer.spin_until(lambda: any(t > quiet + 1.0 for t in viewer.beats), 10.0)
    reply = viewer.wait(viewer.preview.call_async(Preview.Request(num_steps=1)))
    assert reply.success, reply.message
