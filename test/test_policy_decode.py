"""Action decoding apart from the network: heatmap videos of a known trajectory, known head outputs."""

import numpy as np
import pytest
import torch

from mvvdp_core.actions import euler_to_bins
from mvvdp_core.geometry.heatmaps import colorize_heatmaps, ee_heatmaps
from mvvdp_core.geometry.workspace import Workspace
from mvvdp_core.policy import decode_heatmap_video, head_to_actions, smooth_gripper
from mvvdp_core.rotations import euler_to_matrix, matrix_to_euler


def _trajectory(steps: int = 24) -> torch.Tensor:
    """A curved reach through the cube, off pixel centres."""
    s = torch.linspace(0, 1, steps, dtype=torch.float64)
    return torch.stack([0.35 + 0.3 * s, -0.2 + 0.25 * torch.sin(3 * s), 0.55 - 0.3 * s**2], -1)


def test_known_trajectory_decodes_within_2mm():
    workspace = Workspace()
    positions = _trajectory()
    maps = ee_heatmaps(positions, workspace, sigma=1.5)  # (T, V, H, W)
    video = colorize_heatmaps(maps).transpose(0, 1)  # (V, T, 3, H, W), as the VAE decoder returns it
    decoded = decode_heatmap_video(video, workspace)
    error = (decoded.positions.double() - positions).norm(dim=-1)
    assert float(error.max()) < 0.002, f"max error {float(error.max()) * 1000:.2f} mm"
    assert decoded.heatmaps.shape == (24, 3, 256, 256)
    assert decoded.step_confidence.shape == (24,) and decoded.step_confidence.min() > 0.5


def test_disagreeing_views_lower_confidence():
    workspace = Workspace()
    positions = _trajectory(4)
    sharp = colorize_heatmaps(ee_heatmaps(positions, workspace)).transpose(0, 1)
    wrong = positions.clone()
    wrong[:, 0] += 0.03  # 3 cm along x: top and side views both see x
    off = colorize_heatmaps(ee_heatmaps(wrong, workspace)).transpose(0, 1)
    mixed = torch.cat([off[:1], sharp[1:]])  # the top view disagrees with the side view
    good = decode_heatmap_video(sharp, workspace).step_confidence
    bad = decode_heatmap_video(mixed, workspace).step_confidence
    assert np.all(bad < good)


def test_blank_and_decoy_steps():
    # Step 0: a weaker decoy blob in every view (picked: the true point, confident); step 1: blank frames (the
    # VAE's background colour everywhere), flagged with confidence 0.
    workspace = Workspace()
    true, decoy = torch.tensor([0.42, -0.15, 0.33]), torch.tensor([0.61, 0.2, 0.58])
    maps = torch.stack([ee_heatmaps(true, workspace) + 0.95 * ee_heatmaps(decoy, workspace),
                        torch.zeros(3, 256, 256)])
    video = colorize_heatmaps(maps).transpose(0, 1)
    decoded = decode_heatmap_video(video, workspace)
    assert float((decoded.positions[0].double() - true.double()).norm()) < 0.001
    assert decoded.step_confidence[0] > 0.95
    assert decoded.step_confidence[1] == 0.0


def test_bad_heatmap_video_shape():
    with pytest.raises(ValueError, match="heatmap video"):
        decode_heatmap_video(torch.zeros(2, 4, 3, 256, 256), Workspace())


def test_known_bins_give_absolute_orientation_and_gripper():
    cond = euler_to_matrix(np.array([np.pi, 0.1, -0.5]))  # gripper pointing down, slightly tilted
    rel = np.deg2rad(np.array([[0, 0, 0], [0, 0, 15], [-10, 5, 90]], dtype=np.float64))
    bins = euler_to_bins(rel)
    rotation_logits = torch.full((3, 3, 72), -5.0)
    rotation_logits.scatter_(-1, torch.as_tensor(bins)[..., None], 5.0)
    gripper_logits = torch.tensor([[0.0, 3.0], [2.0, -1.0], [-1.0, 0.5]])
    euler, gripper = head_to_actions(rotation_logits, gripper_logits, cond, 72, gripper_window=1)
    np.testing.assert_allclose(euler_to_matrix(euler), cond @ euler_to_matrix(rel), atol=1e-9)
    np.testing.assert_allclose(euler[0], matrix_to_euler(cond), atol=1e-9)
    np.testing.assert_array_equal(gripper, [1, 0, 1])


def _gripper_logits(states: str, margin: float = 2.0) -> torch.Tensor:
    """'1100...' -> (T, 2) logits whose argmax is each state."""
    closed = torch.tensor([float(c) for c in states])
    return torch.stack([margin * (1 - closed) - margin * closed, margin * closed - margin * (1 - closed)], -1)


def test_gripper_smoothing_drops_flips_of_a_step_or_two_and_keeps_real_changes():
    # One- and two-step flips vanish (one next to the chunk's end too); a lasting change stays where it is,
    # and so does one in the chunk's last two steps (it may be the start of a lasting one).
    assert "".join(map(str, smooth_gripper(_gripper_logits("111111101111111111111101")))) == "1" * 24
    assert "".join(map(str, smooth_gripper(_gripper_logits("111111001111111111111100")))) == "1" * 22 + "00"
    change = "111111111111000000000000"
    assert "".join(map(str, smooth_gripper(_gripper_logits(change)))) == change
    # Probabilities, not votes, are averaged: one confident step outweighs several unsure ones.
    logits = _gripper_logits("0001000", margin=0.1)
    logits[3] = torch.tensor([-8.0, 8.0])
    assert smooth_gripper(logits)[3] == 1 and smooth_gripper(logits, 1).tolist() == [0, 0, 0, 1, 0, 0, 0]
    with pytest.raises(ValueError, match="odd"):
        smooth_gripper(logits, 4)
