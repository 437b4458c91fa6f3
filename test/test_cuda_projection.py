"""The CUDA projection kernel: nvcc compile check, CPU-harness parity with the torch reference, GPU parity."""

import functools
import itertools
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from mvvdp_core.geometry import Workspace, cuda_ext, project_views, project_views_torch

WS = Workspace()
NVCC = shutil.which("nvcc") or ("/usr/local/bin/nvcc" if Path("/usr/local/bin/nvcc").exists() else None)


@pytest.fixture(scope="session")
def harness(tmp_path_factory):
    if shutil.which("g++") is None and shutil.which("c++") is None:
        pytest.skip("no C++ compiler (g++) to build the CPU harness")
    return cuda_ext.build_cpu_harness(tmp_path_factory.mktemp("projection_harness"))


def random_cloud(seed: int, count: int, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    lower = torch.tensor(WS.lower, dtype=torch.float32)
    points = lower + torch.rand(count, 3, generator=generator) * WS.edge
    return points, torch.rand(count, channels, generator=generator)


@functools.cache
def structured_clouds() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Clouds full of ties: lattices at equal depths, duplicates, points on faces and corners."""
    steps = torch.arange(-0.5, 0.5001, 0.0125)
    lattice = torch.stack(torch.meshgrid(steps, steps, steps[::8], indexing="ij"), -1).reshape(-1, 3)
    lattice = lattice + torch.tensor(WS.center)
    duplicates = torch.tensor([[0.5, 0.0, 0.4]] * 5 + [[0.51, 0.01, 0.4]] * 3)
    corners = torch.tensor(list(itertools.product(*zip(WS.lower, WS.upper, strict=True))))
    xs = torch.linspace(-0.5, 0.5, 97)
    face = torch.stack([xs.repeat(97), xs.repeat_interleave(97), torch.full((97 * 97,), 0.5)], 1)
    face = face + torch.tensor(WS.center)
    clouds = {"lattice": lattice, "duplicates": duplicates, "corners": corners, "top_face": face}
    return {
        name: (
            pts.to(torch.float32),
            torch.arange(len(pts), dtype=torch.float32)[:, None].repeat(1, 3) / len(pts),
        )
        for name, pts in clouds.items()
    }


def assert_identical(a, b) -> None:
    assert torch.equal(a.depth, b.depth), "depth images differ"
    assert torch.equal(a.rgb, b.rgb), "feature images differ"


def test_kernel_source_compiles_with_nvcc(tmp_path):
    if NVCC is None:
        pytest.skip("nvcc not installed")
    src = cuda_ext.cuda_source_dir()
    assert src is not None
    command = [
        NVCC,
        "-c",
        "-std=c++17",
        f"-I{src}",
        str(src / "projection_kernels.cu"),
        "-o",
        str(tmp_path / "k.o"),
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "k.o").stat().st_size > 0


@pytest.mark.parametrize(
    ("seed", "count", "channels", "radius"),
    [(0, 20000, 3, 0.008), (1, 5000, 1, 0.0), (2, 50000, 5, 0.02), (3, 300, 3, 0.008)],
)
def test_cpu_harness_matches_reference_on_random_clouds(harness, seed, count, channels, radius):
    points, colors = random_cloud(seed, count, channels)
    expected = project_views_torch(points, colors, WS, radius)
    assert_identical(cuda_ext.project_views_cpu_harness(harness, points, colors, WS, radius), expected)


@pytest.mark.parametrize("name", ["lattice", "duplicates", "corners", "top_face"])
@pytest.mark.parametrize("radius", [0.0, 0.008, 0.015])
def test_cpu_harness_matches_reference_on_structured_clouds(harness, name, radius):
    points, colors = structured_clouds()[name]
    expected = project_views_torch(points, colors, WS, radius)
    assert torch.isfinite(expected.depth).any()
    assert_identical(cuda_ext.project_views_cpu_harness(harness, points, colors, WS, radius), expected)


def test_cpu_harness_on_a_small_workspace_with_outside_points(harness):
    small = Workspace(center=(0.0, 0.0, 0.0), edge=0.4, resolution=32)
    points, colors = random_cloud(4, 4000, 2)  # mostly outside the small cube: ignored by both
    expected = project_views_torch(points, colors, small, 0.03)
    assert_identical(cuda_ext.project_views_cpu_harness(harness, points, colors, small, 0.03), expected)


def test_source_folder_override(tmp_path, monkeypatch):
    for name in (*cuda_ext.KERNEL_SOURCES, cuda_ext.HEADER):
        shutil.copy(cuda_ext.cuda_source_dir() / name, tmp_path / name)
    monkeypatch.setenv("MVVDP_CUDA_SRC", str(tmp_path))
    assert cuda_ext.cuda_source_dir() == tmp_path
    monkeypatch.setenv("MVVDP_CUDA_SRC", str(tmp_path / "missing"))
    assert cuda_ext.cuda_source_dir() == Path(cuda_ext.__file__).resolve().parents[2] / "cuda"


def test_cuda_backend_reports_why_it_is_unavailable():
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present; the unavailable path is not reachable")
    reason = cuda_ext.unavailable_reason()
    assert reason is not None and "CUDA" in reason
    with pytest.raises(RuntimeError, match="CUDA projection unavailable"):
        project_views(torch.zeros(1, 3), torch.zeros(1, 3), WS, backend="cuda")


def test_cuda_kernel_matches_reference_on_gpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    assert cuda_ext.load_extension() is not None, cuda_ext.unavailable_reason()
    cases = [random_cloud(5, 200000, 3) + (0.008,), random_cloud(6, 1000, 4) + (0.02,)]
    cases += [(p, c, r) for p, c in structured_clouds().values() for r in (0.0, 0.008)]
    for points, colors, radius in cases:
        gpu = project_views(points.cuda(), colors.cuda(), WS, radius, backend="cuda")
        assert_identical(
            type(gpu)(rgb=gpu.rgb.cpu(), depth=gpu.depth.cpu()),
            project_views_torch(points, colors, WS, radius),
        )
        assert_identical(gpu, project_views_torch(points.cuda(), colors.cuda(), WS, radius))
