"""anomalib's Engine as the tests run it: one CPU, nothing printed but what the run itself prints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from anomalib.engine import Engine

QUIET = {
    "accelerator": "cpu",
    "devices": 1,
    "logger": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
}


def cpu_engine(root: Path | None = None, **kwargs: Any) -> Engine:
    """anomalib's ``Engine`` on one CPU without logger, progress bar or model summary.

    Args:
        root: Its ``default_root_dir`` (``None``: anomalib's default, ``./results``).
        kwargs: Further arguments of ``Engine`` (and of Lightning's ``Trainer``); they override the settings above.
    """
    settings = {**QUIET, **({} if root is None else {"default_root_dir": root})}
    return Engine(**{**settings, **kwargs})
