"""Torch reference projection: analytic pixels, z-test, splatting, channels, input validation."""

import itertools
import math
import threading

import numpy as np
import pytest
import torch

from mvvdp_core import threads as threads_module
from mvvdp_core.geometry import Workspace, pixels, project_views, project_views_torch, projection

WS = Workspace()  # centre (0.5, 0, 0.4), edge 1 m, 256 px


def finite_pixels(depth: torch.Tensor) -> list[list[int]]:
    return torch.isfinite(depth).nonzero().tolist()


def test_point_lands_on_expected_pixel_in_each_view():
    # (0.3, 0.2, 0.6) is (-0.2, +0.2, +0.2) from the centre.
    # top (right -y, down -x, looks -z): col 0.3*256=76.8, row 0.7*256=179.2, depth 0.9-0.6=0.3
    # front (right +y, down -z, looks -x): col 179.2, row 76.8, depth 1.0-0.3=0.7
    # side (right -x, down -z, looks -y): col 179.2, row 76.8, depth 0.5-0.2=0.3
    views = project_views_torch(torch.tensor([[0.3, 0.2, 0.6]]), torch.tensor([[0.1, 0.2, 0.3]]), WS, 0.0)
    assert finite_pixels(views.depth[0]) == [[179, 76]]
    assert finite_pixels(views.depth[1]) == [[76, 179]]
    assert finite_pixels(views.depth[2]) == [[76, 179]]
    for v, (row, col), depth in zip(
        range(3), [(179, 76), (76, 179), (76, 179)], [0.3, 0.7, 0.3], strict=True
    ):
        assert views.depth[v, row, col].item() == pytest.approx(depth, abs=1e-6)
        assert torch.equal(views.rgb[v, :, row, col], torch.tensor([0.1, 0.2, 0.3]))
        assert views.rgb[v].abs().sum().item() == pytest.approx(0.6, abs=1e-6)  # background stays 0


def test_points_on_cube_faces_and_corners_are_kept():
    corners = torch.tensor(
        list(itertools.product(*zip(WS.lower, WS.upper, strict=True))), dtype=torch.float32
    )
    views = project_views_torch(corners, torch.ones(8, 1), WS, 0.0)
    for v in range(3):
        # Each view sees the 4 corners of a square; the nearer of each pair is at depth 0.
        assert sorted(map(tuple, finite_pixels(views.depth[v]))) == [(0, 0), (0, 255), (255, 0), (255, 255)]
        assert torch.all(views.depth[v][torch.isfinite(views.depth[v])].abs() < 1e-6)


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_nearer_point_wins_whatever_the_order(order):
    # Three points on one vertical line: the top view must show the highest one.
    points = torch.tensor([[0.5, 0.0, 0.2], [0.5, 0.0, 0.7], [0.5, 0.0, 0.45]])[list(order)]
    colors = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])[list(order)]
    views = project_views_torch(points, colors, WS, 0.0)
    assert views.depth[0, 128, 128].item() == pytest.approx(0.2)
    assert torch.equal(views.rgb[0, :, 128, 128], torch.tensor([0, 1.0, 0]))


def test_equal_depth_tie_goes_to_smaller_point_index():
    points = torch.tensor([[0.5, 0.0, 0.4], [0.5, 0.0, 0.4]])
    colors = torch.tensor([[0.25], [0.75]])
    assert project_views_torch(points, colors, WS, 0.0).rgb[0, 0, 128, 128].item() == 0.25
    assert project_views_torch(points, colors.flip(0), WS, 0.0).rgb[0, 0, 128, 128].item() == 0.75


def plane_points(z: float, lo: float, hi: float, spacing: float) -> torch.Tensor:
    xs = torch.arange(lo, hi, spacing)
    grid = torch.stack(torch.meshgrid(xs + 0.5, xs, indexing="ij"), dim=-1).reshape(-1, 2)
    return torch.cat([grid, torch.full((grid.shape[0], 1), z)], dim=1)


def test_splatting_fills_holes_of_a_sparse_plane():
    # Horizontal plane sampled every 2 px; splat radius 2.048 px covers every gap.
    pitch = 2 * WS.pixel_size
    points = plane_points(0.4, -0.2, 0.2, pitch)
    colors = torch.rand(points.shape[0], 3)
    sparse = project_views_torch(points, colors, WS, 0.0)
    splatted = project_views_torch(points, colors, WS, 0.008)
    interior = (slice(80, 170), slice(80, 170))
    assert torch.isfinite(sparse.depth[0][interior]).float().mean() < 0.3
    assert torch.isfinite(splatted.depth[0][interior]).all()
    assert torch.allclose(splatted.depth[0][interior], torch.tensor(0.5))
    # Every splatted colour comes from one of the points.
    filled = splatted.rgb[0][:, interior[0], interior[1]].reshape(3, -1).T
    assert torch.isin(filled[:, 0], colors[:, 0]).all()


def test_farther_surface_never_overwrites_a_nearer_one():
    # Dense near patch (z = 0.6) over a sparse far plane (z = 0.2) spanning more of the image.
    pitch = WS.pixel_size
    near = plane_points(0.6, -0.05, 0.05, pitch / 2)
    far = plane_points(0.2, -0.3, 0.3, 3 * pitch)
    points = torch.cat([far, near])
    colors = torch.cat([torch.zeros(far.shape[0], 1), torch.ones(near.shape[0], 1)])
    zordered = project_views_torch(points, colors, WS, 0.0)
    splatted = project_views_torch(points, colors, WS, 0.012)
    near_pixels = zordered.rgb[0, 0] == 1.0
    assert near_pixels.sum() > 500
    assert torch.all(splatted.rgb[0, 0][near_pixels] == 1.0)
    assert torch.allclose(splatted.depth[0][near_pixels], torch.tensor(0.3))
    # In general: splatting only ever lowers depth, in every view.
    assert torch.all(splatted.depth <= zordered.depth)
    # The far plane's holes away from the patch are filled with far depth.
    assert torch.allclose(splatted.depth[0, 60:80, 60:80], torch.tensor(0.7))


def test_random_cloud_splat_takes_nearest_nearer_neighbour():
    torch.manual_seed(0)
    lower = torch.tensor(WS.lower, dtype=torch.float32)
    points = lower + torch.rand(3000, 3)
    colors = torch.rand(3000, 2)
    zordered = project_views_torch(points, colors, WS, 0.0)
    splatted = project_views_torch(points, colors, WS, 0.008)
    changed = splatted.depth != zordered.depth
    assert changed.any()
    assert torch.all(splatted.depth[changed] < zordered.depth[changed])
    # Brute-force check of a few changed pixels against the rule.
    for v, r, c in changed.nonzero()[:50].tolist():
        best = None
        for dr, dc in itertools.product(range(-2, 3), repeat=2):
            d2 = dr * dr + dc * dc
            rr, cc = r + dr, c + dc
            if not (0 < d2 <= 4 and 0 <= rr < 256 and 0 <= cc < 256):
                continue
            d = zordered.depth[v, rr, cc].item()
            if d < zordered.depth[v, r, c].item() and (best is None or (d2, d) < best[:2]):
                best = (d2, d, rr, cc)
        assert best is not None
        assert splatted.depth[v, r, c].item() == best[1]


def test_arbitrary_channels_and_uint8_colours():
    points = torch.tensor([[0.5, 0.0, 0.4]])
    views = project_views_torch(
        points, torch.tensor([[0, 51, 102, 153, 204, 255]], dtype=torch.uint8), WS, 0.0
    )
    assert views.rgb.shape == (3, 6, 256, 256) and views.depth.shape == (3, 256, 256)
    assert torch.allclose(views.rgb[1, :, 128, 128], torch.tensor([0.0, 0.2, 0.4, 0.6, 0.8, 1.0]))
    assert math.isinf(views.depth[1, 0, 0].item())


def test_auto_backend_on_cpu_equals_the_reference():
    torch.manual_seed(1)
    points = torch.tensor(WS.lower, dtype=torch.float32) + torch.rand(500, 3)
    colors = torch.rand(500, 3)
    a = project_views(points, colors, WS)
    b = project_views_torch(points, colors, WS)
    assert torch.equal(a.rgb, b.rgb) and torch.equal(a.depth, b.depth)


def test_bad_inputs_rejected():
    pts, cols = torch.zeros(2, 3), torch.zeros(2, 3)
    with pytest.raises(ValueError, match="NaN"):
        project_views_torch(torch.full((2, 3), math.nan), cols, WS)
    for bad in (math.nan, math.inf, -math.inf):
        many = torch.rand(5000, 3)
        many[4321, 1] = bad
        with pytest.raises(ValueError, match="NaN or infinite"):
            project_views_torch(many, torch.zeros(5000, 3), WS)
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        project_views_torch(torch.zeros(2, 2), cols, WS)
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        project_views_torch(pts, torch.zeros(3, 3), WS)
    with pytest.raises(ValueError, match="empty"):
        project_views_torch(torch.zeros(0, 3), torch.zeros(0, 3), WS)
    with pytest.raises(ValueError, match="splat_radius"):
        project_views_torch(pts, cols, WS, splat_radius=-1.0)
    with pytest.raises(ValueError, match="backend"):
        project_views(pts, cols, WS, backend="opengl")
    with pytest.raises(ValueError, match="uint8 or floating"):
        project_views_torch(pts, cols.to(torch.int32), WS)


def test_chunked_zorder_equals_one_pass_with_ties_across_chunks(monkeypatch):
    # Equal-depth duplicates far apart in the point order, points outside the cube and on its faces: every
    # chunk size gives the keys of a single pass (smallest depth, then smallest point index).
    generator = torch.Generator().manual_seed(4)
    lower = torch.tensor(WS.lower, dtype=torch.float32)
    base = lower + torch.rand(700, 3, generator=generator) * WS.edge
    outside = lower - 0.2 + torch.rand(100, 3, generator=generator) * (WS.edge + 0.4)
    faces = base[:50].clone()
    faces[:, 2] = float(WS.upper[2])
    points = torch.cat([base, outside, faces, base.flip(0)])  # the second copy of base ties
    colors = torch.arange(len(points), dtype=torch.float32)[:, None]
    monkeypatch.setattr(projection, "POINT_CHUNK", len(points) + 1)
    single = projection.zorder_keys(points, WS)
    for chunk in (1, 7, 256):
        monkeypatch.setattr(projection, "POINT_CHUNK", chunk)
        assert torch.equal(projection.zorder_keys(points, WS), single)
    views = project_views_torch(points, colors, WS, 0.0)
    # A pixel shows the first of two equal points: its index is below the second copy's start.
    shown = views.rgb[views.depth.isfinite().unsqueeze(1)]
    assert torch.all(shown < 850)


def test_view_pixels_equal_workspace_to_view_and_contains():
    generator = torch.Generator().manual_seed(6)
    lower = torch.tensor(WS.lower, dtype=torch.float32)
    points = lower - 0.1 + torch.rand(20000, 3, generator=generator) * (WS.edge + 0.2)
    grid = torch.stack(torch.meshgrid(*[torch.arange(-0.5, 0.5001, 1 / 256)] * 3, indexing="ij"), -1)
    points = torch.cat([points, grid[::8, ::8, ::8].reshape(-1, 3) + torch.tensor(WS.center)]).float()
    flat, depth = pixels.view_pixels(points, WS)
    coords = WS.to_view(points).permute(1, 0, 2)  # (V, N, 3)
    col = coords[..., 0].floor().clamp(0, 255).long()
    row = coords[..., 1].floor().clamp(0, 255).long()
    expected = (torch.arange(3)[:, None] * 256 + row) * 256 + col
    expected = torch.where(WS.contains(points), expected, -1)
    assert torch.equal(flat, expected)
    expected_depth = coords[..., 2].clamp(0.0, WS.edge) + 0.0
    assert torch.equal(depth.view(torch.int32), expected_depth.contiguous().view(torch.int32))


def straightforward_projection(
    points: torch.Tensor, colors: torch.Tensor, workspace: Workspace, splat_radius: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The projection written out from its definition, one step after the other: Workspace.to_view and
    contains, int64 depth|index keys, a scatter-min per view, splatting ring by ring (nearest first, a pixel
    takes the smallest key of the first ring with a strictly smaller depth), unpacking -> (rgb, depth)."""
    res, num_views = workspace.resolution, len(workspace.views)
    empty = projection.EMPTY_KEY
    coords = workspace.to_view(points)  # (N, V, 3)
    col = coords[..., 0].floor().clamp(0, res - 1).long()
    row = coords[..., 1].floor().clamp(0, res - 1).long()
    depth = coords[..., 2].clamp(0.0, workspace.edge) + 0.0
    keys = (depth.view(torch.int32).long() << 32) | torch.arange(len(points))[:, None]
    inside = workspace.contains(points)
    image = torch.full((num_views, res * res), empty, dtype=torch.int64)
    for v in range(num_views):
        pixel = (row[:, v] * res + col[:, v])[inside]
        image[v].scatter_reduce_(0, pixel, keys[inside, v], reduce="amin", include_self=True)
    image = image.view(num_views, res, res)

    reach, max_d2 = pixels.splat_extent(splat_radius, workspace)
    padded = torch.full((num_views, res + 2 * reach, res + 2 * reach), empty, dtype=torch.int64)
    padded[:, reach : reach + res, reach : reach + res] = image
    result, found = image.clone(), torch.zeros(image.shape, dtype=torch.bool)
    for _, offsets in projection.splat_offsets(reach, max_d2):
        ring = torch.full(image.shape, empty, dtype=torch.int64)
        for dy, dx in offsets:
            ring = torch.minimum(
                ring, padded[:, reach + dy : reach + dy + res, reach + dx : reach + dx + res]
            )
        take = ~found & ((ring >> 32) < (image >> 32))
        result[take] = ring[take]
        found |= take

    hit = result != empty
    depth_image = torch.full(result.shape, math.inf)
    depth_image[hit] = (result[hit] >> 32).int().view(torch.float32)
    rgb = torch.zeros(num_views, res, res, colors.shape[1])
    rgb[hit] = colors[result[hit] & projection.LOW_MASK]
    return rgb.permute(0, 3, 1, 2), depth_image


def awkward_cloud(count: int, workspace: Workspace, seed: int) -> torch.Tensor:
    """Random points in and around the cube, some on its faces, exact duplicates far apart in the order and
    points sharing one depth."""
    generator = torch.Generator().manual_seed(seed)
    lower = torch.tensor(workspace.lower, dtype=torch.float32)
    inside = lower + torch.rand(count, 3, generator=generator) * workspace.edge
    around = (
        lower - 0.2 * workspace.edge + torch.rand(count // 4, 3, generator=generator) * 1.4 * workspace.edge
    )
    faces = inside[: count // 8].clone()
    faces[:, 0] = float(workspace.lower[0])
    faces[: count // 16, 2] = float(workspace.upper[2])
    level = inside[: count // 4].clone()
    level[:, 2] = inside[0, 2]  # one depth in the top view, many pixels
    return torch.cat([inside, around, faces, level, inside.flip(0)]).to(torch.float32)


@pytest.mark.parametrize(
    "workspace",
    [WS, Workspace(center=(0.1, -0.2, 0.3), edge=0.37, resolution=100, views=("side", "top"))],
    ids=["default", "small-two-views"],
)
@pytest.mark.parametrize("chunk", [1_000, 4_096, 1 << 20])
def test_fast_path_equals_the_straightforward_projection(monkeypatch, workspace, chunk):
    # Bit for bit (depth compared as bits), with ties between equal points and equal depths, points outside
    # the cube, chunks that split the cloud unevenly and several splat radii.
    monkeypatch.setattr(projection, "POINT_CHUNK", chunk)
    points = awkward_cloud(6_000, workspace, seed=chunk)
    colors = torch.rand(len(points), 2, generator=torch.Generator().manual_seed(1))
    for radius in (0.0, 0.008, 0.02):
        views = project_views_torch(points, colors, workspace, radius)
        rgb, depth = straightforward_projection(points, colors, workspace, radius)
        assert torch.equal(views.depth.view(torch.int32), depth.view(torch.int32))
        assert torch.equal(views.rgb, rgb)


def test_projection_runs_on_its_thread_budget_and_restores_torch_setting(monkeypatch):
    seen = []
    zorder = projection.zorder_keys
    monkeypatch.setattr(
        projection, "zorder_keys", lambda *args: seen.append(torch.get_num_threads()) or zorder(*args)
    )
    before = torch.get_num_threads()
    points = awkward_cloud(500, WS, seed=3)
    colors = torch.rand(len(points), 3)
    reference = project_views(points, colors, WS, backend="torch", threads=None)
    for threads in (1, 2):
        views = project_views(points, colors, WS, backend="torch", threads=threads)
        assert torch.equal(views.rgb, reference.rgb) and torch.equal(views.depth, reference.depth)
    assert seen == [before, 1, 2]
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="thread count"):
        project_views(points, colors, WS, backend="torch", threads=0)


@pytest.mark.skipif(
    threads_module._thread_local_setter() is None,
    reason="torch's parallel backend has one process-wide thread count",
)
def test_thread_budget_stays_in_the_calling_thread(monkeypatch):
    # Two threads project at once on budgets 1 and 2 while a third (a policy, say) keeps its own count of 3,
    # and a thread started meanwhile gets the process-wide 3: the budget never leaks out of the caller.
    points = awkward_cloud(3_000, WS, seed=7)
    colors = torch.rand(len(points), 3, generator=torch.Generator().manual_seed(2))
    reference = project_views(points, colors, WS, backend="torch")
    seen: dict[int, set[int]] = {1: set(), 2: set()}
    zorder = projection.zorder_keys

    def spying_zorder(*args):
        seen[budget.value].add(torch.get_num_threads())
        return zorder(*args)

    monkeypatch.setattr(projection, "zorder_keys", spying_zorder)
    budget = threading.local()
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        done = threading.Event()
        policy_counts: set[int] = set()
        failures: list[str] = []

        def policy() -> None:
            while not done.is_set():
                policy_counts.add(torch.get_num_threads())

        def project(threads: int) -> None:
            budget.value = threads
            for _ in range(5):
                views = project_views(points, colors, WS, backend="torch", threads=threads)
                if not (torch.equal(views.rgb, reference.rgb) and torch.equal(views.depth, reference.depth)):
                    failures.append(f"threads={threads}: result differs")
                if torch.get_num_threads() != 3:
                    failures.append(f"threads={threads}: count {torch.get_num_threads()} after the call")

        watcher = threading.Thread(target=policy)
        watcher.start()
        workers = [threading.Thread(target=project, args=(t,)) for t in (1, 2)]
        for worker in workers:
            worker.start()
        late: list[int] = []
        newcomer = threading.Thread(target=lambda: late.append(torch.get_num_threads()))
        newcomer.start()
        for thread in (*workers, newcomer):
            thread.join()
        done.set()
        watcher.join()
        assert failures == []
        assert seen == {1: {1}, 2: {2}}
        assert policy_counts == {3} and late == [3] and torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_process_wide_thread_count_is_restored_after_overlapping_budgets(monkeypatch):
    # Without a per-thread count (a non-OpenMP torch), overlapping bodies share the process-wide count and
    # the last one to end restores the count from before the first.
    monkeypatch.setattr(threads_module, "_thread_local_setter", lambda: None)
    before = torch.get_num_threads()
    inside, leave_first = threading.Barrier(2), threading.Event()
    errors: list[BaseException] = []

    def body(count: int, first: bool) -> None:
        try:
            with threads_module.torch_threads(count):
                inside.wait(timeout=10)
                if first:
                    leave_first.set()  # the first leaves while the second is still inside
                else:
                    leave_first.wait(timeout=10)
        except BaseException as error:  # noqa: BLE001 (re-raised in the test's thread)
            errors.append(error)

    target = before + 1
    workers = [threading.Thread(target=body, args=(target, first)) for first in (True, False)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert errors == []
    assert torch.get_num_threads() == before


def test_reused_buffers_never_show_in_results():
    # A second call (other points, same shapes) leaves the first call's result as it was.
    points = awkward_cloud(2_000, WS, seed=8)
    colors = torch.rand(len(points), 3, generator=torch.Generator().manual_seed(3))
    first = project_views(points, colors, WS, backend="torch")
    kept = (first.rgb.clone(), first.depth.clone())
    second = project_views(points.flip(0) * 0.9 + 0.05, colors.flip(0), WS, backend="torch")
    assert torch.equal(first.rgb, kept[0]) and torch.equal(first.depth, kept[1])
    assert first.rgb.data_ptr() != second.rgb.data_ptr() and first.depth.data_ptr() != second.depth.data_ptr()


def test_project_observation_passes_its_thread_budget(monkeypatch):
    from mvvdp_core.perception import CloudFrame, project_observation

    seen = []
    zorder = projection.zorder_keys
    monkeypatch.setattr(
        projection, "zorder_keys", lambda *args: seen.append(torch.get_num_threads()) or zorder(*args)
    )
    points = awkward_cloud(200, WS, seed=4).numpy()
    frames = [CloudFrame("cam", 0.0, "cam_frame", points, np.full((len(points), 3), 200, np.uint8))]
    before = torch.get_num_threads()
    for threads in (1, 2):
        project_observation(frames, [np.eye(4)], WS, backend="torch", threads=threads)
    assert seen == [1, 2] and torch.get_num_threads() == before
