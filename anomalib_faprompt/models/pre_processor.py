"""The models' pre-processor: masks as in docs/faprompt.md, section 1, and one resize for torch and the export.

Masks follow the images with a bilinear resize to the working size, then > 0.5. Images are resized bicubically with
antialiasing (torchvision's ``Resize(antialias=True)``) in anomalib's loops; anomalib's exportable pre-processor
would drop the antialiasing (ONNX export of torchvision's resize has none in anomalib's path, and OpenVINO's
bicubic resize is another), so that ``anomalib predict`` and the exported model would see other inputs for every
image not at the working size. :class:`BicubicResize` computes the same antialiased resize as two matrix products
that every runtime computes alike, and is what the exported graph resizes with.
"""

from __future__ import annotations

from typing import Any

import torch
from anomalib.data import Batch
from anomalib.pre_processing import PreProcessor
from anomalib.pre_processing.utils.transform import get_exportable_transform
from lightning.pytorch import LightningModule, Trainer
from torch import nn
from torchvision.transforms.v2 import Compose, InterpolationMode, Resize, Transform
from torchvision.tv_tensors import Mask

from anomalib_faprompt.components import binarise_masks

__all__ = ["BicubicResize", "CLIPPreProcessor", "exportable_transform"]

CUBIC_A = -0.5  # the cubic kernel of torch's (and PIL's) antialiased bicubic resize


def _cubic(x: torch.Tensor) -> torch.Tensor:
    """Keys' cubic convolution kernel with ``a = -0.5``, zero from ``|x| = 2`` on."""
    x = x.abs()
    near = ((CUBIC_A + 2) * x - (CUBIC_A + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * CUBIC_A
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def _resize_weights(positions: torch.Tensor, size: int) -> torch.Tensor:
    """``(size, n)`` weights of the antialiased bicubic resize of ``n`` pixels (``positions``: ``0..n-1``) to ``size``.

    As torch's ``_upsample_bicubic2d_aa``: output pixel ``i`` has its centre at ``(i + 0.5) * scale`` of the input
    (``scale = n / size``); the kernel is stretched by ``scale`` when shrinking, so that every input pixel under the
    output pixel counts (the antialiasing); each row is normalised to sum 1.
    """
    scale = (positions[-1] + 1) / size
    centres = (torch.arange(size, dtype=positions.dtype, device=positions.device) + 0.5) * scale
    weights = _cubic((positions[None, :] + 0.5 - centres[:, None]) / torch.clamp(scale, min=1.0))
    return weights / weights.sum(dim=1, keepdim=True)


class BicubicResize(nn.Module):
    """torchvision's ``Resize(size, BICUBIC, antialias=True)`` of float images, as two matrix products.

    Equal to it within float rounding (about 1e-6) for any input size, larger or smaller, in torch, ONNX Runtime and
    OpenVINO alike, with the input's height and width dynamic in an export.

    Args:
        size: ``(height, width)`` of the output.
    """

    def __init__(self, size: tuple[int, int]) -> None:
        super().__init__()
        self.size = tuple(size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Resize ``(..., H, W)`` float images to ``(..., *size)``."""
        rows = torch.arange(images.shape[-2], dtype=images.dtype, device=images.device)
        columns = torch.arange(images.shape[-1], dtype=images.dtype, device=images.device)
        return _resize_weights(rows, self.size[0]) @ images @ _resize_weights(columns, self.size[1]).T


def exportable_transform(transform: Transform | None) -> Transform | None:
    """The image transform as the exported graph computes it: the loops' antialiased bicubic resize kept.

    Each ``Resize`` of a ``Compose`` that is bicubic with antialiasing becomes a :class:`BicubicResize`; any other
    transform is made exportable as anomalib does (``get_exportable_transform``).
    """
    steps = transform.transforms if isinstance(transform, Compose) else [transform]
    keep = [
        isinstance(step, Resize) and step.interpolation == InterpolationMode.BICUBIC and step.antialias
        for step in steps
    ]
    if not any(keep):
        return get_exportable_transform(transform)
    exported = [
        BicubicResize(_output_size(step.size)) if kept else get_exportable_transform(step)
        for step, kept in zip(steps, keep, strict=True)
    ]
    return Compose(exported)


def _output_size(size: Any) -> tuple[int, int]:  # noqa: ANN401  (torchvision keeps a list or an int)
    sizes = list(size) if isinstance(size, list | tuple) else [size]
    return (sizes[0], sizes[-1])


class CLIPPreProcessor(PreProcessor):
    """anomalib's :class:`PreProcessor` with masks resized bilinearly and an export that resizes as the loops do.

    The export resizes with :func:`exportable_transform`. anomalib's pre-processor runs masks through the image
    transform, where torchvision resizes them with nearest neighbour; the exported graph sees images only.
    """

    def __init__(self, transform: Transform | None = None) -> None:
        super().__init__(transform=transform)
        self.export_transform = exportable_transform(transform)

    def load_checkpoint_config(self, config: dict[str, Any]) -> None:
        """Restore the transform of a checkpoint, and its exportable form."""
        super().load_checkpoint_config(config)
        self.export_transform = exportable_transform(self.transform)

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
