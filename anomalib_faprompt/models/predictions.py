"""The scores of ``predict``, as a CSV file in the run's folder, whether or not the visualiser is on.

anomalib's ``predict`` keeps its results in memory (the return value of ``Engine.predict``) and, with a
visualiser, in images; with the visualiser off, a command-line user gets nothing to read.
:class:`PredictionScoresWriter` (one of the models' callbacks) writes ``predictions.csv`` into the run's
folder (``default_root_dir``): one row per image with its file, its score and its predicted label (1:
anomalous, 0: normal, as the post-processor decided), and says where in one log line. A model with a
``false_alarm_rate`` adds each image's conformal p-value against its category's calibration scores and the image
threshold its label was decided at (:data:`CALIBRATED_COLUMNS`).
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from anomalib_faprompt.files import unused_stem

__all__ = ["CALIBRATED_COLUMNS", "PREDICTIONS_COLUMNS", "PredictionScoresWriter"]

logger = logging.getLogger(__name__)

PREDICTIONS_COLUMNS = ("file", "score", "label")
CALIBRATED_COLUMNS = (*PREDICTIONS_COLUMNS, "p_value", "threshold")


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
        self.path: Path | None = None
        self.rows = 0
        self.columns = PREDICTIONS_COLUMNS
        self._writing = False

    def _path(self, trainer: Trainer) -> Path:
        """``<stem>[.rank<R>].csv`` in the run's folder; ``<stem>_<N>...`` when an earlier predict wrote that one."""
        name = Path(self.file_name)
        rank = f".rank{trainer.global_rank}" if trainer.world_size > 1 else ""
        folder = Path(trainer.default_root_dir)
        endings = (f"{rank}{name.suffix}", f"{rank}.incomplete{name.suffix}")
        return folder / f"{unused_stem(folder, name.stem, endings)}{rank}{name.suffix}"

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start the file with its header."""
        calibrated = getattr(pl_module, "hparams", {}).get("false_alarm_rate") is not None
        self.columns = CALIBRATED_COLUMNS if calibrated else PREDICTIONS_COLUMNS
        self.path, self.rows, self._writing = self._path(trainer), 0, True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("w", newline="") as file:
            csv.writer(file).writerow(self.columns)

    def on_predict_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,  # noqa: ANN401
        batch: Any,  # noqa: ANN401
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Append a row per image of the batch (its score and label after post-processing; p-value and threshold)."""
        del trainer, batch, batch_idx
        scores = outputs.pred_score.flatten().tolist() if outputs.pred_score is not None else []
        labels = outputs.pred_label.flatten().int().tolist() if outputs.pred_label is not None else [""] * len(scores)
        files = list(outputs.image_path) if outputs.image_path is not None else [""] * len(scores)
        rows = list(zip(files, map(repr, scores), labels, strict=True))
        if self.columns == CALIBRATED_COLUMNS:
            calibration = pl_module.calibration_of(dataloader_idx)
            threshold = pl_module.label_threshold(dataloader_idx)
            threshold_cell = "" if math.isnan(threshold) else repr(threshold)
            values = calibration.p_values(scores).tolist()
            rows = [(*row, repr(value), threshold_cell) for row, value in zip(rows, values, strict=True)]
        with self.path.open("a", newline="") as file:
            csv.writer(file).writerows(rows)
        self.rows += len(scores)

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Say where the scores are, in one line."""
        del trainer, pl_module
        self._writing = False
        logger.info("Scores of %d image(s) (%s; label 1: anomalous): %s", self.rows, ", ".join(self.columns), self.path)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        """Rename the file of a ``predict`` that stopped to ``<name>.incomplete.csv``, so that none looks complete."""
        del trainer, pl_module
        if not self._writing or self.path is None or not self.path.exists():
            return
        self._writing = False
        incomplete = self.path.with_name(f"{self.path.stem}.incomplete{self.path.suffix}")
        self.path = self.path.replace(incomplete)
        stopped_by = type(exception).__name__
        if self.rows:
            logger.warning(
                "predict stopped (%s) after %d images; their scores are in %s", stopped_by, self.rows, self.path
            )
            return
        logger.warning("predict stopped (%s) before any image was scored; %s has no rows", stopped_by, self.path)
