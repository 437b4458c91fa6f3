"""VAE fitting loss: which pixels weigh more (heatmap blobs, RGB foreground) and the frame balance."""

import torch

from mvvdp_core.train.vae import JET_BACKGROUND, blob_weights, foreground_weights, reconstruction_loss


def _table_with_cube(frames: int = 5) -> torch.Tensor:
    """(1, 1, F, 3, 16, 16): a brown table with a red 2x2 cube that moves one pixel right per frame."""
    video = torch.empty(1, 1, frames, 3, 16, 16)
    video[..., 0, :, :], video[..., 1, :, :], video[..., 2, :, :] = 0.6, 0.45, 0.3
    for t in range(frames):
        video[0, 0, t, :, 4:6, 3 + t : 5 + t] = torch.tensor([0.9, 0.05, 0.05]).view(3, 1, 1)
    return video


def test_foreground_weights_mark_the_object_in_every_frame():
    video = _table_with_cube()
    weights = foreground_weights(video, foreground_weight=20.0)
    assert weights.shape == (1, 1, 5, 1, 16, 16)
    for t in range(5):
        cube = torch.zeros(16, 16, dtype=torch.bool)
        cube[4:6, 3 + t : 5 + t] = True
        assert torch.all(weights[0, 0, t, 0][cube] == 21.0)
        assert torch.all(weights[0, 0, t, 0][~cube] == 1.0)


def test_blob_weights_without_heatmap_views_are_ones():
    video = _table_with_cube()
    assert torch.equal(blob_weights(video, 0, 50.0), torch.ones(1, 1, 5, 1, 16, 16))
    heat = torch.tensor(JET_BACKGROUND).view(1, 1, 1, 3, 1, 1).expand(1, 1, 5, 3, 16, 16).clone()
    heat[0, 0, :, :, 8, 8] = 1.0
    weights = blob_weights(torch.cat([video, heat], dim=1), 1, 50.0)
    assert torch.all(weights[:, 0] == 1.0) and weights[0, 1, 0, 0, 8, 8] == 51.0 and weights[0, 1].sum() == \
        16 * 16 * 5 + 50 * 5


def test_losing_the_cube_costs_more_with_foreground_weights():
    video = _table_with_cube()
    empty_table = video.clone()
    empty_table[...] = video[:, :, :, :, :1, :1]  # the table colour everywhere: the cube is gone
    plain = reconstruction_loss(empty_table, video, 0, 50.0, foreground_weight=0.0)
    weighted = reconstruction_loss(empty_table, video, 0, 50.0, foreground_weight=20.0)
    assert torch.isclose(weighted, 21.0 * plain, rtol=1e-5)
    # The condition frame weighs as much as all future frames together.
    only_condition = video.clone()
    only_condition[:, :, :1] = empty_table[:, :, :1]
    only_future = video.clone()
    only_future[:, :, 1:] = empty_table[:, :, 1:]
    first = reconstruction_loss(only_condition, video, 0, 50.0)
    rest = reconstruction_loss(only_future, video, 0, 50.0)
    assert torch.isclose(first, rest, rtol=1e-5)
