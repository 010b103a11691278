"""Few-shot at test and predict time: each category's references become the torch model's memory bank.

The rule is :mod:`anomalib_faprompt.components.few_shot`; which images are a category's references is
:mod:`anomalib_faprompt.data.references`. Here the two meet the Lightning loops: at the start of ``test`` or
``predict`` every dataloader's references are chosen and read (an error names the category or file before any test
image; a reference that is also one of the images tested or predicted is refused), and listed in
``few_shot_references.csv`` of the run's folder; before the first batch of each dataloader
its bank is built (``k_shot`` encoder passes); at the end the bank is cleared, so that it never serves another
category or a later export unasked.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from anomalib_faprompt.data.images import UnreadableFileError, read_image
from anomalib_faprompt.data.references import (
    SOURCE,
    check_not_scored,
    choose_references,
    dataloader_images,
    datamodule_candidates,
    folder_candidates,
    run_seed,
    write_references,
)
from anomalib_faprompt.errors import InvalidInputError

__all__ = ["FewShotMixin"]

EVERY_DATALOADER = -1


class FewShotMixin:
    """``k_shot``, ``few_shot_layers`` and ``few_shot_source`` of the prompt-learning models (docs/faprompt.md)."""

    _references: dict[int, tuple[str, list[str]]]
    _bank_of: int | None

    def set_references(self, files: Sequence[str | Path]) -> None:
        """Build the memory bank from reference images, pre-processed as test images (``k`` encoder passes).

        Args:
            files: Normal images of the product.

        Raises:
            UnreadableFileError: A file cannot be read; the message names it.
        """
        images = [read_image(file)[None] for file in files]
        transform = getattr(self.pre_processor, "transform", None)
        batch = torch.cat([transform(image) if transform is not None else image for image in images])
        model = self.model
        was_training = model.training
        model.eval()
        with torch.no_grad():
            _, _, tokens = model.backbone.encode_image_tokens(batch.to(self.device), (), model.few_shot.layers)
        model.few_shot.store(tokens, [str(file) for file in files])
        model.train(was_training)

    def source_references(self) -> list[str]:
        """``k_shot`` images of ``few_shot_source``, chosen with the run's seed."""
        source = self.hparams.few_shot_source
        k_shot = self.hparams.k_shot
        return choose_references(folder_candidates(source), k_shot, run_seed(), SOURCE, f"'{source}'")

    def _plan_references(self, dataloaders: object, stage: str) -> None:
        """Choose, check and read every dataloader's references (``stage``: "test", "predict"), and list them."""
        if self.hparams.few_shot_source:
            self._references = {EVERY_DATALOADER: (SOURCE, self.source_references())}
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
            self._references = {}
            for index in range(count):
                category, candidates, where = datamodule_candidates(datamodule, index)
                files = choose_references(candidates, self.hparams.k_shot, run_seed(), category, where)
                self._references[index] = (category, files)
        for _, files in self._references.values():
            for file in files:
                try:
                    read_image(file)
                except UnreadableFileError as error:  # noqa: PERF203  (the first unreadable reference stops the run)
                    advice = "Replace or remove this reference image, or give others with `few_shot_source`."
                    raise error.with_advice(advice) from error.__cause__
        check_not_scored(
            dataloader_images(dataloaders),
            [file for _, files in self._references.values() for file in files],
            "few-shot references",
            "a reference scores as normal against itself (its few-shot map is zero).",
            stage,
            "take the references from another folder (`few_shot_source`)",
        )
        self._bank_of = None
        if self.trainer.is_global_zero:
            write_references(self.trainer.default_root_dir, dict(self._references.values()))

    def references_of(self, dataloader_idx: int) -> list[str]:
        """The references that dataloader ``dataloader_idx``'s images are scored against (none without ``k_shot``)."""
        return self._references[self._bank_key(dataloader_idx)][1] if self.hparams.k_shot else []

    def _bank_key(self, dataloader_idx: int) -> int:
        """The key of dataloader ``dataloader_idx``'s references: its own, or those that serve every dataloader."""
        return EVERY_DATALOADER if EVERY_DATALOADER in self._references else dataloader_idx

    def _use_bank_of(self, dataloader_idx: int) -> None:
        """Build the bank of dataloader ``dataloader_idx``'s references unless it is the bank in use."""
        key = self._bank_key(dataloader_idx)
        if self._bank_of != key:
            self.set_references(self._references[key][1])
            self._bank_of = key

    def check_references_for_export(self) -> None:
        """Before an export with ``k_shot > 0``: the references of ``few_shot_source``, or refuse without any."""
        if not self.hparams.k_shot or self.model.few_shot.is_set:
            return
        if self.hparams.few_shot_source:
            self.set_references(self.source_references())
            return
        msg = (
            f"{self.name} has k_shot={self.hparams.k_shot} and no references to export with: pass a folder of normal "
            "images as `few_shot_source` (`--model.few_shot_source`), or call `set_references(files)` first."
        )
        raise InvalidInputError(msg)

    def on_test_start(self) -> None:
        """Choose, check and list each category's references."""
        super().on_test_start()
        if self.hparams.k_shot:
            self._plan_references(self.trainer.test_dataloaders, "test")

    def on_predict_start(self) -> None:
        """Choose, check and list the references."""
        super().on_predict_start()
        if self.hparams.k_shot:
            self._plan_references(self.trainer.predict_dataloaders, "predict")

    def on_test_batch_start(self, batch: object, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Use the bank of this batch's category."""
        super().on_test_batch_start(batch, batch_idx, dataloader_idx)
        if self.hparams.k_shot:
            self._use_bank_of(dataloader_idx)

    def on_predict_batch_start(self, batch: object, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Use the bank of this batch's category."""
        super().on_predict_batch_start(batch, batch_idx, dataloader_idx)
        if self.hparams.k_shot:
            self._use_bank_of(dataloader_idx)

    def on_test_end(self) -> None:
        """Forget the last category's bank."""
        super().on_test_end()
        self.model.few_shot.clear()

    def on_predict_end(self) -> None:
        """Forget the last bank."""
        super().on_predict_end()
        self.model.few_shot.clear()
