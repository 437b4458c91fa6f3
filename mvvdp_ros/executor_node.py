"""Executor node: streams approved (preview) or auto chunks through the safety filter to the controller.

Thin adapter over mvvdp_core.execution.ChunkExecutor; see that module for the behaviour. Every chunk is
validated whole on arrival (mvvdp_core.execution.validate_chunk); a rejected one is logged, counted on
/diagnostics and the arm holds. /mvvdp/stop latches until /mvvdp/resume (or an approval in preview mode).
A callback that raises is logged and the arm holds (mvvdp_ros.guard).

Lifecycle (mvvdp_ros.lifecycle): configure validates the settings and creates the interfaces; only an active
executor sends targets and gripper commands. Deactivation latches a stop in the core, so the hold passes the
one safety filter like any other target; its hold targets go out until they stand at the held pose, then
nothing is sent (the controller keeps the last target). Activating again keeps the stop latched until
/mvvdp/resume or the next approval. The Execute action (same name as the service) approves a chunk and
reports the step aimed at each period; cancelling it stops and holds as /mvvdp/stop does. Its goals are
followed on a thread of their own; calls into the core go through the control loop's thread.

Policy liveness: the heartbeat subscription asks for DDS liveliness (automatic, lease heartbeat_timeout). The
policy's DDS participant asserts it from its own native thread, so a policy whose Python threads are starved
of CPU (inference, load) stays alive, while a killed or frozen one loses it within the lease: a running chunk
is then cancelled at once. While the policy is live and its last heartbeat message is younger than
heartbeat_grace, each control period counts as a heartbeat (a live process whose Python is starved pauses
its messages, a hung one stops them); heartbeat messages from any publisher count as well.
"""

from __future__ import annotations

import sys
import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus
from geometry_msgs.msg import PoseStamped
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.action.server import ServerGoalHandle
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.duration import Duration
from rclpy.event_handler import QoSLivelinessChangedInfo, SubscriptionEventCallbacks
from rclpy.qos import LivelinessPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.task import Future
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64, Header, String
from std_srvs.srv import Trigger

from mvvdp_core.execution import ChunkChecks, ChunkExecutor, Command, ExecutorConfig, validate_chunk
from mvvdp_core.safety import DEFAULT_CONTROL_RATE, PoseTarget, SafetyLimits
from mvvdp_msgs.action import Execute as ExecuteAction
from mvvdp_msgs.msg import ActionChunk
from mvvdp_msgs.srv import Execute
from mvvdp_ros.conversions import chunk_from_msg, pose_from_msg, pose_stamped
from mvvdp_ros.diagnostics import Diagnostics
from mvvdp_ros.lifecycle import ManagedNode
from mvvdp_ros.params import apply_live_parameters, declare_parameters
from mvvdp_ros.spin import run_node

PARAMETERS = {
    "mode": ("preview", "preview: run only chunks approved on the execute service; auto: run auto chunks"),
    "control_rate": (DEFAULT_CONTROL_RATE, "control loop rate in Hz (targets sent to the controller)"),
    "base_frame": ("fr3_link0", "robot base frame of all poses"),
    "ee_pose_topic": ("/franka_robot_state_broadcaster/current_pose", "end-effector pose (PoseStamped)"),
    "gripper_state_topic": ("/fr3_gripper/joint_states", "gripper finger joints (width = sum)"),
    "target_pose_topic": ("/cartesian_impedance_controller/target_pose", "controller target pose"),
    "gripper_command_topic": ("mvvdp/gripper_command", "gripper target width in metres (Float64)"),
    "chunk_topic": ("mvvdp/chunk", "action chunks from the policy"),
    "heartbeat_topic": ("mvvdp/heartbeat", "policy heartbeat (std_msgs/Header)"),
    "state_topic": ("mvvdp/executor/state", "executor state for monitoring (std_msgs/String)"),
    "execute_service": ("mvvdp/execute", "approve or reject a pending chunk (mvvdp_msgs/Execute)"),
    "stop_service": ("mvvdp/stop", "cancel and hold until resumed (std_srvs/Trigger)"),
    "resume_service": ("mvvdp/resume", "lift a stop: chunks run again (std_srvs/Trigger)"),
    "diagnostics_topic": ("/diagnostics", "rejected chunks, drops while stopped, callback errors"),
    "gripper_interface": ("topic", "topic: width on gripper_command_topic; franka: franka_gripper actions"),
    "franka_gripper_node": ("/fr3_gripper", "franka_gripper node (franka interface): actions <node>/move, "
                                            "<node>/grasp, <node>/homing"),
    "franka_gripper_homing": (False, "franka interface: home the gripper once at start-up (finds its width)"),
    "gripper_speed": (0.1, "finger speed for franka_gripper move/grasp (m/s)"),
    "grasp_force": (30.0, "grasp force for franka_gripper grasp (N)"),
    "gripper_open_width": (0.08, "gripper width commanded for 'open' (m)"),
    "gripper_closed_width": (0.0, "gripper width commanded for 'closed' (m)"),
    "max_chunk_age": (2.0, "auto: drop chunks whose observation is older than this on arrival (s)"),
    "approval_timeout": (120.0, "preview: pending chunks older than this cannot be approved (s)"),
    "ee_timeout": (0.25, "hold when the end-effector state is older than this (s)"),
    "heartbeat_timeout": (0.3, "hold a running chunk when the policy heartbeat is older than this; also the "
                               "DDS liveliness lease asked of the policy's heartbeat publisher (s)"),
    "heartbeat_grace": (2.0, "while the policy's DDS liveliness holds, its heartbeat messages may pause this "
                             "long (CPU starvation) before it counts as lost (s)", (0.0, 60.0)),
    "settle_time": (0.5, "keep aiming at a chunk's last step this long after its last step time (s)"),
    "blend_overlap": (0.3, "auto: a new chunk's targets ramp in from the running chunk over this long (s)"),
    "switch_delay": (0.0, "auto: the running chunk goes on this long after a new one arrives (s)"),
    "workspace_lower": ([0.15, -0.5, 0.02], "safety box lower corner in the base frame (m)"),
    "workspace_upper": ([0.85, 0.5, 0.85], "safety box upper corner in the base frame (m)"),
    "max_step_translation": (0.04, "largest translation from the last target sent, per period (m)"),
    "max_step_rotation_deg": (10.0, "largest rotation from the last target sent, per period (deg)"),
    "max_linear_velocity": (0.5, "largest target linear velocity, command to command (m/s)"),
    "max_angular_velocity_deg": (120.0, "largest target angular velocity (deg/s)"),
    "max_tracking_error": (0.10, "largest distance of a target from the measured ee position (m)"),
    "max_tracking_rotation_deg": (30.0, "largest rotation of a target from the measured orientation (deg)"),
    "gripper_min_hold": (0.5, "the gripper keeps a new open/closed state at least this long (s)"),
    "workspace_center": ([0.5, 0.0, 0.4], "reject chunks with a step outside this cube (m)"),
    "workspace_edge": (1.0, "edge of that cube (m)", (0.01, 10.0)),
    "min_step_confidence": (0.05, "chunks with a step below this confidence are rejected", (0.0, 1.0)),
}
DRAIN_PERIODS = 40  # deactivation: hold targets go out until they stand unlimited, at most this many periods
# Set at run time (`ros2 param set`), validated as at start-up (ExecutorConfig, SafetyLimits, ChunkChecks);
# the rest is read-only (names, mode, rate, and heartbeat_timeout: the DDS lease of a subscription).
LIVE = ("max_chunk_age", "approval_timeout", "ee_timeout", "heartbeat_grace", "settle_time", "blend_overlap",
        "switch_delay", "workspace_lower", "workspace_upper", "max_step_translation", "max_step_rotation_deg",
        "max_linear_velocity", "max_angular_velocity_deg", "max_tracking_error", "max_tracking_rotation_deg",
        "gripper_min_hold", "workspace_center", "workspace_edge", "min_step_confidence", "gripper_speed",
        "grasp_force")


class ExecutorNode(ManagedNode):
    def __init__(self, **kwargs) -> None:
        super().__init__("executor", **kwargs)
        self.params = declare_parameters(self, PARAMETERS, live=LIVE)
        self.core: ChunkExecutor | None = None
        self.diagnostics = Diagnostics(self, self.params["diagnostics_topic"])
        apply_live_parameters(self, self.params, LIVE, self._apply_settings)
        self.start()

    def configure(self) -> None:
        p = self.params
        if not p["control_rate"] > 0:
            raise ValueError(f"control_rate must be > 0 Hz, got {p['control_rate']}")
        if not p["gripper_open_width"] > p["gripper_closed_width"] >= 0:
            raise ValueError("gripper widths must satisfy open > closed >= 0")
        if p["gripper_interface"] not in ("topic", "franka"):
            raise ValueError(f"gripper_interface must be topic or franka, got {p['gripper_interface']!r}")
        self.period = 1.0 / p["control_rate"]
        config, limits, self.checks = self._settings(p)
        self.core = ChunkExecutor(config, limits)
        self.callback_errors = 0
        self._gripper_opening = 1.0
        self._draining = 0  # periods left to send the deactivation hold (inactive: nothing else goes out)
        self._period_waiters: list[Future] = []  # Execute goals awaiting the next control period
        self._last_command = Command(None, "idle")
        self._goal_active = False
        self._policy_live = False
        self._last_beat = -np.inf  # node time of the last heartbeat message

        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        sensor = qos_profile_sensor_data  # best effort: matches reliable and best-effort publishers
        self.create_subscription(PoseStamped, p["ee_pose_topic"], self._on_pose, sensor)
        self.create_subscription(JointState, p["gripper_state_topic"], self._on_gripper, sensor)
        self.create_subscription(ActionChunk, p["chunk_topic"], self._on_chunk, reliable)
        liveliness = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT,
                                liveliness=LivelinessPolicy.AUTOMATIC,
                                liveliness_lease_duration=Duration(seconds=p["heartbeat_timeout"]))
        events = SubscriptionEventCallbacks(liveliness=self._guard(self._on_liveliness))
        self.create_subscription(Header, p["heartbeat_topic"], lambda _msg: None, liveliness,
                                 event_callbacks=events)
        # Heartbeat messages from any publisher, with or without a liveliness lease (the one above only
        # matches publishers that offer a lease no longer than heartbeat_timeout).
        self.create_subscription(Header, p["heartbeat_topic"], self._on_heartbeat, sensor)
        self.target_pub = self.create_publisher(PoseStamped, p["target_pose_topic"], QoSProfile(depth=1))
        self.gripper_pub = self.create_publisher(Float64, p["gripper_command_topic"], QoSProfile(depth=1))
        self._franka = self._franka_gripper_clients() if p["gripper_interface"] == "franka" else None
        self._sent_gripper: float | None = None
        self.state_pub = self.create_publisher(String, p["state_topic"], reliable)
        self.create_service(Execute, p["execute_service"], self._on_execute)
        self.create_service(Trigger, p["stop_service"], self._on_stop)
        self.create_service(Trigger, p["resume_service"], self._on_resume)
        server = ActionServer(self, ExecuteAction, p["execute_service"], self._execute_goal,
                              goal_callback=self._accept_goal, callback_group=ReentrantCallbackGroup(),
                              cancel_callback=lambda _request: CancelResponse.ACCEPT)
        self._own(server, lambda action: action.destroy())
        self.create_timer(self.period, self._tick)
        self.get_logger().info(f"executor configured: mode {config.mode}, {p['control_rate']:.0f} Hz")

    def deactivate(self) -> None:
        """Latch a stop through the core (the one safety filter) and send its hold before going quiet."""
        self.core.stop(self._now())
        self._draining = DRAIN_PERIODS
        self._tick()
        self._report("deactivated: holding until resumed (or the next approval)")

    def cleanup(self) -> None:
        self.core = None

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    @staticmethod
    def _settings(p: dict) -> tuple[ExecutorConfig, SafetyLimits, ChunkChecks]:
        """The core's settings from the parameter values; raises ValueError on invalid ones."""
        timing = ("mode", "max_chunk_age", "approval_timeout", "ee_timeout", "heartbeat_timeout",
                  "settle_time", "blend_overlap", "switch_delay")
        config = ExecutorConfig(**{k: p[k] for k in timing})
        limits = SafetyLimits(
            workspace_lower=tuple(p["workspace_lower"]), workspace_upper=tuple(p["workspace_upper"]),
            **{k: p[k] for k in ("max_step_translation", "max_step_rotation_deg", "max_linear_velocity",
                                 "max_angular_velocity_deg", "max_tracking_error",
                                 "max_tracking_rotation_deg", "gripper_min_hold")},
        )
        center, edge = np.asarray(p["workspace_center"], float), p["workspace_edge"]
        checks = ChunkChecks(p["base_frame"], tuple(center - edge / 2), tuple(center + edge / 2),
                             p["min_step_confidence"])
        for name in ("gripper_speed", "grasp_force"):
            if not p[name] > 0:
                raise ValueError(f"{name} must be > 0, got {p[name]!r}")
        return config, limits, checks

    def _apply_settings(self, p: dict) -> None:
        """A live parameter change: validated whole, then swapped into the core between control periods."""
        config, limits, checks = self._settings(p)
        if self.core is not None:  # unconfigured: configure reads the new values
            self.core.config, self.core.safety.limits, self.checks = config, limits, checks

    def _on_pose(self, msg: PoseStamped) -> None:
        if msg.header.frame_id and msg.header.frame_id != self.params["base_frame"]:
            frame = msg.header.frame_id
            self.get_logger().warning(f"ee pose in frame {frame!r}, not the base frame; ignored",
                                      throttle_duration_sec=5.0)
            return
        position, quaternion = pose_from_msg(msg.pose)
        if not (np.isfinite(position).all() and np.isfinite(quaternion).all()):
            self.get_logger().warning("non-finite ee pose ignored", throttle_duration_sec=5.0)
            return
        quaternion = quaternion / np.linalg.norm(quaternion)
        self.core.update_state(PoseTarget(position, quaternion, self._gripper_opening), self._now())

    def _on_gripper(self, msg: JointState) -> None:
        width = float(sum(msg.position))
        p = self.params
        span = p["gripper_open_width"] - p["gripper_closed_width"]
        self._gripper_opening = float(np.clip((width - p["gripper_closed_width"]) / span, 0.0, 1.0))

    def _on_heartbeat(self, _msg: Header) -> None:
        first = not np.isfinite(self._last_beat)
        self._last_beat = self._now()
        self.core.heartbeat(self._last_beat)
        if first:
            self._report("policy heartbeat received", DiagnosticStatus.OK)

    def _on_liveliness(self, info: QoSLivelinessChangedInfo) -> None:
        live = info.alive_count > 0
        if self._policy_live and not live:
            self.get_logger().warning("policy liveliness lost (lease expired)")
            if self.core.running is not None or self.core.next_switch is not None:
                self.core.fault("policy heartbeat lost (liveliness lease expired)", self._now())
                self._flush_events()
                self._tick()
        self._policy_live = live

    def _on_chunk(self, msg: ActionChunk) -> None:
        now = self._now()
        if not self.active:
            self.get_logger().warning(f"chunk {msg.chunk_id} dropped: executor inactive",
                                      throttle_duration_sec=2.0)
            return
        try:
            chunk = chunk_from_msg(msg)
            problem = validate_chunk(chunk, msg.header.frame_id, np.asarray(msg.step_confidence), self.checks)
        except ValueError as err:
            problem = str(err)
        if problem:
            self.core.reject(int(msg.chunk_id), problem, now)
            self._flush_events()
            self._report(f"chunk {msg.chunk_id} rejected: {problem}")
            self._tick()  # the hold goes out now
            return
        dropped = self.core.dropped_while_stopped
        self.core.offer(chunk, msg.status, now)
        self._flush_events()
        if self.core.dropped_while_stopped != dropped:
            self._report(f"chunk {msg.chunk_id} dropped: stopped")

    def _on_execute(self, request: Execute.Request, response: Execute.Response) -> Execute.Response:
        response.success, response.message = self._approve(int(request.chunk_id), request.approve)
        return response

    def _approve(self, chunk_id: int, approve: bool) -> tuple[bool, str]:
        if not self.active:
            return False, f"chunk {chunk_id}: executor inactive (activate it first)"
        result = self.core.approve(chunk_id, approve, self._now())
        self._flush_events()
        return result

    # ---- the Execute action: a coroutine that the control loop wakes once per period ----
    def _accept_goal(self, _goal: ExecuteAction.Goal) -> GoalResponse:
        if self._goal_active or not self.active:
            why = "one is running" if self.active else "executor inactive"
            self.get_logger().warning(f"execute goal refused: {why}")
            return GoalResponse.REJECT
        self._goal_active = True
        return GoalResponse.ACCEPT

    async def _next_period(self) -> Command | None:
        """The command of the next control period (None when the loop is inactive)."""
        future = Future(executor=self.executor)
        self._period_waiters.append(future)
        return await future

    def _wake_waiters(self, command: Command | None) -> None:
        waiters, self._period_waiters = self._period_waiters, []
        for future in waiters:
            if not future.done():
                future.set_result(command)

    async def _execute_goal(self, goal: ServerGoalHandle) -> ExecuteAction.Result:
        try:
            return await self._follow_goal(goal)
        finally:
            self._goal_active = False

    async def _follow_goal(self, goal: ServerGoalHandle) -> ExecuteAction.Result:
        """Runs on the node's one executor thread between control periods, like every other callback."""
        chunk_id, approve = int(goal.request.chunk_id), bool(goal.request.approve)
        ok, message = self._approve(chunk_id, approve)
        if not ok or not approve:
            goal.succeed() if ok else goal.abort()
            return ExecuteAction.Result(success=ok, message=message)
        total, done, last = len(self.core.running.positions), 0, time.monotonic()
        while True:
            command = await self._next_period()
            if command is None:
                goal.abort()
                return ExecuteAction.Result(success=False, steps_executed=done,
                                            message=f"chunk {chunk_id}: ended, executor inactive")
            if goal.is_cancel_requested:
                self._stop("execute goal cancelled")
                goal.canceled()
                return ExecuteAction.Result(success=False, steps_executed=done,
                                            message=f"chunk {chunk_id}: cancelled, holding until resumed")
            if command.chunk_id == chunk_id:
                last, done = time.monotonic(), max(done, command.step + 1)
                goal.publish_feedback(ExecuteAction.Feedback(state=command.state, step=command.step,
                                                             num_steps=total))
                continue
            if command.reason == "chunk finished":
                goal.succeed()
                return ExecuteAction.Result(success=True, steps_executed=done,
                                            message=f"chunk {chunk_id}: finished")
            ended = command.reason or (f"chunk {command.chunk_id} runs instead" if command.chunk_id else "")
            if ended or time.monotonic() - last > 5.0:
                goal.abort()
                return ExecuteAction.Result(success=False, steps_executed=done,
                                            message=f"chunk {chunk_id}: ended, {ended or 'no control loop'}")

    def _on_stop(self, _request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        response.message = self._stop("stopped")
        response.success = True
        return response

    def _stop(self, why: str) -> str:
        message = self.core.stop(self._now())
        self._tick()  # send the hold target now rather than at the next period
        self._report(why)
        return message

    def _on_resume(self, _request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        response.message = self.core.resume(self._now())
        response.success = True
        self._flush_events()
        self._report("resumed", DiagnosticStatus.OK)
        return response

    def on_callback_error(self, where: str, error: Exception) -> None:
        if self.core is None:
            return
        self.callback_errors += 1
        self.core.fault(f"{where} failed: {error}", self._now())
        self._flush_events()
        self._report(f"{where} failed: {error}", DiagnosticStatus.ERROR)

    def _report(self, message: str, level: bytes = DiagnosticStatus.WARN) -> None:
        """The executor's /diagnostics status ("safety") with its fault counters."""
        if level != DiagnosticStatus.OK:
            self.get_logger().warning(message)
        core = self.core
        counters = {} if core is None else {
            "rejected_chunks": core.rejected_chunks, "dropped_while_stopped": core.dropped_while_stopped,
            "stopped": core.stopped,
            "policy_heard": bool(np.isfinite(self._last_beat))}
        self.diagnostics.report("safety", level, message, callback_errors=getattr(self, "callback_errors", 0),
                                **counters)

    def _tick(self) -> None:
        if not (self.active or self._draining):
            self._wake_waiters(None)
            return  # inactive: no commands
        now = self._now()
        if self._policy_live and now - self._last_beat < self.params["heartbeat_grace"]:
            self.core.heartbeat(now)
        command = self.core.tick(now, self.period)
        self._flush_events()
        self._last_command = command
        if command.target is not None:
            self.target_pub.publish(pose_stamped(command.target, now, self.params["base_frame"]))
            self._command_gripper(command.target.gripper)
        if not self.active:  # the deactivation hold: until it stands unlimited at the held pose
            self._draining = 0 if command.target is None or not command.limited else self._draining - 1
        detail = f" chunk={command.chunk_id} step={command.step}" if command.chunk_id is not None else ""
        limited = f" limited={','.join(command.limited)}" if command.limited else ""
        reason = f" reason={command.reason}" if command.reason else ""
        self.state_pub.publish(String(data=f"{command.state}{detail}{limited}{reason}"))
        self._wake_waiters(command)

    def _franka_gripper_clients(self):
        """Action clients of franka_gripper's move/grasp/homing (robot install with franka_msgs only)."""
        try:
            from franka_msgs.action import Grasp, Homing, Move
            from rclpy.action import ActionClient
        except ImportError as err:
            raise ValueError("gripper_interface franka needs franka_msgs, which is not installed") from err
        node = self.params["franka_gripper_node"].rstrip("/")
        clients = {"move": (Move, ActionClient(self, Move, f"{node}/move")),
                   "grasp": (Grasp, ActionClient(self, Grasp, f"{node}/grasp")),
                   "homing": (Homing, ActionClient(self, Homing, f"{node}/homing"))}
        if self.params["franka_gripper_homing"]:
            action, client = clients["homing"]
            if client.wait_for_server(timeout_sec=5.0):
                client.send_goal_async(action.Goal())
            else:
                self.get_logger().error(f"no gripper action server {node}/homing: gripper not homed")
        return clients

    def _command_gripper(self, opening: float) -> None:
        p = self.params
        width = p["gripper_closed_width"] + opening * (p["gripper_open_width"] - p["gripper_closed_width"])
        if self._franka is None:
            self.gripper_pub.publish(Float64(data=float(width)))
            return
        if self._sent_gripper == opening:  # actions are sent once per open/close change
            return
        name = "move" if opening >= 0.5 else "grasp"
        action, client = self._franka[name]
        if not client.server_is_ready():  # retried next period
            self.get_logger().error(f"gripper action {p['franka_gripper_node']}/{name} not available",
                                    throttle_duration_sec=1.0)
            return
        self._sent_gripper = opening
        if name == "move":
            goal = action.Goal(width=float(width), speed=p["gripper_speed"])
        else:
            goal = action.Goal(width=float(width), speed=p["gripper_speed"], force=p["grasp_force"])
            goal.epsilon.inner = goal.epsilon.outer = float(p["gripper_open_width"])
        client.send_goal_async(goal)

    def _flush_events(self) -> None:
        for line in self.core.events:
            self.get_logger().info(line)
        self.core.events.clear()


def main(argv: list[str] | None = None) -> int:
    return run_node(ExecutorNode, argv)  # one thread: Execute goals are coroutines between control periods


if __name__ == "__main__":
    sys.exit(main())
