"""Rotation/gripper head objective (paper 3.4, eq. 4): cross-entropy on true latents with a little noise.

Targets per future frame: three 72-bin Euler changes relative to the condition frame and the gripper state
(1 = open). The head reads the latents and the heatmap peak of every future frame in every RGB view; in
training the peaks are the projections of the true end-effector positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mvvdp_core.geometry.workspace import Workspace
from mvvdp_core.model.head import head_loss


@dataclass
class HeadLoss:
    total: torch.Tensor  # paper eq. 4: three Euler-angle cross-entropies + the gripper's
    rotation_accuracy: torch.Tensor
    gripper_accuracy: torch.Tensor


def true_peaks(positions: torch.Tensor, workspace: Workspace) -> torch.Tensor:
    """Future positions (B, T, 3) -> their (column, row) pixels in every view (B, T, V, 2)."""
    return workspace.to_view(positions.double())[..., :2].float()


def head_objective(
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
    future_gripper = gripper[:, 1:]
    total = head_loss(rotation_logits, gripper_logits, rotation_bins, future_gripper)
    with torch.no_grad():
        rotation_accuracy = (rotation_logits.argmax(-1) == rotation_bins).float().mean()
        gripper_accuracy = (gripper_logits.argmax(-1) == future_gripper).float().mean()
    return HeadLoss(total, rotation_accuracy, gripper_accuracy)
