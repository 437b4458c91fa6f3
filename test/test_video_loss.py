"""Video loss: the blob weighting of the heatmap term, against analytic values."""

from __future__ import annotations

import pytest
import torch

from mvvdp_core.geometry.heatmaps import colorize_heatmaps
from mvvdp_core.model.checkpoint import build_model_parts
from mvvdp_core.model.config import MVVDPConfig
from mvvdp_core.train.video import blob_emphasis, empty_heatmap_latents, video_loss

CHANNELS, FRAMES, SIZE = 2, 3, 4
BLOB = (2, 3)  # latent pixel of the blob in every future frame of every heatmap view


class ExactVelocity(torch.nn.Module):
    """Returns the exact flow-matching target (x_t - x0) / s of known clean latents, plus an error."""

    def __init__(self, clean: torch.Tensor, error: torch.Tensor) -> None:
        super().__init__()
        self.clean, self.error = clean, error

    def forward(self, noisy: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        sigma = (timestep / 1000.0).view(-1, 1, 1, 1, 1, 1).double()
        return ((noisy.double() - self.clean.double()) / sigma).float() + self.error


def blob_latents() -> torch.Tensor:
    """(1, 6, C, F, h, w): zero (the empty heatmap's latents here) but for one blob pixel in each future
    frame of the three heatmap views."""
    latents = torch.zeros(1, 6, CHANNELS, FRAMES, SIZE, SIZE)
    latents[:, 3:, :, 1:, BLOB[0], BLOB[1]] = 1.0
    return latents


def loss_with_error(where: tuple[int, int], weight: float, rgb_weight: float = 0.5) -> float:
    clean = blob_latents()
    error = torch.zeros_like(clean)
    error[0, 3, 0, 1, where[0], where[1]] = 0.5  # one element of heatmap view 0, first future frame
    model = ExactVelocity(clean, error)
    empty = torch.zeros(1, 1, CHANNELS, FRAMES, SIZE, SIZE)
    loss = video_loss(model, clean, torch.zeros(1, 1, 4), 1000, 5.0, rgb_weight,
                      torch.Generator().manual_seed(0), weight, empty)
    return float(loss.total)


def test_blob_emphasis_is_one_on_the_blob_and_zero_on_the_background() -> None:
    emphasis = blob_emphasis(blob_latents()[:, 3:], torch.zeros(1, 1, CHANNELS, FRAMES, SIZE, SIZE))
    expected = torch.zeros(1, 3, 1, FRAMES, SIZE, SIZE)
    expected[:, :, :, 1:, BLOB[0], BLOB[1]] = 1.0  # the condition frame holds no blob: all zero
    torch.testing.assert_close(emphasis, expected)


@pytest.mark.parametrize("weight", [0.0, 9.0])
def test_blob_weight_scales_an_error_on_the_blob_against_the_background(weight: float) -> None:
    future = (FRAMES - 1) * SIZE * SIZE  # future latent pixels per channel and view
    total_weight = CHANNELS * (future + weight * (FRAMES - 1))  # per heatmap view
    squared = 0.5**2
    on_blob = 0.5 * (1 + weight) * squared / total_weight / 3  # (1 - rgb weight) * mean over 3 views
    off_blob = 0.5 * squared / total_weight / 3
    assert loss_with_error(BLOB, weight) == pytest.approx(on_blob, rel=1e-4)
    assert loss_with_error((0, 0), weight) == pytest.approx(off_blob, rel=1e-4)


def test_blob_weight_needs_the_empty_heatmap_and_is_not_negative() -> None:
    clean = blob_latents()
    model = ExactVelocity(clean, torch.zeros_like(clean))
    with pytest.raises(ValueError, match="empty heatmap"):
        video_loss(model, clean, torch.zeros(1, 1, 4), 1000, 5.0, 0.5, None, 3.0)
    with pytest.raises(ValueError, match=">= 0"):
        video_loss(model, clean, torch.zeros(1, 1, 4), 1000, 5.0, 0.5, None, -1.0)


def test_empty_heatmap_latents_match_the_encoding_of_a_zero_heatmap_and_a_blob_stands_out() -> None:
    config = MVVDPConfig.tiny(future_frames=4)
    vae = build_model_parts(config, seed=0).vae
    background = empty_heatmap_latents(vae, 5, 64)
    zero = colorize_heatmaps(torch.zeros(1, 1, 5, 64, 64))
    torch.testing.assert_close(background, vae.encode(zero))
    maps = torch.zeros(1, 1, 5, 64, 64)
    maps[..., 40:44, 8:12] = 1.0
    emphasis = blob_emphasis(vae.encode(colorize_heatmaps(maps)), background)
    row, col = divmod(int(emphasis[0, 0, 0, 0].flatten().argmax()), emphasis.shape[-1])
    stride = 64 // emphasis.shape[-1]  # latent pixel size in image pixels
    assert abs(row * stride - 42) <= stride and abs(col * stride - 10) <= stride
