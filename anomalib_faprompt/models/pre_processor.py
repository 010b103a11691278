"""Pre-processor that treats masks as the spec says: bilinear resize to the working size, then > 0.5."""

from __future__ import annotations

import torch.nn.functional as F  # noqa: N812
from anomalib.data import Batch
from anomalib.pre_processing import PreProcessor
from lightning.pytorch import LightningModule, Trainer
from torchvision.tv_tensors import Mask

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
        mask = batch.gt_mask
        if mask is None or mask.shape[-2:] == batch.image.shape[-2:]:
            return
        resized = F.interpolate(
            mask.reshape(-1, 1, *mask.shape[-2:]).float(),
            size=batch.image.shape[-2:],
            mode="bilinear",
            align_corners=False,
        )
        batch.gt_mask = Mask(resized[:, 0] > 0.5)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Batch, batch_idx: int) -> None:
        """Transform a training batch."""
        del trainer, pl_module, batch_idx
        self._transform_batch(batch)

    def on_validation_batch_start(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        batch: Batch,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Transform a validation batch."""
        del trainer, pl_module, batch_idx, dataloader_idx
        self._transform_batch(batch)

    def on_test_batch_start(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        batch: Batch,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Transform a test batch."""
        del trainer, pl_module, batch_idx, dataloader_idx
        self._transform_batch(batch)

    def on_predict_batch_start(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        batch: Batch,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Transform a prediction batch."""
        del trainer, pl_module, batch_idx, dataloader_idx
        self._transform_batch(batch)
