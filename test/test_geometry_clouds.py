"""Cloud transforms and merging: analytic transforms, cropping, colour conversion, input validation."""

import math

import numpy as np
import pytest
import torch

from mvvdp_core.geometry import Workspace, merge_clouds, transform_points

WS = Workspace()


def rigid(yaw: float, translation: tuple[float, float, float]) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    mat = np.eye(4)
    mat[:3, :3] = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
    mat[:3, 3] = translation
    return mat


def test_transform_points_matches_analytic_rotation_and_translation():
    points = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.5]], dtype=torch.float64)
    out = transform_points(points, rigid(math.pi / 2, (0.1, -0.2, 0.3)))
    expected = torch.tensor([[0.1, 0.8, 0.3], [-1.9, -0.2, 0.8]], dtype=torch.float64)
    assert torch.allclose(out, expected, atol=1e-12)


def test_merge_crops_drops_invalid_and_converts_uint8():
    inside = np.array([[0.5, 0.0, 0.4], [0.2, 0.3, 0.1]], dtype=np.float32)
    outside = np.array([[2.0, 0.0, 0.4]], dtype=np.float32)
    nan = np.array([[np.nan, 0.0, 0.4]], dtype=np.float32)
    cam0 = np.concatenate([inside, outside, nan])
    colors0 = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [9, 9, 9]], dtype=np.uint8)
    # Second camera: its points sit at camera-frame (0, -0.5, 0) -> base (0.5, 0.0, 0.4) after a 90 deg yaw.
    ext1 = rigid(math.pi / 2, (0.0, 0.0, 0.4))
    cam1 = np.array([[0.0, -0.5, 0.0]], dtype=np.float32)
    colors1 = np.array([[0, 0, 255]], dtype=np.uint8)
    points, colors = merge_clouds([cam0, cam1], [colors0, colors1], [np.eye(4), ext1], WS)
    assert points.dtype == torch.float32 and colors.dtype == torch.float32
    expected_points = torch.tensor([[0.5, 0.0, 0.4], [0.2, 0.3, 0.1], [0.5, 0.0, 0.4]])
    assert torch.allclose(points, expected_points, atol=1e-6)
    assert torch.equal(colors, torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]]))


def test_merge_numpy_and_torch_inputs_agree():
    rng = np.random.default_rng(0)
    pts = rng.uniform(-0.3, 0.3, size=(100, 3)).astype(np.float32)
    cols = rng.uniform(0, 1, size=(100, 4)).astype(np.float32)
    ext = rigid(0.3, (0.5, 0.0, 0.4))
    a = merge_clouds([pts], [cols], [ext], WS)
    b = merge_clouds([torch.from_numpy(pts)], [torch.from_numpy(cols)], [torch.from_numpy(ext)], WS)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[1].shape == (100, 4)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda m: m @ np.diag([2.0, 1, 1, 1]), "orthonormal"),
        (lambda m: m @ np.diag([-1.0, 1, 1, 1]), "determinant"),
        (lambda m: np.vstack([m[:3], [[0, 0, 0.5, 1]]]), "last row"),
        (lambda m: m[:3], r"\(4, 4\)"),
    ],
)
def test_non_rigid_extrinsics_rejected(mutate, message):
    pts = np.zeros((1, 3), dtype=np.float32)
    with pytest.raises(ValueError, match=message):
        merge_clouds([pts], [np.zeros((1, 3))], [mutate(rigid(0.2, (0.5, 0.0, 0.4)))], WS)
    with pytest.raises(ValueError, match=message):
        transform_points(pts, mutate(rigid(0.2, (0.5, 0.0, 0.4))))


def test_merge_bad_inputs_named():
    pts = np.zeros((2, 3), dtype=np.float32)
    cols = np.zeros((2, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="empty"):
        merge_clouds([], [], [], WS)
    with pytest.raises(ValueError, match="empty"):
        merge_clouds([np.zeros((0, 3))], [np.zeros((0, 3))], [np.eye(4)], WS)
    with pytest.raises(ValueError, match="one colour array"):
        merge_clouds([pts], [cols, cols], [np.eye(4)], WS)
    with pytest.raises(ValueError, match=r"points\[0\] must have shape"):
        merge_clouds([np.zeros((2, 2))], [cols], [np.eye(4)], WS)
    with pytest.raises(ValueError, match=r"colors\[0\] must have shape"):
        merge_clouds([pts], [np.zeros((3, 3))], [np.eye(4)], WS)
    with pytest.raises(ValueError, match="channels"):
        merge_clouds([pts, pts], [cols, np.zeros((2, 1))], [np.eye(4), np.eye(4)], WS)
    with pytest.raises(ValueError, match="uint8 or floating"):
        merge_clouds([pts], [cols.astype(np.int32)], [np.eye(4)], WS)
    with pytest.raises(ValueError, match="no points inside the workspace"):
        merge_clouds([pts + 5.0], [cols], [np.eye(4)], WS)
    with pytest.raises(ValueError, match="no points inside the workspace"):
        merge_clouds([np.full((2, 3), np.nan)], [cols], [np.eye(4)], WS)
