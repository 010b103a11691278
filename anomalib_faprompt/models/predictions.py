"""The scores of ``predict``, as a CSV file in the run's folder, whether or not the visualiser is on.

anomalib's ``predict`` keeps its results in memory (the return value of ``Engine.predict``) and, with a
visualiser, in images; with the visualiser off, a command-line user gets nothing to read.
:class:`PredictionScoresWriter` (one of the models' callbacks) writes ``predictions.csv`` into the run's
folder (``default_root_dir``): one row per image with its file, its score and its predicted label (1:
anomalous, 0: normal, as the post-processor decided), and says where in one log line. A model with a
``false_alarm_rate`` adds each image's conformal p-value against its category's calibration scores and the image
threshold its label was decided at (:data:`CALIBRATED_COLUMNS`).

The columns and how each is read from a batch of results are defined once (:data:`PREDICTION_COLUMNS`), and the
file is written by :class:`PredictionsFile`: ``anomalib predict`` (through the callback) and the exported model's
predict command (:mod:`anomalib_faprompt.inference`) write the same file.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from anomalib.data import Batch
from lightning.pytorch import Callback, LightningModule, Trainer

from anomalib_faprompt.files import unused_stem

__all__ = [
    "CALIBRATED_COLUMNS",
    "PREDICTIONS_COLUMNS",
    "PREDICTION_COLUMNS",
    "PredictionScoresWriter",
    "PredictionsFile",
    "prediction_rows",
]

logger = logging.getLogger(__name__)


def _files(batch: Batch, size: int) -> list[str]:
    return list(batch.image_path) if batch.image_path is not None else [""] * size


def _scores(batch: Batch, size: int) -> list[str]:
    del size
    return list(map(repr, batch.pred_score.flatten().tolist()))


def _labels(batch: Batch, size: int) -> list[int | str]:
    return batch.pred_label.flatten().int().tolist() if batch.pred_label is not None else [""] * size


# Each column of predictions.csv and its values for a batch of ``size`` images (those with a ``pred_score``).
PREDICTION_COLUMNS: dict[str, Callable[[Batch, int], list[Any]]] = {"file": _files, "score": _scores, "label": _labels}
PREDICTIONS_COLUMNS = tuple(PREDICTION_COLUMNS)
# A calibrated model's rows go on with the p-value and the image threshold (PredictionScoresWriter adds them).
CALIBRATED_COLUMNS = (*PREDICTIONS_COLUMNS, "p_value", "threshold")


def prediction_rows(batch: Batch) -> list[tuple[Any, ...]]:
    """The rows of predictions.csv for a batch of results: one per image with a score, in :data:`PREDICTION_COLUMNS`."""
    if batch.pred_score is None:
        return []
    size = batch.pred_score.numel()
    return list(zip(*(values(batch, size) for values in PREDICTION_COLUMNS.values()), strict=True))


class PredictionsFile:
    """A predict run's CSV file: the header, then rows appended batch by batch; renamed when the run stops.

    The file is ``<folder>/<stem><ending><suffix>`` for the first ``<stem>``, ``<stem>_1``, ... that no earlier run
    wrote (complete or incomplete): no file is replaced.

    Args:
        folder: The run's folder.
        file_name: The preferred file name, e.g. ``predictions.csv``.
        ending: Put between the stem and the suffix (``.rank<R>`` for one process of several).
        columns: The header: :data:`PREDICTIONS_COLUMNS`, or :data:`CALIBRATED_COLUMNS` with the cells after them
            given to :meth:`append`.
    """

    def __init__(
        self,
        folder: Path,
        file_name: str = "predictions.csv",
        ending: str = "",
        columns: Sequence[str] = PREDICTIONS_COLUMNS,
    ) -> None:
        name = Path(file_name)
        endings = (f"{ending}{name.suffix}", f"{ending}.incomplete{name.suffix}")
        self.path = folder / f"{unused_stem(folder, name.stem, endings)}{ending}{name.suffix}"
        self.rows = 0
        self.columns = tuple(columns)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("w", newline="") as file:
            csv.writer(file).writerow(self.columns)

    def append(self, batch: Batch, more: Sequence[tuple[Any, ...]] | None = None) -> None:
        """Append a row per image of the batch (its score and label after post-processing), ``more`` cells after."""
        rows = prediction_rows(batch)
        if more is not None:
            rows = [(*row, *cells) for row, cells in zip(rows, more, strict=True)]
        with self.path.open("a", newline="") as file:
            csv.writer(file).writerows(rows)
        self.rows += len(rows)

    def finish(self) -> None:
        """Say where the scores are, in one line."""
        logger.info("Scores of %d image(s) (%s; label 1: anomalous): %s", self.rows, ", ".join(self.columns), self.path)

    def stop(self, stopped_by: str) -> None:
        """Rename the file of a run that stopped to ``<name>.incomplete.csv``, so that none looks complete; say so.

        Args:
            stopped_by: What stopped the run (the error's class name).
        """
        if not self.path.exists():
            return
        self.path = self.path.replace(self.path.with_name(f"{self.path.stem}.incomplete{self.path.suffix}"))
        if self.rows:
            logger.warning(
                "predict stopped (%s) after %d images; their scores are in %s", stopped_by, self.rows, self.path
            )
            return
        logger.warning("predict stopped (%s) before any image was scored; %s has no rows", stopped_by, self.path)


class PredictionScoresWriter(Callback):
    """Writes ``<default_root_dir>/<file_name>`` during ``predict``: ``file,score,label``, one row per image.

    With a model's ``false_alarm_rate``, also ``p_value`` and ``threshold`` (:data:`CALIBRATED_COLUMNS`).

    With several processes, each writes its own share to ``<stem>.rank<R>.csv``. A second ``predict`` into the
    same folder (the same ``Engine``) writes ``<stem>_1.csv``, and so on: no file is replaced. A ``predict`` that
    stops with an error renames its file to ``<name>.incomplete.csv``, rows so far included, and says so.

    Args:
        file_name: Name of the CSV file in the run's folder.
    """

    def __init__(self, file_name: str = "predictions.csv") -> None:
        super().__init__()
        self.file_name = file_name
        self.file: PredictionsFile | None = None
        self._writing = False

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start the file with its header."""
        calibrated = getattr(pl_module, "hparams", {}).get("false_alarm_rate") is not None
        ending = f".rank{trainer.global_rank}" if trainer.world_size > 1 else ""
        columns = CALIBRATED_COLUMNS if calibrated else PREDICTIONS_COLUMNS
        self.file = PredictionsFile(Path(trainer.default_root_dir), self.file_name, ending, columns)
        self._writing = True

    def on_predict_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,  # noqa: ANN401
        batch: Any,  # noqa: ANN401
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Append a row per image of the batch (score and label after post-processing; p-value and threshold)."""
        del trainer, batch, batch_idx
        more = None
        if self.file.columns == CALIBRATED_COLUMNS and outputs.pred_score is not None:
            calibration = pl_module.calibration_of(dataloader_idx)
            threshold = pl_module.label_threshold(dataloader_idx)
            threshold_cell = "" if math.isnan(threshold) else repr(threshold)
            values = calibration.p_values(outputs.pred_score.flatten().tolist()).tolist()
            more = [(repr(value), threshold_cell) for value in values]
        self.file.append(outputs, more)

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Say where the scores are, in one line."""
        del trainer, pl_module
        self._writing = False
        self.file.finish()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        """Rename the file of a ``predict`` that stopped to ``<name>.incomplete.csv``, so that none looks complete."""
        del trainer, pl_module
        if self._writing:
            self._writing = False
            self.file.stop(type(exception).__name__)
