"""Transforms for tf2 without tf2_ros: geometry_msgs/TransformStamped, sent as tf2_msgs/TFMessage on /tf and
/tf_static when the tf2_msgs package is installed (a full ROS install; not the wheels of the tests)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from builtin_interfaces.msg import Time
from geometry_msgs.msg import TransformStamped
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

TF_TOPIC = "/tf"
TF_STATIC_TOPIC = "/tf_static"
# The QoS of tf2_ros's broadcasters: static transforms latched for late listeners.
TF_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
TF_STATIC_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                           durability=DurabilityPolicy.TRANSIENT_LOCAL)


def tf_message_type() -> Any | None:
    """tf2_msgs/TFMessage, or None where tf2_msgs is not installed."""
    try:
        from tf2_msgs.msg import TFMessage
    except ImportError:
        return None
    return TFMessage


def transform_stamped(parent: str, child: str, translation: Sequence[float], quaternion_xyzw: Sequence[float],
                      stamp: Time) -> TransformStamped:
    """parent_T_child as a TransformStamped."""
    msg = TransformStamped()
    msg.header.stamp = stamp
    msg.header.frame_id = parent
    msg.child_frame_id = child
    t, q = msg.transform.translation, msg.transform.rotation
    t.x, t.y, t.z = (float(v) for v in translation)
    q.x, q.y, q.z, q.w = (float(v) for v in quaternion_xyzw)
    return msg
