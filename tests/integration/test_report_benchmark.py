"""``python -m anomalib_faprompt.report`` in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys


def test_module_command_on_an_empty_csv(tmp_path):
    path = tmp_path / "results.csv"
    path.write_text("")
    result = subprocess.run(
        [sys.executable, "-m", "anomalib_faprompt.report", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        (
            f"anomalib-faprompt-report: error: '{path}' is empty. "
            "Pass the results.csv that `anomalib benchmark` wrote after a job finished."
        )
    ]
