"""Pre-processor for masks as in docs/faprompt.md, section 1: bilinear resize to the working size, then > 0.5."""

from __future__ import annotations

from anomalib.data import Batch
from anomalib.pre_processing import PreProcessor
from lightning.pytorch import LightningModule, Trainer
from torchvision.tv_tensors import Mask

from anomalib_faprompt.components import binarise_masks

__all__ = ["CLIPPreProcessor"]


class CLIPPreProcessor(PreProcessor):
    """anomalib's :class:`PreProcessor` whose masks follow the images bilinearly, binarised at 0.5.

    anomalib's pre-processor runs masks through the image transform, where torchvision resizes them with
    nearest neighbour. The exported graph is unchanged: it sees images only.
    """

    def _transform_batch(self, batch: Batch) -> None:
        """Transform the images; resize the masks to the transformed images' size (bilinear, > 0.5)."""
        if not self.transform:
            return
        batch.image = self.transform(batch.image)
        if batch.gt_mask is not None:
            batch.gt_mask = Mask(binarise_masks(batch.gt_mask, tuple(batch.image.shape[-2:])))

    # Lightning passes (trainer, pl_module, batch, batch_idx[, dataloader_idx]) positionally.
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Batch, *_: int) -> None:
        """Transform a training batch."""
        del trainer, pl_module
        self._transform_batch(batch)

    def on_validation_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Batch, *_: int) -> None:
        """Transform a validation batch."""
        del trainer, pl_module
        self._transform_batch(batch)

    def on_test_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Batch, *_: int) -> None:
        """Transform a test batch."""
        del trainer, pl_module
        self._transform_batch(batch)

    def on_predict_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Batch, *_: int) -> None:
        """Transform a prediction batch."""
        del trainer, pl_module
        self._transform_batch(batch)
