"""Every test in this folder is ``slow``: ``python -m pytest -m "not slow"`` runs the unit tests alone.

A test is slow, and belongs here, when it starts a subprocess (the ``anomalib`` command line, a script), exports,
runs a pipeline, trains through anomalib's Engine (the trained checkpoints of ``tests/conftest.py`` included) or
takes more than about two seconds.
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests collected from this folder ``slow``."""
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.slow)
