"""The policy benchmark script refuses to run the 5B configuration on a CPU without --allow-cpu."""

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "bench_policy.py"


def test_wan22_on_cpu_is_refused():
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--config", "wan22", "--device", "cpu"], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "--allow-cpu" in result.stderr

