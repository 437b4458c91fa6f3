"""Managed (lifecycle) nodes: perception, policy and executor.

A `ManagedNode` declares its parameters when built and does its work in the lifecycle transitions:
`configure()` loads what the node needs (calibration, model, safety settings) and creates its topics,
services and timers; `activate()` starts publishing and serving; `deactivate()` stops (the executor holds the
arm); cleanup destroys what configure created, so the node can be configured again. A hook that raises
refuses the transition with the error logged (configure: back to unconfigured; activate/deactivate: the node
stays where it was).

With the read-only parameter `autostart` (default true) the node configures and activates itself when built,
and a configuration it refuses raises there (the process exits with one line); with autostart false it waits
in unconfigured for a lifecycle manager (`ros2 lifecycle set /mvvdp/... configure`).
"""

from __future__ import annotations

from typing import Any

from diagnostic_msgs.msg import DiagnosticStatus
from lifecycle_msgs.msg import State
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn

from mvvdp_ros.guard import CallbackGuard
from mvvdp_ros.params import descriptor

SUCCESS, FAILURE = TransitionCallbackReturn.SUCCESS, TransitionCallbackReturn.FAILURE


class ManagedNode(CallbackGuard, LifecycleNode):
    def __init__(self, node_name: str, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self.active = False
        self._refusal: Exception | None = None
        self.autostart = bool(self.declare_parameter(
            "autostart", True, descriptor(True, "configure and activate at start-up (false: wait for a "
                                                "lifecycle manager)", read_only=True)).value)

    # ---- hooks for the nodes ------------------------------------------------------------------------
    def configure(self) -> None:
        """Load and create what the node needs; raise ValueError/RuntimeError/FileNotFoundError to refuse."""

    def activate(self) -> None:
        """Start publishing and serving."""

    def deactivate(self) -> None:
        """Stop publishing and serving (the executor holds the arm)."""

    def cleanup(self) -> None:
        """Drop what configure loaded (entities configure created are destroyed by the base class)."""

    # ---- start-up -------------------------------------------------------------------------------------
    def start(self) -> None:
        """Called at the end of the node's constructor: with autostart, configure and activate now."""
        if not self.autostart:
            self.get_logger().info("unconfigured: waiting for a lifecycle manager (autostart false)")
            self._report_state("unconfigured")
            return
        for trigger in (self.trigger_configure, self.trigger_activate):
            if trigger() != SUCCESS:
                error, self._refusal = self._refusal, None
                raise error if error is not None else RuntimeError(f"{trigger.__name__} failed")

    def lifecycle_state(self) -> str:
        return self._state_machine.current_state[1]

    def _report_state(self, state: str) -> None:
        """The lifecycle state as the node's "state" status on /diagnostics (OK only while active)."""
        diagnostics = getattr(self, "diagnostics", None)
        if diagnostics is not None:
            diagnostics.report("state", DiagnosticStatus.OK if state == "active" else DiagnosticStatus.WARN,
                               state)

    # ---- transitions ----------------------------------------------------------------------------------
    def create_lifecycle_publisher(self, *args: Any, **kwargs: Any):
        publisher = super().create_lifecycle_publisher(*args, **kwargs)
        return self._own(publisher, self.destroy_lifecycle_publisher)

    def _run_hook(self, name: str, hook) -> bool:
        try:
            hook()
            return True
        except Exception as err:  # noqa: BLE001 - a refused transition is logged, never raised into rclpy
            self._refusal = err
            self.get_logger().error(f"{name} refused: {err}")
            return False

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._owned = []
        ok = self._run_hook("configure", self.configure)
        owned = self._owned
        self._owned = None
        self._configured = owned
        if not ok:
            self._destroy_owned()
            return FAILURE
        self.get_logger().info("configured")
        self._report_state("inactive")
        return super().on_configure(state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = super().on_activate(state)  # lifecycle publishers first: activate() may publish
        if result != SUCCESS or not self._run_hook("activate", self.activate):
            super().on_deactivate(state)
            return FAILURE
        self.active = True
        self.get_logger().info("active")
        self._report_state("active")
        return SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.active = False
        if not self._run_hook("deactivate", self.deactivate):
            self.active = True
            return FAILURE
        self.get_logger().info("inactive")
        self._report_state("inactive")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._destroy_owned()
        self._run_hook("cleanup", self.cleanup)
        self.get_logger().info("cleaned up: unconfigured")
        self._report_state("unconfigured")
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        if state.state_id == State.PRIMARY_STATE_ACTIVE:
            self.active = False
            self._run_hook("deactivate", self.deactivate)
        if state.state_id != State.PRIMARY_STATE_UNCONFIGURED:
            self._destroy_owned()
            self._run_hook("cleanup", self.cleanup)
        return super().on_shutdown(state)

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.active = False
        self._destroy_owned()
        return super().on_error(state)

    def _destroy_owned(self) -> None:
        owned, self._configured = getattr(self, "_configured", None) or [], []
        for destroy in reversed(owned):
            try:
                destroy()
            except Exception as err:  # noqa: BLE001 - keep destroying the rest
                self.get_logger().warning(f"destroying an entity failed: {err!r}")
