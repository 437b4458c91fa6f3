"""Operator preview images: observed views over predicted RGB over the heatmap overlay."""

import numpy as np
import pytest
import torch
from PIL import Image

from mvvdp_core.preview import overlay_heatmaps, preview_frames, save_preview


def test_rows_hold_observed_predicted_and_overlay(tmp_path) -> None:
    views, steps, size = 3, 4, 8
    rgb = torch.rand(views, steps, 3, size, size)
    heat = torch.zeros(views, steps, size, size)
    heat[..., 2, 5] = 1.0
    overlay = overlay_heatmaps(rgb, heat)
    observed = torch.rand(views, 3, size, size)
    frames = preview_frames(rgb, overlay, observed)
    assert len(frames) == steps and frames[0].shape == (3 * size, views * size, 3)
    as_uint8 = lambda t: (t.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)  # noqa: E731
    for v in range(views):
        cols = slice(v * size, (v + 1) * size)
        np.testing.assert_array_equal(frames[2][:size, cols], as_uint8(observed[v].permute(1, 2, 0)))
        np.testing.assert_array_equal(frames[2][size : 2 * size, cols], as_uint8(rgb[v, 2].permute(1, 2, 0)))
    # Away from the peak the overlay is the RGB frame; at the peak it is coloured.
    np.testing.assert_array_equal(frames[1][2 * size, :size], as_uint8(rgb[0, 1, :, 0].permute(1, 0)))
    assert not np.array_equal(frames[1][2 * size + 2, 5], as_uint8(rgb[0, 1, :, 2, 5]))
    paths = save_preview(frames, tmp_path, "chunk_7")
    assert [p.name for p in paths] == ["chunk_7.gif", "chunk_7_last.png"]
    assert all(p.stat().st_size > 0 for p in paths)
    with Image.open(paths[1]) as last:  # small frames are enlarged by a whole factor for people to see
        assert last.size == (views * size * 25, 3 * size * 25)
        assert np.array_equal(np.asarray(last)[::25, ::25], frames[-1])


def test_mismatched_observed_views_are_refused() -> None:
    rgb = torch.rand(3, 2, 3, 8, 8)
    with pytest.raises(ValueError, match="observed views"):
        preview_frames(rgb, rgb, torch.rand(3, 3, 4, 4))
