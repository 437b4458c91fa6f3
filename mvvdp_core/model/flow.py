"""Flow matching as Wan uses it: x_t = (1 - s) x0 + s eps, velocity target eps - x0, shifted sigmas.

Training draws t uniformly from the 1000 discrete timesteps and maps it through Wan's shift
s = shift * u / (1 + (shift - 1) * u); the transformer sees timestep s * 1000. These are the training sigmas
and timesteps of diffusers' FlowMatchEulerDiscreteScheduler with the same shift. The sampler steps that
scheduler (Euler) from s = 1 to s = 0 on the same shifted schedule, with the condition frames held fixed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import FlowMatchEulerDiscreteScheduler


def shift_sigmas(u: torch.Tensor, shift: float) -> torch.Tensor:
    if shift <= 0:
        raise ValueError(f"flow shift must be positive, got {shift}")
    return shift * u / (1 + (shift - 1) * u)


def sample_training_sigmas(
    batch: int,
    num_train_timesteps: int,
    shift: float,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """(batch,) noise levels s in (0, 1] for training."""
    steps = torch.randint(1, num_train_timesteps + 1, (batch,), generator=generator)
    return shift_sigmas(steps.double() / num_train_timesteps, shift).float().to(device)


def sigma_to_timestep(sigma: torch.Tensor, num_train_timesteps: int) -> torch.Tensor:
    return sigma * num_train_timesteps


def _expand(sigma: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return sigma.to(like).view(-1, *([1] * (like.ndim - 1)))


def add_noise(
    x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor, cond_frames: int = 1, frame_dim: int = 3
) -> torch.Tensor:
    """x_t = (1 - s) x0 + s eps per sample; the first `cond_frames` along frame_dim stay clean."""
    if x0.shape != noise.shape:
        raise ValueError(f"x0 {tuple(x0.shape)} and noise {tuple(noise.shape)} differ in shape")
    s = _expand(sigma, x0)
    noisy = (1 - s) * x0 + s * noise
    return impose_condition(noisy, x0, cond_frames, frame_dim)


def training_target(
    x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor, cond_frames: int = 1, frame_dim: int = 3
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Noisy input, velocity target (eps - x0) and a loss mask (0 on condition frames), all shaped like x0.

    x0 is (B, V, C, F, H, W) by default (frame_dim 3).
    """
    noisy = add_noise(x0, noise, sigma, cond_frames, frame_dim)
    mask = torch.ones_like(x0)
    mask.narrow(frame_dim, 0, cond_frames).zero_()
    return noisy, noise - x0, mask


def impose_condition(
    latents: torch.Tensor, condition: torch.Tensor, cond_frames: int = 1, frame_dim: int = 3
) -> torch.Tensor:
    """Replace the first `cond_frames` frames of latents by those of condition."""
    if cond_frames == 0:
        return latents
    out = latents.clone()
    out.narrow(frame_dim, 0, cond_frames).copy_(condition.narrow(frame_dim, 0, cond_frames))
    return out


# More Euler steps than the 1000 training timesteps resolve nothing further; a request for more is a mistake
# (1e9 steps would allocate gigabytes here before the first model call).
MAX_INFERENCE_STEPS = 1000


def check_num_steps(num_steps: int) -> int:
    """num_steps as an int in [1, MAX_INFERENCE_STEPS]; ValueError otherwise."""
    whole = not isinstance(num_steps, bool) and int(num_steps) == num_steps
    if not whole or not 1 <= num_steps <= MAX_INFERENCE_STEPS:
        raise ValueError(f"num_steps must be an integer in [1, {MAX_INFERENCE_STEPS}], got {num_steps!r}")
    return int(num_steps)


def inference_sigmas(num_steps: int, shift: float) -> torch.Tensor:
    """(num_steps + 1,) decreasing noise levels from 1 to 0."""
    num_steps = check_num_steps(num_steps)
    return shift_sigmas(torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64), shift)


VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def make_scheduler(
    num_steps: int, shift: float, num_train_timesteps: int = 1000
) -> FlowMatchEulerDiscreteScheduler:
    """An Euler flow-matching scheduler set to inference_sigmas(num_steps, shift).

    The scheduler's own schedule (set_timesteps(N) alone) spaces its N sigmas between its shifted training
    extremes and shifts them a second time, ending at shift(shift(1 / T)) before the terminal 0; it matches
    ours only at N = 1. Passing the unshifted grid 1, (N - 1) / N, ..., 1 / N as `sigmas` makes it apply the
    shift once, as training does, and close with 0. Its sigmas are float32 (ours float64), so the two agree to
    float tolerance.
    """
    num_steps = check_num_steps(num_steps)
    if shift <= 0:
        raise ValueError(f"flow shift must be positive, got {shift}")
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=num_train_timesteps, shift=shift)
    grid = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)[:-1]
    scheduler.set_timesteps(num_steps, sigmas=grid.tolist())
    # Start at the first step without looking the timestep up (a lookup syncs with the device).
    scheduler.set_begin_index(0)
    return scheduler


def euler_sample(
    velocity: VelocityFn,
    condition: torch.Tensor,
    shape: tuple[int, ...],
    num_steps: int,
    shift: float,
    num_train_timesteps: int = 1000,
    generator: torch.Generator | None = None,
    cond_frames: int = 1,
    frame_dim: int = 3,
    on_step: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Integrate dx/ds = v(x, s) from noise at s = 1 to s = 0 with diffusers' Euler flow-matching scheduler.

    velocity(x, timestep (B,)) -> v; condition holds the clean condition frames (first frames along
    frame_dim); shape is the full latent shape. Noise is drawn on the CPU from `generator` so a seed gives the
    same result on every device.
    """
    scheduler = make_scheduler(num_steps, shift, num_train_timesteps)
    noise = torch.randn(shape, generator=generator, dtype=torch.float32, device="cpu").to(condition)
    x = impose_condition(noise, condition, cond_frames, frame_dim)
    batch = shape[0]
    # The schedule stays on the CPU: timesteps are filled in on the device and the step sizes are host
    # scalars, so a step never waits for the device.
    for i, t in enumerate(scheduler.timesteps):
        timestep = torch.full((batch,), float(t), device=x.device)
        v = velocity(x, timestep)
        x = scheduler.step(v, t, x, return_dict=False)[0]
        x = impose_condition(x, condition, cond_frames, frame_dim)
        if on_step is not None:
            on_step(i)
    return x


def diffusion_loss(
    prediction: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    num_rgb_views: int,
    rgb_weight: float,
) -> torch.Tensor:
    """Paper eq. 3: rgb_weight * MSE(RGB views) + (1 - rgb_weight) * MSE(heatmap views), over masked frames.

    Tensors are (B, V, C, F, H, W) with the RGB views first; mask is 0 on the condition frames.
    """
    if not 0.0 <= rgb_weight <= 1.0:
        raise ValueError(f"rgb_weight must be in [0, 1], got {rgb_weight}")
    if prediction.shape != target.shape or mask.shape != target.shape:
        raise ValueError("prediction, target and mask must have the same shape")
    if not 0 < num_rgb_views < target.shape[1]:
        raise ValueError(f"num_rgb_views {num_rgb_views} must split the {target.shape[1]} views")
    error = (prediction.float() - target.float()).square() * mask
    rgb, heat = error[:, :num_rgb_views], error[:, num_rgb_views:]
    rgb_loss = rgb.sum() / mask[:, :num_rgb_views].sum().clamp_min(1)
    heat_loss = heat.sum() / mask[:, num_rgb_views:].sum().clamp_min(1)
    return rgb_weight * rgb_loss + (1 - rgb_weight) * heat_loss
