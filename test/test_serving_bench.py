"""The serving benchmark: refuses without a GPU unless told to run the tiny model, then prints its table."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "bench_serving.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a CUDA GPU")
def test_refuses_clearly_without_a_gpu():
    result = _run()
    assert result.returncode == 2 and "no CUDA GPU" in result.stderr and "--allow-cpu" in result.stderr
    result = _run("--allow-cpu", "--config", "wan22")
    assert result.returncode == 2 and "tiny" in result.stderr


def test_tiny_on_cpu_prints_the_table():
    args = ["--config", "tiny", "--steps", "1", "--warmup", "0", "--repeats", "1", "--points", "3000"]
    result = _run(*args, *([] if torch.cuda.is_available() else ["--allow-cpu"]))
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    header = lines[0].split("|")[1:-1]
    assert [h.strip() for h in header[:2]] == ["steps", "preview"] and "total" in lines[0]
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in lines[1:3]]
    assert [(row[0], row[1]) for row in rows] == [("1", "no"), ("1", "yes")]
    total = header.index(" total ")
    assert all(float(row[total]) > 0 for row in rows)
    assert any(line.startswith("| torch reference |") for line in lines)
