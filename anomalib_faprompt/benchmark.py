"""Gathering anomalib benchmark results of models that differ in configuration keys and metrics.

anomalib 2.7's ``BenchmarkJob.collect`` builds its table from the keys of the first job's result, so a
benchmark over models with different ``init_args`` (FAPrompt's ``weights``, none for WinClip) or different
test metrics (AUPR and AUPRO for FAPrompt and AnomalyCLIP, F1 scores for WinClip) stops with a ``KeyError``
and writes no ``results.csv``. The start-up hook (:mod:`anomalib_faprompt._register`) replaces it with
:func:`collect`, which gives the same table when all keys agree and leaves a cell empty where a job has
no such key.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

__all__ = ["collect"]


def collect(results: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per job, one column per key of any job (in order of first appearance), empty where absent.

    Args:
        results: The result dicts of the benchmark jobs.

    Returns:
        The results table.
    """
    return pd.DataFrame(results)
