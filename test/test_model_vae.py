"""VAE wrapper: per-view videos, causal condition encoding, view subsets, normalisation and bad inputs."""

import pytest
import torch

from mvvdp_core.model.config import MVVDPConfig
from mvvdp_core.model.vae import VideoVAE

CONFIG = MVVDPConfig.tiny()


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    return VideoVAE(CONFIG.vae).eval()


@torch.no_grad()
def test_chunk_length_video_gives_latent_frames(vae):
    size, s = CONFIG.image_size, CONFIG.latent_size
    frames = torch.rand(
        1, 1, 1 + CONFIG.future_frames, 3, size, size, generator=torch.Generator().manual_seed(0)
    )
    assert vae.encode(frames).shape == (1, 1, CONFIG.latent_channels, CONFIG.latent_frames, s, s)
    assert CONFIG.latent_frames == 1 + CONFIG.future_frames // 4


@torch.no_grad()
def test_views_condition_and_decoding(vae):
    size, s = CONFIG.image_size, CONFIG.latent_size
    frames = torch.rand(1, 2, 5, 3, size, size, generator=torch.Generator().manual_seed(1))
    latents = vae.encode(frames)
    assert latents.shape == (1, 2, CONFIG.latent_channels, 2, s, s)
    # Each view is its own video: encoding view 1 alone gives the same latents.
    torch.testing.assert_close(vae.encode(frames[:, 1:]), latents[:, 1:], atol=1e-5, rtol=1e-5)
    # Causal in time: the condition frame's latent is the first latent frame.
    cond = vae.encode_condition(frames[:, :, 0])
    torch.testing.assert_close(cond[:, :, :, 0], latents[:, :, :, 0], atol=1e-5, rtol=1e-5)
    decoded = vae.decode(latents)
    assert decoded.shape == frames.shape and decoded.min() >= 0 and decoded.max() <= 1
    torch.testing.assert_close(vae.decode(latents, views=[1]), decoded[:, 1:], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_normalisation_uses_latent_statistics():
    config = MVVDPConfig.tiny()
    vae_kwargs = dict(config.vae, latents_mean=[0.5] * 8, latents_std=[2.0] * 8)
    torch.manual_seed(0)
    plain = VideoVAE(config.vae).eval()
    torch.manual_seed(0)
    scaled = VideoVAE(vae_kwargs).eval()
    frames = torch.rand(1, 1, 1, 3, 64, 64)
    torch.testing.assert_close(
        scaled.encode(frames), (plain.encode(frames) - 0.5) / 2.0, atol=1e-6, rtol=1e-5
    )


def test_bad_inputs(vae):
    with pytest.raises(ValueError, match="frame count"):
        vae.encode(torch.rand(1, 1, 3, 3, 64, 64))
    with pytest.raises(ValueError, match="divisible"):
        vae.encode(torch.rand(1, 1, 1, 3, 40, 40))
    with pytest.raises(ValueError, match="NaN"):
        vae.encode(torch.full((1, 1, 1, 3, 64, 64), float("nan")))
    with pytest.raises(ValueError, match="views"):
        vae.decode(torch.zeros(1, 2, 8, 1, 4, 4), views=[2])
