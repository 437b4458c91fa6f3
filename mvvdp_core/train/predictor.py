"""Recorded step -> the policy's observation -> a chunk: used by validation and the Meta-World harness."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from mvvdp_core.actions import ActionChunk
from mvvdp_core.data.dataset import render_step_views
from mvvdp_core.data.episode import Step
from mvvdp_core.policy import MVVDPPolicy, Observation

MAX_GRIPPER_WIDTH = 0.08  # metres, fully open (Franka hand)


def observation_from_step(
    step: Step, policy: MVVDPPolicy, task: str, splat_radius: float = 0.008
) -> Observation:
    """Project the step's clouds into the policy's views and wrap them with the end-effector state."""
    rgb = render_step_views(step, policy.workspace, splat_radius)
    return Observation(
        rgb=rgb.float().clamp(0, 1),
        ee_position=step.ee_position,
        ee_rotation=step.ee_rotation,
        gripper=float(np.clip(step.gripper_width / MAX_GRIPPER_WIDTH, 0.0, 1.0)),
        stamp=step.timestamp,
        task=task,
    )


def make_chunk_predictor(
    policy: MVVDPPolicy, num_steps: int | None = None, seed: int | None = 0
) -> Callable[[Step, str], ActionChunk]:
    """A callable (step, task) -> ActionChunk running the policy on the step's observation."""

    def predict(step: Step, task: str) -> ActionChunk:
        return policy.predict(observation_from_step(step, policy, task), num_steps=num_steps, seed=seed).chunk

    return predict


def load_chunk_predictor(
    checkpoint: str | Path, num_steps: int | None = None
) -> Callable[[Step, str], ActionChunk]:
    return make_chunk_predictor(MVVDPPolicy.from_checkpoint(checkpoint), num_steps)
