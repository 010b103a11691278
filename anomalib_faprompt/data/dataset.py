"""An anomalib image dataset that reads 16-bit files, names damaged files, checks masks, and can skip bad files.

:class:`CheckedImageDataset` gives the same items as anomalib's ``MVTecADDataset`` / ``FolderDataset`` for
valid 8-bit data. It differs where anomalib gives silent wrong data or an anonymous crash:

- 16-bit grayscale images and masks are scaled to [0, 1] (anomalib clips them to white);
- a photo tagged with an EXIF orientation is turned upright, as viewers show it (anomalib reads it as stored);
- a file that cannot be decoded raises an error naming it; with ``skip_unreadable`` the item is left
  out instead, and :class:`SkippingDataLoader` records the file;
- a defect image's mask of another size than the image, or one with no defect pixel, is an error
  naming the mask (anomalib stretches the first and takes the second as an all-normal image).

:class:`ImagePredictDataset` reads ``predict``'s images (one file or a folder) the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from anomalib import TaskType
from anomalib.data import ImageBatch, ImageItem, PredictDataset
from anomalib.data.datasets import AnomalibDataset
from anomalib.data.utils import LabelName
from torch.utils.data import DataLoader
from torchvision.transforms.v2 import Transform
from torchvision.tv_tensors import Mask

from anomalib_faprompt.errors import InvalidInputError, MissingInputError

from .images import UnreadableFileError, read_image, read_mask

__all__ = ["CheckedImageDataset", "ImagePredictDataset", "SkippedFile", "SkippingDataLoader"]

PREDICT_ADVICE = "Replace or remove the file, then predict again."


@dataclass(frozen=True)
class SkippedFile:
    """Stands in for an item whose image or mask could not be read (``skip_unreadable``)."""

    path: str
    reason: str


@dataclass(frozen=True)
class _Collated:
    """A batch of the readable items (``None`` if there were none) and the files left out."""

    batch: ImageBatch | None
    skipped: tuple[SkippedFile, ...]


def collate_skipping(items: list[ImageItem | SkippedFile]) -> _Collated:
    """Collate the readable items; keep the skipped files aside for :class:`SkippingDataLoader`."""
    skipped = tuple(item for item in items if isinstance(item, SkippedFile))
    readable = [item for item in items if not isinstance(item, SkippedFile)]
    return _Collated(ImageBatch.collate(readable) if readable else None, skipped)


class SkippingDataLoader(DataLoader):
    """A ``DataLoader`` that leaves out the files its dataset skipped and records them in ``skipped``.

    Batches whose every file was skipped are not yielded. With a dataset that skips nothing, it is a
    plain ``DataLoader``.

    Args:
        dataset: The dataset.
        skipped: Dictionary filled with ``{file: reason}`` of every skipped file (shared, e.g. with the datamodule).
        **kwargs: ``DataLoader`` arguments.
    """

    def __init__(self, dataset: AnomalibDataset, skipped: dict[str, str] | None = None, **kwargs: Any) -> None:  # noqa: ANN401
        super().__init__(dataset, **kwargs)
        self.skipped = {} if skipped is None else skipped

    def __iter__(self) -> Iterator[Any]:
        """The batches, without the skipped items."""
        for batch in super().__iter__():
            if not isinstance(batch, _Collated):
                yield batch
                continue
            self.skipped.update({file.path: file.reason for file in batch.skipped})
            if batch.batch is not None:
                yield batch.batch


class CheckedImageDataset(AnomalibDataset):
    """Images, labels and masks listed in a samples table, read with checks.

    Args:
        samples: Table with ``image_path``, ``label``, ``label_index`` (0 normal, 1 defect), ``mask_path``
            (``""`` for none) and ``split``; ``samples.attrs["task"]`` is ``"segmentation"`` (masks are read)
            or ``"classification"``.
        name: Dataset name.
        category: Category name.
        augmentations: Augmentations applied to image and mask.
        skip_unreadable: Return a :class:`SkippedFile` for an image or mask that cannot be decoded, instead of
            raising.
    """

    def __init__(
        self,
        samples: pd.DataFrame,
        name: str,
        category: str,
        augmentations: Transform | None = None,
        skip_unreadable: bool = False,
    ) -> None:
        super().__init__(augmentations=augmentations)
        self._name = name
        self.category = category
        self.skip_unreadable = skip_unreadable
        self.samples = samples

    @property
    def name(self) -> str:
        """Dataset name."""
        return self._name

    @property
    def collate_fn(self) -> Callable:
        """``ImageBatch.collate`` (as anomalib); with ``skip_unreadable``, one that sets skipped files aside."""
        return collate_skipping if self.skip_unreadable else ImageBatch.collate

    def _read(self, image_path: str, mask_path: str, label_index: int) -> tuple[torch.Tensor, Mask | None]:
        """The image and its mask (zeros for a normal image; ``None`` without masks), checked."""
        image = read_image(image_path)
        if self.task != TaskType.SEGMENTATION:
            return image, None
        if label_index == LabelName.NORMAL:
            return image, Mask(torch.zeros(image.shape[-2:], dtype=torch.uint8))
        mask = read_mask(mask_path)
        if mask.shape[-2:] != image.shape[-2:]:
            msg = (
                f"Mask '{mask_path}' is {mask.shape[-1]}x{mask.shape[-2]} pixels but its image '{image_path}' is "
                f"{image.shape[-1]}x{image.shape[-2]}: a mask must have the size of its image. Fix the mask."
            )
            raise InvalidInputError(msg)
        if not mask.any():
            msg = (
                f"Mask '{mask_path}' of the defect image '{image_path}' marks no defect pixel. Fix the mask, or "
                "move the image out of the defect folder."
            )
            raise InvalidInputError(msg)
        return image, mask

    def __getitem__(self, index: int) -> ImageItem | SkippedFile:
        """The item at ``index`` (as anomalib's image datasets give it), or a :class:`SkippedFile`.

        Raises:
            UnreadableFileError: The image or mask cannot be decoded and ``skip_unreadable`` is off.
            ValueError: A defect image's mask has another size than the image, or no defect pixel.
        """
        sample = self.samples.iloc[index]
        label_index = int(sample.label_index)
        try:
            image, gt_mask = self._read(sample.image_path, sample.mask_path, label_index)
        except UnreadableFileError as error:
            if not self.skip_unreadable:
                raise
            return SkippedFile(error.path, error.reason)
        if self.augmentations:
            if gt_mask is None:
                image = self.augmentations(image)
            else:
                image, gt_mask = self.augmentations(image, gt_mask)
        return ImageItem(
            image=image,
            gt_mask=gt_mask,
            gt_label=torch.tensor(label_index),
            image_path=sample.image_path,
            mask_path=sample.mask_path,
        )


class ImagePredictDataset(PredictDataset):
    """anomalib's ``PredictDataset`` (one image or a folder of images), reading files as :func:`read_image` does.

    What ``anomalib predict --data <image or folder>`` reads for this package's models: a file that cannot be
    decoded is an error naming it (anomalib: ``OSError: image file is truncated`` and no name), 16-bit
    images read like their 8-bit versions, and a photo tagged with an EXIF orientation is read upright. A path
    that does not exist, is no image or holds none is an error that names it. The items are otherwise anomalib's.
    """

    def __init__(self, path: str | Path, *args: Any, **kwargs: Any) -> None:  # noqa: ANN401
        path = Path(path)
        if not path.exists():
            msg = f"'{path}' (the images to predict, `--data`) does not exist: pass an image file or a folder of them."
            raise MissingInputError(msg)
        try:
            super().__init__(path, *args, **kwargs)
        except ValueError as error:
            msg = f"'{path}' (the images to predict, `--data`): {error}. Pass an image file or a folder of images."
            raise InvalidInputError(msg) from error

    def __getitem__(self, index: int) -> ImageItem:
        """The image at ``index`` (transformed, if a ``transform`` is set) and its path."""
        path = self.image_filenames[index]
        try:
            image = read_image(path)
        except UnreadableFileError as error:
            raise error.with_advice(PREDICT_ADVICE) from error.__cause__
        if self.transform:
            image = self.transform(image)
        return ImageItem(image=image, image_path=str(path))
