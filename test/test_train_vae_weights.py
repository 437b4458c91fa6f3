"""VAE fitting loss: which pixels weigh more (heatmap blobs, RGB foreground) and the frame balance."""

import pytest
import torch

from mvvdp_core.train.vae import (
    JET_BACKGROUND,
    blob_weights,
    foreground_weights,
    reconstruction_loss,
    scene_background,
)


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


def test_scene_background_leaves_what_all_scenes_share_and_marks_the_object():
    # Three scenes: the same table and "arm" (a white bar), the cube somewhere else in each.
    scenes = _table_with_cube(1).expand(3, 1, 1, 3, 16, 16).clone()[:, :, 0]  # (N, V, 3, H, W)
    scenes[:, 0, :, :] = torch.tensor([0.6, 0.45, 0.3]).view(3, 1, 1)
    scenes[:, 0, :, 10:12, 2:14] = 1.0  # the arm at its start pose, in every scene
    cubes = [(2, 2), (6, 9), (12, 4)]
    for n, (r, c) in enumerate(cubes):
        scenes[n, 0, :, r : r + 2, c : c + 2] = torch.tensor([0.9, 0.05, 0.05]).view(3, 1, 1)
    background = scene_background(scenes)
    assert background.shape == (1, 3, 16, 16)
    weights = foreground_weights(scenes[:, :, None], 20.0, background)[:, 0, 0, 0]  # (N, H, W)
    for n, (r, c) in enumerate(cubes):
        cube = torch.zeros(16, 16, dtype=torch.bool)
        cube[r : r + 2, c : c + 2] = True
        assert torch.all(weights[n][cube] == 21.0) and torch.all(weights[n][~cube] == 1.0)
    # The per-frame median colour (no background given) marks the arm as well.
    assert foreground_weights(scenes[:, :, None], 20.0)[0, 0, 0, 0, 10, 5] == 21.0
    with pytest.raises(ValueError, match="background"):
        foreground_weights(scenes[:, :, None], 20.0, background[0])
