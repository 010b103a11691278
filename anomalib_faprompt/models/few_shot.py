"""Few-shot at test and predict time: the Lightning side chooses and reads the references, the torch model keeps them.

The rule is :mod:`anomalib_faprompt.components.few_shot`, and the torch model keeps the memory bank
(:meth:`~anomalib_faprompt.components.PromptedCLIPModel.store_references`); which images are a category's references
is :mod:`anomalib_faprompt.data.references`, drawn with the run's seed (:func:`run_seed`). Here they meet the
Lightning loops: at the start of ``test`` or ``predict`` every dataloader's references are chosen, read once and
pre-processed (an error names the category or file before any test image; a reference that is also one of the
images tested or predicted is refused), and listed in ``few_shot_references.csv`` of the run's folder; before the
first batch of each dataloader the torch model stores its references (``k_shot`` encoder passes); at the end the
bank is cleared and the images read are let go, so that the bank never serves another category or a later export
unasked.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import torch

from anomalib_faprompt.data.images import UnreadableFileError, read_image
from anomalib_faprompt.data.references import (
    SOURCE,
    check_not_scored,
    choose_references,
    dataloader_images,
    datamodule_candidates,
    folder_candidates,
    write_references,
)
from anomalib_faprompt.errors import InvalidInputError

if TYPE_CHECKING:
    from anomalib.pre_processing import PreProcessor
    from lightning.pytorch import Trainer
    from lightning.pytorch.utilities.parsing import AttributeDict

    from anomalib_faprompt.components import PromptedCLIPModel

__all__ = ["FewShotMixin", "run_seed"]

EVERY_DATALOADER = -1
READ_ADVICE = "Replace or remove this reference image, or give others with `few_shot_source`."


def run_seed() -> int:
    """The run's seed, which draws the references and the calibration images: Lightning's ``seed_everything``, else 0.

    ``seed_everything`` (applied by ``--seed_everything``, by the benchmark for each job, or called in Python) keeps
    it where Lightning reads it back itself: the ``PL_GLOBAL_SEED`` environment variable. It is read here, at the
    start of a ``test``, ``predict`` or export, and passed on as an argument.
    """
    return int(os.environ.get("PL_GLOBAL_SEED", "0"))


class _References(NamedTuple):
    """The references of a dataloader (or of every one): their category, files, and images as the model takes them."""

    category: str
    files: list[str]
    images: torch.Tensor


class FewShotMixin:
    """``k_shot``, ``few_shot_layers`` and ``few_shot_source`` of the prompt-learning models (docs/faprompt.md).

    Requires, of the class it is mixed into (``PromptLearningModule``, a ``LightningModule``): the attributes
    annotated below (``hparams`` with ``k_shot`` and ``few_shot_source``; ``model`` with
    :meth:`~anomalib_faprompt.components.PromptedCLIPModel.store_references`, ``clear_references`` and ``few_shot``;
    the ``pre_processor`` whose transform the images to be scored get; ``device``; ``trainer`` during a run; ``name``)
    and the Lightning hooks it extends (``on_test_start``, ``on_test_batch_start``, ``on_test_end`` and their
    ``predict`` twins), which it calls first.
    """

    hparams: AttributeDict
    model: PromptedCLIPModel
    pre_processor: PreProcessor
    device: torch.device
    trainer: Trainer
    name: str
    _references: dict[int, _References]
    _bank_of: int | None

    def read_references(self, files: Sequence[str | Path]) -> torch.Tensor:
        """Reference images read and pre-processed as test images: a ``(k, 3, S, S)`` batch.

        Raises:
            UnreadableFileError: A file cannot be read; the message names it.
        """
        images = [read_image(file)[None] for file in files]
        transform = getattr(self.pre_processor, "transform", None)
        return torch.cat([transform(image) if transform is not None else image for image in images])

    def set_references(self, files: Sequence[str | Path]) -> None:
        """Build the memory bank from reference images, pre-processed as test images (``k`` encoder passes).

        Args:
            files: Normal images of the product.

        Raises:
            UnreadableFileError: A file cannot be read; the message names it.
        """
        self.model.store_references(self.read_references(files).to(self.device), files)

    def source_references(self, seed: int) -> list[str]:
        """``k_shot`` images of ``few_shot_source``, drawn with ``seed`` (the run's: :func:`run_seed`)."""
        source = self.hparams.few_shot_source
        return choose_references(folder_candidates(source), self.hparams.k_shot, seed, SOURCE, f"'{source}'")

    def _plan_references(self, dataloaders: object, stage: str, seed: int) -> None:
        """Choose (with ``seed``), read, check and list the references of each dataloader of ``stage`` ("test", ...)."""
        if self.hparams.few_shot_source:
            chosen = {EVERY_DATALOADER: (SOURCE, self.source_references(seed))}
        else:
            datamodule = self.trainer.datamodule
            if datamodule is None:
                msg = (
                    f"k_shot={self.hparams.k_shot} needs normal reference images, and the images given have no "
                    "training split to take them from: pass a folder of normal images as `few_shot_source` "
                    "(`--model.few_shot_source`)."
                )
                raise InvalidInputError(msg)
            count = len(dataloaders) if isinstance(dataloaders, list | tuple) else 1
            chosen = {}
            for index in range(count):
                category, candidates, where = datamodule_candidates(datamodule, index)
                chosen[index] = (category, choose_references(candidates, self.hparams.k_shot, seed, category, where))
        self._references = {}
        for key, (category, files) in chosen.items():
            try:
                images = self.read_references(files)
            except UnreadableFileError as error:
                raise error.with_advice(READ_ADVICE) from error.__cause__
            self._references[key] = _References(category, files, images)
        check_not_scored(
            dataloader_images(dataloaders),
            [file for _, files in chosen.values() for file in files],
            "few-shot references",
            "a reference scores as normal against itself (its few-shot map is zero).",
            stage,
            "take the references from another folder (`few_shot_source`)",
        )
        self._bank_of = None
        if self.trainer.is_global_zero:
            write_references(self.trainer.default_root_dir, dict(chosen.values()))

    def references_of(self, dataloader_idx: int) -> list[str]:
        """The references that dataloader ``dataloader_idx``'s images are scored against (none without ``k_shot``)."""
        return self._references[self._bank_key(dataloader_idx)].files if self.hparams.k_shot else []

    def _bank_key(self, dataloader_idx: int) -> int:
        """The key of dataloader ``dataloader_idx``'s references: its own, or those that serve every dataloader."""
        return EVERY_DATALOADER if EVERY_DATALOADER in self._references else dataloader_idx

    def use_references_of(self, dataloader_idx: int) -> None:
        """Put dataloader ``dataloader_idx``'s references into the torch model, unless they are there."""
        key = self._bank_key(dataloader_idx)
        if self._bank_of != key:
            references = self._references[key]
            self.model.store_references(references.images.to(self.device), references.files)
            self._bank_of = key

    def check_references_for_export(self, seed: int) -> None:
        """Before an export with ``k_shot > 0``: the references of ``few_shot_source`` (drawn with ``seed``), or refuse.

        Raises:
            InvalidInputError: No references are stored and there is no ``few_shot_source``.
        """
        if not self.hparams.k_shot or self.model.few_shot.is_set:
            return
        if self.hparams.few_shot_source:
            self.set_references(self.source_references(seed))
            return
        msg = (
            f"{self.name} has k_shot={self.hparams.k_shot} and no references to export with: pass a folder of normal "
            "images as `few_shot_source` (`--model.few_shot_source`), or call `set_references(files)` first."
        )
        raise InvalidInputError(msg)

    def _end_references(self) -> None:
        """Forget the last bank and the images read for the run."""
        self.model.clear_references()
        self._references = {}

    def on_test_start(self) -> None:
        """Choose, read, check and list each category's references."""
        super().on_test_start()
        if self.hparams.k_shot:
            self._plan_references(self.trainer.test_dataloaders, "test", run_seed())

    def on_predict_start(self) -> None:
        """Choose, read, check and list the references."""
        super().on_predict_start()
        if self.hparams.k_shot:
            self._plan_references(self.trainer.predict_dataloaders, "predict", run_seed())

    def on_test_batch_start(self, batch: object, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Use the references of this batch's category."""
        super().on_test_batch_start(batch, batch_idx, dataloader_idx)
        if self.hparams.k_shot:
            self.use_references_of(dataloader_idx)

    def on_predict_batch_start(self, batch: object, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Use the references of this batch's category."""
        super().on_predict_batch_start(batch, batch_idx, dataloader_idx)
        if self.hparams.k_shot:
            self.use_references_of(dataloader_idx)

    def on_test_end(self) -> None:
        """Forget the last category's bank."""
        super().on_test_end()
        self._end_references()

    def on_predict_end(self) -> None:
        """Forget the last bank."""
        super().on_predict_end()
        self._end_references()
