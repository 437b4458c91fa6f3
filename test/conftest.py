import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


# ---- CPU load for the ROS tests: MVVDP_TEST_CPU_LOAD=N runs N CPU-bound processes beside them ----------
import contextlib  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402


@contextlib.contextmanager
def cpu_load(processes: int):
    """N busy-looping Python processes for the duration of the block (0: none)."""
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(processes)]
    try:
        yield burners
    finally:
        for proc in burners:
            proc.kill()
            proc.wait()


def env_cpu_load() -> int:
    return int(os.environ.get("MVVDP_TEST_CPU_LOAD", "0") or 0)


@pytest.fixture(scope="module")
def env_load():
    """CPU burners as many as MVVDP_TEST_CPU_LOAD says, for a whole test module."""
    with cpu_load(env_cpu_load()) as burners:
        yield burners
