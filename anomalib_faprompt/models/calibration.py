"""Calibrated thresholds at test, predict and export time: choosing, scoring and listing the calibration images.

The rule is :mod:`anomalib_faprompt.components.calibration`; the thresholds live in the torch model
(:class:`~anomalib_faprompt.components.thresholds.CalibratedThresholds`, stored by its ``store_thresholds``). With
``false_alarm_rate``, each test or predict dataloader (one per target category in the zero-shot protocol) is
calibrated on normal images: its category's normal training images, chosen as the few-shot references are (with
the run's seed) and never one of them, or the images of
``calibration_source`` for every dataloader; at most :data:`MOST_IMAGES` per category. At the start of ``test`` or
``predict`` they are chosen and checked (too few, unreadable, also tested or predicted: one line each, before any
test image), scored as the test images are (pre-processing, the category's few-shot bank, the trainer's precision)
and listed in the run's folder: ``calibration_images.csv`` (category, file, score, map maximum) and
``calibration_thresholds.csv`` (category, n, false-alarm rate, rank k, image and pixel threshold). Before the first
batch of each dataloader its thresholds go into the torch model, whose labels then decide (unless a post-processor
the user gave sets the thresholds); at the end the model gets back the thresholds it had before. An export takes
the thresholds the model has for its rate, or calibrates on ``calibration_source``, whose images also calibrate
its ``INT8_PTQ``/``INT8_ACQ`` quantisation (:mod:`.compression`).
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from anomalib.post_processing import PostProcessor

from anomalib_faprompt.components.calibration import check_enough, conformal_threshold, p_values, rank
from anomalib_faprompt.data.categories import category_labels
from anomalib_faprompt.data.images import UnreadableFileError, read_image
from anomalib_faprompt.data.references import (
    check_not_scored,
    choose_calibration,
    dataloader_images,
    datamodule_candidates,
    folder_candidates,
)
from anomalib_faprompt.errors import InvalidInputError
from anomalib_faprompt.files import unused_stem

from .few_shot import run_seed

if TYPE_CHECKING:
    from anomalib.pre_processing import PreProcessor
    from lightning.pytorch import Trainer
    from lightning.pytorch.utilities.parsing import AttributeDict
    from torch import nn

    from anomalib_faprompt.components import PromptedCLIPModel

__all__ = [
    "IMAGES_FILE",
    "MOST_IMAGES",
    "THRESHOLDS_FILE",
    "Calibration",
    "CalibrationMixin",
    "read_calibrations",
    "write_calibrations",
]

logger = logging.getLogger(__name__)

MOST_IMAGES = 200
"""The most calibration images of one category (or of ``calibration_source``)."""
IMAGES_FILE = "calibration_images"
THRESHOLDS_FILE = "calibration_thresholds"
_BATCH = 16  # calibration images per forward pass
_SOURCE_KEY = "calibration_source"  # the generator key of the images chosen from `calibration_source`


@dataclass(frozen=True)
class Calibration:
    """The calibration of one category: its images, their scores and map maxima, and the thresholds they give.

    Attributes:
        category: The category (the dataloader's name in the run).
        files: The calibration images.
        scores: Their image scores.
        maxima: The maximum of each one's anomaly map.
        false_alarm_rate: ``a``.
    """

    category: str
    files: tuple[str, ...]
    scores: tuple[float, ...]
    maxima: tuple[float, ...]
    false_alarm_rate: float

    @property
    def rank(self) -> int:
        """``k``: the rank, from the smallest, of the score (and map maximum) that is the threshold."""
        return rank(len(self.files), self.false_alarm_rate)

    @property
    def image_threshold(self) -> float:
        """The ``k``-th smallest score: images scoring above it are flagged."""
        return conformal_threshold(self.scores, self.false_alarm_rate)

    @property
    def pixel_threshold(self) -> float:
        """The ``k``-th smallest map maximum: map pixels above it are flagged."""
        return conformal_threshold(self.maxima, self.false_alarm_rate)

    def p_values(self, scores: Sequence[float]) -> np.ndarray:
        """Conformal p-values of image scores against the calibration scores."""
        return p_values(self.scores, scores)


def write_calibrations(directory: str | Path, calibrations: Sequence[Calibration]) -> tuple[Path, Path]:
    """Write ``calibration_images.csv`` and ``calibration_thresholds.csv`` into ``directory``, never over earlier ones.

    Returns:
        The two files.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    images = directory / f"{unused_stem(directory, IMAGES_FILE, ('.csv',))}.csv"
    with images.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["category", "file", "score", "map_max"])
        for calibration in calibrations:
            rows = zip(calibration.files, calibration.scores, calibration.maxima, strict=True)
            writer.writerows((calibration.category, name, repr(score), repr(peak)) for name, score, peak in rows)
    thresholds = directory / f"{unused_stem(directory, THRESHOLDS_FILE, ('.csv',))}.csv"
    with thresholds.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["category", "n", "false_alarm_rate", "k", "image_threshold", "pixel_threshold"])
        for calibration in calibrations:
            writer.writerow(
                [
                    calibration.category,
                    len(calibration.files),
                    calibration.false_alarm_rate,
                    calibration.rank,
                    repr(calibration.image_threshold),
                    repr(calibration.pixel_threshold),
                ]
            )
    return images, thresholds


def read_calibrations(directory: str | Path) -> list[Calibration]:
    """The calibrations :func:`write_calibrations` wrote into ``directory`` (its first pair of files); none without.

    Raises:
        InvalidInputError: A category of one file is missing from the other; the message names the file.
    """
    directory = Path(directory)
    images, thresholds = directory / f"{IMAGES_FILE}.csv", directory / f"{THRESHOLDS_FILE}.csv"
    if not (images.is_file() and thresholds.is_file()):
        return []
    with thresholds.open(newline="", encoding="utf-8") as file:
        rates = {row["category"]: float(row["false_alarm_rate"]) for row in csv.DictReader(file)}
    listed: dict[str, list[tuple[str, float, float]]] = {category: [] for category in rates}
    with images.open(newline="", encoding="utf-8") as file:
        for row in csv.DictReader(file):
            if row["category"] not in listed:
                msg = f"'{images}' lists category '{row['category']}', which '{thresholds}' has not: export again."
                raise InvalidInputError(msg)
            listed[row["category"]].append((row["file"], float(row["score"]), float(row["map_max"])))
    return [
        Calibration(category, *(tuple(column) for column in zip(*rows, strict=True)), rates[category])
        for category, rows in listed.items()
    ]


class CalibrationMixin:
    """``false_alarm_rate`` and ``calibration_source`` of the prompt-learning models (docs/calibration.md).

    Requires, of the class it is mixed into (``PromptLearningModule``, a ``LightningModule``): the attributes
    annotated below (``hparams`` with ``false_alarm_rate``, ``calibration_source`` and ``k_shot``; ``model`` with
    :meth:`~anomalib_faprompt.components.PromptedCLIPModel.store_thresholds`, ``thresholds`` and ``few_shot``; the
    ``pre_processor`` whose transform the images to be scored get; ``device``; ``trainer`` during a run; ``name``;
    ``post_processor`` and ``post_processor_given``, whether the user gave it), the few-shot references of each
    dataloader, which the calibration images are scored with (:class:`~.few_shot.FewShotMixin`'s ``references_of``
    and ``use_references_of``), and the Lightning hooks it extends (``on_test_start``, ``on_test_batch_start``,
    ``on_test_end`` and their ``predict`` twins), which it calls first: the references are chosen before the
    calibration images.
    """

    hparams: AttributeDict
    model: PromptedCLIPModel
    pre_processor: PreProcessor
    device: torch.device
    trainer: Trainer
    name: str
    post_processor: nn.Module
    post_processor_given: bool
    references_of: Callable[[int], list[str]]
    use_references_of: Callable[[int], None]
    _calibrations: dict[int, Calibration]
    _calibration_in_use: int | None
    _thresholds_before: tuple[float, float, float]

    def score_images(self, files: Sequence[str | Path]) -> tuple[list[float], list[float]]:
        """Image scores and map maxima of image files, computed as those of test images.

        Pre-processed as test images, with the few-shot bank in place, in the trainer's precision.

        Raises:
            UnreadableFileError: A file cannot be read; the message names it.
        """
        transform = getattr(self.pre_processor, "transform", None)
        model = self.model
        was_training = model.training
        model.eval()
        trainer = self._trainer
        context = trainer.precision_plugin.forward_context() if trainer is not None else nullcontext()
        scores: list[float] = []
        maxima: list[float] = []
        with torch.no_grad(), context:
            for start in range(0, len(files), _BATCH):
                images = [read_image(file)[None] for file in files[start : start + _BATCH]]
                batch = torch.cat([transform(image) if transform is not None else image for image in images])
                output = model(batch.to(self.device))
                scores += output.pred_score.float().flatten().tolist()
                maxima += output.anomaly_map.float().flatten(1).amax(dim=1).tolist()
        model.train(was_training)
        return scores, maxima

    def calibrate(self, files: Sequence[str | Path], category: str = "calibration") -> Calibration:
        """Thresholds at the model's ``false_alarm_rate`` from normal images, stored in the torch model.

        The images are scored as test images (with the few-shot references in place); from then on the model's
        labels and masks, and those of a model exported from it, are decided at these thresholds.

        Args:
            files: Normal images of the product, none of them a few-shot reference nor an image to be inspected.
            category: Their category, for the record.

        Returns:
            The calibration (its files, scores, map maxima and thresholds).

        Raises:
            InvalidInputError: The model has no ``false_alarm_rate``, too few images, a few-shot model without
                references, or an image that is one of its references.
        """
        rate = self.hparams.false_alarm_rate
        if rate is None:
            msg = (
                f"{self.name} has no false_alarm_rate to calibrate for: build it with one (e.g. false_alarm_rate=0.05)."
            )
            raise InvalidInputError(msg)
        if self.hparams.k_shot and not self.model.few_shot.is_set:
            msg = (
                f"{self.name} has k_shot={self.hparams.k_shot}: its scores depend on its references, so call "
                "`set_references(files)` before `calibrate`."
            )
            raise InvalidInputError(msg)
        references = {str(Path(file).resolve()) for file in self.model.few_shot.references}
        both = sorted(name for name in {str(Path(file).resolve()) for file in files} if name in references)
        if both:
            msg = (
                f"{len(both)} calibration image(s) are few-shot references of {self.name} ('{both[0]}'"
                f"{', ...' if len(both) > 1 else ''}): a reference scores as normal against itself; calibrate on "
                "other normal images."
            )
            raise InvalidInputError(msg)
        calibration = self._calibration(category, [str(file) for file in files], "")
        self.model.store_thresholds(calibration.image_threshold, calibration.pixel_threshold, rate)
        return calibration

    def _calibration(self, category: str, files: list[str], where: str) -> Calibration:
        """Check the number of images, score them, and return the calibration of ``category``."""
        rate = self.hparams.false_alarm_rate
        check_enough(len(files), rate, where)
        try:
            scores, maxima = self.score_images(files)
        except UnreadableFileError as error:
            advice = "Replace or remove this calibration image, or give others with `calibration_source`."
            raise error.with_advice(advice) from error.__cause__
        return Calibration(category, tuple(files), tuple(scores), tuple(maxima), rate)

    def keep_or_clear_thresholds(self, state: dict[str, torch.Tensor]) -> None:
        """Let a checkpoint's calibrated thresholds load only when they were calibrated for this model's rate.

        ``state`` is a checkpoint's ``state_dict`` (keys ``model.thresholds.*``), edited in place: thresholds of
        another rate (or of a model without one) are replaced by none, so nothing stale decides a label; a checkpoint
        written before calibration existed gets none.
        """
        keys = [f"model.thresholds.{name}" for name in ("image", "pixel", "false_alarm_rate")]
        rate, wanted = state.get(keys[2]), self.hparams.false_alarm_rate
        if rate is not None and wanted is not None and abs(float(rate) - wanted) <= 1e-6 * wanted:
            return
        state.update({key: torch.tensor(0.0) for key in keys})

    def calibration_of(self, dataloader_idx: int) -> Calibration | None:
        """The calibration of dataloader ``dataloader_idx`` in the running test or predict (``None``: none)."""
        return getattr(self, "_calibrations", {}).get(dataloader_idx)

    def label_threshold(self, dataloader_idx: int) -> float:
        """The image threshold the labels of dataloader ``dataloader_idx`` are decided at (NaN: not known).

        A post-processor the user gave decides (anomalib's ``PostProcessor``: ``1 - image_sensitivity``); else the
        dataloader's calibrated threshold; else 0.5.
        """
        if self.post_processor_given:
            processor = self.post_processor
            if isinstance(processor, PostProcessor) and processor.enable_thresholding:
                return float(processor.normalized_image_threshold)
            return math.nan
        calibration = self.calibration_of(dataloader_idx)
        return calibration.image_threshold if calibration is not None else 0.5

    def _plan_calibration(self, dataloaders: object, stage: str, seed: int) -> None:
        """Choose (with ``seed``), check, score and list the calibration images of each dataloader of ``stage``."""
        rate = self.hparams.false_alarm_rate
        count = len(dataloaders) if isinstance(dataloaders, list | tuple) else 1
        datamodule = self.trainer.datamodule
        names = category_labels(datamodule, count)
        source = self.hparams.calibration_source
        chosen: dict[int, tuple[list[str], str]] = {}
        if source:
            references = [file for index in range(count) for file in self.references_of(index)]
            candidates = folder_candidates(source, "calibration_source")
            files = choose_calibration(candidates, references, MOST_IMAGES, seed, _SOURCE_KEY)
            chosen = dict.fromkeys(range(count), (files, f" in '{source}' (argument `calibration_source`)"))
        elif datamodule is None:
            msg = (
                f"false_alarm_rate={rate} needs normal calibration images, and the images given have no training "
                "split to take them from: pass a folder of normal images as `calibration_source` "
                "(`--model.calibration_source`)."
            )
            raise InvalidInputError(msg)
        else:
            for index in range(count):
                category, candidates, where = datamodule_candidates(datamodule, index)
                references = self.references_of(index)
                files = choose_calibration(candidates, references, MOST_IMAGES, seed, category)
                besides = f" besides its {len(references)} few-shot references" if references else ""
                chosen[index] = (files, f" of '{category}' in {where}{besides}")
        for files, where in chosen.values():
            check_enough(len(files), rate, where)
        check_not_scored(
            dataloader_images(dataloaders),
            [file for files, _ in chosen.values() for file in files],
            "calibration images",
            "the false-alarm rate holds for images the thresholds were not set on.",
            stage,
            "take the calibration images from another folder (`calibration_source`)",
        )
        scored: dict[tuple, Calibration] = {}
        self._calibrations = {}
        for index, (files, where) in chosen.items():
            key = (tuple(files), tuple(self.references_of(index)))
            if key not in scored:
                if self.hparams.k_shot:
                    self.use_references_of(index)
                scored[key] = self._calibration(names[index], files, where)
            calibration = scored[key]
            self._calibrations[index] = Calibration(
                names[index], calibration.files, calibration.scores, calibration.maxima, rate
            )
        self._calibration_in_use = None
        self._thresholds_before = self.model.thresholds.values()
        if self.trainer.is_global_zero:
            _, thresholds = write_calibrations(self.trainer.default_root_dir, list(self._calibrations.values()))
            logger.info(
                "Thresholds for false_alarm_rate=%s of %d categor%s, with their calibration images: %s",
                rate,
                count,
                "y" if count == 1 else "ies",
                thresholds,
            )
            if self.post_processor_given:
                logger.warning(
                    "%s: the post-processor given sets the thresholds (image: %.6g); the calibrated ones are listed in "
                    "%s, and not used for the labels.",
                    self.name,
                    self.label_threshold(0),
                    thresholds.name,
                )

    def _use_calibration_of(self, dataloader_idx: int) -> None:
        """Put dataloader ``dataloader_idx``'s thresholds into the torch model, unless they are in use."""
        if self.post_processor_given or self._calibration_in_use == dataloader_idx:
            return
        calibration = self._calibrations[dataloader_idx]
        rate = self.hparams.false_alarm_rate
        self.model.store_thresholds(calibration.image_threshold, calibration.pixel_threshold, rate)
        self._calibration_in_use = dataloader_idx

    def _end_calibration(self) -> None:
        """Give the torch model back the thresholds it had before the run."""
        self.model.store_thresholds(*self._thresholds_before)
        self._calibrations = {}

    def calibration_source_files(self, seed: int) -> list[str]:
        """The images of ``calibration_source`` an export calibrates on: its thresholds, and its INT8 quantisation.

        At most :data:`MOST_IMAGES`, none a few-shot reference, drawn with ``seed`` (the run's); empty without a
        source.
        """
        source = self.hparams.calibration_source
        if not source:
            return []
        candidates = folder_candidates(source, "calibration_source")
        return choose_calibration(candidates, self.model.few_shot.references, MOST_IMAGES, seed, _SOURCE_KEY)

    def check_thresholds_for_export(self, folder: str | Path, seed: int) -> None:
        """Before an export with ``false_alarm_rate``: the model's thresholds for it, or calibrate on the source.

        The calibration images of ``calibration_source`` are drawn with ``seed`` (the run's: :func:`.few_shot.run_seed`)
        and listed in ``folder``, the exported model's (where ``anomalib-faprompt-predict`` reads them).

        Raises:
            InvalidInputError: No thresholds for the rate and no ``calibration_source``, or too few images.
        """
        rate = self.hparams.false_alarm_rate
        if rate is None or self.model.thresholds.calibrated_for(rate):
            return
        source = self.hparams.calibration_source
        if not source:
            msg = (
                f"{self.name} has false_alarm_rate={rate} and no calibrated thresholds to export with: pass a folder "
                "of normal images as `calibration_source` (`--model.calibration_source`), or call `calibrate(files)` "
                "first."
            )
            raise InvalidInputError(msg)
        files = self.calibration_source_files(seed)
        calibration = self._calibration(_SOURCE_KEY, files, f" in '{source}' (argument `calibration_source`)")
        self.model.store_thresholds(calibration.image_threshold, calibration.pixel_threshold, rate)
        write_calibrations(folder, [calibration])

    def on_test_start(self) -> None:
        """Choose, check, score and list each category's calibration images."""
        super().on_test_start()
        self._calibrations = {}
        if self.hparams.false_alarm_rate is not None:
            self._plan_calibration(self.trainer.test_dataloaders, "test", run_seed())

    def on_predict_start(self) -> None:
        """Choose, check, score and list the calibration images."""
        super().on_predict_start()
        self._calibrations = {}
        if self.hparams.false_alarm_rate is not None:
            self._plan_calibration(self.trainer.predict_dataloaders, "predict", run_seed())

    def on_test_batch_start(self, batch: object, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Use the thresholds of this batch's category."""
        super().on_test_batch_start(batch, batch_idx, dataloader_idx)
        if self.hparams.false_alarm_rate is not None:
            self._use_calibration_of(dataloader_idx)

    def on_predict_batch_start(self, batch: object, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Use the thresholds of this batch's category."""
        super().on_predict_batch_start(batch, batch_idx, dataloader_idx)
        if self.hparams.false_alarm_rate is not None:
            self._use_calibration_of(dataloader_idx)

    def on_test_end(self) -> None:
        """Give back the thresholds the model had before."""
        super().on_test_end()
        if self.hparams.false_alarm_rate is not None:
            self._end_calibration()

    def on_predict_end(self) -> None:
        """Give back the thresholds the model had before."""
        super().on_predict_end()
        if self.hparams.false_alarm_rate is not None:
            self._end_calibration()
