"""Safety filter between the policy's targets and the robot's Cartesian controller.

Every commanded end-effector target goes through `SafetyFilter.filter` once per control period:

1. reject targets with non-finite numbers or a non-unit quaternion (`UnsafeTargetError`);
2. clamp the position into the allowed workspace box;
3. limit the change from the LAST COMMAND SENT: translation per period to min(max_step_translation,
   max_linear_velocity * dt), rotation per period to min(max_step_rotation, max_angular_velocity * dt)
   (the MV-VDP authors' client clipped each executed step to 4 cm and 10 degrees). The first command after
   `reset()`, and any command after the measured pose moved out of reach of the last command (a step plus
   the tracking bound; a restarted robot, see `out_of_tracking`), is limited relative to the MEASURED pose
   and flagged "relatched";
4. bound the command's distance from the measured pose: position within `max_tracking_error` metres,
   orientation within `max_tracking_rotation_deg`, so a lagging or stopped controller is never asked to
   cover more than that at once (a lagging impedance controller does not slow the commands down).
   3 and 4 hold together: the command is the pose nearest the target that meets both, so the commands stay
   continuous while the tracking bound holds them back (only a jump of the measured pose breaks the chain);
5. debounce the gripper: after the open/closed state switches, it holds for `gripper_min_hold` seconds.

Positions in metres in the robot base frame, quaternions (x, y, z, w), gripper as an opening in [0, 1]
(1 = open, 0 = closed).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.spatial.transform import Rotation, Slerp

DEFAULT_CONTROL_RATE = 20.0  # Hz: the executor's control period (executor node, closed-loop runner)
_ROTATION_PROJECTIONS = 50  # alternating projections between the step and tracking bounds of the orientation


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


def _within(center: np.ndarray, point: np.ndarray, radius: float) -> np.ndarray:
    """`point`, or its projection onto the ball of `radius` around `center`."""
    offset = point - center
    distance = float(np.linalg.norm(offset))
    return point if distance <= radius else center + offset * (radius / distance)


def _nearest_in_two_balls(
    point: np.ndarray, center_a: np.ndarray, radius_a: float, center_b: np.ndarray, radius_b: float
) -> np.ndarray:
    """The point of the intersection of two balls nearest to `point` (the intersection must not be empty).

    The nearest point is `point` itself, its projection onto one ball when that lies in the other, or else the
    nearest point of the circle where the two spheres meet."""
    for center, radius, other, other_radius in ((center_a, radius_a, center_b, radius_b),
                                                (center_b, radius_b, center_a, radius_a)):
        candidate = _within(center, point, radius)
        if np.linalg.norm(candidate - other) <= other_radius + 1e-12:
            return candidate
    axis = center_b - center_a
    d = float(np.linalg.norm(axis))
    if d < 1e-12:  # concentric: the smaller ball is the intersection
        return _within(center_a, point, min(radius_a, radius_b))
    axis /= d
    along = float(np.clip((radius_a**2 - radius_b**2 + d**2) / (2.0 * d), -radius_a, radius_a))
    circle_center, circle_radius = center_a + along * axis, float(np.sqrt(max(radius_a**2 - along**2, 0.0)))
    radial = (point - circle_center) - float(np.dot(point - circle_center, axis)) * axis
    norm = float(np.linalg.norm(radial))
    if norm < 1e-12:  # on the axis: every point of the circle is equally near
        radial = np.cross(axis, [1.0, 0.0, 0.0] if abs(axis[0]) < 0.9 else [0.0, 1.0, 0.0])
        norm = float(np.linalg.norm(radial))
    return circle_center + radial * (circle_radius / norm)


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

    def out_of_tracking(self, pose: PoseTarget, measured: PoseTarget, dt: float | None = None) -> bool:
        """True when no command can be both within a step of `pose` and within the tracking bound of the
        measured pose: farther than max_tracking_error + the step (max_step_translation, or its velocity
        limit over dt when dt is given), or rotated more than the same sum of angles. A command the filter
        let through was within the bound when it was sent, so this means the measured pose jumped (restart,
        collision, recalibration) or ran off faster than the steps can follow."""
        return any(self._out_of_reach(pose, measured, dt))

    def _out_of_reach(self, pose: PoseTarget, measured: PoseTarget, dt: float | None) -> tuple[bool, bool]:
        """(position, orientation) of `pose` out of reach of the measured pose (see `out_of_tracking`)."""
        lim = self.limits
        step, step_angle = lim.max_step_translation, lim.max_step_rotation_deg
        if dt is not None:
            step = min(step, lim.max_linear_velocity * dt)
            step_angle = min(step_angle, lim.max_angular_velocity_deg * dt)
        offset = np.asarray(pose.position, float) - np.asarray(measured.position, float)
        distance = float(np.linalg.norm(offset))
        angle = _angle(np.asarray(pose.quaternion, float), np.asarray(measured.quaternion, float))
        return (distance > lim.max_tracking_error + step + 1e-12,
                angle > np.deg2rad(lim.max_tracking_rotation_deg + step_angle) + 1e-12)

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
        if last is None:
            ref_pos, ref_quat = current_pos, current_quat
        else:
            ref_pos, ref_quat = np.asarray(last.position, float), np.asarray(last.quaternion, float)
            measured = PoseTarget(current_pos, current_quat)
            position_jumped, orientation_jumped = self._out_of_reach(last, measured, dt)
            if position_jumped:
                ref_pos = current_pos
                limited.append("relatched")  # the measured position jumped: steps count from it now
            if orientation_jumped:
                ref_quat = current_quat
                limited.append("relatched_rotation")
        # Step limit and tracking bound together: the position nearest the target that is within a step of
        # the reference AND within the tracking bound of the measured pose. The two balls meet unless the
        # measured pose jumped (then the reference is the measured pose, handled above).
        max_translation = min(lim.max_step_translation, lim.max_linear_velocity * dt)
        stepped = _within(ref_pos, position, max_translation)
        if not np.array_equal(stepped, position):
            limited.append("translation")
        if np.linalg.norm(stepped - current_pos) > lim.max_tracking_error:
            limited.append("tracking")
        position = _nearest_in_two_balls(position, ref_pos, max_translation,
                                         current_pos, lim.max_tracking_error)
        # Orientation: the same two bounds, met by alternating geodesic projections (both balls are convex).
        max_angle = np.deg2rad(min(lim.max_step_rotation_deg, lim.max_angular_velocity_deg * dt))
        max_tracking_angle = np.deg2rad(lim.max_tracking_rotation_deg)
        quat = _towards(ref_quat, target_quat, max_angle)
        if quat is not target_quat:
            limited.append("rotation")
        if _angle(current_quat, quat) > max_tracking_angle:
            limited.append("tracking_rotation")
        for _ in range(_ROTATION_PROJECTIONS):
            if _angle(current_quat, quat) <= max_tracking_angle + 1e-9:
                break
            quat = _towards(ref_quat, _towards(current_quat, quat, max_tracking_angle), max_angle)
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
