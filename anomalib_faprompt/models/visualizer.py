"""The models' default visualiser: anomalib's ``ImageVisualizer``, writing one file per image, per category.

anomalib's ``ImageVisualizer`` names each file after the part of the image path below the datamodule's
``name`` and ``category`` folders, and else after the image's folder and file name only. A test over several
categories (one dataloader per category, the zero-shot protocol) therefore writes ``images/good/000.png``
once per category, each replacing the last. :class:`CategoryImageVisualizer` draws the same panels (the
image, its mask, the anomaly map overlaid on the image and the predicted mask's contour on it) and writes
them to ``images/<category>/<path below the dataloader's images' common folder>``, e.g.
``images/bottle/broken_large/000.png`` for MVTec AD: the image's own file name, once per image. A category
that is not one folder name (``../x``, ``a/b``) is refused before any image is drawn: no file goes outside
``images/``.

The exported model's predict command (:mod:`anomalib_faprompt.inference`) draws and names its panels with the same
code: :meth:`CategoryImageVisualizer.save_panel`, :func:`image_root` and :func:`panel_path`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from anomalib.data import ImageBatch, ImageItem, PredictDataset
from anomalib.models import AnomalibModule
from anomalib.visualization import ImageVisualizer
from lightning.pytorch import Trainer
from PIL import Image as PILImage

from anomalib_faprompt.data.categories import dataloader_categories
from anomalib_faprompt.data.dataset import CheckedImageDataset, ImagePredictDataset
from anomalib_faprompt.data.images import read_image, reads_unlike_anomalib
from anomalib_faprompt.data.paths import folder_name_problem
from anomalib_faprompt.errors import InvalidInputError

__all__ = ["CategoryImageVisualizer", "dataloader_category", "image_root", "panel_path"]

logger = logging.getLogger(__name__)


def _dataloaders(trainer: Trainer) -> list:
    """The running stage's dataloaders (test or predict), as a list."""
    loaders = trainer.test_dataloaders if trainer.testing else trainer.predict_dataloaders
    if loaders is None:
        return []
    return list(loaders) if isinstance(loaders, list | tuple) else [loaders]


def dataloader_category(trainer: Trainer, dataloader_idx: int) -> str | None:
    """Category of a test or predict dataloader (:func:`dataloader_categories`), ``None`` when unnamed.

    Images given by path (a ``PredictDataset``, e.g. ``predict(data_path=...)``) have none, whatever datamodule
    an earlier ``test`` of the same trainer left attached.
    """
    loaders = _dataloaders(trainer)
    if dataloader_idx < len(loaders) and isinstance(getattr(loaders[dataloader_idx], "dataset", None), PredictDataset):
        return None
    names = dataloader_categories(getattr(trainer, "datamodule", None), len(loaders))
    return names[dataloader_idx] if dataloader_idx < len(names) else None


def _read_by_package(trainer: Trainer, dataloader_idx: int) -> bool:
    """Whether a dataloader's images were read by this package's datasets (:func:`~.data.images.read_image`)."""
    loaders = _dataloaders(trainer)
    dataset = getattr(loaders[dataloader_idx], "dataset", None) if dataloader_idx < len(loaders) else None
    return isinstance(dataset, CheckedImageDataset | ImagePredictDataset)


def _image_paths(dataset: Any) -> list[str]:  # noqa: ANN401
    """Paths of the images of an anomalib dataset or ``PredictDataset`` (empty when it does not list them)."""
    samples = getattr(dataset, "samples", None)
    if samples is not None and "image_path" in samples:
        return [str(path) for path in samples["image_path"]]
    return [str(path) for path in getattr(dataset, "image_filenames", [])]


def image_root(paths: Iterable[str | Path]) -> Path | None:
    """Common folder of image files (the folder of one file; ``None`` for none): their panels are named below it."""
    paths = [os.path.abspath(path) for path in paths]
    root = Path(os.path.commonpath(paths)) if paths else None
    return root.parent if root is not None and len(set(paths)) == 1 else root


def panel_path(folder: Path, image_path: str | Path, root: Path | None) -> Path:
    """File of an image's panel in ``folder``: its path below ``root``, else ``<its folder's name>/<its name>``."""
    path = Path(os.path.abspath(image_path))
    if root is not None and path.is_relative_to(root):
        return folder / path.relative_to(root)
    return folder / path.parent.name / path.name


class CategoryImageVisualizer(ImageVisualizer):
    """anomalib's ``ImageVisualizer``, writing ``<output_dir>/<category>/<path in the category>`` once per image.

    The panels and their options are anomalib's (every argument of ``ImageVisualizer``). Only the file names
    differ: each image's path relative to the common folder of its dataloader's images, under a folder named
    after the dataloader's category (:func:`dataloader_category`). ``output_dir`` defaults to the run's
    ``images`` folder (``<default_root_dir>/images``), looked up anew for every run.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # noqa: ANN401
        super().__init__(*args, **kwargs)
        self._roots: dict[int, Path | None] = {}
        self._written: set[Path] = set()

    def _image_root(self, trainer: Trainer, dataloader_idx: int) -> Path | None:
        """Common folder of the images of a dataloader (``None`` when its dataset does not list them)."""
        if dataloader_idx not in self._roots:
            loaders = _dataloaders(trainer)
            dataset = getattr(loaders[dataloader_idx], "dataset", None) if dataloader_idx < len(loaders) else None
            self._roots[dataloader_idx] = image_root(_image_paths(dataset))
        return self._roots[dataloader_idx]

    def images_dir(self, trainer: Trainer) -> Path:
        """``output_dir``, or the run's ``images`` folder."""
        return Path(self.output_dir) if self.output_dir is not None else Path(trainer.default_root_dir) / "images"

    def output_path(self, trainer: Trainer, image_path: str, dataloader_idx: int) -> Path:
        """File of an image's visualisation: ``<output_dir>/<category>/<image path below the common folder>``."""
        category = dataloader_category(trainer, dataloader_idx)
        folder = self.images_dir(trainer) / category if category else self.images_dir(trainer)
        return panel_path(folder, image_path, self._image_root(trainer, dataloader_idx))

    def visualize(self, predictions: ImageItem) -> PILImage.Image | None:
        """Draw anomalib's panels, the image as this package reads it: upright, and 16-bit values not clipped.

        anomalib draws the image panel from ``PIL.Image.open(image_path).convert("RGB")``, which turns every
        non-zero 16-bit value white and ignores the EXIF orientation tag (a photo taken with the camera turned
        would be drawn sideways under its upright anomaly map); such an item is drawn from
        :func:`~.data.images.read_image` instead. The images of anomalib's own datasets, which the model saw as
        anomalib reads them, are drawn by anomalib (:meth:`on_test_batch_end`), so that the map lies on the image
        it was computed from.
        """
        path = getattr(predictions, "image_path", None)
        if isinstance(path, str) and reads_unlike_anomalib(path):
            predictions = predictions.update(in_place=False, image_path=None, image=read_image(path))
        return super().visualize(predictions)

    def save_panel(self, item: ImageItem, filename: Path, read_by_package: bool = True) -> None:
        """Draw an item's panels and save them to ``filename`` (nothing when the item has nothing to draw).

        Args:
            item: The image and the model's outputs for it.
            filename: Where the panels go; its folder is created.
            read_by_package: Whether the model saw the image as :func:`~.data.images.read_image` reads it (drawn by
                :meth:`visualize`), else as anomalib reads it (drawn by anomalib).
        """
        image = self.visualize(item) if read_by_package else super().visualize(item)
        if image is None:
            return
        filename.parent.mkdir(parents=True, exist_ok=True)
        image.save(filename)
        self._written.add(filename)

    def on_test_start(self, trainer: Trainer, pl_module: AnomalibModule) -> None:
        """Forget the dataloaders and files of an earlier run; refuse a category that is not one folder name.

        Raises:
            InvalidInputError: A dataloader's category would lead its heat-maps out of ``output_dir``
                (``../x``, ``a/b``); the message names it.
        """
        del pl_module
        self._roots, self._written = {}, set()
        for index in range(len(_dataloaders(trainer))):
            category = dataloader_category(trainer, index)
            problem = folder_name_problem(category) if category else None
            if problem:
                msg = (
                    f"Category {category!r} (dataloader {index}) names the folder of its heat-maps under "
                    f"'{self.images_dir(trainer)}', and it {problem}. Rename the category to one folder name, or "
                    "turn the visualiser off (`visualizer: false` on the model)."
                )
                raise InvalidInputError(msg)

    def on_predict_start(self, trainer: Trainer, pl_module: AnomalibModule) -> None:
        """Forget the dataloaders and files of an earlier run."""
        self.on_test_start(trainer, pl_module)

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: AnomalibModule,
        outputs: ImageBatch,
        batch: ImageBatch,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Draw every image of the batch as the model read it; save it under its category and own file name."""
        del pl_module, outputs
        read_by_package = _read_by_package(trainer, dataloader_idx)
        for index, item in enumerate(batch):
            if item.image_path:
                filename = self.output_path(trainer, item.image_path, dataloader_idx)
            else:
                category = dataloader_category(trainer, dataloader_idx) or ""
                filename = self.images_dir(trainer) / category / f"batch{batch_idx:05d}_{index:03d}.png"
            self.save_panel(item, filename, read_by_package)

    def on_predict_batch_end(
        self,
        trainer: Trainer,
        pl_module: AnomalibModule,
        outputs: ImageBatch,
        batch: ImageBatch,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """As for a test batch."""
        self.on_test_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)

    def say_where(self, images_dir: Path) -> None:
        """Say where the images went, in one line (nothing when none was drawn)."""
        if self._written:
            logger.info("Heat-maps of %d images: %s", len(self._written), images_dir)

    def on_test_end(self, trainer: Trainer, pl_module: AnomalibModule) -> None:
        """Say where the images went, in one line."""
        del pl_module
        if trainer.is_global_zero:
            self.say_where(self.images_dir(trainer))

    def on_predict_end(self, trainer: Trainer, pl_module: AnomalibModule) -> None:
        """Say where the images went, in one line."""
        self.on_test_end(trainer, pl_module)
