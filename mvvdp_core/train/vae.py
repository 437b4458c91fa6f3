"""The video VAE for presets without published weights (tiny, small): fitting, latent statistics, round trip.

The paper's VAE is Wan2.2's pretrained one, frozen throughout. A model built from scratch has no such VAE, so
before the video model trains, its VAE is fitted as an autoencoder on the dataset's own RGB and heatmap views,
on whole samples: the condition frame followed by the future frames, i.e. exactly the clips the policy
encodes (the causal VAE encodes the condition frame alone into the first latent frame) and decodes. The
condition frame and the future frames weigh equally in the loss. Pixels that carry the task weigh more: on
the heatmap views the blob (the positions are read from it), on the RGB views the foreground, i.e. pixels
away from the view's background colour (arm, objects): they are few, and an unweighted loss reconstructs a
plausible empty table. Every step also reconstructs the condition frames of all RGB views on their own
(cheap: one frame each), the frame the policy is conditioned on. Then the per-channel latent mean and std
are measured on the data (the diffusion model expects roughly unit-variance latents), and the round trip
heatmap -> VAE -> back-projection is measured per frame in centimetres.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from tqdm import tqdm

from mvvdp_core.geometry.workspace import Workspace
from mvvdp_core.model.vae import VideoVAE
from mvvdp_core.train.video import sample_videos

JET_BACKGROUND = (0.0, 0.0, 0.5)  # colour of a zero heatmap value


def blob_weights(videos: torch.Tensor, num_heat_views: int, blob_weight: float) -> torch.Tensor:
    """Per-pixel weights (B, V, F, 1, H, W): blob_weight + 1 on heatmap pixels off the background colour."""
    ones = torch.ones_like(videos[:, : videos.shape[1] - num_heat_views, :, :1])
    if num_heat_views == 0:
        return ones
    heat = videos[:, -num_heat_views:]
    background = torch.tensor(JET_BACKGROUND, dtype=videos.dtype, device=videos.device).view(1, 1, 1, 3, 1, 1)
    blob = ((heat - background).abs().sum(3, keepdim=True) > 0.05).to(videos.dtype)
    return torch.cat([ones, 1 + blob_weight * blob], dim=1)


def foreground_weights(
    frames: torch.Tensor, foreground_weight: float, background: torch.Tensor | None = None,
    threshold: float = 0.15,
) -> torch.Tensor:
    """Per-pixel weights (B, V, F, 1, H, W) of RGB frames (B, V, F, 3, H, W): foreground_weight + 1 on pixels
    whose colour is off the background, 1 elsewhere.

    background: the scene background of each view, (V, 3, H, W), as `scene_background` measures it (what every
    scene shows at that pixel: objects and a moved arm stand out, the arm at its usual start pose does not);
    None: the per-channel median colour of each view's condition frame.
    """
    if background is None:
        background = frames[:, :, :1].flatten(-2).median(dim=-1).values[..., None, None]  # (B, V, 1, 3, 1, 1)
    else:
        if background.shape != (frames.shape[1], *frames.shape[3:]):
            raise ValueError(f"background {tuple(background.shape)} does not match frames "
                             f"{tuple(frames.shape)}: expected (V, 3, H, W)")
        background = background.to(frames)[None, :, None]
    foreground = ((frames - background).abs().sum(3, keepdim=True) > threshold).to(frames.dtype)
    return 1 + foreground_weight * foreground


@torch.no_grad()
def scene_background(frames: torch.Tensor) -> torch.Tensor:
    """RGB frames (N, V, 3, H, W) of many scenes -> the per-view, per-pixel median colour (V, 3, H, W).

    What is the same in most scenes (table, walls, the arm at its start pose) is background; what tells one
    scene from another (where the objects are, how the arm moved) is not, so it weighs more in the fitting.
    """
    if frames.ndim != 5 or frames.shape[0] < 1:
        raise ValueError(f"frames must be (N, V, 3, H, W) with N >= 1, got {tuple(frames.shape)}")
    return frames.float().median(dim=0).values


def reconstruction_loss(
    decoded: torch.Tensor, videos: torch.Tensor, num_heat_views: int, blob_weight: float,
    foreground_weight: float = 0.0, background: torch.Tensor | None = None,
) -> torch.Tensor:
    """Weighted squared error (blob and foreground weights; background as in `foreground_weights`, for the
    RGB views of videos); the condition frame and the mean of the future frames weigh equally."""
    weights = blob_weights(videos, num_heat_views, blob_weight)
    if foreground_weight > 0 and videos.shape[1] > num_heat_views:
        rgb = videos[:, : videos.shape[1] - num_heat_views]
        rgb_weights = foreground_weights(rgb, foreground_weight, background)
        weights = torch.cat([rgb_weights, weights[:, rgb.shape[1]:]], dim=1)
    per_frame = (weights * (decoded - videos).square()).mean(dim=(0, 1, 3, 4, 5))  # (F,)
    if per_frame.numel() == 1:
        return per_frame[0]
    return 0.5 * per_frame[0] + 0.5 * per_frame[1:].mean()


def fit_vae(
    vae: VideoVAE,
    batches: Iterator[dict[str, torch.Tensor]],
    steps: int,
    lr: float = 1e-3,
    blob_weight: float = 50.0,
    foreground_weight: float = 20.0,
    generator: torch.Generator | None = None,
    progress: bool = True,
    heat_views: int = 2,
    background: torch.Tensor | None = None,
    condition_pool: torch.Tensor | None = None,
    condition_batch: int = 8,
) -> list[float]:
    """Fit the VAE on whole samples of the batches' videos; returns the loss per step. Leaves it frozen.

    Each step reconstructs one random RGB view and `heat_views` random heatmap views of each sample (the VAE
    treats views independently, so this only thins the batch), from the condition frame on: the whole sample
    every third step, else its first 1 + 4 or 1 + 8 frames (cheaper, and the same causal paths: the first
    frame alone, a chunk after it, a chunk after a chunk), plus (foreground_weight > 0) the condition
    frames of all RGB views alone. background: the RGB views' scene background (R, 3, H, W) for the
    foreground weights (`scene_background`; None: each view's median colour). condition_pool: RGB condition
    frames (N, R, 3, H, W) of many scenes; the condition term then reconstructs `condition_batch` of them per
    step instead of the batch's own (a small object is a few pixels of one frame: the VAE learns to keep it
    from many scenes per step, not one). The learning rate decays on a cosine.
    """
    if steps < 0:
        raise ValueError(f"VAE steps must be >= 0, got {steps}")
    if condition_batch < 1:
        raise ValueError(f"condition_batch must be >= 1, got {condition_batch}")
    device = next(vae.parameters()).device
    vae.train()
    vae.requires_grad_(True)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(i / max(steps, 1), 1.0)))
    )
    losses = []
    for _ in tqdm(range(steps), desc="fit VAE", disable=not progress):
        videos = sample_videos(next(batches)).to(device=device, dtype=vae.dtype)  # (B, 2R, 1 + F, 3, H, W)
        if condition_pool is None:
            conditions = videos[:, : videos.shape[1] // 2, :1]  # RGB condition frames (B, R, 1, 3, H, W)
        else:
            picks = torch.randint(0, condition_pool.shape[0], (condition_batch,), generator=generator)
            conditions = condition_pool[picks][:, :, None].to(device=device, dtype=vae.dtype)
        chunks = (videos.shape[2] - 1) // vae.temporal_compression
        lengths = sorted({min(1, chunks), min(2, chunks), chunks})
        length = lengths[int(torch.randint(0, len(lengths), (1,), generator=generator))]
        videos = videos[:, :, : 1 + length * vae.temporal_compression]
        num_rgb = videos.shape[1] // 2
        heat = min(heat_views, num_rgb)
        rgb_pick = int(torch.randint(0, num_rgb, (1,), generator=generator))
        heat_pick = (num_rgb + torch.randperm(num_rgb, generator=generator)[:heat]).tolist()
        videos = videos[:, [rgb_pick, *heat_pick]]
        picked = None if background is None else background[rgb_pick : rgb_pick + 1]
        loss = reconstruction_loss(vae.decode(vae.encode(videos)), videos, heat, blob_weight,
                                   foreground_weight, picked)
        if foreground_weight > 0:
            loss = loss + reconstruction_loss(vae.decode(vae.encode(conditions)), conditions, 0, blob_weight,
                                              foreground_weight, background)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    vae.eval()
    vae.requires_grad_(False)
    return losses


@torch.no_grad()
def latent_statistics(
    vae: VideoVAE, batches: Iterator[dict[str, torch.Tensor]], samples: int
) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the raw (unnormalised) latents of `samples` dataset samples, all views."""
    device = next(vae.parameters()).device
    total = count = square = None
    seen = 0
    saved_mean, saved_std = vae.latents_mean.clone(), vae.latents_std.clone()
    vae.latents_mean.zero_()
    vae.latents_std.fill_(1.0)
    try:
        while seen < samples:
            batch = next(batches)
            videos = sample_videos(batch).to(device=device, dtype=vae.dtype)
            latents = vae.encode(videos).double()  # (B, V, C, f, h, w)
            per_channel = latents.transpose(0, 2).flatten(1)  # (C, N)
            total = per_channel.sum(1) if total is None else total + per_channel.sum(1)
            square = per_channel.square().sum(1) if square is None else square + per_channel.square().sum(1)
            count = per_channel.shape[1] if count is None else count + per_channel.shape[1]
            seen += videos.shape[0]
    finally:
        vae.latents_mean.copy_(saved_mean)
        vae.latents_std.copy_(saved_std)
    mean = total / count
    std = (square / count - mean.square()).clamp_min(1e-8).sqrt()
    return mean.float().tolist(), std.float().tolist()


@torch.no_grad()
def heatmap_roundtrip_errors(
    vae: VideoVAE, batches: Iterator[dict[str, torch.Tensor]], workspace: Workspace, samples: int
) -> np.ndarray:
    """Position error (metres) per sample and frame (S, 1 + F) of heatmap views -> VAE -> back-projection."""
    from mvvdp_core.policy import decode_heatmap_video

    device = next(vae.parameters()).device
    errors = []
    while len(errors) < samples:
        batch = next(batches)
        heat = batch["heatmap_rgb"].transpose(1, 2)  # (B, R, 1 + F, 3, H, W)
        decoded = vae.decode(vae.encode(heat.to(device=device, dtype=vae.dtype))).float().cpu()
        for b in range(decoded.shape[0]):
            positions = decode_heatmap_video(decoded[b], workspace).positions.double()
            truth = batch["positions"][b].double()
            errors.append((positions - truth).norm(dim=-1).numpy())
    return np.stack(errors[:samples])


def roundtrip_summary(errors: np.ndarray) -> str:
    """One log line: condition frame and future frames (mean, worst frame) in centimetres."""
    per_frame = 100 * errors.mean(0)
    return (
        f"VAE heatmap round trip (cm): condition frame {per_frame[0]:.2f}, future frames mean "
        f"{per_frame[1:].mean():.2f}, worst frame {per_frame[1:].max():.2f} (frame "
        f"{int(per_frame[1:].argmax()) + 1}); per frame " + " ".join(f"{e:.1f}" for e in per_frame)
    )


@torch.no_grad()
def scene_roundtrip_summary(
    vae: VideoVAE, episodes: list, workspace: Workspace, background: torch.Tensor, threshold: float = 0.15
) -> str:
    """One log line: how well the VAE keeps what tells scenes apart. The episodes' first frames (each view)
    -> VAE -> decoded; the mean colour error (sum over RGB, 0..3) on their foreground pixels (off the scene
    background: the objects) and on the rest; the share of foreground pixels decoded off the background as
    well, and of the other pixels decoded off it (a VAE that paints a smear where objects usually are keeps
    the foreground without knowing where it is: the second share tells)."""
    from mvvdp_core.data.dataset import render_step_views

    device = next(vae.parameters()).device
    frames = torch.stack([render_step_views(e.step(0), workspace) for e in episodes]).float()
    latents = vae.encode_condition(frames.to(device=device, dtype=vae.dtype))
    decoded = vae.decode(latents)[:, :, 0].float().cpu()
    background = background.float()[None]
    foreground = (frames - background).abs().sum(2) > threshold  # (N, V, H, W)
    error = (decoded - frames).abs().sum(2)
    kept = (decoded - background).abs().sum(2) > threshold
    if not foreground.any():
        return "VAE scene round trip: the episodes' first frames show no foreground (all scenes alike)"
    return (f"VAE scene round trip (first frames, {int(foreground.sum())} foreground pixels): colour error "
            f"{float(error[foreground].mean()):.3f} on the foreground, "
            f"{float(error[~foreground].mean()):.3f} elsewhere; decoded off the background: "
            f"{float(kept[foreground].float().mean()):.2f} of the foreground, "
            f"{float(kept[~foreground].float().mean()):.3f} of the rest")
