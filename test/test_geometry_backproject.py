"""Back-projection against analytic answers: decoys, blank and featureless maps, contradictions, sub-pixel."""

import functools
import math

import pytest
import torch

from mvvdp_core.geometry import Workspace, backproject_heatmaps, ee_heatmaps

WS = Workspace()
CASES = 200
WRONG_M = 0.02  # a pick farther than this from the true point is the decoy (or a ghost), not noise
MARGIN_M = 0.03  # blobs stay 3 sigma inside the images: a truncated blob is rescaled by ee_heatmaps' unit sum
SEPARATION_M = 0.05
BATCH = 50


def random_points(generator: torch.Generator, count: int, margin: float = 0.0) -> torch.Tensor:
    lower = torch.tensor(WS.lower, dtype=torch.float64) + margin
    return lower + torch.rand(count, 3, generator=generator, dtype=torch.float64) * (WS.edge - 2 * margin)


@functools.cache
def decoy_cases() -> tuple[torch.Tensor, torch.Tensor]:
    """CASES pairs (true point, decoy point) at least SEPARATION_M apart, fixed seed."""
    generator = torch.Generator().manual_seed(2024)
    true, decoy = random_points(generator, 4 * CASES, MARGIN_M), random_points(generator, 4 * CASES, MARGIN_M)
    keep = ((true - decoy).norm(dim=-1) >= SEPARATION_M).nonzero().squeeze(1)[:CASES]
    return true[keep], decoy[keep]


@pytest.mark.parametrize("amplitude", [0.8, 0.9, 0.95])
def test_a_weaker_decoy_blob_in_every_view_never_wins(amplitude):
    true, decoy = decoy_cases()
    assert len(true) == CASES
    errors = []
    for start in range(0, CASES, BATCH):
        t, d = true[start : start + BATCH], decoy[start : start + BATCH]
        maps = ee_heatmaps(t.float(), WS) + amplitude * ee_heatmaps(d.float(), WS)
        result = backproject_heatmaps(maps, WS)
        errors.append((result.positions.double() - t).norm(dim=-1))
        assert torch.all(result.confidence > 0.9)  # every view confirms the true point
    error = torch.cat(errors)
    assert int((error > WRONG_M).sum()) == 0, f"{int((error > WRONG_M).sum())}/{CASES} picked the decoy"
    # The decoy's tail may touch the true blob: the estimate stays well inside a pixel.
    assert float(error.max()) < 0.001


def test_the_stronger_blob_wins_whichever_comes_first():
    true, decoy = decoy_cases()
    t, d = true[:BATCH], decoy[:BATCH]
    maps = 0.95 * ee_heatmaps(t.float(), WS) + ee_heatmaps(d.float(), WS)
    result = backproject_heatmaps(maps, WS)
    assert float((result.positions.double() - d).norm(dim=-1).max()) < 0.001


def test_clean_round_trip_is_sub_pixel():
    generator = torch.Generator().manual_seed(5)
    points = random_points(generator, 100)
    result = backproject_heatmaps(ee_heatmaps(points.float(), WS), WS)
    error = (result.positions.double() - points).norm(dim=-1)
    assert float(error.max()) < 0.0005  # pixels are 3.9 mm
    assert torch.all(result.confidence > 0.99)


@pytest.mark.parametrize("sigma", [1.0, 1.5, 3.0])
def test_sub_pixel_offsets_across_one_pixel(sigma):
    # Walk a point across one pixel along every axis in tenths: the estimate follows to 0.05 px.
    steps = torch.arange(11, dtype=torch.float64) / 10
    base = torch.tensor(WS.lower, dtype=torch.float64) + 100 * WS.pixel_size
    points = base + steps[:, None] * torch.tensor([1.0, 0.7, -0.4], dtype=torch.float64) * WS.pixel_size
    result = backproject_heatmaps(ee_heatmaps(points.float(), WS, sigma=sigma), WS)
    error_px = (result.positions.double() - points).abs().max() / WS.pixel_size
    assert float(error_px) < 0.05


def test_blank_heatmaps_are_flagged():
    maps = torch.zeros(3, 3, WS.resolution, WS.resolution)
    maps[1, 0] = ee_heatmaps(torch.tensor([0.5, 0.1, 0.3]), WS)[0]  # one view alone does not fix a point
    result = backproject_heatmaps(maps, WS)
    assert result.confidence.tolist() == [0.0, 0.0, 0.0]
    assert torch.allclose(result.positions[0], torch.tensor(WS.center, dtype=torch.float32))


def test_constant_heatmaps_are_flagged():
    maps = torch.full((2, 3, WS.resolution, WS.resolution), 0.37)
    result = backproject_heatmaps(maps, WS)
    assert result.confidence.tolist() == [0.0, 0.0]
    assert torch.equal(result.support, torch.zeros(2, 3))


def test_a_blob_on_a_uniform_background_is_found():
    point = torch.tensor([0.61, -0.22, 0.47])
    maps = ee_heatmaps(point, WS).unsqueeze(0)
    maps = maps / maps.amax(dim=(-2, -1), keepdim=True) + 0.5  # peak 1.5, background 0.5 (the median)
    result = backproject_heatmaps(maps, WS)
    assert float((result.positions[0] - point).norm()) < 0.0005
    assert result.confidence.item() > 0.95


def test_contradicting_views_get_no_confidence():
    # Each view puts its peak at a different point: no point is seen by more than one view.
    points = torch.tensor([[0.3, -0.2, 0.2], [0.6, 0.25, 0.7], [0.75, 0.1, 0.45]])
    maps = torch.stack([ee_heatmaps(points[v], WS)[v] for v in range(3)]).unsqueeze(0)
    result = backproject_heatmaps(maps, WS)
    assert result.confidence.item() < 1e-3
    assert int((result.support[0] > 0.5).sum()) == 1


def test_a_faint_view_lowers_confidence_to_its_support():
    # The front view has a weak blob at the true point over a stronger one elsewhere: the point is still
    # found (two views agree) and the confidence is the geometric mean of the supports (1, 0.4, 1).
    point = torch.tensor([0.45, 0.05, 0.35])
    maps = ee_heatmaps(point, WS).unsqueeze(0).clone()
    maps = maps / maps.amax(dim=(-2, -1), keepdim=True)
    other = ee_heatmaps(torch.tensor([0.45, -0.3, 0.6]), WS)[1]
    maps[0, 1] = 0.4 * maps[0, 1] + other / other.max()
    result = backproject_heatmaps(maps, WS)
    assert float((result.positions[0] - point).norm()) < 0.001
    assert result.support[0, 1].item() == pytest.approx(0.4, abs=0.02)
    assert result.confidence.item() == pytest.approx(0.4 ** (1 / 3), abs=0.02)


@pytest.mark.parametrize("resolution", [64, 128])
def test_other_resolutions(resolution):
    workspace = Workspace(resolution=resolution)
    generator = torch.Generator().manual_seed(resolution)
    lower = torch.tensor(workspace.lower, dtype=torch.float64)
    points = lower + torch.rand(24, 3, generator=generator, dtype=torch.float64) * workspace.edge
    result = backproject_heatmaps(ee_heatmaps(points.float(), workspace), workspace)
    error = (result.positions.double() - points).norm(dim=-1)
    assert float(error.max()) < 0.1 * workspace.pixel_size
    assert math.isclose(float(result.confidence.min()), 1.0, abs_tol=0.01)


def test_a_flat_top_counts_as_one_local_maximum():
    from mvvdp_core.geometry.backproject import _local_maxima

    images = torch.zeros(1, 6, 6)
    images[0, 1:3, 1:4] = 1.0  # saturated 2 x 3 plateau
    images[0, 5, 5] = 0.5
    expected = torch.zeros(1, 6, 6, dtype=torch.bool)
    expected[0, 1, 1] = expected[0, 5, 5] = True
    assert torch.equal(_local_maxima(images), expected)


def test_saturated_blobs_do_not_hide_the_true_point():
    # Every view clips its heatmap at 30 % of the peak (a saturated video frame): each blob is a plateau of
    # about 15 pixels. Four strong decoys lie in the top view only; the true point is the only one all
    # three views share.
    point = torch.tensor([0.42, 0.13, 0.52])
    maps = ee_heatmaps(point, WS).unsqueeze(0).clone()
    for decoy in ([0.2, -0.3, 0.4], [0.7, 0.3, 0.4], [0.3, 0.35, 0.4], [0.8, -0.2, 0.4]):
        maps[0, 0] += ee_heatmaps(torch.tensor(decoy), WS)[0]
    maps = maps.clamp(max=0.3 * maps.amax(dim=(-2, -1), keepdim=True))
    result = backproject_heatmaps(maps, WS)
    # A plateau has no sub-pixel peak: the pick is one of its pixels (within 2.5 px of the true point).
    assert float((result.positions[0] - point).norm()) < 2.5 * WS.pixel_size
    assert result.confidence.item() > 0.9


def test_points_on_faces_and_edges_of_the_cube():
    # Peaks on the border pixels' outer edges are fitted around the next pixel inward, 1.5 px away.
    generator = torch.Generator().manual_seed(1)
    points = random_points(generator, 90)
    lower, upper = torch.tensor(WS.lower), torch.tensor(WS.upper)
    for k in range(len(points)):
        for axis in {k % 3, (k // 3) % 3}:
            points[k, axis] = lower[axis] if (k + axis) % 2 else upper[axis]
    result = backproject_heatmaps(ee_heatmaps(points.float(), WS), WS)
    assert float((result.positions.double() - points).norm(dim=-1).max()) < 0.0005
    assert float(result.confidence.min()) > 0.99
