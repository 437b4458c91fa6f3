"""Thread counts for CPU work (training, evaluation, recording, projection) on a shared machine."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import threading
from collections.abc import Callable, Iterator

import torch


def default_threads() -> int:
    """Half the usable cores, at least one: intra-op threads that compete with other busy processes for
    every core make torch many times slower (measured ~20x on a loaded 2-core machine)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // 2)


def set_torch_threads(threads: int | None = None) -> int:
    """Set torch's intra-op thread count (None: `default_threads()`); returns the count in force."""
    count = default_threads() if threads is None else int(threads)
    if count < 1:
        raise ValueError(f"thread count must be >= 1, got {threads!r}")
    torch.set_num_threads(count)
    return count


@functools.cache
def _thread_local_setter() -> Callable[[int], None] | None:
    """omp_set_num_threads of the OpenMP runtime torch's CPU library links, or None when torch does not run
    its intra-op work on OpenMP (or the library cannot be opened).

    With OpenMP, torch.get_num_threads() is omp_get_max_threads(): a per-thread setting, which a thread takes
    from torch's process-wide count on its first torch call. torch.set_num_threads changes both the calling
    thread's setting and the process-wide count; omp_set_num_threads changes the calling thread's only."""
    if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return None
    library = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
    try:  # already loaded with torch; dlsym on its handle searches its dependencies, libgomp among them
        setter = ctypes.CDLL(library, mode=os.RTLD_NOLOAD | os.RTLD_LAZY).omp_set_num_threads
    except (OSError, AttributeError):
        return None
    setter.argtypes, setter.restype = [ctypes.c_int], None
    return setter


_shared_lock = threading.Lock()
_shared_users = 0
_shared_saved = 0


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the body with `threads` torch intra-op threads in the calling thread (None: leave the setting),
    then restore the calling thread's count.

    With torch's OpenMP backend the change is local to the calling thread: other threads (a policy, another
    projection) and threads started meanwhile keep their counts, and concurrent bodies do not interfere.
    Other backends only have a process-wide count: there, overlapping bodies share it, and the count from
    before the first of them is restored when the last one ends."""
    if threads is None:
        yield
        return
    if threads < 1:
        raise ValueError(f"thread count must be >= 1, got {threads!r}")
    before = torch.get_num_threads()  # also initialises this thread's setting from the process-wide one
    if before == threads:
        yield
        return
    setter = _thread_local_setter()
    if setter is not None:
        setter(threads)
        try:
            yield
        finally:
            setter(before)
        return
    global _shared_users, _shared_saved
    with _shared_lock:
        if _shared_users == 0:
            _shared_saved = before
        _shared_users += 1
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        with _shared_lock:
            _shared_users -= 1
            if _shared_users == 0:
                torch.set_num_threads(_shared_saved)
