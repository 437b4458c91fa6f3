"""Heatmaps, jet encoding and back-projection: analytic peaks, round trips, recovery within 0.5 mm."""

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mvvdp_core.geometry import (
    Workspace,
    backproject_heatmaps,
    colorize_heatmaps,
    decolorize_heatmaps,
    ee_heatmaps,
)
from mvvdp_core.geometry.heatmaps import JET_POSITIONS

WS = Workspace()
TOLERANCE_M = 0.0005


def test_heatmap_is_a_truncated_gaussian_centred_on_the_projection():
    # (0.3, 0.2, 0.6) projects to top (col 76.8, row 179.2), front/side (col 179.2, row 76.8).
    maps = ee_heatmaps(torch.tensor([0.3, 0.2, 0.6]), WS, sigma=1.5, truncate=3.0)
    assert maps.shape == (3, 256, 256)
    assert torch.allclose(maps.sum(dim=(-2, -1)), torch.ones(3))
    rows = torch.arange(256) + 0.5
    for v, (col, row) in enumerate([(76.8, 179.2), (179.2, 76.8), (179.2, 76.8)]):
        d2 = (rows[:, None] - row) ** 2 + (rows[None, :] - col) ** 2
        assert torch.equal(maps[v] > 0, d2 <= 4.5**2)
        peak = divmod(int(maps[v].argmax()), 256)
        assert peak == (int(row), int(col))
        inside = d2 <= 4.5**2
        ratio = maps[v][inside] / torch.exp(-d2[inside] / 4.5)
        assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-4)


def test_heatmaps_batch_shape_and_errors():
    positions = torch.full((4, 2, 3), 0.3) + torch.tensor([0.2, -0.3, 0.1])
    assert ee_heatmaps(positions, WS).shape == (4, 2, 3, 256, 256)
    with pytest.raises(ValueError, match="outside the workspace"):
        ee_heatmaps(torch.tensor([[0.5, 0.0, 0.4], [2.0, 0.0, 0.4]]), WS)
    with pytest.raises(ValueError, match="NaN"):
        ee_heatmaps(torch.tensor([math.nan, 0.0, 0.4]), WS)
    with pytest.raises(ValueError, match=r"\(\.\.\., 3\)"):
        ee_heatmaps(torch.zeros(2), WS)
    with pytest.raises(ValueError, match="sigma"):
        ee_heatmaps(torch.tensor([0.5, 0.0, 0.4]), WS, sigma=0.0)
    with pytest.raises(ValueError, match="truncate"):
        ee_heatmaps(torch.tensor([0.5, 0.0, 0.4]), WS, truncate=-1.0)


def test_colorize_uses_jet_ends_and_round_trips():
    torch.manual_seed(0)
    maps = torch.rand(2, 3, 32, 32) * 5
    rgb = colorize_heatmaps(maps)
    assert rgb.shape == (2, 3, 3, 32, 32) and rgb.min() >= 0 and rgb.max() <= 1
    peak = maps.flatten(-2).argmax(-1)
    peak_rgb = rgb.flatten(-2).gather(-1, peak[:, :, None, None].expand(2, 3, 3, 1)).squeeze(-1)
    assert torch.allclose(peak_rgb, torch.tensor([0.5, 0.0, 0.0]).expand(2, 3, 3))  # dark red at the maximum
    assert torch.allclose(colorize_heatmaps(torch.zeros(1, 4, 4))[0, :, 0, 0], torch.tensor([0.0, 0.0, 0.5]))
    values = maps / maps.amax(dim=(-2, -1), keepdim=True)
    decoded = decolorize_heatmaps(rgb)
    assert decoded.shape == maps.shape
    # Jet is constant on [0.11, 0.125]; there the value is recovered only to within that stretch.
    flat = (values > JET_POSITIONS[1]) & (values <= JET_POSITIONS[2])
    assert torch.allclose(decoded[~flat], values[~flat], atol=1e-5)
    assert torch.all((decoded[flat] - values[flat]).abs() <= 0.016)


def test_decolorize_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\(\.\.\., 3, H, W\)"):
        decolorize_heatmaps(torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="NaN"):
        decolorize_heatmaps(torch.full((3, 4, 4), math.nan))
    with pytest.raises(ValueError, match="non-negative"):
        colorize_heatmaps(-torch.ones(4, 4))


def assert_recovered(positions: torch.Tensor, through_colours: bool) -> None:
    maps = ee_heatmaps(positions, WS)
    candidates = [maps, decolorize_heatmaps(colorize_heatmaps(maps))] if through_colours else [maps]
    for candidate in candidates:
        result = backproject_heatmaps(candidate, WS)
        error = (result.positions - positions).abs().max().item()
        assert error < TOLERANCE_M, f"back-projection off by {error * 1000:.3f} mm"
        assert torch.all(result.view_spread < TOLERANCE_M)
        assert torch.all(result.confidence > 0.99)


def test_recovers_corners_edges_face_centres_and_random_points():
    lo, hi, c = WS.lower, WS.upper, WS.center
    corners = list(itertools.product(*zip(lo, hi, strict=True)))
    faces = [tuple(b if i == a else c[i] for i in range(3)) for a in range(3) for b in (lo[a], hi[a])]
    edges = [(lo[0], lo[1] + 0.0013, c[2]), (hi[0] - 0.0007, c[1], hi[2]), (c[0], hi[1], lo[2] + 0.002)]
    generator = torch.Generator().manual_seed(3)
    random_points = torch.tensor(lo) + torch.rand(16, 3, generator=generator, dtype=torch.float64) * WS.edge
    positions = torch.cat([torch.tensor(corners + faces + edges), random_points]).to(torch.float32)
    assert_recovered(positions, through_colours=True)


@settings(max_examples=50, deadline=None)
@given(st.tuples(*(st.floats(0.0, 1.0) for _ in range(3))))
def test_recovers_any_point_in_the_cube(unit):
    position = torch.tensor(WS.lower) + torch.tensor(unit) * WS.edge
    assert_recovered(position.to(torch.float32).unsqueeze(0), through_colours=False)


def test_views_that_disagree_report_their_spread_and_scale_is_irrelevant():
    a = ee_heatmaps(torch.tensor([0.5, 0.0, 0.4]), WS)
    result = backproject_heatmaps(torch.stack([a * 7.0, a * 0.01]), WS)
    assert torch.allclose(result.positions, torch.tensor([0.5, 0.0, 0.4]).expand(2, 3), atol=1e-4)
    assert torch.allclose(result.confidence, torch.ones(2), atol=1e-3)
    shifted = ee_heatmaps(torch.tensor([0.6, 0.0, 0.4]), WS)
    disagree = torch.stack([a[0], a[1], shifted[2]]).unsqueeze(0)  # side view puts x at 0.6, top at 0.5
    result = backproject_heatmaps(disagree, WS)
    # x = 0.5 (top + front) and x = 0.6 (side + front) are equally supported: either way the third view has
    # nothing there, so the position is one of the two hypotheses, not a blend, and the confidence is ~0.
    x, y, z = result.positions[0].tolist()
    assert min(abs(x - 0.5), abs(x - 0.6)) < TOLERANCE_M
    assert abs(y) < TOLERANCE_M and abs(z - 0.4) < TOLERANCE_M
    # The peaks sit on pixel corners: the fitted Gaussian peak is exp((0.5^2 + 0.5^2) / (2 * 1.5^2)) times the
    # brightest pixel.
    corner_gain = math.exp(0.5 / 4.5)
    assert sorted(result.support[0].tolist()) == pytest.approx([0.0, corner_gain, corner_gain], abs=1e-3)
    assert result.confidence.item() < 1e-3
    assert result.view_spread.item() < TOLERANCE_M  # the view without support does not count


def test_backprojection_bad_inputs():
    maps = ee_heatmaps(torch.tensor([[0.5, 0.0, 0.4]]), WS)
    with pytest.raises(ValueError, match="shape"):
        backproject_heatmaps(maps[0], WS)
    with pytest.raises(ValueError, match="non-negative"):
        backproject_heatmaps(-maps, WS)
    with pytest.raises(ValueError, match="NaN"):
        backproject_heatmaps(maps * math.nan, WS)
    with pytest.raises(ValueError, match="no frames"):
        backproject_heatmaps(maps[:0], WS)
