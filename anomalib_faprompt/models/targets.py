"""Training targets of the prompt-learning models, and the guards on the training data.

The models learn from defect images with masks: a run whose training data holds no anomalous image stops
with an error that says what to train on, and with the pixel losses on, a defect image without a mask is
an error (never an empty mask taken as ground truth).
"""

from __future__ import annotations

import torch
from anomalib.data import Batch
from lightning.pytorch import Trainer

from anomalib_faprompt.components import binarise_masks
from anomalib_faprompt.errors import InvalidInputError

__all__ = ["NO_DEFECTS_MESSAGE", "TrainingTargets"]

NO_DEFECTS_MESSAGE = (
    "{model} learns from defect images with masks, and its training data{where} holds no anomalous image. "
    "anomalib's usual training splits (e.g. MVTecAD's 'train') contain only normal images. Train on the "
    "test split of an auxiliary dataset instead, e.g. `--data anomalib_faprompt.data.AuxiliaryDataModule "
    "--data.root ./datasets/MVTecAD`, or on a folder with defect images and masks (see docs/protocol.md)."
)


def _where(datamodule: object) -> str:
    """`` (<datamodule>: <its sources or root>)`` for messages, or ``""`` when it names no folder."""
    sources = getattr(datamodule, "sources", None)
    if sources:
        place = ", ".join(f"{dataset} '{root}'" for dataset, root in sources)
    else:
        root = getattr(datamodule, "root", None)
        place = f"'{root}'" if root else ""
    return f" ({type(datamodule).__name__}: {place})" if place else ""


class TrainingTargets:
    """Labels and masks of training batches, with the checks on the training data.

    Args:
        model_name: The model's name, for messages.
        image_size: Working image side: masks are resized bilinearly to it and binarised at 0.5.
        pixel_losses: Whether masks are needed (``False``: image-level losses only).
    """

    def __init__(self, model_name: str, image_size: int, pixel_losses: bool) -> None:
        self.model_name = model_name
        self.image_size = image_size
        self.pixel_losses = pixel_losses
        self._check_batches = False
        self._seen_anomalous = False

    def start(self, trainer: Trainer) -> None:
        """Stop before training when the datamodule's samples table holds no anomalous image.

        Without such a table the batches are watched instead (see :meth:`end_epoch`).
        """
        data = getattr(trainer.datamodule, "train_data", None) if trainer.datamodule else None
        samples = getattr(data, "samples", None)
        self._check_batches = samples is None or "label_index" not in samples
        self._seen_anomalous = False
        if not self._check_batches and not (samples["label_index"] == 1).any():
            raise InvalidInputError(NO_DEFECTS_MESSAGE.format(model=self.model_name, where=_where(trainer.datamodule)))

    def end_epoch(self) -> None:
        """Stop when a whole epoch of data without a samples table held no anomalous image."""
        if self._check_batches and not self._seen_anomalous:
            raise InvalidInputError(NO_DEFECTS_MESSAGE.format(model=self.model_name, where=""))

    def __call__(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Image labels ``(B,)`` and binary masks ``(B, S, S)`` of a batch (``None``: image-level only).

        Masks of another size are resized bilinearly to ``S`` and binarised at 0.5.
        """
        if batch.gt_label is None:
            msg = f"{self.model_name} trains on labelled images; the training batch has no labels."
            raise InvalidInputError(msg)
        labels = batch.gt_label.long()
        if self._check_batches and not self._seen_anomalous:
            self._seen_anomalous = bool((labels == 1).any())
        if not self.pixel_losses:
            return labels, None
        if batch.gt_mask is None:
            msg = (
                f"{self.model_name} trains its pixel losses on defect masks, and the training batch has no masks. "
                "Use a datamodule that loads masks, or train with image-level losses only (`pixel_losses=False`)."
            )
            raise InvalidInputError(msg)
        self._check_mask_files(batch, labels)
        return labels, binarise_masks(batch.gt_mask, (self.image_size, self.image_size)).float()

    def _check_mask_files(self, batch: Batch, labels: torch.Tensor) -> None:
        """Raise when a defect image of the batch has no mask file."""
        mask_paths = getattr(batch, "mask_path", None)
        if mask_paths is None:
            return
        for index in (labels == 1).nonzero().flatten().tolist():
            if not mask_paths[index]:
                image = batch.image_path[index] if batch.image_path is not None else f"item {index}"
                msg = (
                    f"Defect image '{image}' has no mask file, and {self.model_name} trains its pixel losses on "
                    "masks. Add its mask, or train with image-level losses only (`pixel_losses=False`)."
                )
                raise InvalidInputError(msg)
