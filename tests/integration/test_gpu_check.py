"""``benchmarks/gpu_check.sh``, the one command a GPU machine runs, works end to end (its CPU dry run).

GPU time is short and lent rarely: a broken step found there costs a whole device session.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.commands import REPO

STEPS = [
    "environment",
    "blur_vs_scipy",
    "models_autocast",
    "benchmark",
    "benchmark_tf32",
    "profile_bf16",
    "synthetic_data",
    "cli_train_bf16-mixed",
    "cli_test_bf16-mixed",
    "cli_predict_bf16-mixed",
]


@pytest.mark.skipif(sys.platform != "linux", reason="a bash script")
def test_cpu_dry_run_passes_every_step(tmp_path):
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "GPU_CHECK_DEVICE": "cpu",
        "GPU_CHECK_LOG_DIR": str(tmp_path / "logs"),
        "PYTHON": sys.executable,
        "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")]),
        "TMPDIR": str(tmp_path),
    }
    result = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh")],
        capture_output=True, text=True, env=env, timeout=900, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-5000:]
    summary = result.stdout.split("=== summary (device cpu) ===")[-1]
    verdicts = dict(re.findall(r"^(\S+) +(PASS|FAIL) ", summary, flags=re.MULTILINE))
    assert verdicts == dict.fromkeys(STEPS, "PASS")
    assert "failed steps: 0" in result.stdout
    # The profile step prints torch.profiler's table.
    assert "Self CPU time total" in result.stdout
