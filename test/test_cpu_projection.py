"""The compiled CPU projection (cuda/projection_cpu.cpp): bit-identical to the torch reference, picked by
`auto` on the CPU; its build (cache, keys, concurrent builds), and the fallback to torch when it cannot
build."""

import logging
import math
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from test_cuda_projection import structured_clouds
from test_geometry_projection import awkward_cloud

from mvvdp_core.geometry import Workspace, cpu_ext, cuda_ext, project_views, project_views_torch, projection

WS = Workspace()
SMALL = Workspace(center=(0.1, -0.2, 0.3), edge=0.37, resolution=100, views=("side", "top"))
HAS_COMPILER = shutil.which("g++") is not None or shutil.which("c++") is not None
needs_compiler = pytest.mark.skipif(not HAS_COMPILER, reason="no C++ compiler (g++) to build the CPU library")


@pytest.fixture
def compiled():
    """The compiled library as project_views loads it (the per-user cache)."""
    if not HAS_COMPILER:
        pytest.skip("no C++ compiler (g++) to build the CPU library")
    library = cpu_ext.load_library()
    assert library is not None, cpu_ext.unavailable_reason()
    return library


@pytest.fixture
def fresh_build(monkeypatch, tmp_path):
    """load_library forgets its result before and after the test, and builds into an empty cache folder."""
    monkeypatch.setenv("MVVDP_CACHE_DIR", str(tmp_path / "cache"))
    cpu_ext.load_library.cache_clear()
    yield tmp_path / "cache"
    cpu_ext.load_library.cache_clear()


def assert_bit_identical(views, expected) -> None:
    assert torch.equal(views.depth.view(torch.int32), expected.depth.view(torch.int32)), "depth images differ"
    assert torch.equal(views.rgb.view(torch.int32), expected.rgb.view(torch.int32)), "feature images differ"


@pytest.mark.parametrize("workspace", [WS, SMALL], ids=["default", "small-two-views"])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_reference_on_awkward_clouds(compiled, workspace, seed):
    # Points outside the cube and on its faces, duplicates far apart in the order, one depth shared by many.
    points = awkward_cloud(6_000, workspace, seed)
    colors = torch.rand(len(points), 1 + 2 * seed, generator=torch.Generator().manual_seed(seed))
    for radius in (0.0, 0.004, 0.008, 0.02, 0.05):
        expected = project_views_torch(points, colors, workspace, radius)
        assert torch.isfinite(expected.depth).any()
        assert_bit_identical(project_views(points, colors, workspace, radius, backend="cpu"), expected)


@pytest.mark.parametrize("name", ["lattice", "duplicates", "corners", "top_face"])
def test_matches_reference_on_structured_clouds(compiled, name):
    points, colors = structured_clouds()[name]
    for radius in (0.0, 0.008, 0.015):
        expected = project_views_torch(points, colors, WS, radius)
        assert_bit_identical(project_views(points, colors, WS, radius, backend="cpu"), expected)


def test_matches_reference_on_a_large_cloud_on_any_thread_count(compiled):
    generator = torch.Generator().manual_seed(7)
    points = torch.tensor(WS.lower, dtype=torch.float32) + torch.rand(300_000, 3, generator=generator)
    colors = torch.rand(len(points), 3, generator=generator)
    expected = project_views_torch(points, colors, WS)
    for threads in (1, 2, 5, None):
        assert_bit_identical(project_views(points, colors, WS, backend="cpu", threads=threads), expected)


def test_concurrent_calls_keep_their_own_buffers(compiled):
    # Each calling thread has its own key image in the library (and ctypes releases the GIL during a call).
    clouds = [awkward_cloud(20_000, WS, seed) for seed in (10, 11)]
    colors = [torch.rand(len(points), 3, generator=torch.Generator().manual_seed(9)) for points in clouds]
    expected = [project_views_torch(points, cols, WS) for points, cols in zip(clouds, colors, strict=True)]
    failures: list[str] = []

    def project(which: int) -> None:
        for _ in range(10):
            views, reference = project_views(clouds[which], colors[which], WS, backend="cpu"), expected[which]
            if not (torch.equal(views.rgb, reference.rgb) and torch.equal(views.depth, reference.depth)):
                failures.append(f"cloud {which}: result differs")

    workers = [threading.Thread(target=project, args=(which,)) for which in (0, 1)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert failures == []


def test_numpy_inputs_uint8_colours_and_a_cloud_entirely_outside(compiled):
    points = awkward_cloud(2_000, WS, seed=3).numpy()
    colors = np.random.default_rng(0).integers(0, 256, (len(points), 4), dtype=np.uint8)
    expected = project_views_torch(points, colors, WS)
    assert_bit_identical(project_views(points, colors, WS, backend="cpu"), expected)
    outside = points + np.float32(5.0)
    views = project_views(outside, colors, WS, backend="cpu")
    assert torch.isinf(views.depth).all() and not views.rgb.any()
    assert_bit_identical(views, project_views_torch(outside, colors, WS))


def test_bad_inputs_rejected_like_the_reference(compiled):
    with pytest.raises(ValueError, match="empty"):
        project_views(torch.zeros(0, 3), torch.zeros(0, 3), WS, backend="cpu")
    for bad in (math.nan, math.inf, -math.inf):
        for row in (0, 4321):  # (a NaN point counts as inside the cube's bounds, infinities do not)
            points = torch.tensor(WS.lower, dtype=torch.float32) + torch.rand(5000, 3)
            points[row, 1] = bad
            with pytest.raises(ValueError, match="NaN or infinite"):
                project_views(points, torch.zeros(5000, 3), WS, backend="cpu")
    with pytest.raises(ValueError, match="thread count"):
        project_views(torch.zeros(2, 3), torch.zeros(2, 3), WS, backend="cpu", threads=0)
    with pytest.raises(ValueError, match="too large"):
        project_views(torch.zeros(2, 3), torch.zeros(2, 3), Workspace(resolution=46341), backend="cpu")


@needs_compiler
def test_baseline_build_matches_reference(tmp_path, monkeypatch):
    # The build without the AVX2 clones: what a CPU without AVX2 runs.
    flags = [*cpu_ext.FLAGS, "-DMVVDP_BASELINE_ONLY"]
    baseline = cpu_ext.open_library(cuda_ext.compile_library(cpu_ext.SOURCE, flags, tmp_path))
    monkeypatch.setattr(cpu_ext, "load_library", lambda: baseline)
    points = awkward_cloud(6_000, WS, seed=5)
    colors = torch.rand(len(points), 3, generator=torch.Generator().manual_seed(5))
    for radius in (0.0, 0.008, 0.02):
        views = project_views(points, colors, WS, radius, backend="cpu")
        assert_bit_identical(views, project_views_torch(points, colors, WS, radius))


def test_auto_uses_the_compiled_library_on_cpu(compiled, monkeypatch):
    calls = []
    run = cpu_ext.project_views_cpu
    monkeypatch.setattr(cpu_ext, "project_views_cpu", lambda *args: calls.append(args) or run(*args))
    monkeypatch.setattr(projection, "project_views_torch", lambda *args: pytest.fail("auto took torch"))
    points = awkward_cloud(500, WS, seed=2)
    colors = torch.rand(len(points), 3)
    views = project_views(points, colors, WS, threads=2)
    assert len(calls) == 1 and calls[0][-1] == 2  # the thread budget reaches the library
    assert views.depth.isfinite().any()


@needs_compiler
def test_build_is_reused_keyed_on_flags_and_sources_and_safe_when_concurrent(tmp_path, monkeypatch):
    build = tmp_path / "build"
    libraries: list[Path] = []

    def compile_o1() -> None:
        libraries.append(cuda_ext.compile_library(cpu_ext.SOURCE, ["-O1"], build))

    workers = [threading.Thread(target=compile_o1) for _ in range(3)]  # three builds of one library at once
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert len(libraries) == 3 and len(set(libraries)) == 1
    assert cpu_ext.open_library(libraries[0]).mvvdp_cpu_project is not None
    assert os.listdir(build) == [libraries[0].name]  # no partial files left behind
    built = libraries[0].stat().st_mtime_ns
    assert cuda_ext.compile_library(cpu_ext.SOURCE, ["-O1"], build) == libraries[0]
    assert libraries[0].stat().st_mtime_ns == built  # reused, not rebuilt
    assert cuda_ext.compile_library(cpu_ext.SOURCE, ["-O2"], build) != libraries[0]
    sources = tmp_path / "src"
    sources.mkdir()
    for name in (cpu_ext.SOURCE, cuda_ext.HEADER):
        shutil.copy(cuda_ext.cuda_source_dir((name,)) / name, sources / name)
    monkeypatch.setenv("MVVDP_CUDA_SRC", str(sources))
    assert cuda_ext.compile_library(cpu_ext.SOURCE, ["-O1"], build) == libraries[0]  # same contents
    with open(sources / cuda_ext.HEADER, "a") as header:
        header.write("// changed\n")
    assert cuda_ext.compile_library(cpu_ext.SOURCE, ["-O1"], build) != libraries[0]


def test_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("MVVDP_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cpu_ext.cache_dir() == tmp_path / "xdg" / "mvvdp"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cpu_ext.cache_dir() == Path.home() / ".cache" / "mvvdp"
    monkeypatch.setenv("MVVDP_CACHE_DIR", str(tmp_path / "mine"))
    assert cpu_ext.cache_dir() == tmp_path / "mine"


def test_without_a_compiler_auto_falls_back_to_torch_and_says_why(fresh_build, monkeypatch, caplog):
    monkeypatch.setenv("CXX", "/nonexistent/g++")
    points = awkward_cloud(1_000, WS, seed=6)
    colors = torch.rand(len(points), 3)
    with caplog.at_level(logging.WARNING, logger=cpu_ext.__name__):
        for _ in range(2):
            assert_bit_identical(project_views(points, colors, WS), project_views_torch(points, colors, WS))
    reason = cpu_ext.unavailable_reason()
    assert reason is not None and "no C++ compiler" in reason and "/nonexistent/g++" in reason
    assert [record.getMessage() for record in caplog.records] == [f"{reason}; projecting with torch instead"]
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
        project_views(points, colors, WS, backend="cpu")
    assert not fresh_build.exists()


@needs_compiler
def test_a_compile_error_is_the_reason(fresh_build, monkeypatch, tmp_path):
    broken = tmp_path / "src"
    broken.mkdir()
    shutil.copy(cuda_ext.cuda_source_dir((cuda_ext.HEADER,)) / cuda_ext.HEADER, broken / cuda_ext.HEADER)
    (broken / cpu_ext.SOURCE).write_text('#include "projection_common.cuh"\nint broken(\n')
    monkeypatch.setenv("MVVDP_CUDA_SRC", str(broken))
    points = awkward_cloud(300, WS, seed=1)
    colors = torch.rand(len(points), 3)
    assert_bit_identical(project_views(points, colors, WS), project_views_torch(points, colors, WS))
    reason = cpu_ext.unavailable_reason()
    assert reason is not None and f"compiling {cpu_ext.SOURCE} failed" in reason and "error" in reason
    assert not fresh_build.exists() or os.listdir(fresh_build) == []  # nothing half-built left
