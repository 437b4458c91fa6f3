"""Safety filter between the policy's targets and the robot's Cartesian controller.

Every commanded end-effector target goes through `SafetyFilter.filter` once per control period:

1. reject targets with non-finite numbers or a non-unit quaternion (`UnsafeTargetError`);
2. clamp the position into the allowed workspace box;
3. limit the change from the LAST COMMAND SENT: translation per period to min(max_step_translation,
   max_linear_velocity * dt), rotation per period to min(max_step_rotation, max_angular_velocity * dt)
   (the MV-VDP authors' client clipped each executed step to 4 cm and 10 degrees). The first command after
   `reset()`, and any command after the measured pose jumped clearly beyond the tracking bound of the last
   command (a restarted robot; see `out_of_tracking`), is limited relative to the MEASURED pose;
4. bound the command's distance from the measured pose: position within `max_tracking_error` metres,
   orientation within `max_tracking_rotation_deg`, so a lagging or stopped controller is never asked to
   cover more than that at once (a lagging impedance controller does not slow the commands down);
5. debounce the gripper: after the open/closed state switches, it holds for `gripper_min_hold` seconds.

Positions in metres in the robot base frame, quaternions (x, y, z, w), gripper as an opening in [0, 1]
(1 = open, 0 = closed).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.spatial.transform import Rotation, Slerp

DEFAULT_CONTROL_RATE = 20.0  # Hz: the executor's control period (executor node, closed-loop runner)


class UnsafeTargetError(ValueError):
    """A target that must not be sent to the robot at all (e.g. NaN)."""


@dataclass(frozen=True)
class SafetyLimits:
    """Limits applied to every commanded target. Lengths in metres, angles in degrees, times in seconds."""

    workspace_lower: tuple[float, float, float] = (0.15, -0.5, 0.02)
    workspace_upper: tuple[float, float, float] = (0.85, 0.5, 0.85)
    max_step_translation: float = 0.04
    max_step_rotation_deg: float = 10.0
    max_linear_velocity: float = 0.5
    max_angular_velocity_deg: float = 120.0
    max_tracking_error: float = 0.10  # m between the command and the measured position
    max_tracking_rotation_deg: float = 30.0  # deg between the command and the measured orientation
    gripper_min_hold: float = 0.5
    gripper_threshold: float = 0.5

    def __post_init__(self) -> None:
        lower, upper = np.asarray(self.workspace_lower, float), np.asarray(self.workspace_upper, float)
        if lower.shape != (3,) or upper.shape != (3,) or not np.isfinite([lower, upper]).all():
            raise ValueError(f"workspace bounds must be 3 finite numbers each, got {lower!r} and {upper!r}")
        if np.any(lower >= upper):
            raise ValueError(f"workspace_lower {lower.tolist()} not below workspace_upper {upper.tolist()}")
        for name in ("max_step_translation", "max_step_rotation_deg", "max_linear_velocity",
                     "max_angular_velocity_deg", "max_tracking_error", "max_tracking_rotation_deg"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if not (np.isfinite(self.gripper_min_hold) and self.gripper_min_hold >= 0):
            raise ValueError(f"gripper_min_hold must be >= 0 seconds, got {self.gripper_min_hold!r}")
        if not 0 < self.gripper_threshold < 1:
            raise ValueError(f"gripper_threshold must lie in (0, 1), got {self.gripper_threshold!r}")


@dataclass(frozen=True)
class PoseTarget:
    """An end-effector target: position (3,), quaternion xyzw (4,), gripper opening in [0, 1]."""

    position: np.ndarray
    quaternion: np.ndarray
    gripper: float = 1.0


@dataclass(frozen=True)
class FilterResult:
    """The safe target plus what the filter changed (names of the limits that were active)."""

    target: PoseTarget
    limited: tuple[str, ...] = field(default_factory=tuple)


def _checked_pose(position: np.ndarray, quaternion: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    position = np.asarray(position, dtype=np.float64)
    quaternion = np.asarray(quaternion, dtype=np.float64)
    if position.shape != (3,) or quaternion.shape != (4,):
        raise UnsafeTargetError(
            f"{what}: position must be (3,) and quaternion (4,), got {position.shape} and {quaternion.shape}"
        )
    if not (np.isfinite(position).all() and np.isfinite(quaternion).all()):
        raise UnsafeTargetError(f"{what}: non-finite pose (position {position}, quaternion {quaternion})")
    norm = np.linalg.norm(quaternion)
    if abs(norm - 1.0) > 1e-3:
        raise UnsafeTargetError(f"{what}: quaternion must have unit norm, got norm {norm:.4f}")
    return position, quaternion / norm


def _angle(q0: np.ndarray, q1: np.ndarray) -> float:
    """Rotation angle (radians) between two unit quaternions xyzw."""
    return 2.0 * float(np.arccos(np.clip(abs(float(np.dot(q0, q1))), 0.0, 1.0)))


def _towards(q0: np.ndarray, q1: np.ndarray, max_angle: float) -> np.ndarray:
    """q1, or the quaternion max_angle radians from q0 on the way to q1 when q1 is farther."""
    angle = _angle(q0, q1)
    if angle <= max_angle:
        return q1
    return Slerp([0.0, 1.0], Rotation.from_quat(np.stack([q0, q1])))(max_angle / angle).as_quat()


class SafetyFilter:
    """Stateful per-period filter: remembers the last command it let through and the gripper history.

    `reset()` when the robot (re)starts: the next command is then limited relative to the measured pose.
    """

    def __init__(self, limits: SafetyLimits | None = None) -> None:
        self.limits = limits or SafetyLimits()
        self._gripper_closed: bool | None = None
        self._since_switch = np.inf
        self._last: PoseTarget | None = None

    @property
    def last_command(self) -> PoseTarget | None:
        """The last target this filter returned (None after `reset()`)."""
        return self._last

    def reset(self, gripper: float | None = None) -> None:
        """Forget the last command and the gripper history; optionally start from a known gripper opening."""
        self._last = None
        self.reset_gripper(gripper)

    def reset_gripper(self, gripper: float | None = None) -> None:
        """Forget the gripper history only (a new chunk starts: its first open/close acts at once)."""
        self._gripper_closed = None if gripper is None else bool(gripper < self.limits.gripper_threshold)
        self._since_switch = np.inf

    def out_of_tracking(self, pose: PoseTarget, measured: PoseTarget) -> bool:
        """True when `pose` lies clearly beyond the tracking bound of the measured pose: farther than
        max_tracking_error + max_step_translation, or rotated more than max_tracking_rotation_deg +
        max_step_rotation_deg. A command the filter let through is never that far from the pose measured
        when it was sent, so this means the measured pose jumped (restart, collision, recalibration)."""
        lim = self.limits
        offset = np.asarray(pose.position, float) - np.asarray(measured.position, float)
        distance = float(np.linalg.norm(offset))
        angle = _angle(np.asarray(pose.quaternion, float), np.asarray(measured.quaternion, float))
        return (distance > lim.max_tracking_error + lim.max_step_translation
                or angle > np.deg2rad(lim.max_tracking_rotation_deg + lim.max_step_rotation_deg))

    def filter(self, target: PoseTarget, current: PoseTarget, dt: float) -> FilterResult:
        """Safe target for the next control period of length dt seconds; `current` is the measured pose."""
        if not (np.isfinite(dt) and dt > 0):
            raise ValueError(f"control period dt must be a positive number of seconds, got {dt!r}")
        lim = self.limits
        target_pos, target_quat = _checked_pose(target.position, target.quaternion, "target")
        current_pos, current_quat = _checked_pose(current.position, current.quaternion, "current pose")
        if not np.isfinite(target.gripper):
            raise UnsafeTargetError(f"target: non-finite gripper command {target.gripper!r}")
        limited: list[str] = []

        position = np.clip(target_pos, lim.workspace_lower, lim.workspace_upper)
        if not np.array_equal(position, target_pos):
            limited.append("workspace")

        # Step limits from the last command, or from the measured pose after a reset or a jump.
        last = self._last
        if last is None or self.out_of_tracking(last, PoseTarget(current_pos, current_quat)):
            ref_pos, ref_quat = current_pos, current_quat
        else:
            ref_pos, ref_quat = np.asarray(last.position, float), np.asarray(last.quaternion, float)
        max_translation = min(lim.max_step_translation, lim.max_linear_velocity * dt)
        delta = position - ref_pos
        distance = float(np.linalg.norm(delta))
        if distance > max_translation:
            position = ref_pos + delta * (max_translation / distance)
            limited.append("translation")
        max_angle = np.deg2rad(min(lim.max_step_rotation_deg, lim.max_angular_velocity_deg * dt))
        quat = _towards(ref_quat, target_quat, max_angle)
        if quat is not target_quat:
            limited.append("rotation")

        # Tracking bound: the command stays within reach of the measured pose.
        offset = position - current_pos
        distance = float(np.linalg.norm(offset))
        if distance > lim.max_tracking_error:
            position = current_pos + offset * (lim.max_tracking_error / distance)
            limited.append("tracking")
        bounded = _towards(current_quat, quat, np.deg2rad(lim.max_tracking_rotation_deg))
        if bounded is not quat:
            quat = bounded
            limited.append("tracking_rotation")
        # The box is absolute: a step from, or a pull towards, a measured pose outside it stays inside.
        inside = np.clip(position, lim.workspace_lower, lim.workspace_upper)
        if not np.array_equal(inside, position):
            position = inside
            limited.append("workspace")

        gripper = self._debounced_gripper(float(target.gripper), dt)
        if gripper != float(np.clip(target.gripper, 0.0, 1.0)):
            limited.append("gripper")
        result = PoseTarget(position, quat, gripper)
        self._last = result
        return FilterResult(result, tuple(limited))

    def _debounced_gripper(self, requested: float, dt: float) -> float:
        self._since_switch += dt  # summed periods: compared with a tolerance below
        want_closed = requested < self.limits.gripper_threshold
        if self._gripper_closed is None:
            self._gripper_closed = want_closed
        elif want_closed != self._gripper_closed and self._since_switch > self.limits.gripper_min_hold - 1e-9:
            self._gripper_closed = want_closed
            self._since_switch = 0.0
        return 0.0 if self._gripper_closed else 1.0
