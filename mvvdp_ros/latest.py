"""The newest message on a topic, taken when it is needed instead of delivered by a callback per message.

The policy reads the end-effector pose (50 Hz-1 kHz on a robot), the gripper and the views only when it
predicts. A callback per message costs an idle node ~1 ms of Python each; a `LatestMessage` costs nothing
between reads: its subscription sits in a callback group no executor runs, so DDS keeps the newest sample
(keep-last 1) and `take()` reads it out.
"""

from __future__ import annotations

import threading
from typing import Any

from rclpy.callback_groups import CallbackGroup
from rclpy.node import Node
from rclpy.qos import QoSProfile


class _NeverRun(CallbackGroup):
    """Entities of this group are never waited on or executed by an rclpy executor."""

    def can_execute(self, entity: Any) -> bool:
        return False

    def beginning_execution(self, entity: Any) -> bool:
        return False

    def ending_execution(self, entity: Any) -> None:
        pass


class LatestMessage:
    def __init__(self, node: Node, msg_type: Any, topic: str, qos: QoSProfile) -> None:
        qos = QoSProfile(depth=1, reliability=qos.reliability, durability=qos.durability)
        self._sub = node.create_subscription(msg_type, topic, lambda _msg: None, qos,
                                             callback_group=_NeverRun())
        self._lock = threading.Lock()
        self._latest: tuple[Any, float] | None = None

    def take(self) -> tuple[Any, float] | None:
        """(newest message, its reception time in s on the system clock), or None before the first one."""
        with self._lock, self._sub.handle:
            while (taken := self._sub.handle.take_message(self._sub.msg_type, self._sub.raw)) is not None:
                msg, info = taken
                self._latest = (msg, info["received_timestamp"] * 1e-9)
        return self._latest
