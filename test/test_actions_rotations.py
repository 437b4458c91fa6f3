"""Rotations, rotation binning, relative/absolute resolution and ActionChunk validation."""

import numpy as np
import pytest
import torch

from mvvdp_core.actions import (
    ActionChunk,
    absolute_to_relative,
    bins_to_relative_euler,
    euler_to_bins,
    relative_to_absolute,
    rotation_targets,
)
from mvvdp_core.rotations import (
    euler_to_matrix,
    euler_to_quaternion,
    matrix_to_euler,
    matrix_to_quaternion,
    quaternion_to_euler,
    quaternion_to_matrix,
)

DEG = np.pi / 180


def _random_euler(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack(
        [
            rng.uniform(-np.pi, np.pi, n),
            rng.uniform(-np.pi / 2 + 0.01, np.pi / 2 - 0.01, n),
            rng.uniform(-np.pi, np.pi, n),
        ],
        -1,
    )


def test_euler_matrix_analytic():
    # 90 deg about x maps y -> z; about z maps x -> y.
    rx = euler_to_matrix(np.array([np.pi / 2, 0, 0]))
    np.testing.assert_allclose(rx @ [0, 1, 0], [0, 0, 1], atol=1e-12)
    rz = euler_to_matrix(np.array([0, 0, np.pi / 2]))
    np.testing.assert_allclose(rz @ [1, 0, 0], [0, 1, 0], atol=1e-12)
    # Extrinsic xyz: x first, then z. x axis first rotated about x (unchanged), then about z -> y.
    both = euler_to_matrix(np.array([np.pi / 2, 0, np.pi / 2]))
    np.testing.assert_allclose(both, rz @ rx, atol=1e-12)
    np.testing.assert_allclose(both @ [0, 1, 0], rz @ [0, 0, 1], atol=1e-12)


def test_round_trips_numpy_and_torch_agree():
    euler = _random_euler(200)
    mats = euler_to_matrix(euler)
    np.testing.assert_allclose(
        np.einsum("nij,nkj->nik", mats, mats), np.broadcast_to(np.eye(3), (200, 3, 3)), atol=1e-12
    )
    np.testing.assert_allclose(np.linalg.det(mats), 1.0, atol=1e-12)
    np.testing.assert_allclose(matrix_to_euler(mats), euler, atol=1e-9)
    quat = matrix_to_quaternion(mats)
    assert np.all(quat[:, 3] >= 0)
    np.testing.assert_allclose(np.linalg.norm(quat, axis=-1), 1.0, atol=1e-12)
    np.testing.assert_allclose(quaternion_to_matrix(quat), mats, atol=1e-9)
    np.testing.assert_allclose(quaternion_to_euler(euler_to_quaternion(euler)), euler, atol=1e-9)
    torch_euler = torch.as_tensor(euler)
    np.testing.assert_allclose(euler_to_matrix(torch_euler).numpy(), mats, atol=1e-12)
    np.testing.assert_allclose(matrix_to_quaternion(torch.as_tensor(mats)).numpy(), quat, atol=1e-9)
    np.testing.assert_allclose(matrix_to_euler(torch.as_tensor(mats)).numpy(), euler, atol=1e-9)


def test_quaternion_known_values_and_near_pi_rotation():
    # 180 deg about z: (0, 0, 1, 0); trace = -1 exercises the non-w branch.
    np.testing.assert_allclose(
        matrix_to_quaternion(euler_to_matrix(np.array([0, 0, np.pi]))), [0, 0, 1, 0], atol=1e-12
    )
    half = np.sqrt(0.5)
    np.testing.assert_allclose(
        euler_to_quaternion(np.array([np.pi / 2, 0, 0])), [half, 0, 0, half], atol=1e-12
    )


def test_gimbal_lock_reconstructs_matrix():
    euler = np.array([0.3, np.pi / 2, -0.4])
    mat = euler_to_matrix(euler)
    np.testing.assert_allclose(euler_to_matrix(matrix_to_euler(mat)), mat, atol=1e-9)


def test_bins_nearest_and_wrapping():
    angles = np.array([0.0, 5 * DEG, 2.4 * DEG, 2.6 * DEG, -180 * DEG, 179 * DEG, 185 * DEG])
    bins = euler_to_bins(angles)
    np.testing.assert_array_equal(bins, [36, 37, 36, 37, 0, 0, 1])
    np.testing.assert_allclose(bins_to_relative_euler(np.arange(72)), np.arange(72) * 5 * DEG - np.pi)
    np.testing.assert_array_equal(euler_to_bins(bins_to_relative_euler(np.arange(72))), np.arange(72))
    torch_bins = euler_to_bins(torch.as_tensor(angles))
    np.testing.assert_array_equal(torch_bins.numpy(), bins)
    with pytest.raises(ValueError, match="integer indices"):
        bins_to_relative_euler(np.array([72]))
    with pytest.raises(ValueError, match="NaN"):
        euler_to_bins(np.array([np.nan]))


def test_relative_absolute_inverse_and_targets():
    cond = euler_to_matrix(np.array([0.2, -0.3, 1.0]))
    rel = np.array([[0, 0, 0], [10 * DEG, 0, 0], [0, -15 * DEG, 30 * DEG]])
    absolute = relative_to_absolute(cond, rel)
    np.testing.assert_allclose(euler_to_matrix(absolute), cond @ euler_to_matrix(rel), atol=1e-12)
    np.testing.assert_allclose(absolute[0], matrix_to_euler(cond), atol=1e-12)
    np.testing.assert_allclose(absolute_to_relative(cond, absolute), rel, atol=1e-9)
    np.testing.assert_array_equal(
        rotation_targets(cond, absolute), [[36, 36, 36], [38, 36, 36], [36, 33, 42]]
    )
    with pytest.raises(ValueError, match="rotation"):
        relative_to_absolute(np.ones((3, 3)), rel)


def _chunk(**changes):
    steps = 4
    values = dict(
        positions=np.zeros((steps, 3)),
        euler=np.zeros((steps, 3)),
        gripper=np.ones(steps, dtype=int),
        time_from_start=0.1 * np.arange(1, steps + 1),
        stamp=1.0,
        confidence=0.5,
        step_confidence=np.full(steps, 0.5),
        chunk_id=3,
    )
    values.update(changes)
    return ActionChunk(**values)


def test_action_chunk_validation():
    chunk = _chunk()
    assert len(chunk) == 4 and chunk.rotations.shape == (4, 3, 3)
    with pytest.raises(ValueError, match="positions"):
        _chunk(positions=np.zeros((4, 2)))
    with pytest.raises(ValueError, match="euler"):
        _chunk(euler=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="NaN"):
        _chunk(positions=np.full((4, 3), np.nan))
    with pytest.raises(ValueError, match="gripper"):
        _chunk(gripper=np.array([0, 1, 2, 1]))
    with pytest.raises(ValueError, match="increasing"):
        _chunk(time_from_start=np.array([0.1, 0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        _chunk(confidence=1.5)
