"""A node's /diagnostics: the latest status of each of its tasks, sent at once when reported and again every
period, so a monitor sees the current state of a quiet node too.

Where diagnostic_updater is installed (a full ROS install) its Updater publishes them (each task added once,
`force_update` on a report; its `diagnostic_updater.period` parameter sets the period). Elsewhere this module
publishes the same DiagnosticArray itself. Either way a status is named `<node name>: <task>`, as
diagnostic_updater names them, and the node name is its hardware id unless the report gives one.
"""

from __future__ import annotations

import threading
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node
from rclpy.qos import QoSProfile
from std_msgs.msg import Header

OK, WARN, ERROR = DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR
UPDATER_PERIOD_PARAMETER = "diagnostic_updater.period"


def updater_installed() -> bool:
    try:
        import diagnostic_updater  # noqa: F401
    except ImportError:
        return False
    return True


class Diagnostics:
    """report(task, level, message, **values) from any thread; `topic` is used where diagnostic_updater is
    absent (the Updater always publishes on /diagnostics)."""

    def __init__(self, node: Node, topic: str = "/diagnostics", period: float = 1.0,
                 use_updater: bool | None = None) -> None:
        self.node = node
        self._lock = threading.Lock()
        self._latest: dict[str, DiagnosticStatus] = {}
        if use_updater is None:
            use_updater = updater_installed()
        self._updater: Any = None
        if use_updater:
            from diagnostic_updater import Updater

            self._updater = Updater(node, period=period)
            self._updater.setHardwareID(node.get_name())
        else:
            self._pub = node.create_publisher(DiagnosticArray, topic, QoSProfile(depth=10))
            node.create_timer(period, self._publish_all)

    @property
    def uses_updater(self) -> bool:
        return self._updater is not None

    def report(self, task: str, level: bytes, message: str, hardware_id: str = "", send: bool = True,
               **values: Any) -> None:
        """Set the task's status and, with send, publish now (else at the next period)."""
        status = DiagnosticStatus(level=level, name=task, message=message,
                                  hardware_id=hardware_id or self.node.get_name(),
                                  values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])
        with self._lock:
            new = task not in self._latest
            self._latest[task] = status
        if self._updater is not None:
            if new:
                self._updater.add(task, lambda stat, name=task: self._fill(stat, name))
            if send:
                self._updater.force_update()
        elif send:
            self._publish([status])

    def _fill(self, stat: Any, task: str) -> Any:
        """diagnostic_updater task: copy the latest status into the Updater's status wrapper."""
        with self._lock:
            status = self._latest[task]
        stat.summary(status.level, status.message)
        stat.hardware_id = status.hardware_id
        for kv in status.values:
            stat.add(kv.key, kv.value)
        return stat

    def _publish_all(self) -> None:
        with self._lock:
            statuses = list(self._latest.values())
        if statuses:
            self._publish(statuses)

    def _publish(self, statuses: list[DiagnosticStatus]) -> None:
        prefix = f"{self.node.get_name()}: "
        named = [DiagnosticStatus(level=s.level, name=prefix + s.name, message=s.message,
                                  hardware_id=s.hardware_id, values=s.values) for s in statuses]
        header = Header(stamp=self.node.get_clock().now().to_msg())
        self._pub.publish(DiagnosticArray(header=header, status=named))
