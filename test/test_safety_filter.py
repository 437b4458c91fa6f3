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
