"""An anomalib ``Evaluator`` that computes the test metrics per category and their mean over categories.

Zero-shot results are reported per category of a target dataset and averaged over categories (not
pooled over all images). The test stage gets one dataloader per category (see
:class:`anomalib_faprompt.data.AuxiliaryDataModule`); this evaluator computes every test metric on
each dataloader separately, then logs

- ``<category>/<metric>`` for each category (when there is more than one), and
- ``<metric>`` as the mean over categories (with a single dataloader: that dataloader's value, as
  anomalib's ``Evaluator`` logs it),

writes the table (rows: categories and ``mean``) as CSV (fractions) and Markdown (percentages, one
decimal, as in the papers' tables) into the trainer's ``default_root_dir``, and prints it with the
results folder and the checkpoint. Lightning's own per-dataloader table, which repeats these
epoch-level values under every dataloader, is not printed.

No silent numbers: a metric that cannot be computed on a category is NaN (an empty cell that the mean
skips) with a note naming the category and the reason: image metrics without a defect image or
without a normal image, pixel metrics without masks, without a defect pixel or without a normal pixel.
A category whose dataloader yields no image (empty folders) gets a row of empty cells and the note
"no images". Files left out as unreadable (the data module's ``skip_unreadable``) are counted in a note of their
category.

A model with a ``false_alarm_rate`` (calibrated thresholds) adds two columns, from the labels: ``image_false_alarms``,
the share of the category's normal test images flagged (the realised false-alarm rate), and
``image_defects_flagged``, the share of its defect test images flagged.

Several devices (Lightning DDP): every rank updates the metrics with its own share of the images; at the
end of each category all ranks sum their counts and compute together (torchmetrics gathers the states of
every rank), so the table is the one a single process gives. Lightning's ``DistributedSampler`` pads the
ranks' shares to equal length by repeating the first samples of the dataloader at the end of some
shares: each rank drops those repeats (the samples past its own ``len(range(rank, N, world_size))``), in
validation as in the test. Without a distributed sampler every rank sees every sample, and rank 0 alone
keeps them. Only rank 0 writes and prints the tables.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from anomalib.metrics import AUPR, AUROC, AnomalibMetric, Evaluator
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torch import distributed
from torch.utils.data import DistributedSampler

from anomalib_faprompt.data.categories import category_labels
from anomalib_faprompt.report.tables import console_table, results_rows, write_tables

from .aupro import AUPRO, PaperAUPRO

__all__ = [
    "AUPRO_DEFINITIONS",
    "DEFECTS_FLAGGED",
    "FALSE_ALARMS",
    "PerCategoryEvaluator",
    "category_names",
    "default_test_metrics",
]

AUPRO_DEFINITIONS = {"exact": AUPRO, "paper": PaperAUPRO}

FALSE_ALARMS = "image_false_alarms"
DEFECTS_FLAGGED = "image_defects_flagged"

# Target fields a metric can score against: what the field holds, its positives and its negatives.
TARGETS = {
    "gt_label": ("image labels", "defect image", "normal image"),
    "gt_mask": ("masks", "defect pixel", "normal pixel"),
}


def default_val_metrics() -> list[AnomalibMetric]:
    """Image and pixel AUROC."""
    return [
        AUROC(fields=["pred_score", "gt_label"], prefix="image_"),
        AUROC(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
    ]


def default_test_metrics(aupro: Sequence[str] = ("exact",)) -> list[AnomalibMetric]:
    """Image AUROC and AUPR, pixel AUROC, and pixel AUPRO in each of the ``aupro`` definitions.

    Args:
        aupro: ``"exact"`` (``pixel_AUPRO``, anomalib's value: the exact curve to FPR 0.3, divided by 0.3) and/or
            ``"paper"`` (``pixel_AUPRO_paper``, the papers' evaluation code, see :class:`PaperAUPRO`).

    Returns:
        The metrics.
    """
    unknown = [name for name in aupro if name not in AUPRO_DEFINITIONS]
    if unknown or not aupro or len(set(aupro)) != len(aupro):
        msg = f"aupro={list(aupro)}: give one or both of {sorted(AUPRO_DEFINITIONS)}, each at most once."
        raise ValueError(msg)
    return [
        AUROC(fields=["pred_score", "gt_label"], prefix="image_"),
        AUPR(fields=["pred_score", "gt_label"], prefix="image_"),
        AUROC(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
        *(AUPRO_DEFINITIONS[name](fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False) for name in aupro),
    ]


def category_names(trainer: Trainer) -> list[str]:
    """Names of the test dataloaders (:func:`~anomalib_faprompt.data.categories.category_labels`)."""
    loaders = trainer.test_dataloaders
    count = len(loaders) if isinstance(loaders, list | tuple) else 1
    return category_labels(getattr(trainer, "datamodule", None), count)


def _distributed() -> bool:
    return distributed.is_available() and distributed.is_initialized() and distributed.get_world_size() > 1


def _own_samples(loaders: Any, dataloader_idx: int) -> int | None:  # noqa: ANN401
    """How many of the samples this rank gets from a dataloader are its own, not repeats (``None``: all)."""
    if not _distributed():
        return None
    sampler = getattr(loaders[dataloader_idx] if isinstance(loaders, list | tuple) else loaders, "sampler", None)
    if isinstance(sampler, DistributedSampler):
        return None if sampler.drop_last else len(range(sampler.rank, len(sampler.dataset), sampler.num_replicas))
    return None if distributed.get_rank() == 0 else 0


def _skipped_files(loaders: Any, dataloader_idx: int) -> set[str]:  # noqa: ANN401
    """The files of a dataloader's dataset that its loader left out as unreadable, on all ranks together.

    A loader that skips nothing (anything but the package's ``SkippingDataLoader``, or ``skip_unreadable`` off)
    gives none. Called on every rank in the same order (it gathers the sets across ranks).
    """
    loader = loaders[dataloader_idx] if isinstance(loaders, list | tuple) else loaders
    skipped = getattr(loader, "skipped", None) or {}
    samples = getattr(getattr(loader, "dataset", None), "samples", None)
    files: set[str] = set()
    if skipped and samples is not None:
        columns = [column for column in ("image_path", "mask_path") if column in samples]
        paths = {str(path) for column in columns for path in samples[column] if isinstance(path, str) and path}
        files = set(skipped) & paths
    if _distributed():
        gathered: list[set[str] | None] = [None] * distributed.get_world_size()
        distributed.all_gather_object(gathered, files)
        files = set().union(*(part for part in gathered if part))
    return files


def _skipped_note(files: set[str]) -> list[str]:
    """The table note for a category whose unreadable files were left out, or none."""
    return [f"{len(files)} unreadable file(s) left out (skip_unreadable)."] if files else []


def _first_samples(batch: Any, count: int) -> Any:  # noqa: ANN401
    """The batch with its first ``count`` samples."""
    values = {field.name: getattr(batch, field.name) for field in dataclasses.fields(batch)}
    return dataclasses.replace(batch, **{name: value[:count] for name, value in values.items() if value is not None})


class PerCategoryEvaluator(Evaluator):
    """Evaluator whose test metrics are computed per test dataloader (one per category) and averaged.

    Args:
        val_metrics: Validation metrics (computed as by anomalib's ``Evaluator``); ``None``: image and pixel AUROC.
        test_metrics: Test metrics, computed per category; ``None``: :func:`default_test_metrics` with ``aupro``.
        compute_on_cpu: Keep metric states on the CPU (with one process; several keep them on their device).
        results_name: File name (without suffix) of the CSV and Markdown tables; ``None`` writes none.
        aupro: Pixel AUPRO definitions of the default test metrics: ``["exact"]`` (anomalib's value, named
            ``pixel_AUPRO``), ``["paper"]`` (the papers' evaluation code, ``pixel_AUPRO_paper``) or both.

    Example:
        In a config, the papers' AUPRO beside the exact one::

            model:
              init_args:
                evaluator:
                  class_path: anomalib_faprompt.metrics.PerCategoryEvaluator
                  init_args:
                    aupro: [exact, paper]
    """

    def __init__(
        self,
        val_metrics: AnomalibMetric | Sequence[AnomalibMetric] | None = None,
        test_metrics: AnomalibMetric | Sequence[AnomalibMetric] | None = None,
        compute_on_cpu: bool = True,
        results_name: str | None = "per_category_results",
        aupro: Sequence[str] = ("exact",),
    ) -> None:
        if test_metrics is not None and list(aupro) != ["exact"]:
            msg = (
                f"aupro={list(aupro)} chooses the AUPRO of the default test metrics, and test_metrics are given: "
                "add PaperAUPRO(fields=['anomaly_map', 'gt_mask'], prefix='pixel_', strict=False) to them instead."
            )
            raise ValueError(msg)
        super().__init__(
            val_metrics=default_val_metrics() if val_metrics is None else val_metrics,
            test_metrics=default_test_metrics(aupro) if test_metrics is None else test_metrics,
            compute_on_cpu=compute_on_cpu,
        )
        self.results_name = results_name
        self.targets = sorted({field for metric in self.test_metrics for field in metric.fields if field in TARGETS})
        self.category_results: dict[str, dict[str, float]] = {}
        self.notes: list[str] = []
        self._category_notes: dict[str, list[str]] = {}
        self._dataloader_index: int | None = None
        self._seen = 0
        self._calibrated = False
        self._counts = self._zero_counts()

    def _zero_counts(self) -> torch.Tensor:
        """Images; for each target field, elements with a value and positive ones; normal and defect images, flagged."""
        return torch.zeros(1 + 2 * len(self.targets) + 4, dtype=torch.int64)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Keep the states on the CPU with one process; with several, on the device (where they are gathered)."""
        if trainer.world_size > 1:
            # The evaluator drops the samples the distributed sampler repeats: Lightning's advice does not apply.
            warnings.filterwarnings("ignore", message=r"Using `DistributedSampler` with the dataloaders. During")
            return
        super().setup(trainer, pl_module, stage)

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start with no results and fresh metrics; with calibrated thresholds, count flagged images too."""
        del trainer
        self._calibrated = (getattr(pl_module, "hparams", None) or {}).get("false_alarm_rate") is not None
        self.category_results = {}
        self.notes = []
        self._category_notes = {}
        self._start_category(None)

    def _start_category(self, dataloader_idx: int | None) -> None:
        self._dataloader_index = dataloader_idx
        self._seen = 0
        self._counts = self._zero_counts()
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
        """Update the counts and metrics with this rank's own samples; a new dataloader first ends the last one."""
        del pl_module, outputs, batch_idx
        if dataloader_idx != self._dataloader_index:
            if self._dataloader_index is not None:
                self._finish_category(trainer)
            self._start_category(dataloader_idx)
        batch = self._own_part(batch, _own_samples(trainer.test_dataloaders, dataloader_idx))
        # Every rank updates every metric, with no sample if need be: each then gathers a state of the same form.
        self._counts[0] += len(batch)
        for index, field in enumerate(self.targets):
            value = getattr(batch, field, None)
            if value is not None:
                self._counts[1 + 2 * index] += value.numel()
                self._counts[2 + 2 * index] += torch.count_nonzero(value).item()
        if batch.gt_label is not None and batch.pred_label is not None:
            defect, flagged = batch.gt_label.flatten().bool(), batch.pred_label.flatten().bool()
            start = 1 + 2 * len(self.targets)
            for offset, value in enumerate(
                ((~defect).sum(), (~defect & flagged).sum(), defect.sum(), (defect & flagged).sum())
            ):
                self._counts[start + offset] += int(value)
        for metric in self.test_metrics:
            metric.update(batch)

    def _own_part(self, batch: Any, own: int | None) -> Any:  # noqa: ANN401
        """The batch without the samples past this rank's ``own`` ones in the current dataloader."""
        size = len(batch)
        if own is not None and self._seen + size > own:
            batch = _first_samples(batch, max(0, own - self._seen))
        self._seen += size
        return batch

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Count the validation samples afresh (several ranks drop the sampler's repeats as in the test)."""
        del trainer, pl_module
        self._dataloader_index, self._seen = None, 0

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: STEP_OUTPUT | None,
        batch: Any,  # noqa: ANN401
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Update the validation metrics with this rank's own samples."""
        del pl_module, outputs, batch_idx
        if dataloader_idx != self._dataloader_index:
            self._dataloader_index, self._seen = dataloader_idx, 0
        batch = self._own_part(batch, _own_samples(trainer.val_dataloaders, dataloader_idx))
        for metric in self.val_metrics:
            metric.update(batch)

    def _summed_counts(self, trainer: Trainer) -> tuple[int, dict[str, tuple[int, int]], list[int]]:
        """Images, ``field: (elements, positives)``, and normal images, flagged, defect images, flagged: all ranks."""
        counts = self._counts
        if _distributed():
            counts = counts.to(trainer.strategy.root_device)
            distributed.all_reduce(counts)
        counts = counts.tolist()
        fields = {field: (counts[1 + 2 * index], counts[2 + 2 * index]) for index, field in enumerate(self.targets)}
        return counts[0], fields, counts[1 + 2 * len(self.targets) :]

    @staticmethod
    def _missing(metric: AnomalibMetric, counts: dict[str, tuple[int, int]]) -> str | None:
        """Why ``metric`` cannot be computed on a category with these counts, or ``None``."""
        field = next((field for field in metric.fields if field in TARGETS), None)
        if field is None:
            return None
        what, positive, negative = TARGETS[field]
        elements, positives = counts[field]
        if elements == 0:
            return f"no {what}"
        if positives == 0:
            return f"no {positive}"
        if positives == elements:
            return f"no {negative}"
        return None

    def _finish_category(self, trainer: Trainer) -> None:
        """Compute the metrics of the current dataloader's category (all ranks together) and store them."""
        name = category_names(trainer)[self._dataloader_index]
        images, counts, flags = self._summed_counts(trainer)
        values, missing = {}, {}
        for metric in self.test_metrics:
            # The same decision on every rank (the counts are summed over ranks): compute() gathers from all of them.
            reason = "no images" if images == 0 else self._missing(metric, counts)
            value = math.nan
            if reason is None:
                computed = metric.compute()
                value = math.nan if computed is None else float(computed)
                if not math.isfinite(value):
                    value, reason = math.nan, "not defined for these maps and labels"
            values[metric.name] = value
            if reason is not None:
                missing.setdefault(reason, []).append(metric.name)
        if self._calibrated:
            for column, (total, flagged), absent in (
                (FALSE_ALARMS, flags[:2], "no normal image"),
                (DEFECTS_FLAGGED, flags[2:], "no defect image"),
            ):
                values[column] = flagged / total if total else math.nan
                if not total and images:
                    missing.setdefault(absent, []).append(column)
        self.category_results[name] = values
        if images == 0:
            self._category_notes[name] = ["no images."]
        else:
            self._category_notes[name] = [
                f"{', '.join(names)} not computable: {why}." for why, names in missing.items()
            ]
        self._category_notes[name] += _skipped_note(_skipped_files(trainer.test_dataloaders, self._dataloader_index))
        self._start_category(None)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Log per-category values and their means; write and print the tables."""
        if self._dataloader_index is not None:
            self._finish_category(trainer)
        self._order_and_fill(trainer, category_names(trainer))
        logged = self.mean_results()
        if len(self.category_results) > 1:
            for category, values in self.category_results.items():
                logged.update({f"{category}/{name}": value for name, value in values.items()})
        for name, value in logged.items():
            if trainer.barebones:
                trainer.callback_metrics[name] = torch.tensor(value)
                trainer.logged_metrics[name] = torch.tensor(value)
            else:
                # Identical on every rank; the max over ranks keeps them exact.
                pl_module.log(name, value, sync_dist=True, reduce_fx="max")
        if self.category_results and trainer.is_global_zero:
            self._report(trainer)

    def _order_and_fill(self, trainer: Trainer, names: list[str]) -> None:
        """Categories in dataloader order; one without images gets a row of NaN and the note "no images"."""
        columns = [metric.name for metric in self.test_metrics]
        empty = dict.fromkeys([*columns, *((FALSE_ALARMS, DEFECTS_FLAGGED) if self._calibrated else ())], math.nan)
        for index, name in enumerate(names):
            if name not in self.category_results:
                self.category_results[name] = dict(empty)
                skipped = _skipped_files(trainer.test_dataloaders, index)
                self._category_notes[name] = ["no images.", *_skipped_note(skipped)]
        order = [*names, *(name for name in self.category_results if name not in names)]
        self.category_results = {name: self.category_results[name] for name in order}
        self.notes = [f"{name}: {note}" for name in order for note in self._category_notes.get(name, [])]

    def _report(self, trainer: Trainer) -> None:
        """Write the tables; print the table and one line naming the results folder, its files and the checkpoint."""
        where = []
        hparams = getattr(getattr(trainer, "lightning_module", None), "hparams", None) or {}
        notes = list(self.notes)
        if hparams.get("k_shot"):
            against = (
                f"every category scored against the same references from `{hparams['few_shot_source']}`"
                if hparams.get("few_shot_source")
                else "each category scored against its own normal references"
            )
            notes.append(f"k_shot = {hparams['k_shot']}: {against} (few_shot_references.csv).")
        if hparams.get("false_alarm_rate") is not None:
            notes.append(self._calibration_note(trainer, hparams))
        if self.results_name:
            directory = Path(trainer.default_root_dir)
            csv_path, markdown_path = write_tables(self.category_results, directory, self.results_name, notes)
            where.append(f"Results in {directory.resolve()}: {csv_path.name}, {markdown_path.name}")
        checkpoint = getattr(trainer, "ckpt_path", None)
        callback = getattr(trainer, "checkpoint_callback", None)
        if not checkpoint and callback is not None:
            checkpoint = callback.best_model_path or callback.last_model_path
        weights = hparams.get("weights")
        if checkpoint or not weights:
            where.append(f"checkpoint: {checkpoint}" if checkpoint else "no checkpoint")
        else:
            where.append(f"weights: {weights}")
        print(f"\n{console_table(self.category_results, notes)}\n{'; '.join(where)}", flush=True)  # noqa: T201
        test_loop = getattr(trainer, "test_loop", None)
        if test_loop is not None:
            test_loop.verbose = False  # this table replaces Lightning's per-dataloader one

    @staticmethod
    def _calibration_note(trainer: Trainer, hparams: dict) -> str:
        """What the false-alarm and flagged-defect columns are, and at which thresholds."""
        model = getattr(trainer, "lightning_module", None)
        source = hparams.get("calibration_source")
        basis = (
            "the thresholds of the post-processor given (the calibrated ones are listed)"
            if getattr(model, "post_processor_given", False)
            else f"thresholds calibrated on the normal images of `{source}`"
            if source
            else "each category's thresholds, calibrated on its normal training images"
        )
        return (
            f"false_alarm_rate = {hparams['false_alarm_rate']}: labels at {basis} (calibration_thresholds.csv); "
            "false alarms: normal test images flagged; defects flagged: defect test images flagged."
        )

    def mean_results(self) -> dict[str, float]:
        """Mean of each metric over the categories where it was computed (NaN where none)."""
        names, rows = results_rows(self.category_results)
        return dict(zip(names, rows[-1][1], strict=True))
