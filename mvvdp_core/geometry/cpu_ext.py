"""The compiled CPU projection (cuda/projection_cpu.cpp): lazy build, and its backend for project_views.

It runs the per-element functions of cuda/projection_common.cuh that the CUDA kernels run (a point's pixel and
depth, key packing, splatting, unpacking), with the same results as the torch reference bit for bit. The
library is built with g++ (cuda_ext.compile_library; -O3 without -march=native: the point loops come in an
AVX2 and a baseline x86-64 version, picked when it is loaded) on first use in a process, into
$MVVDP_CACHE_DIR, else $XDG_CACHE_HOME/mvvdp, else ~/.cache/mvvdp, and reused while the compiler, flags and
sources are the same. `unavailable_reason()` says why it could not be built (no compiler, a compile error);
project_views then falls back to the torch path, and the reason is logged once.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
from pathlib import Path

import numpy as np
import torch

from mvvdp_core.geometry.cuda_ext import BuildError, compile_library
from mvvdp_core.geometry.pixels import (
    ProjectedViews,
    float32_cube,
    prepare_inputs,
    signed_view_axes,
    splat_extent,
)
from mvvdp_core.geometry.workspace import Workspace

SOURCE = "projection_cpu.cpp"
FLAGS = ["-O3", "-std=c++17", "-pthread", "-ffp-contract=off"]  # float32 operations exactly as written
NON_FINITE = 1  # status of mvvdp_cpu_project for a NaN or infinite coordinate
MAX_RESOLUTION = 46_340  # the library's int32 pixel index (kMaxResolution)

_log = logging.getLogger(__name__)
_unavailable: list[str] = []


def cache_dir() -> Path:
    """Folder of the compiled library: $MVVDP_CACHE_DIR, else $XDG_CACHE_HOME/mvvdp, else ~/.cache/mvvdp."""
    if os.environ.get("MVVDP_CACHE_DIR"):
        return Path(os.environ["MVVDP_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mvvdp"


@functools.cache
def load_library() -> ctypes.CDLL | None:
    """The compiled library, built on the first call (None when it cannot be: see unavailable_reason)."""
    try:
        return open_library(compile_library(SOURCE, FLAGS, cache_dir()))
    except (BuildError, OSError, AttributeError) as error:  # (AttributeError: no mvvdp_cpu_project)
        _unavailable.append(f"compiled CPU projection unavailable: {error}")
        _log.warning("%s; projecting with torch instead", _unavailable[-1])
        return None


def open_library(path: Path) -> ctypes.CDLL:
    """Load a build of SOURCE and declare the signature of mvvdp_cpu_project."""
    library = ctypes.CDLL(str(path))
    ptr, i64, cint = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    library.mvvdp_cpu_project.restype = cint
    library.mvvdp_cpu_project.argtypes = [
        ptr, i64, ptr, i64, ptr, ptr, i64, ptr, ptr, ptr, ctypes.c_float, cint, cint, cint, cint, ptr, ptr,
    ]  # fmt: skip
    return library


def unavailable_reason() -> str | None:
    """Why the compiled CPU projection cannot be used, or None when it loads (building it if needed)."""
    return None if load_library() is not None else _unavailable[-1]


def _view_geometry(workspace: Workspace) -> tuple[np.ndarray, ...]:
    """The arrays mvvdp_cpu_project reads: per view the base axes and signs of (right, down, viewing
    direction), then the cube's float32 centre, lower and upper bounds (the values view_terms uses)."""
    signed = signed_view_axes(workspace)
    axes = np.array([[axis for axis, _ in view] for view in signed], dtype=np.int32)
    signs = np.array([[sign for _, sign in view] for view in signed], dtype=np.float32)
    return axes, signs, *(np.asarray(values, dtype=np.float32) for values in float32_cube(workspace))


def project_views_cpu(
    points: np.ndarray | torch.Tensor,
    colors: np.ndarray | torch.Tensor,
    workspace: Workspace,
    splat_radius: float = 0.008,
    threads: int | None = 1,
) -> ProjectedViews:
    """project_views on the compiled CPU library; points and colours must be on the CPU.

    threads: how many threads the call may use (one per view at most; None: torch's intra-op setting)."""
    library = load_library()
    if library is None:
        raise RuntimeError(unavailable_reason())
    if threads is None:
        threads = torch.get_num_threads()
    if threads < 1:
        raise ValueError(f"thread count must be >= 1, got {threads!r}")
    points, colors = prepare_inputs(points, colors)
    if points.device.type != "cpu":
        raise ValueError("the compiled CPU backend needs points on the CPU")
    num_views, channels, res = len(workspace.views), colors.shape[1], workspace.resolution
    if res > MAX_RESOLUTION:
        raise ValueError(f"resolution {res} is too large for the compiled CPU backend (<= {MAX_RESOLUTION})")
    reach, max_d2 = splat_extent(splat_radius, workspace)
    axes, signs, center, lower, upper = _view_geometry(workspace)
    rgb = torch.empty(num_views, channels, res, res, dtype=torch.float32)
    depth = torch.empty(num_views, res, res, dtype=torch.float32)
    status = library.mvvdp_cpu_project(
        points.data_ptr(), points.shape[0], colors.data_ptr(), channels, axes.ctypes.data, signs.ctypes.data,
        num_views, center.ctypes.data, lower.ctypes.data, upper.ctypes.data, float(workspace.edge), res,
        reach, max_d2, threads, rgb.data_ptr(), depth.data_ptr(),
    )  # fmt: skip
    if status == NON_FINITE:
        raise ValueError("points contain NaN or infinite coordinates")
    if status != 0:
        raise RuntimeError(f"mvvdp_cpu_project failed with status {status}")
    return ProjectedViews(rgb=rgb, depth=depth)
