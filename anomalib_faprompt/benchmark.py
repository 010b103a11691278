"""Two fixes that let anomalib 2.7's benchmark pipeline compare zero-shot models of different kinds.

The start-up hook (:mod:`anomalib_faprompt._register`) applies them to anomalib's benchmark job module
when it is imported (:func:`patch_benchmark_job`); nothing else of anomalib changes.

1. ``BenchmarkJob.run`` calls ``engine.fit(model, datamodule)``, which passes the datamodule in the place
   of the training dataloaders. Lightning's ``Trainer.fit`` accepts that, but anomalib's ``Engine.fit``
   hands zero-shot models (WinClip; FAPrompt and AnomalyCLIP with trained ``weights``) to
   ``Trainer.validate`` without it, and the job fails. :class:`BenchmarkEngine` takes a datamodule in
   that place as the datamodule, as Lightning does.
2. ``BenchmarkJob.collect`` builds the table from the keys of the first job's result, so models with
   different ``init_args`` (``weights`` for FAPrompt, none for WinClip) or test metrics (AUPR and AUPRO,
   F1 scores for WinClip) stop it with a ``KeyError`` and no ``results.csv`` is written. :func:`collect`
   gives the same table when all keys agree, and leaves a cell empty where a job has no such key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from anomalib.engine import Engine
from anomalib.models import AnomalibModule
from lightning.pytorch import LightningDataModule

__all__ = ["BenchmarkEngine", "collect", "patch_benchmark_job"]


class BenchmarkEngine(Engine):
    """anomalib's :class:`~anomalib.engine.Engine`, taking a datamodule given as training dataloaders."""

    def fit(
        self,
        model: AnomalibModule,
        train_dataloaders: Any = None,
        val_dataloaders: Any = None,
        datamodule: LightningDataModule | None = None,
        ckpt_path: str | Path | None = None,
    ) -> None:
        """``Engine.fit``; a datamodule passed as ``train_dataloaders`` is used as ``datamodule``."""
        if datamodule is None and isinstance(train_dataloaders, LightningDataModule):
            train_dataloaders, datamodule = None, train_dataloaders
        super().fit(model, train_dataloaders, val_dataloaders, datamodule, ckpt_path)


def collect(results: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per job, one column per key of any job (in order of first appearance), empty where absent.

    Args:
        results: The result dicts of the benchmark jobs.

    Returns:
        The results table.
    """
    return pd.DataFrame(results)


def patch_benchmark_job(module: Any) -> None:
    """Apply both fixes to anomalib's benchmark job module."""
    module.Engine = BenchmarkEngine
    module.BenchmarkJob.collect = staticmethod(collect)
