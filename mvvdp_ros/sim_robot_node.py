"""`sim_robot`: the simulated FR3 (mvvdp_core.sim.franka.FrankaSim) behind the real robot's ROS interface.

The scene is the pick task's (`mvvdp_core.sim.pick.PickTask`), the one recorded and evaluated. Publishes
the three ZED-style registered clouds, the end-effector pose, the gripper joint states, the contact wrench
on the arm (as the FR3 publishes its external wrench estimate) and the target cube's pose (ground truth, for
scoring); takes a target pose (as a Cartesian impedance controller would) and a gripper width. With
tf2_msgs installed it also publishes the cameras' extrinsics on /tf_static (base frame ->
`<camera>_left_camera_frame`, from the simulator, as in config/cameras_sim.yaml) and the end effector on /tf.
Physics runs in a timer, kept in step with the ROS clock times a real-time factor; every
message is stamped with the ROS time that corresponds to the simulated instant it shows.
"""

from __future__ import annotations

import math
import sys

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import PoseStamped, WrenchStamped
from rclpy.qos import qos_profile_sensor_data
from rclpy.time import Time as RosTime
from sensor_msgs.msg import JointState, PointCloud2
from std_msgs.msg import Float64

from mvvdp_core.sim.franka import FrankaSim, camera_config_entries
from mvvdp_core.sim.pick import PickTask
from mvvdp_ros.guard import GuardedNode
from mvvdp_ros.params import declare_parameters
from mvvdp_ros.pointcloud import cloud_to_msg
from mvvdp_ros.spin import run_node
from mvvdp_ros.tf import TF_QOS, TF_STATIC_QOS, TF_STATIC_TOPIC, TF_TOPIC, tf_message_type, transform_stamped

MAX_CATCH_UP_S = 0.25  # beyond this lag the simulation skips wall time instead of racing to catch up


PARAMETERS = {
    "cloud_rate": (5.0, "Point cloud publish rate per camera (Hz)", (0.1, 60.0)),
    "pose_rate": (50.0, "End-effector pose and gripper state rate (Hz)", (1.0, 1000.0)),
    "physics_tick_rate": (100.0, "Physics timer rate (Hz)", (10.0, 1000.0)),
    "realtime_factor": (1.0, "Simulated seconds per wall-clock second", (0.01, 10.0)),
    "camera_width": (320, "Simulated camera image width (pixels)", (16, 2048)),
    "camera_height": (240, "Simulated camera image height (pixels)", (16, 2048)),
    "seed": (0, "Seed of the object placement", (0, 2**31 - 1)),
    "num_objects": (PickTask.num_objects, "Cubes on the table: the red target cube plus distractors", (1, 5)),
    "base_frame": ("fr3_link0", "Robot base frame"),
    "ee_frame": ("fr3_hand_tcp", "End-effector frame published on /tf"),
    "publish_tf": (True, "Cameras on /tf_static and the end effector on /tf (needs tf2_msgs)"),
    "cloud_topic": ("/{name}/zed_node/point_cloud/cloud_registered", "Cloud topic; {name} = camera"),
    "cloud_frame_id": ("{name}_left_camera_frame", "Cloud frame id; {name} = camera"),
    "pose_topic": ("/franka_robot_state_broadcaster/current_pose", "EE pose out"),
    "gripper_state_topic": ("/fr3_gripper/joint_states", "Fingers out"),
    "external_wrench_topic": ("/franka_robot_state_broadcaster/external_wrench_in_base_frame",
                              "Contact wrench on the arm out (base frame; torque about the fingertips)"),
    "target_pose_topic": ("/cartesian_impedance_controller/target_pose", "Target pose in"),
    "gripper_command_topic": ("mvvdp/gripper_command", "Gripper width in"),
    "target_object_topic": ("sim/target_object_pose", "Pose of the task's target cube out (ground truth)"),
}


class SimRobotNode(GuardedNode):
    def __init__(self, **kwargs) -> None:
        super().__init__("sim_robot", **kwargs)
        p = declare_parameters(self, PARAMETERS)
        cloud_rate, pose_rate, physics_tick = p["cloud_rate"], p["pose_rate"], p["physics_tick_rate"]
        self._rtf = p["realtime_factor"]
        width, height, seed, num_objects = p["camera_width"], p["camera_height"], p["seed"], p["num_objects"]
        self._base_frame, self._cloud_frame = p["base_frame"], p["cloud_frame_id"]
        cloud_topic, pose_topic = p["cloud_topic"], p["pose_topic"]
        gripper_state_topic, target_topic = p["gripper_state_topic"], p["target_pose_topic"]
        gripper_cmd_topic = p["gripper_command_topic"]

        self._task = PickTask(num_objects=num_objects)
        self.sim = FrankaSim(self._task.sim_config(width, height))  # the pick scene
        self.sim.reset(seed)
        self._cloud_pubs = {
            name: self.create_publisher(PointCloud2, cloud_topic.format(name=name), qos_profile_sensor_data)
            for name in self.sim.camera_names
        }
        self._pose_pub = self.create_publisher(PoseStamped, pose_topic, 10)
        self._gripper_pub = self.create_publisher(JointState, gripper_state_topic, 10)
        self._object_pub = self.create_publisher(PoseStamped, p["target_object_topic"], 10)
        self._wrench_pub = self.create_publisher(WrenchStamped, p["external_wrench_topic"], 10)
        self.create_subscription(PoseStamped, target_topic, self._on_target_pose, 10)
        self.create_subscription(Float64, gripper_cmd_topic, self._on_gripper_command, 10)

        self._start = self.get_clock().now()
        self._ee_frame, self._tf_pub = p["ee_frame"], None
        if p["publish_tf"]:
            self._start_tf()
        self.create_timer(1.0 / physics_tick, self._advance_physics)
        self.create_timer(1.0 / pose_rate, self._publish_state)
        self.create_timer(1.0 / cloud_rate, self._publish_clouds)
        self.get_logger().info(
            f"simulating FR3 at {1 / self.sim.timestep:.0f} Hz physics, x{self._rtf} real time; "
            f"{len(self._cloud_pubs)} cameras {width}x{height} at {cloud_rate} Hz"
        )

    def _start_tf(self) -> None:
        tf_message = tf_message_type()
        if tf_message is None:
            self.get_logger().info("tf2_msgs not installed: no /tf or /tf_static (perception reads the "
                                   "calibration file)")
            return
        self._tf_message = tf_message
        self._tf_pub = self.create_publisher(tf_message, TF_TOPIC, TF_QOS)
        self._tf_static_pub = self.create_publisher(tf_message, TF_STATIC_TOPIC, TF_STATIC_QOS)
        stamp = self._sim_stamp()
        cameras = [transform_stamped(self._base_frame, self._cloud_frame.format(name=e["name"]),
                                     e["translation"], e["rotation"], stamp)
                   for e in camera_config_entries(self.sim)]
        self._tf_static_pub.publish(tf_message(transforms=cameras))

    # ---- time ----------------------------------------------------------------------------------------------
    def _sim_stamp(self) -> Time:
        """ROS time of the current simulated instant."""
        nanoseconds = self._start.nanoseconds + int(round(self.sim.time / self._rtf * 1e9))
        return RosTime(nanoseconds=nanoseconds, clock_type=self._start.clock_type).to_msg()

    def _advance_physics(self) -> None:
        elapsed = (self.get_clock().now() - self._start).nanoseconds * 1e-9
        lag = elapsed * self._rtf - self.sim.time
        if lag > MAX_CATCH_UP_S:
            # Drop the excess wall time so stamps stay tied to the simulated instant.
            skipped = (lag - MAX_CATCH_UP_S) / self._rtf
            self._start = RosTime(
                nanoseconds=self._start.nanoseconds + int(skipped * 1e9), clock_type=self._start.clock_type
            )
            lag = MAX_CATCH_UP_S
        steps = int(math.floor(lag / self.sim.timestep))
        if steps > 0:
            self.sim.step(steps)

    # ---- commands ------------------------------------------------------------------------------------------
    def _on_target_pose(self, msg: PoseStamped) -> None:
        if msg.header.frame_id and msg.header.frame_id != self._base_frame:
            self.get_logger().error(
                f"target pose in frame {msg.header.frame_id!r} ignored; expected {self._base_frame!r}",
                throttle_duration_sec=1.0,
            )
            return
        position = np.array([msg.pose.position.x, msg.pose.position.y, msg.pose.position.z])
        o = msg.pose.orientation
        try:
            self.sim.set_target_pose(position, np.array([o.x, o.y, o.z, o.w]))
        except ValueError as err:
            self.get_logger().error(f"target pose rejected: {err}", throttle_duration_sec=1.0)

    def _on_gripper_command(self, msg: Float64) -> None:
        try:
            self.sim.set_gripper_width(msg.data)
        except ValueError as err:
            self.get_logger().error(f"gripper command rejected: {err}", throttle_duration_sec=1.0)

    # ---- outputs -------------------------------------------------------------------------------------------
    def _publish_state(self) -> None:
        stamp = self._sim_stamp()
        pos, quat = self.sim.ee_pose()
        pose = PoseStamped()
        pose.header.stamp = stamp
        pose.header.frame_id = self._base_frame
        pose.pose.position.x, pose.pose.position.y, pose.pose.position.z = (float(v) for v in pos)
        o = pose.pose.orientation
        o.x, o.y, o.z, o.w = (float(v) for v in quat)
        self._pose_pub.publish(pose)
        if self._tf_pub is not None:
            ee = transform_stamped(self._base_frame, self._ee_frame, pos, quat, stamp)
            self._tf_pub.publish(self._tf_message(transforms=[ee]))

        joints = JointState()
        joints.header.stamp = stamp
        joints.name = ["fr3_finger_joint1", "fr3_finger_joint2"]
        joints.position = [float(v) for v in self.sim.gripper_finger_positions()]
        self._gripper_pub.publish(joints)

        wrench = WrenchStamped()
        wrench.header = pose.header
        w = self.sim.contact_wrench()
        wrench.wrench.force.x, wrench.wrench.force.y, wrench.wrench.force.z = (float(v) for v in w[:3])
        wrench.wrench.torque.x, wrench.wrench.torque.y, wrench.wrench.torque.z = (float(v) for v in w[3:])
        self._wrench_pub.publish(wrench)

        cube, cube_quat = self._task.target_pose(self.sim)
        target = PoseStamped()
        target.header = pose.header
        target.pose.position.x, target.pose.position.y, target.pose.position.z = (float(v) for v in cube)
        o = target.pose.orientation
        o.x, o.y, o.z, o.w = (float(v) for v in cube_quat)
        self._object_pub.publish(target)

    def _publish_clouds(self) -> None:
        stamp = self._sim_stamp()
        for name, (points, colors) in zip(self.sim.camera_names, self.sim.render_clouds(), strict=True):
            frame_id = self._cloud_frame.format(name=name)
            self._cloud_pubs[name].publish(cloud_to_msg(points, colors, frame_id, stamp))

    def destroy_node(self) -> None:
        self.sim.close()
        super().destroy_node()


def main(argv: list[str] | None = None) -> int:
    return run_node(SimRobotNode, argv)


if __name__ == "__main__":
    sys.exit(main())
