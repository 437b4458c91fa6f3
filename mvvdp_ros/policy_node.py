"""Policy node: latest views + end-effector state -> MV-VDP prediction -> chunk, preview images, markers.

Preview mode: the /mvvdp/preview service predicts from the latest observation and publishes a pending chunk,
the predicted frames per view (RGB and heatmap overlay, looped for RViz), a trajectory MarkerArray and
optionally PNG/GIF files. Auto mode: continuous; an InferenceScheduler (mvvdp_core.serving) decides when to
predict the next chunk from the freshest observation so that it is ready at a fraction of the running one
(following the timing of the chunks this node publishes), and results that came back stale are not published.
A heartbeat (std_msgs/Header) tells the executor the policy is alive; it is published from a thread of its
own, so neither a running inference nor a busy executor delays it, and its publisher offers DDS liveliness
(automatic, lease heartbeat_lease), asserted by the DDS participant's own thread. No entity can be ready while
its callback group is busy (the multi-threaded executor would spin on it): the inputs are read when a
prediction starts (mvvdp_ros.latest, no callback per message), each timer has a group of its own, and one
prediction runs at a time (a request that finds one running is refused, an auto step skipped). Requests are
validated: num_steps in [0, max_denoising_steps], a known task.

Lifecycle (mvvdp_ros.lifecycle): configure loads the model, activate starts the heartbeat and the outputs
(lifecycle publishers), deactivate stops both (the executor's liveliness lease runs out: a running chunk
holds) and previews are refused. The Preview action (same name as the service) publishes feedback after each
denoising step; cancelling it abandons the prediction (no chunk is published).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from geometry_msgs.msg import PoseStamped
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.action.server import ServerGoalHandle
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.duration import Duration
from rclpy.qos import LivelinessPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

from mvvdp_core.policy import FastPathOptions, MVVDPPolicy, Observation, PolicyOutput
from mvvdp_core.preview import confidence_color, overlay_heatmaps, preview_frames, save_preview
from mvvdp_core.rotations import quaternion_to_matrix
from mvvdp_core.serving import InferenceScheduler, SchedulerConfig
from mvvdp_msgs.action import Preview as PreviewAction
from mvvdp_msgs.msg import ActionChunk, ProjectedViews
from mvvdp_msgs.srv import Preview
from mvvdp_ros.conversions import (
    chunk_to_msg,
    header,
    image_to_msg,
    points_to_msgs,
    pose_from_msg,
    stamp_to_sec,
    to_uint8_image,
    views_from_msg,
)
from mvvdp_ros.diagnostics import OK, WARN, Diagnostics
from mvvdp_ros.latest import LatestMessage
from mvvdp_ros.lifecycle import ManagedNode
from mvvdp_ros.params import apply_live_parameters, declare_parameters
from mvvdp_ros.spin import run_node

PARAMETERS = {
    "checkpoint": ("", "checkpoint folder (empty: a tiny one in cache_dir, see create_tiny_checkpoint)"),
    "create_tiny_checkpoint": (False, "build a tiny random checkpoint in cache_dir when none is given"),
    "cache_dir": ("~/.cache/mvvdp", "folder for the tiny checkpoint"),
    "device": ("cpu", "torch device of the model"),
    "task": ("", "task used when a request names none (empty: the checkpoint's first task)"),
    "num_steps": (0, "denoising steps (0 = the checkpoint's default)"),
    "max_denoising_steps": (50, "largest num_steps a preview request may ask for", (1, 1000)),
    "seed": (-1, "sampling seed (-1 = random)"),
    "mode": ("preview", "preview: predict on /mvvdp/preview; auto: predict continuously"),
    "fast_path": (False, "fast inference path: merged LoRA, bf16 + flash SDPA on CUDA, cached condition"),
    "compile": (False, "fast path on CUDA: torch.compile the transformer (reduce-overhead, CUDA graphs)"),
    "schedule_rate": (20.0, "auto: how often the scheduler is asked whether to predict (Hz)"),
    "request_fraction": (0.5, "auto: the next chunk should be ready at this fraction of the running one"),
    "initial_latency": (0.4, "auto: inference latency assumed before the first measurement (s)"),
    "latency_smoothing": (0.3, "auto: weight of a new latency measurement in its moving average"),
    "max_chunk_age": (2.0, "auto: a chunk whose observation is older than this when ready is dropped (s)"),
    "max_observation_age": (2.0, "reject observations older than this (s)"),
    "base_frame": ("fr3_link0", "robot base frame"),
    "views_topic": ("mvvdp/views", "projected views in"),
    "ee_pose_topic": ("/franka_robot_state_broadcaster/current_pose", "end-effector pose in"),
    "gripper_state_topic": ("/fr3_gripper/joint_states", "gripper finger joints in (width = sum)"),
    "gripper_open_width": (0.08, "gripper width of a fully open gripper (m)"),
    "chunk_topic": ("mvvdp/chunk", "action chunks out"),
    "heartbeat_topic": ("mvvdp/heartbeat", "heartbeat out (std_msgs/Header)"),
    "heartbeat_rate": (20.0, "heartbeat rate (Hz)"),
    "heartbeat_lease": (0.25, "DDS liveliness lease offered on the heartbeat topic; <= the executor's "
                              "heartbeat_timeout (s)", (0.01, 10.0)),
    "preview_service": ("mvvdp/preview", "preview service (mvvdp_msgs/Preview)"),
    "preview_image_topic": ("mvvdp/preview/{view}/{kind}", "predicted frames; {kind} = rgb or heatmap"),
    "preview_fps": (5.0, "playback rate of the looped preview frames (Hz)"),
    "marker_topic": ("mvvdp/trajectory", "trajectory markers out"),
    "diagnostics_topic": ("/diagnostics", "inference status: latency, refused or failed predictions"),
    "output_dir": ("", "write each preview as GIF/PNG here (empty: off)"),
}
# Set at run time (`ros2 param set`), checked as requests are; the rest is read-only.
LIVE = ("task", "num_steps", "seed", "max_observation_age")


class PreviewCancelled(Exception):
    """A Preview goal was cancelled during its denoising."""


class PolicyNode(ManagedNode):
    def __init__(self, **kwargs) -> None:
        super().__init__("policy", **kwargs)
        self.params = declare_parameters(self, PARAMETERS, live=LIVE)
        self.policy: MVVDPPolicy | None = None
        self._beat_thread: threading.Thread | None = None
        self.diagnostics = Diagnostics(self, self.params["diagnostics_topic"])
        apply_live_parameters(self, self.params, LIVE, self._check_live)
        self.start()

    def configure(self) -> None:
        p = self.params
        if p["mode"] not in ("preview", "auto"):
            raise ValueError(f"mode must be preview or auto, got {p['mode']!r}")
        fast = FastPathOptions(compile=p["compile"]) if p["fast_path"] else None
        self.policy = MVVDPPolicy.from_checkpoint(self._checkpoint_path(), device=p["device"], fast=fast)
        self._check_live(p)
        self.scheduler = InferenceScheduler(SchedulerConfig(
            request_fraction=p["request_fraction"], initial_latency=p["initial_latency"],
            latency_smoothing=p["latency_smoothing"], max_age=p["max_chunk_age"],
        ))
        self.workspace = self.policy.workspace
        self._lock = threading.Lock()  # one prediction at a time
        self._next_chunk_id = int(time.time() * 1000)  # unique across restarts
        self._playback: dict[str, list[Image]] = {}
        self._playback_index = 0

        # Inputs are read when a prediction starts, not delivered per message (mvvdp_ros.latest).
        reliable = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
        self.views_in = LatestMessage(self, ProjectedViews, p["views_topic"], reliable)
        self.pose_in = LatestMessage(self, PoseStamped, p["ee_pose_topic"], qos_profile_sensor_data)
        self.gripper_in = LatestMessage(self, JointState, p["gripper_state_topic"], qos_profile_sensor_data)
        # Outputs go out only while active (lifecycle publishers).
        self.chunk_pub = self.create_lifecycle_publisher(ActionChunk, p["chunk_topic"], QoSProfile(depth=10))
        self.marker_pub = self.create_lifecycle_publisher(MarkerArray, p["marker_topic"], QoSProfile(depth=1))
        self.image_pubs = {
            (view, kind): self.create_lifecycle_publisher(
                Image, p["preview_image_topic"].format(view=view, kind=kind), QoSProfile(depth=1))
            for view in self.workspace.views for kind in ("rgb", "heatmap")
        }
        self.create_service(Preview, p["preview_service"], self._on_preview,
                            callback_group=ReentrantCallbackGroup())
        server = ActionServer(self, PreviewAction, p["preview_service"], self._preview_goal,
                              goal_callback=self._accept_goal, callback_group=ReentrantCallbackGroup(),
                              cancel_callback=lambda _request: CancelResponse.ACCEPT)
        self._own(server, lambda action: action.destroy())
        self.create_timer(1.0 / p["preview_fps"], self._play, callback_group=MutuallyExclusiveCallbackGroup())
        if p["mode"] == "auto":
            self.create_timer(1.0 / p["schedule_rate"], self._auto_step,
                              callback_group=MutuallyExclusiveCallbackGroup())
        self.get_logger().info(f"policy configured ({p['mode']} mode), tasks {self.policy.tasks}")

    def activate(self) -> None:
        """The heartbeat publisher and its thread: the executor sees the policy live (DDS liveliness)."""
        p = self.params
        liveliness = QoSProfile(depth=1, liveliness=LivelinessPolicy.AUTOMATIC,
                                liveliness_lease_duration=Duration(seconds=p["heartbeat_lease"]))
        self.heartbeat_pub = self.create_publisher(Header, p["heartbeat_topic"], liveliness)
        self._beating = threading.Event()
        self._beat_thread = threading.Thread(target=self._beat_loop, args=(1.0 / p["heartbeat_rate"],),
                                             name="heartbeat", daemon=True)
        self._beat_thread.start()

    def deactivate(self) -> None:
        """No heartbeat (the executor holds a running chunk at once: liveliness lost), no outputs."""
        self._stop_heartbeat()
        self.destroy_publisher(self.heartbeat_pub)
        self._playback = {}

    def cleanup(self) -> None:
        self.policy = None

    # ---- setup --------------------------------------------------------------------------------------
    def _checkpoint_path(self) -> Path:
        p = self.params
        if p["checkpoint"]:
            return Path(p["checkpoint"]).expanduser()
        if not p["create_tiny_checkpoint"]:
            raise ValueError("parameter checkpoint is empty and create_tiny_checkpoint is false")
        from mvvdp_core.model.checkpoint import write_tiny_checkpoint

        path = Path(p["cache_dir"]).expanduser() / "tiny_checkpoint"
        if not (path / "config.json").is_file():
            self.get_logger().info(f"building a tiny random checkpoint in {path}")
            write_tiny_checkpoint(path, tasks=[p["task"] or "default"])
        return path

    # ---- inputs -------------------------------------------------------------------------------------
    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _ee_state(self) -> tuple[np.ndarray, np.ndarray, float]:
        """Latest end-effector position, rotation matrix and gripper opening; ValueError if missing/stale."""
        pose, gripper = self.pose_in.take(), self.gripper_in.take()
        if pose is None:
            raise ValueError("no end-effector pose received yet")
        msg, received = pose
        age = time.time() - received
        if age > self.params["max_observation_age"]:
            raise ValueError(f"end-effector pose is stale ({age:.2f} s old)")
        position, quaternion = pose_from_msg(msg.pose)
        finite = np.isfinite(position).all() and np.isfinite(quaternion).all()
        if not (finite and np.linalg.norm(quaternion) > 0):
            raise ValueError("end-effector pose is not finite")
        rotation = quaternion_to_matrix(quaternion / np.linalg.norm(quaternion))
        opening = 1.0
        if gripper is not None:
            width = sum(gripper[0].position)
            opening = float(np.clip(width / self.params["gripper_open_width"], 0.0, 1.0))
        return position, rotation, opening

    def _beat_loop(self, period: float) -> None:
        """The heartbeat thread: one Header per period while the node is active."""
        while not self._beating.wait(period):
            try:
                self.heartbeat_pub.publish(Header(stamp=self.get_clock().now().to_msg(),
                                                  frame_id=self.get_name()))
            except Exception as err:  # noqa: BLE001 - shutting down: the context or publisher is gone
                self.get_logger().info(f"heartbeat stopped: {err!r}")
                return

    def _stop_heartbeat(self) -> None:
        if self._beat_thread is not None:
            self._beating.set()
            self._beat_thread.join(timeout=1.0)
            self._beat_thread = None

    def destroy_node(self) -> None:
        self._stop_heartbeat()
        super().destroy_node()

    # ---- prediction ---------------------------------------------------------------------------------
    def observation(self, task: str) -> Observation:
        """The latest observation; ValueError naming what is missing or stale."""
        now, max_age = self._now(), self.params["max_observation_age"]
        latest = self.views_in.take()
        if latest is None:
            raise ValueError("no views received yet")
        views = latest[0]
        position, rotation, gripper = self._ee_state()
        stamp = stamp_to_sec(views.header.stamp)
        if now - stamp > max_age:
            raise ValueError(f"views are stale ({now - stamp:.2f} s old > {max_age} s)")
        center = np.array([views.workspace_center.x, views.workspace_center.y, views.workspace_center.z])
        if not (np.allclose(center, self.workspace.center, atol=1e-6)
                and abs(views.workspace_edge - self.workspace.edge) < 1e-6):
            raise ValueError(f"views cover workspace {center.tolist()}/{views.workspace_edge} m, the model "
                             f"{list(self.workspace.center)}/{self.workspace.edge} m")
        names, rgb, _depth = views_from_msg(views)
        if tuple(names) != tuple(self.workspace.views):
            raise ValueError(f"views {names} do not match the model's {list(self.workspace.views)}")
        rgb_t = torch.from_numpy(rgb)
        size = self.policy.config.image_size
        if rgb_t.shape[-1] != size:
            rgb_t = F.interpolate(rgb_t, size=(size, size), mode="area").clamp(0, 1)
        task = task or self.params["task"] or self.policy.tasks[0]
        return Observation(rgb_t, position, rotation, gripper, stamp, task)

    def predict(self, task: str, num_steps: int, return_video: bool) -> tuple[PolicyOutput, Observation]:
        obs = self.observation(task)
        return self.predict_from(obs, num_steps, return_video), obs

    def _check_live(self, p: dict) -> None:
        """ValueError for live parameter values the node must not use (read where they are used)."""
        if not 0 <= p["num_steps"] <= p["max_denoising_steps"]:
            raise ValueError(f"num_steps {p['num_steps']} must be in [0, {p['max_denoising_steps']}]")
        if p["task"] and self.policy is not None and p["task"] not in self.policy.tasks:
            raise ValueError(f"unknown task {p['task'][:64]!r}; known: {self.policy.tasks}")
        if not p["max_observation_age"] > 0:
            raise ValueError(f"max_observation_age must be > 0 s, got {p['max_observation_age']!r}")

    def check_request(self, task: str, num_steps: int) -> None:
        """ValueError with a clear message for a request the node must not serve."""
        limit = self.params["max_denoising_steps"]
        if not 0 <= num_steps <= limit:
            raise ValueError(f"num_steps {num_steps} outside [0, max_denoising_steps {limit}] (0 = default)")
        if task and task not in self.policy.tasks:
            raise ValueError(f"unknown task {task[:64]!r}; known: {self.policy.tasks}")

    def predict_from(self, obs: Observation, num_steps: int, return_video: bool,
                     on_step: Callable[[int, int], None] | None = None) -> PolicyOutput:
        steps = num_steps or self.params["num_steps"] or None
        seed = self.params["seed"] if self.params["seed"] >= 0 else None
        output = self.policy.predict(obs, num_steps=steps, return_video=return_video, seed=seed,
                                     on_step=on_step)
        output.chunk.chunk_id = self._next_chunk_id
        self._next_chunk_id += 1
        return output

    def _on_preview(self, request: Preview.Request, response: Preview.Response) -> Preview.Response:
        return self._preview(request.task, int(request.num_steps), response)

    def _preview(self, task: str, num_steps: int, result: Any,
                 on_step: Callable[[int, int], None] | None = None) -> Any:
        """One preview: predict, publish the pending chunk, markers and videos; fills `result` (the service's
        response or the action's result: the same fields). A refused or cancelled request is logged."""
        start = time.perf_counter()
        if not self.active:
            result.success, result.message = False, "preview refused: the policy node is inactive"
            self._warn(result.message)
            return result
        if not self._lock.acquire(blocking=False):
            result.success, result.message = False, "preview refused: a prediction is already running"
            self._warn(result.message)
            return result
        try:
            self.check_request(task, num_steps)
            obs = self.observation(task)
            output = self.predict_from(obs, num_steps, return_video=False, on_step=on_step)
            chunk = output.chunk
            self.chunk_pub.publish(chunk_to_msg(chunk, self.params["base_frame"], "pending"))
            self._publish_markers(output)
            self.policy.decode_rgb(output)  # the preview video, after the chunk is out
        except (ValueError, KeyError, PreviewCancelled) as err:
            result.success, result.message = False, f"preview refused: {err}"
            self._warn(result.message)
            return result
        finally:
            self._lock.release()
        self._prepare_playback(output, obs)
        result.success = True
        result.chunk_id = int(chunk.chunk_id)
        result.confidence = float(chunk.confidence)
        result.latency = float(time.perf_counter() - start)
        result.positions = points_to_msgs(chunk.positions)
        result.gripper = [float(g) for g in chunk.gripper]
        result.message = f"chunk {chunk.chunk_id}: {len(chunk.positions)} steps, confidence " \
                         f"{chunk.confidence:.2f}, {result.latency:.2f} s"
        self.get_logger().info(result.message)
        self.diagnostics.report("inference", OK, result.message, latency_s=f"{result.latency:.3f}",
                                chunk_id=chunk.chunk_id, confidence=f"{chunk.confidence:.3f}")
        return result

    def _warn(self, message: str, throttle: float = 0.0) -> None:
        """A refused or failed prediction: logged and reported as the "inference" status."""
        if throttle > 0:
            self.get_logger().warning(message, throttle_duration_sec=throttle)
        else:
            self.get_logger().warning(message)
        self.diagnostics.report("inference", WARN, message)

    # ---- the Preview action: feedback per denoising step, cancel abandons the prediction --------------
    def _accept_goal(self, _goal: PreviewAction.Goal) -> GoalResponse:
        if not self.active:
            self.get_logger().warning("preview goal refused: the policy node is inactive")
            return GoalResponse.REJECT
        return GoalResponse.ACCEPT

    def _preview_goal(self, goal: ServerGoalHandle) -> PreviewAction.Result:
        def on_step(done: int, total: int) -> None:
            if goal.is_cancel_requested:
                raise PreviewCancelled(f"cancelled after {done} of {total} denoising steps")
            goal.publish_feedback(PreviewAction.Feedback(step=done, num_steps=total))

        request = goal.request
        result = self._preview(request.task, int(request.num_steps), PreviewAction.Result(), on_step)
        if goal.is_cancel_requested and not result.success:
            goal.canceled()
        elif result.success:
            goal.succeed()
        else:
            goal.abort()
        return result

    def _auto_step(self) -> None:
        """Auto mode: predict from the freshest observation when the scheduler says so; publish if fresh."""
        if not self.active:
            return
        if self.chunk_pub.get_subscription_count() == 0:  # a chunk published now would be lost
            self.get_logger().warning("auto prediction waits: no executor subscribed to chunks",
                                      throttle_duration_sec=2.0)
            return
        if not self.scheduler.should_request(self._now()):
            return
        try:
            obs = self.observation("")
        except ValueError as err:
            self.get_logger().warning(f"auto prediction waits: {err}", throttle_duration_sec=2.0)
            return
        if not self._lock.acquire(blocking=False):
            return  # a preview is running; ask again at the next step
        request = self.scheduler.start_request(self._now(), obs.stamp)
        try:
            output = self.predict_from(obs, 0, return_video=False)
        except (ValueError, KeyError) as err:
            self.scheduler.finish_request(request.request_id, self._now())
            self._warn(f"auto prediction failed: {err}", throttle=2.0)
            return
        finally:
            self._lock.release()
        chunk = output.chunk
        decision = self.scheduler.finish_request(request.request_id, self._now(), chunk.stamp)
        if not decision.accepted:
            self._warn(f"chunk {chunk.chunk_id} not published: {decision.reason}")
            return
        self.chunk_pub.publish(chunk_to_msg(chunk, self.params["base_frame"], "auto"))
        self.scheduler.chunk_started(chunk.stamp, float(chunk.time_from_start[-1]))
        self.get_logger().info(
            f"chunk {chunk.chunk_id} published: latency {decision.latency:.2f} s "
            f"(mean {self.scheduler.latency:.2f} s), next request at {self.scheduler.next_request_time():.2f}"
        )
        self.diagnostics.report("inference", OK, f"chunk {chunk.chunk_id} published",
                                latency_s=f"{decision.latency:.3f}", chunk_id=chunk.chunk_id,
                                confidence=f"{chunk.confidence:.3f}", send=False)
        self._publish_markers(output)

    # ---- visualisation ------------------------------------------------------------------------------
    def _prepare_playback(self, output: PolicyOutput, obs: Observation) -> None:
        steps = output.heatmaps.shape[0]
        rgb_video = output.rgb_video
        if rgb_video is None:  # overlay on the observed views
            rgb_video = obs.rgb.unsqueeze(1).expand(-1, steps, -1, -1, -1)
        overlay = overlay_heatmaps(rgb_video.float(), output.heatmaps.transpose(0, 1))  # (V, T, 3, H, W)
        frame_id = self.params["base_frame"]
        playback: dict[str, list[Image]] = {}
        for v, view in enumerate(self.workspace.views):
            playback[f"{view}/rgb"] = [image_to_msg(to_uint8_image(f), 0.0, frame_id) for f in rgb_video[v]]
            playback[f"{view}/heatmap"] = [
                image_to_msg(to_uint8_image(f), 0.0, frame_id) for f in overlay[v]]
        self._playback, self._playback_index = playback, 0
        if self.params["output_dir"]:
            paths = save_preview(preview_frames(rgb_video, overlay, obs.rgb), self.params["output_dir"],
                                 f"chunk_{output.chunk.chunk_id}", fps=self.params["preview_fps"])
            self.get_logger().info(f"preview written to {', '.join(map(str, paths))}")

    def _play(self) -> None:
        if not (self.active and self._playback):
            return
        stamp = self.get_clock().now().to_msg()
        for key, frames in self._playback.items():
            image = frames[self._playback_index % len(frames)]
            image.header.stamp = stamp
            view, kind = key.split("/")
            self.image_pubs[(view, kind)].publish(image)
        self._playback_index += 1

    def _publish_markers(self, output: PolicyOutput) -> None:
        chunk = output.chunk
        head = header(self.get_clock().now().to_msg(), self.params["base_frame"])
        points = points_to_msgs(chunk.positions)
        colors = [ColorRGBA(r=float(r), g=float(g), b=float(b), a=1.0)
                  for r, g, b in confidence_color(chunk.step_confidence)]
        line = Marker(header=head, ns="mvvdp/trajectory", id=0, type=Marker.LINE_STRIP, action=Marker.ADD)
        line.scale.x = 0.004
        line.points, line.colors = points, colors
        spheres = Marker(header=head, ns="mvvdp/steps", id=1, type=Marker.SPHERE_LIST, action=Marker.ADD)
        spheres.scale.x = spheres.scale.y = spheres.scale.z = 0.015
        spheres.points, spheres.colors = points, colors
        closed = [pt for pt, g in zip(points, chunk.gripper, strict=True) if g < 0.5]
        gripper = Marker(header=head, ns="mvvdp/gripper_closed", id=2, type=Marker.CUBE_LIST,
                         action=Marker.ADD if closed else Marker.DELETE)
        gripper.scale.x = gripper.scale.y = gripper.scale.z = 0.025
        gripper.color = ColorRGBA(r=0.2, g=0.4, b=1.0, a=0.5)
        gripper.points = closed
        self.marker_pub.publish(MarkerArray(markers=[line, spheres, gripper]))


def main(argv: list[str] | None = None) -> int:
    return run_node(PolicyNode, argv, threads=3)


if __name__ == "__main__":
    sys.exit(main())
