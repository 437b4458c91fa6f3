"""Safety filter: workspace clamp, per-period step and velocity limits, gripper debounce, NaN rejection."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from mvvdp_core.safety import PoseTarget, SafetyFilter, SafetyLimits, UnsafeTargetError

IDENTITY = np.array([0.0, 0.0, 0.0, 1.0])


def pose(x: float, y: float, z: float, quat: np.ndarray = IDENTITY, gripper: float = 1.0) -> PoseTarget:
    return PoseTarget(np.array([x, y, z]), np.asarray(quat, float), gripper)


def test_target_within_limits_passes_unchanged() -> None:
    result = SafetyFilter().filter(pose(0.51, 0.0, 0.4), pose(0.5, 0.0, 0.4), dt=0.1)
    np.testing.assert_allclose(result.target.position, [0.51, 0.0, 0.4])
    np.testing.assert_allclose(result.target.quaternion, IDENTITY)
    assert result.limited == ()


def test_workspace_clamp_per_axis() -> None:
    limits = SafetyLimits(workspace_lower=(0.2, -0.3, 0.1), workspace_upper=(0.8, 0.3, 0.7),
                          max_step_translation=10.0, max_linear_velocity=100.0)
    result = SafetyFilter(limits).filter(pose(0.9, -0.5, 0.05), pose(0.75, -0.25, 0.15), dt=0.1)
    np.testing.assert_allclose(result.target.position, [0.8, -0.3, 0.1])
    assert result.limited == ("workspace",)


def test_step_limit_is_4cm_along_the_direction_of_motion() -> None:
    # 30 cm away along (3, 4, 0)/5: the filter moves exactly 4 cm along that direction.
    result = SafetyFilter().filter(pose(0.68, 0.24, 0.4), pose(0.5, 0.0, 0.4), dt=0.1)
    np.testing.assert_allclose(result.target.position, [0.5 + 0.04 * 0.6, 0.04 * 0.8, 0.4], atol=1e-12)
    assert "translation" in result.limited


def test_velocity_limit_binds_for_short_periods() -> None:
    limits = SafetyLimits(max_linear_velocity=0.25)  # 0.25 m/s * 0.02 s = 5 mm < 4 cm
    result = SafetyFilter(limits).filter(pose(0.6, 0.0, 0.4), pose(0.5, 0.0, 0.4), dt=0.02)
    np.testing.assert_allclose(result.target.position, [0.505, 0.0, 0.4], atol=1e-12)


def test_rotation_step_limit_is_10_degrees_about_the_same_axis() -> None:
    target = Rotation.from_euler("z", 90, degrees=True).as_quat()
    result = SafetyFilter().filter(pose(0.5, 0, 0.4, target), pose(0.5, 0, 0.4), dt=0.1)
    rotvec = Rotation.from_quat(result.target.quaternion).as_rotvec(degrees=True)
    np.testing.assert_allclose(rotvec, [0, 0, 10.0], atol=1e-9)
    assert result.limited == ("rotation",)


def test_angular_velocity_limit() -> None:
    limits = SafetyLimits(max_angular_velocity_deg=50.0)  # 50 deg/s * 0.1 s = 5 deg
    start = Rotation.from_euler("x", 30, degrees=True)
    target = Rotation.from_euler("x", 60, degrees=True).as_quat()
    current = pose(0.5, 0, 0.4, start.as_quat())
    result = SafetyFilter(limits).filter(pose(0.5, 0, 0.4, target), current, dt=0.1)
    np.testing.assert_allclose(Rotation.from_quat(result.target.quaternion).as_euler("xyz", degrees=True),
                               [35.0, 0, 0], atol=1e-9)


def test_gripper_debounce_holds_for_min_hold_time() -> None:
    safety = SafetyFilter(SafetyLimits(gripper_min_hold=0.25))
    here = pose(0.5, 0, 0.4)
    commands = [1, 0, 1, 1, 1, 0, 1]  # one command per 0.1 s period
    outputs = []
    for command in commands:
        outputs.append(safety.filter(pose(0.5, 0, 0.4, gripper=command), here, dt=0.1).target.gripper)
    # Closes at once (no earlier switch), reopens only once 0.3 s >= 0.25 s have passed since that switch,
    # then ignores the closing request 0.1 s later.
    assert outputs == [1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0]


@pytest.mark.parametrize(
    "bad",
    [
        pose(np.nan, 0, 0.4),
        pose(0.5, 0, 0.4, [np.nan, 0, 0, 1]),
        pose(0.5, 0, 0.4, gripper=np.nan),
        pose(0.5, 0, 0.4, [0, 0, 0, 2.0]),
    ],
)
def test_non_finite_or_invalid_targets_are_rejected(bad: PoseTarget) -> None:
    with pytest.raises(UnsafeTargetError):
        SafetyFilter().filter(bad, pose(0.5, 0, 0.4), dt=0.1)


def test_bad_limits_and_period_are_named() -> None:
    with pytest.raises(ValueError, match="workspace_lower"):
        SafetyLimits(workspace_lower=(1, 0, 0), workspace_upper=(0.5, 1, 1))
    with pytest.raises(ValueError, match="max_step_translation"):
        SafetyLimits(max_step_translation=-0.01)
    with pytest.raises(ValueError, match="dt"):
        SafetyFilter().filter(pose(0.5, 0, 0.4), pose(0.5, 0, 0.4), dt=0.0)


def test_repeated_filtering_converges_at_the_step_limit() -> None:
    safety, current = SafetyFilter(), pose(0.3, 0.0, 0.3)
    goal = pose(0.7, 0.0, 0.3)
    for step in range(1, 11):
        current = safety.filter(goal, current, dt=0.1).target
        assert current.position[0] == pytest.approx(min(0.3 + 0.04 * step, 0.7))


# ---- limits relative to the last command, tracking bound relative to the measured pose ---------------------
def test_steps_are_limited_from_the_last_command_not_the_lagging_measured_pose() -> None:
    # 20 Hz: min(4 cm, 0.5 m/s * 0.05 s) = 2.5 cm per period from the previous command; the measured pose does
    # not move (a lagging controller), so the commands stop 10 cm (the tracking bound) ahead of it.
    safety, measured, goal = SafetyFilter(), pose(0.3, 0.0, 0.3), pose(0.7, 0.0, 0.3)
    xs, limits = [], []
    for _ in range(6):
        result = safety.filter(goal, measured, dt=0.05)
        xs.append(result.target.position[0])
        limits.append(result.limited)
    np.testing.assert_allclose(xs, [0.325, 0.35, 0.375, 0.4, 0.4, 0.4], atol=1e-12)
    assert limits[0] == ("translation",) and "tracking" in limits[-1]
    assert safety.last_command is not None and safety.last_command.position[0] == pytest.approx(0.4)


def test_commands_keep_full_speed_while_the_arm_lags_behind() -> None:
    # The arm trails every command by 5 cm: the commands still advance 2.5 cm per period.
    safety, goal = SafetyFilter(), pose(0.9, 0.0, 0.3)
    command = safety.filter(goal, pose(0.3, 0.0, 0.3), dt=0.05).target
    for _ in range(8):
        previous = command.position[0]
        command = safety.filter(goal, pose(previous - 0.05, 0.0, 0.3), dt=0.05).target
        assert command.position[0] - previous == pytest.approx(0.025)


def test_first_command_after_reset_starts_from_the_measured_pose() -> None:
    safety, goal = SafetyFilter(), pose(0.7, 0.0, 0.3)
    for _ in range(3):
        safety.filter(goal, pose(0.3, 0.0, 0.3), dt=0.05)  # commands reach 0.375
    safety.reset()
    result = safety.filter(goal, pose(0.3, 0.0, 0.3), dt=0.05)
    assert result.target.position[0] == pytest.approx(0.325)


def test_a_jump_of_the_measured_pose_restarts_the_limits_from_it() -> None:
    safety, goal = SafetyFilter(), pose(0.7, 0.0, 0.3)
    safety.filter(goal, pose(0.3, 0.0, 0.3), dt=0.05)  # last command 0.325
    # Measured 0.5: 17.5 cm from the last command > 10 cm + 4 cm: limited from the measured pose.
    result = safety.filter(goal, pose(0.5, 0.0, 0.3), dt=0.05)
    assert result.target.position[0] == pytest.approx(0.525)
    assert "relatched" in result.limited  # reported: the command sequence jumps here, towards the arm
    # Measured 0.62 after a smaller move (9.5 cm from the last command 0.525): still from the last command.
    result = safety.filter(goal, pose(0.62, 0.0, 0.3), dt=0.05)
    assert result.target.position[0] == pytest.approx(0.55)
    assert "relatched" not in result.limited


def test_tracking_bound_pulls_a_far_command_towards_the_measured_pose() -> None:
    # Last command 0.4; the arm is pushed back to 0.28 (12 cm < 14 cm: no jump). The next command may step
    # 2.5 cm from 0.4 towards the goal but must lie within 10 cm of the measured pose: 0.38.
    limits = SafetyLimits(max_tracking_error=0.10)
    safety, goal = SafetyFilter(limits), pose(0.7, 0.0, 0.3)
    for _ in range(4):
        safety.filter(goal, pose(0.3, 0.0, 0.3), dt=0.05)
    result = safety.filter(goal, pose(0.28, 0.0, 0.3), dt=0.05)
    assert result.target.position[0] == pytest.approx(0.38)
    assert "tracking" in result.limited


def test_rotation_limited_from_the_last_command_and_bounded_around_the_measured_orientation() -> None:
    # 10 deg per period from the last command (120 deg/s * 0.1 s = 12 > 10), at most 30 deg from the measured.
    safety = SafetyFilter()
    target = pose(0.5, 0, 0.4, Rotation.from_euler("z", 90, degrees=True).as_quat())
    angles = []
    for _ in range(5):
        result = safety.filter(target, pose(0.5, 0, 0.4), dt=0.1)
        angles.append(Rotation.from_quat(result.target.quaternion).as_rotvec(degrees=True)[2])
    np.testing.assert_allclose(angles, [10, 20, 30, 30, 30], atol=1e-9)
    assert "tracking_rotation" in result.limited


def test_tracking_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="max_tracking_error"):
        SafetyLimits(max_tracking_error=0.0)
    with pytest.raises(ValueError, match="max_tracking_rotation_deg"):
        SafetyLimits(max_tracking_rotation_deg=float("nan"))


def test_commands_stay_within_a_step_of_each_other_while_the_tracking_bound_holds_them() -> None:
    """A lagging, wandering arm: every command is within the step limit of the previous one AND within the
    tracking bound of the pose measured for it, and is the nearest such point to the target."""
    rng = np.random.default_rng(3)
    safety, dt = SafetyFilter(), 0.05
    step = min(safety.limits.max_step_translation, safety.limits.max_linear_velocity * dt)
    measured, previous = np.array([0.4, 0.0, 0.4]), None
    for _ in range(400):
        goal = np.array([0.5, 0.0, 0.4]) + rng.uniform(-0.3, 0.3, 3) * [1.0, 1.0, 0.5]
        measured = np.clip(measured + rng.normal(0.0, 0.015, 3), [0.2, -0.4, 0.1], [0.8, 0.4, 0.8])
        result = safety.filter(pose(*goal), pose(*measured), dt=dt)
        command = result.target.position
        assert np.linalg.norm(command - measured) <= safety.limits.max_tracking_error + 1e-9
        if previous is not None and "relatched" not in result.limited:
            assert np.linalg.norm(command - previous) <= step + 1e-9
            # No point of both balls is nearer the (box-clipped) goal: sampled check.
            goal_in_box = np.clip(goal, safety.limits.workspace_lower, safety.limits.workspace_upper)
            samples = previous + rng.normal(size=(2000, 3)) * step / 2
            ok = (np.linalg.norm(samples - previous, axis=1) <= step) & (
                np.linalg.norm(samples - measured, axis=1) <= safety.limits.max_tracking_error)
            if ok.any():
                nearest = np.linalg.norm(samples[ok] - goal_in_box, axis=1).min()
                assert np.linalg.norm(command - goal_in_box) <= nearest + 1e-9
        previous = command
