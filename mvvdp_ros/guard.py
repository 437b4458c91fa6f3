"""One guard at every node boundary: no exception escapes a subscription, timer or service callback.

`CallbackGuard` (mixed into `GuardedNode` and the lifecycle nodes' `ManagedNode`) wraps each callback it
creates. An exception is logged with its traceback and handed to
`on_callback_error` (the executor node holds the arm there); a service answers with success = False and the
error as its message. The node keeps spinning either way.
"""

from __future__ import annotations

import functools
import traceback
from collections.abc import Callable
from typing import Any

from rclpy.node import Node


class CallbackGuard:
    """Mixin for an rclpy Node (listed before it): guarded callbacks. While `_owned` is a list (a lifecycle
    node configuring), every entity created is recorded there with its destroyer, for cleanup."""

    _owned: list[Callable[[], Any]] | None = None

    def _own(self, entity: Any, destroy: Callable[[Any], Any]) -> Any:
        if self._owned is not None:
            self._owned.append(lambda: destroy(entity))
        return entity

    def create_publisher(self, *args: Any, **kwargs: Any):
        return self._own(super().create_publisher(*args, **kwargs), self.destroy_publisher)

    def create_client(self, *args: Any, **kwargs: Any):
        return self._own(super().create_client(*args, **kwargs), self.destroy_client)

    def create_subscription(self, msg_type, topic: str, callback: Callable, *args: Any, **kwargs: Any):
        sub = super().create_subscription(msg_type, topic, self._guard(callback), *args, **kwargs)
        return self._own(sub, self.destroy_subscription)

    def create_timer(self, timer_period_sec: float, callback: Callable, *args: Any, **kwargs: Any):
        timer = super().create_timer(timer_period_sec, self._guard(callback), *args, **kwargs)
        return self._own(timer, self.destroy_timer)

    def create_service(self, srv_type, srv_name: str, callback: Callable, *args: Any, **kwargs: Any):
        guarded = self._guard(callback, service=True)
        return self._own(super().create_service(srv_type, srv_name, guarded, *args, **kwargs),
                         self.destroy_service)

    def on_callback_error(self, where: str, error: Exception) -> None:
        """Called after a callback raised (and its traceback was logged); nodes override it to fail safe."""

    def _guard(self, callback: Callable, service: bool = False) -> Callable:
        where = getattr(callback, "__name__", repr(callback))

        @functools.wraps(callback)  # keeps the signature rclpy inspects (timer callbacks)
        def guarded(*args: Any) -> Any:
            try:
                return callback(*args)
            except Exception as error:  # noqa: BLE001 - the node boundary: log, fail safe, keep serving
                self.get_logger().error(f"{where} failed: {error!r}\n{traceback.format_exc()}")
                try:
                    self.on_callback_error(where, error)
                except Exception as nested:  # noqa: BLE001
                    self.get_logger().error(f"on_callback_error failed too: {nested!r}")
                if not service:
                    return None
                response = args[-1]
                if hasattr(response, "success"):
                    response.success = False
                if hasattr(response, "message"):
                    response.message = f"internal error in {where}: {error}"
                return response

        return guarded


class GuardedNode(CallbackGuard, Node):
    """A plain node whose callbacks are guarded."""
