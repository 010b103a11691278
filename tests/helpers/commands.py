"""The package's commands in fresh interpreters of this checkout: ``anomalib``, scripts, ``python -c``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ANOMALIB = str(Path(sys.executable).parent / "anomalib")
CONFIGS = REPO / "configs"


def subprocess_env(**env: str) -> dict[str, str]:
    """The environment of a fresh interpreter of this checkout: this environment with this checkout's package first on
    ``PYTHONPATH``, Python's default warning filters (an inherited ``PYTHONWARNINGS`` is dropped), and ``env``."""
    path = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    inherited = {name: value for name, value in os.environ.items() if name != "PYTHONWARNINGS"}
    return {**inherited, "PYTHONPATH": path, **env}


def anomalib_cli(
    *args: str | Path, cwd: Path = REPO, returncode: int | None = 0, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``anomalib ARGS`` in a fresh interpreter of this environment (with its start-up hook), output captured.

    The returned process also has ``output``: its stdout, then its stderr.

    Args:
        args: The command line after ``anomalib``.
        cwd: Where it runs.
        returncode: The exit status it must end with (``None``: any).
        env: Environment variables to set for it (a 200-column console is set; see :func:`subprocess_env`).
    """
    environment = subprocess_env(COLUMNS="200", **(env or {}))
    process = subprocess.run(
        [ANOMALIB, *map(str, args)], cwd=cwd, env=environment, capture_output=True, text=True, timeout=900, check=False
    )
    process.output = process.stdout + process.stderr
    if returncode is not None:
        assert process.returncode == returncode, process.output[-5000:]
    return process


def predict_refusal(capsys: pytest.CaptureFixture[str], *args: str | Path) -> str:
    """``anomalib-faprompt-predict ARGS`` in this process, which must end with exit status 2 and one line (after the
    command's name): that line."""
    from anomalib_faprompt.inference.cli import PROG, main

    with pytest.raises(SystemExit) as exited:
        main([str(arg) for arg in args])
    assert exited.value.code == 2
    *_, what, line = capsys.readouterr().err.rstrip().splitlines()
    assert what == f"{PROG}:"
    return line
