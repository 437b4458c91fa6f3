"""/diagnostics over DDS from perception, policy and executor as processes: each node's lifecycle state,
sent again every period while nothing happens; a silent camera, a refused preview and a rejected chunk as
warnings named `<node>: <task>`, with the node as hardware id; diagnostic_updater's period parameter where
that package is installed."""

import os
import random
import time

import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy (ROS 2 wheels) not installed")
pytest.importorskip("mvvdp_msgs.msg", reason="mvvdp_msgs not built (scripts/build_msgs.sh)")

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from ros_probe import ProbeNode  # noqa: E402

from mvvdp_core.graph import build_graph  # noqa: E402
from mvvdp_msgs.msg import ActionChunk  # noqa: E402
from mvvdp_msgs.srv import Preview  # noqa: E402
from mvvdp_ros.bringup import GraphProcesses  # noqa: E402
from mvvdp_ros.diagnostics import UPDATER_PERIOD_PARAMETER, updater_installed  # noqa: E402

NODES = ("perception", "policy", "executor")


class Monitor(ProbeNode):
    def __init__(self) -> None:
        super().__init__("diagnostics_monitor")
        self.seen: list[tuple[float, DiagnosticStatus]] = []
        self.create_subscription(DiagnosticArray, "/diagnostics", self._on_array, 100)
        self.chunk_pub = self.create_publisher(ActionChunk, "/mvvdp/chunk", 10)
        self.preview = self.create_client(Preview, "/mvvdp/preview")

    def _on_array(self, msg: DiagnosticArray) -> None:
        now = time.monotonic()
        self.seen.extend((now, status) for status in msg.status)

    def named(self, name: str, since: float = 0.0) -> list[tuple[float, DiagnosticStatus]]:
        return [(t, s) for t, s in self.seen if s.name == name and t >= since]

@pytest.fixture(scope="module")
def monitor():
    """perception, policy and executor of the sim graph without the simulated robot: no clouds, no views."""
    os.environ["ROS_DOMAIN_ID"] = str(random.randint(1, 200))
    specs = [s for s in build_graph(sim=True) if s.name in NODES]
    with GraphProcesses(specs):
        rclpy.init()
        node = Monitor()
        try:
            up = lambda: all(node.named(f"{n}: state") for n in NODES)  # noqa: E731
            assert node.spin_until(up, 120.0), sorted({s.name for _, s in node.seen})
            yield node
        finally:
            node.destroy_node()
            rclpy.shutdown()


def test_each_node_reports_its_state_and_repeats_it(monitor: Monitor) -> None:
    # A node reports each lifecycle state it passes through (configured, then active) as it starts.
    active = lambda: all(monitor.named(f"{n}: state")[-1][1].message == "active" for n in NODES)  # noqa: E731
    assert monitor.spin_until(active, 120.0), [monitor.named(f"{n}: state")[-1][1].message for n in NODES]
    for name in NODES:
        _, status = monitor.named(f"{name}: state")[-1]
        assert (status.level, status.message, status.hardware_id) == (DiagnosticStatus.OK, "active", name)
    since = time.monotonic()
    # Nothing changes, yet the executor's state comes again each period (1 s).
    assert monitor.spin_until(lambda: len(monitor.named("executor: state", since)) >= 3, 15.0)
    times = [t for t, _ in monitor.named("executor: state", since)]
    assert times[-1] - times[0] >= 1.0


def test_silent_camera_is_a_warning_of_perception(monitor: Monitor) -> None:
    assert monitor.spin_until(lambda: monitor.named("perception: zed_front"), 15.0)
    _, status = monitor.named("perception: zed_front")[-1]
    assert status.level == DiagnosticStatus.WARN and "no cloud for more than" in status.message
    assert status.hardware_id == "zed_front"


def test_refused_preview_is_a_warning_of_the_policy(monitor: Monitor) -> None:
    assert monitor.preview.wait_for_service(timeout_sec=30.0)
    since = time.monotonic()
    future = monitor.preview.call_async(Preview.Request(task="", num_steps=0))
    assert monitor.spin_until(future.done, 60.0)
    assert not future.result().success and "no views" in future.result().message
    assert monitor.spin_until(lambda: monitor.named("policy: inference", since), 10.0)
    _, status = monitor.named("policy: inference", since)[-1]
    assert status.level == DiagnosticStatus.WARN and "no views received" in status.message


def test_rejected_chunk_is_a_warning_of_the_executor(monitor: Monitor) -> None:
    since = time.monotonic()
    chunk = ActionChunk(chunk_id=7, status="auto")  # no steps, no frame: rejected whole
    chunk.header.stamp = monitor.get_clock().now().to_msg()
    monitor.chunk_pub.publish(chunk)
    rejected = lambda: [s for _, s in monitor.named("executor: safety", since)  # noqa: E731
                        if "chunk 7" in s.message]
    assert monitor.spin_until(rejected, 15.0), [s.message for _, s in monitor.named("executor: safety")]
    status = rejected()[-1]
    assert status.level == DiagnosticStatus.WARN
    assert {kv.key for kv in status.values} >= {"rejected_chunks", "stopped", "callback_errors"}


@pytest.mark.skipif(not updater_installed(), reason="diagnostic_updater is not installed")
def test_diagnostic_updater_sets_the_period(monitor: Monitor) -> None:
    from rcl_interfaces.srv import ListParameters

    client = monitor.create_client(ListParameters, "/executor/list_parameters")
    assert client.wait_for_service(timeout_sec=30.0)
    future = client.call_async(ListParameters.Request())
    assert monitor.spin_until(future.done, 30.0)
    assert UPDATER_PERIOD_PARAMETER in future.result().result.names
