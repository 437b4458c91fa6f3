"""Flow matching: noising, targets, the shifted schedule and the Euler sampler."""

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from mvvdp_core.model.flow import (
    diffusion_loss,
    euler_sample,
    impose_condition,
    inference_sigmas,
    make_scheduler,
    sample_training_sigmas,
    shift_sigmas,
    sigma_to_timestep,
    training_target,
)


def test_training_target_matches_definition():
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 6, 4, 7, 2, 2, generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    sigma = torch.tensor([0.25, 0.8])
    noisy, target, mask = training_target(x0, noise, sigma)
    expected = (1 - sigma.view(-1, 1, 1, 1, 1, 1)) * x0 + sigma.view(-1, 1, 1, 1, 1, 1) * noise
    torch.testing.assert_close(noisy[:, :, :, 1:], expected[:, :, :, 1:])
    torch.testing.assert_close(noisy[:, :, :, :1], x0[:, :, :, :1])  # condition frame stays clean
    torch.testing.assert_close(target, noise - x0)
    assert mask[:, :, :, 0].sum() == 0 and bool((mask[:, :, :, 1:] == 1).all())


def test_shifted_schedule():
    assert float(shift_sigmas(torch.tensor(0.5), 5.0)) == pytest.approx(5 * 0.5 / (1 + 4 * 0.5))
    sig = inference_sigmas(5, 5.0)
    assert sig.shape == (6,) and float(sig[0]) == 1.0 and float(sig[-1]) == 0.0
    assert bool((sig[1:] < sig[:-1]).all())
    train = sample_training_sigmas(1000, 1000, 5.0, torch.Generator().manual_seed(1))
    assert bool((train > 0).all() and (train <= 1).all())
    assert float(train.median()) > 0.7  # the shift pushes training towards high noise
    with pytest.raises(ValueError, match="num_steps"):
        inference_sigmas(0, 5.0)


@pytest.mark.parametrize("steps", [1, 5])
def test_euler_sampler_exact_for_straight_flow(steps):
    """With the true velocity (x_s - x0) / s of a straight path, Euler reaches x0 for any step count."""
    gen = torch.Generator().manual_seed(3)
    shape = (1, 6, 4, 7, 2, 2)
    target = torch.randn(shape, generator=gen)
    condition = target[:, :, :, :1].clone()
    seen = []

    def velocity(x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        s = timestep.view(-1, 1, 1, 1, 1, 1) / 1000
        torch.testing.assert_close(x[:, :, :, :1], condition)  # condition fixed at every step
        return (x - target) / s

    out = euler_sample(velocity, condition, shape, steps, 5.0, generator=gen, on_step=seen.append)
    torch.testing.assert_close(out, target, atol=1e-5, rtol=1e-5)
    assert seen == list(range(steps))


def test_euler_sampler_seeded():
    shape = (1, 2, 3, 3, 2, 2)
    cond = torch.zeros(1, 2, 3, 1, 2, 2)
    run = lambda seed: euler_sample(  # noqa: E731
        lambda x, t: 0.1 * x, cond, shape, 3, 5.0, generator=torch.Generator().manual_seed(seed)
    )
    torch.testing.assert_close(run(7), run(7), rtol=0, atol=0)
    assert not torch.equal(run(7), run(8))


def reference_euler_sample(velocity, condition, shape, num_steps, shift, num_train_timesteps, generator):
    """The hand-written Euler loop the scheduler-based sampler replaced."""
    noise = torch.randn(shape, generator=generator, dtype=torch.float32, device="cpu").to(condition)
    x = impose_condition(noise, condition)
    sigmas = inference_sigmas(num_steps, shift)
    for i in range(num_steps):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        timestep = torch.full((shape[0],), s * num_train_timesteps, device=x.device)
        x = impose_condition(x + (s_next - s) * velocity(x, timestep), condition)
    return x


@pytest.mark.parametrize("steps", [1, 5])
def test_scheduler_sampler_matches_hand_written_euler(steps):
    gen = torch.Generator().manual_seed(11)
    shape = (2, 6, 4, 3, 2, 2)
    condition = torch.randn(2, 6, 4, 1, 2, 2, generator=gen)
    weight = torch.randn(shape[1:], generator=gen)
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def velocity(x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        calls.append((x.clone(), timestep.clone()))
        return torch.tanh(weight * x) + (timestep / 1000).view(-1, 1, 1, 1, 1, 1) * x.square()

    reference = reference_euler_sample(
        velocity, condition, shape, steps, 5.0, 1000, torch.Generator().manual_seed(4)
    )
    reference_calls, calls[:] = list(calls), []
    out = euler_sample(
        velocity, condition, shape, steps, 5.0, 1000, generator=torch.Generator().manual_seed(4)
    )
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)
    assert len(calls) == len(reference_calls) == steps
    for (x, t), (x_ref, t_ref) in zip(calls, reference_calls, strict=True):
        torch.testing.assert_close(t, t_ref, atol=1e-3, rtol=0)
        torch.testing.assert_close(x, x_ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("steps", [1, 5, 50])
def test_scheduler_schedule_is_the_shifted_grid(steps):
    scheduler = make_scheduler(steps, 5.0, 1000)
    torch.testing.assert_close(scheduler.sigmas.double(), inference_sigmas(steps, 5.0), atol=1e-6, rtol=0)
    torch.testing.assert_close(scheduler.timesteps, scheduler.sigmas[:-1] * 1000)


def test_training_sigmas_are_the_schedulers():
    """Training noises at the scheduler's own training sigmas and feeds the same sigma -> timestep map."""
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=5.0)
    train = sample_training_sigmas(4096, 1000, 5.0, torch.Generator().manual_seed(2))
    gap = (train.double()[:, None] - scheduler.sigmas.double()[None]).abs().min(dim=1).values
    assert float(gap.max()) < 1e-6
    torch.testing.assert_close(sigma_to_timestep(scheduler.sigmas, 1000), scheduler.timesteps)


def test_diffusion_loss_weights_rgb_and_heatmap_views():
    target = torch.zeros(1, 6, 2, 3, 2, 2)
    prediction = torch.zeros_like(target)
    prediction[:, :3, :, 1:] = 1.0  # RGB views off by 1 on future frames
    prediction[:, 3:, :, 1:] = 2.0  # heatmap views off by 2
    prediction[:, :, :, 0] = 100.0  # condition frame: masked out
    _, _, mask = training_target(target, torch.zeros_like(target), torch.tensor([0.5]))
    loss = diffusion_loss(prediction, target, mask, num_rgb_views=3, rgb_weight=0.5)
    assert float(loss) == pytest.approx(0.5 * 1.0 + 0.5 * 4.0)
    assert float(diffusion_loss(prediction, target, mask, 3, 1.0)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="rgb_weight"):
        diffusion_loss(prediction, target, mask, 3, 1.5)
