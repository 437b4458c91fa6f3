"""The CUDA projection kernel (cuda/): lazy build, its backend for projection.project_views, a CPU harness of
the same per-element code, and the g++ build of such C++ libraries (`compile_library`, also used by cpu_ext).

Sources are looked up in $MVVDP_CUDA_SRC, then the repository's cuda/, then <prefix>/share/mvvdp_ros/cuda
(Python prefix, AMENT_PREFIX_PATH entries, the prefix this package is installed in).
The extension is built once per process with torch.utils.cpp_extension.load (torch caches the build);
`unavailable_reason()` says why it could not be used.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

from mvvdp_core.geometry.pixels import ProjectedViews, prepare_inputs, splat_extent, view_pixels
from mvvdp_core.geometry.workspace import Workspace

KERNEL_SOURCES = ("projection_binding.cpp", "projection_kernels.cu")
HEADER = "projection_common.cuh"
HARNESS_SOURCE = "projection_harness.cpp"
EXTENSION_NAME = "mvvdp_projection_cuda"

_unavailable: list[str] = []


class BuildError(RuntimeError):
    """A C++ library of cuda/ could not be built; the message says why."""


def cuda_source_dir(required: tuple[str, ...] = (*KERNEL_SOURCES, HEADER)) -> Path | None:
    """The first folder holding the `required` sources (by default the kernel's), or None."""
    candidates = []
    if os.environ.get("MVVDP_CUDA_SRC"):
        candidates.append(Path(os.environ["MVVDP_CUDA_SRC"]))
    here = Path(__file__).resolve()
    candidates.append(here.parents[2] / "cuda")  # source checkout
    prefixes = [Path(sys.prefix)] + [
        Path(p) for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p
    ]
    if len(here.parents) > 5:
        prefixes.append(here.parents[5])  # <prefix>/lib/pythonX.Y/site-packages/mvvdp_core/geometry/
    candidates += [prefix / "share" / "mvvdp_ros" / "cuda" for prefix in prefixes]
    for folder in candidates:
        if all((folder / name).is_file() for name in required):
            return folder
    return None


@functools.cache
def load_extension() -> ModuleType | None:
    """The compiled extension, or None (see unavailable_reason)."""
    reason = _why_unbuildable()
    if reason is None:
        from torch.utils.cpp_extension import load

        src = cuda_source_dir()
        assert src is not None
        try:
            return load(
                name=EXTENSION_NAME,
                sources=[str(src / name) for name in KERNEL_SOURCES],
                extra_include_paths=[str(src)],
                extra_cflags=["-O3"],
                extra_cuda_cflags=["-O3"],
                verbose=False,
            )
        except Exception as exc:  # compiler errors come in several exception types
            reason = f"building the CUDA extension failed: {exc}"
    _unavailable.append(reason)
    return None


def _why_unbuildable() -> str | None:
    if not torch.cuda.is_available():
        return "no CUDA GPU (torch.cuda.is_available() is False)"
    if torch.version.cuda is None:
        return "this torch build has no CUDA support"
    from torch.utils.cpp_extension import CUDA_HOME

    if CUDA_HOME is None or not (Path(CUDA_HOME) / "bin" / "nvcc").exists():
        return "nvcc not found (set CUDA_HOME)"
    if cuda_source_dir() is None:
        return "kernel sources not found (set MVVDP_CUDA_SRC to the cuda/ folder)"
    return None


def unavailable_reason() -> str | None:
    """Why the CUDA kernel cannot be used, or None when it loads."""
    return None if load_extension() is not None else _unavailable[-1]


def project_views_cuda(
    points: np.ndarray | torch.Tensor,
    colors: np.ndarray | torch.Tensor,
    workspace: Workspace,
    splat_radius: float = 0.008,
) -> ProjectedViews:
    """project_views on the CUDA kernel; points and colours must be on a GPU."""
    extension = load_extension()
    if extension is None:
        raise RuntimeError(f"CUDA projection unavailable: {unavailable_reason()}")
    points, colors = prepare_inputs(points, colors)
    if not points.is_cuda:
        raise ValueError("the CUDA backend needs points on a CUDA device")
    reach, max_d2 = splat_extent(splat_radius, workspace)
    flat, depth = view_pixels(points, workspace)
    res = workspace.resolution
    rgb, depth_image = extension.project(flat.contiguous(), depth, colors, res, res, reach, max_d2)
    return ProjectedViews(rgb=rgb, depth=depth_image)


def compile_library(source: str, flags: list[str], build_dir: Path) -> Path:
    """Compile cuda/<source> (which includes HEADER) with the C++ compiler ($CXX, else g++ or c++) into a
    shared library in build_dir and return its path; raises BuildError with the reason when it cannot.

    The file name hashes the compiler, the flags and the contents of both sources, so a current build is
    reused and a changed one never is. The compiler writes a temporary file that is renamed into place:
    processes building at once each make a whole library, and the last rename wins."""
    src = cuda_source_dir((source, HEADER))
    if src is None:
        raise BuildError(f"sources {source} and {HEADER} not found (set MVVDP_CUDA_SRC to the cuda/ folder)")
    compiler = shlex.split(os.environ.get("CXX", "")) or [shutil.which("g++") or shutil.which("c++") or "g++"]
    if shutil.which(compiler[0]) is None:
        raise BuildError(f"no C++ compiler: {compiler[0]!r} not found (install g++ or set CXX)")
    command = [*compiler, *flags, "-shared", "-fPIC", f"-I{src}", str(src / source)]
    digest = hashlib.sha256("\0".join(command[:-2]).encode())  # the compiler and its flags
    for name in (source, HEADER):
        digest.update((src / name).read_bytes())
    library = build_dir / f"lib{Path(source).stem}-{digest.hexdigest()[:16]}.so"
    if library.is_file():
        return library
    try:
        build_dir.mkdir(parents=True, exist_ok=True)
        handle, partial = tempfile.mkstemp(prefix=f".{library.stem}.", suffix=".so", dir=build_dir)
        os.close(handle)
    except OSError as error:
        raise BuildError(f"cannot write the build folder {build_dir}: {error}") from error
    try:
        result = subprocess.run([*command, "-o", partial], capture_output=True, text=True)
        if result.returncode != 0:
            raise BuildError(f"compiling {source} failed ({shlex.join(command)}):\n{result.stderr.strip()}")
        os.replace(partial, library)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return library


def build_cpu_harness(build_dir: Path) -> ctypes.CDLL:
    """Compile the CPU harness of the kernel's per-element code into build_dir (compile_library), load it."""
    lib = ctypes.CDLL(str(compile_library(HARNESS_SOURCE, ["-O2", "-std=c++17"], build_dir)))
    lib.mvvdp_harness_project.restype = ctypes.c_int
    ptr, i64, cint = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    lib.mvvdp_harness_project.argtypes = [ptr, ptr, i64, i64, ptr, i64, i64, i64, cint, cint, ptr, ptr]
    return lib


def project_views_cpu_harness(
    harness: ctypes.CDLL,
    points: np.ndarray | torch.Tensor,
    colors: np.ndarray | torch.Tensor,
    workspace: Workspace,
    splat_radius: float = 0.008,
) -> ProjectedViews:
    """project_views through the kernel's per-element functions run serially on the CPU (for parity tests)."""
    points, colors = prepare_inputs(points, colors)
    points, colors = points.cpu(), colors.cpu()
    reach, max_d2 = splat_extent(splat_radius, workspace)
    flat, depth = view_pixels(points, workspace)
    flat = flat.contiguous()
    num_views, res, channels = flat.shape[0], workspace.resolution, colors.shape[1]
    rgb = torch.empty(num_views, channels, res, res, dtype=torch.float32)
    depth_image = torch.empty(num_views, res, res, dtype=torch.float32)
    status = harness.mvvdp_harness_project(
        flat.data_ptr(), depth.data_ptr(), num_views, flat.shape[1], colors.data_ptr(), channels, res, res,
        reach, max_d2, rgb.data_ptr(), depth_image.data_ptr(),
    )  # fmt: skip
    if status != 0:
        raise RuntimeError("CPU harness rejected a pixel index outside the images")
    return ProjectedViews(rgb=rgb, depth=depth_image)
