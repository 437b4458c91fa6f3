"""Rotation/gripper head objective (paper 3.4, eq. 4): cross-entropy on true latents with a little noise.

Targets per future frame: three 72-bin Euler changes relative to the condition frame and the gripper state
(1 = open). The head reads the latents and the heatmap peak of every future frame in every RGB view; in
training the peaks are the projections of the true end-effector positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mvvdp_core.geometry.workspace import Workspace


@dataclass
class HeadLoss:
    total: torch.Tensor
    rotation: torch.Tensor  # sum of the three Euler-angle losses
    gripper: torch.Tensor
    rotation_accuracy: torch.Tensor
    gripper_accuracy: torch.Tensor


def true_peaks(positions: torch.Tensor, workspace: Workspace) -> torch.Tensor:
    """Future positions (B, T, 3) -> their (column, row) pixels in every view (B, T, V, 2)."""
    return workspace.to_view(positions.double())[..., :2].float()


def head_loss(
    head: torch.nn.Module,
    latents: torch.Tensor,
    positions: torch.Tensor,
    rotation_bins: torch.Tensor,
    gripper: torch.Tensor,
    workspace: Workspace,
    noise_std: float = 0.05,
    generator: torch.Generator | None = None,
) -> HeadLoss:
    """latents (B, 2R, C, f, h, w); positions (B, 1 + T, 3); rotation_bins (B, T, 3); gripper (B, 1 + T)."""
    if noise_std < 0:
        raise ValueError(f"latent noise std must be >= 0, got {noise_std}")
    noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32).to(latents)
    peaks = true_peaks(positions[:, 1:], workspace).to(latents.device)
    rotation_logits, gripper_logits = head(latents + noise_std * noise, peaks)
    bins = rotation_logits.shape[-1]
    rotation = sum(
        F.cross_entropy(rotation_logits[:, :, a].reshape(-1, bins).float(), rotation_bins[..., a].reshape(-1))
        for a in range(3)
    )
    future_gripper = gripper[:, 1:].reshape(-1)
    grip = F.cross_entropy(gripper_logits.reshape(-1, 2).float(), future_gripper)
    with torch.no_grad():
        rotation_accuracy = (rotation_logits.argmax(-1) == rotation_bins).float().mean()
        gripper_accuracy = (gripper_logits.reshape(-1, 2).argmax(-1) == future_gripper).float().mean()
    return HeadLoss(rotation + grip, rotation.detach(), grip.detach(), rotation_accuracy, gripper_accuracy)
