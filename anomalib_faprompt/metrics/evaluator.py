"""An anomalib ``Evaluator`` that computes the test metrics per category and their mean over categories.

Zero-shot results are reported per category of a target dataset and averaged over categories (not
pooled over all images). The test stage gets one dataloader per category (see
:class:`anomalib_faprompt.data.AuxiliaryDataModule`); this evaluator computes every test metric on
each dataloader separately, then logs

- ``<category>/<metric>`` for each category (when there is more than one), and
- ``<metric>`` as the mean over categories (with a single dataloader: that dataloader's value, as
  anomalib's ``Evaluator`` logs it),

and writes the table (rows: categories and ``mean``) as CSV (fractions) and Markdown (percentages,
one decimal, as in the papers' tables) into the trainer's ``default_root_dir``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from anomalib.metrics import Evaluator
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities.types import STEP_OUTPUT

from ..tables import results_rows, write_tables

__all__ = ["PerCategoryEvaluator", "category_names"]


def category_names(trainer: Trainer) -> list[str]:
    """Names of the test dataloaders: the datamodule's ``test_categories``, its ``category``, or indices."""
    loaders = trainer.test_dataloaders
    count = len(loaders) if isinstance(loaders, list | tuple) else 1
    datamodule = getattr(trainer, "datamodule", None)
    names = getattr(datamodule, "test_categories", None)
    if names is None and count == 1:
        names = [getattr(datamodule, "category", None) or "all"]
    if names is None or len(names) != count:
        names = [f"dataloader_{index}" for index in range(count)]
    return list(names)


class PerCategoryEvaluator(Evaluator):
    """Evaluator whose test metrics are computed per test dataloader (one per category) and averaged.

    Args:
        val_metrics: Validation metrics (computed as by anomalib's ``Evaluator``).
        test_metrics: Test metrics, computed per category.
        compute_on_cpu: Keep metric states on the CPU.
        results_name: File name (without suffix) of the CSV and Markdown tables; ``None`` writes none.
    """

    def __init__(
        self,
        val_metrics: Any = None,  # noqa: ANN401
        test_metrics: Any = None,  # noqa: ANN401
        compute_on_cpu: bool = True,
        results_name: str | None = "per_category_results",
    ) -> None:
        super().__init__(val_metrics=val_metrics, test_metrics=test_metrics, compute_on_cpu=compute_on_cpu)
        self.results_name = results_name
        self.category_results: dict[str, dict[str, float]] = {}
        self._dataloader_index: int | None = None

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start with no results and fresh metrics."""
        del trainer, pl_module
        self.category_results = {}
        self._dataloader_index = None
        for metric in self.test_metrics:
            metric.reset()

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: STEP_OUTPUT | None,
        batch: Any,  # noqa: ANN401
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Update the metrics; on the first batch of a new dataloader, finish the previous category first."""
        del pl_module, outputs, batch_idx
        if self._dataloader_index is not None and dataloader_idx != self._dataloader_index:
            self._finish_category(trainer)
        self._dataloader_index = dataloader_idx
        for metric in self.test_metrics:
            metric.update(batch)

    def _finish_category(self, trainer: Trainer) -> None:
        """Compute the metrics of the current dataloader's category, store them and reset the metrics."""
        name = category_names(trainer)[self._dataloader_index]
        values = {}
        for metric in self.test_metrics:
            value = metric.compute()
            values[metric.name] = math.nan if value is None else float(value)
            metric.reset()
        self.category_results[name] = values

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Log per-category values and their means; write the tables."""
        if self._dataloader_index is not None:
            self._finish_category(trainer)
        self._dataloader_index = None
        logged = self.mean_results()
        if len(self.category_results) > 1:
            for category, values in self.category_results.items():
                logged.update({f"{category}/{name}": value for name, value in values.items()})
        for name, value in logged.items():
            if trainer.barebones:
                trainer.callback_metrics[name] = torch.tensor(value)
                trainer.logged_metrics[name] = torch.tensor(value)
            else:
                pl_module.log(name, value)
        if self.results_name and self.category_results and trainer.is_global_zero:
            write_tables(self.category_results, Path(trainer.default_root_dir), self.results_name)

    def mean_results(self) -> dict[str, float]:
        """Mean of each metric over the categories where it was computed (NaN where none)."""
        names, rows = results_rows(self.category_results)
        return dict(zip(names, rows[-1][1], strict=True))
