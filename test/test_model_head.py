"""Rotation/gripper head: shapes, use of the heatmap peaks, parameter count at the paper's size."""

import math

import pytest
import torch

from mvvdp_core.model.checkpoint import build_head
from mvvdp_core.model.config import MVVDPConfig
from mvvdp_core.model.head import head_loss

CONFIG = MVVDPConfig.tiny()


def test_output_shapes_and_peak_sensitivity():
    torch.manual_seed(0)
    head = build_head(CONFIG).eval()
    s = CONFIG.latent_size
    latents = torch.randn(2, CONFIG.num_views, CONFIG.latent_channels, CONFIG.latent_frames, s, s)
    peaks = torch.full((2, CONFIG.future_frames, CONFIG.num_rgb_views, 2), 20.0)
    rotation, gripper = head(latents, peaks)
    assert rotation.shape == (2, CONFIG.future_frames, 3, CONFIG.rotation_bins)
    assert gripper.shape == (2, CONFIG.future_frames, 2)
    moved = peaks.clone()
    moved[0, 5] = 44.0
    rotation_moved, _ = head(latents, moved)
    assert (rotation_moved[0] - rotation[0]).abs().max() > 1e-6  # the local encoder reads around the peaks
    torch.testing.assert_close(rotation_moved[1], rotation[1])  # samples are independent
    with pytest.raises(ValueError, match="peaks"):
        head(latents, peaks[:, :3])
    with pytest.raises(ValueError, match="NaN"):
        head(latents, torch.full_like(peaks, float("nan")))


def test_paper_size_about_170m_parameters():
    config = MVVDPConfig.wan22_ti2v_5b()
    with torch.device("meta"):
        head = build_head(config)
    count = sum(p.numel() for p in head.parameters())
    print(f"rotation/gripper head parameters at the real config: {count / 1e6:.1f} M")
    assert abs(count - 170e6) / 170e6 < 0.10


def test_head_loss_analytic():
    rotation_logits = torch.zeros(2, 4, 3, 72)
    gripper_logits = torch.zeros(2, 4, 2)
    bins = torch.randint(0, 72, (2, 4, 3))
    gripper = torch.randint(0, 2, (2, 4))
    loss = head_loss(rotation_logits, gripper_logits, bins, gripper)
    assert float(loss) == pytest.approx(3 * math.log(72) + math.log(2), rel=1e-5)
    confident = torch.full_like(rotation_logits, -30.0).scatter(-1, bins[..., None], 30.0)
    sure_grip = torch.full_like(gripper_logits, -30.0).scatter(-1, gripper[..., None], 30.0)
    assert float(head_loss(confident, sure_grip, bins, gripper)) < 1e-6
    with pytest.raises(ValueError, match="targets"):
        head_loss(rotation_logits, gripper_logits, bins[:, :2], gripper)
