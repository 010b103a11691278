"""Training on the test split of auxiliary datasets; optionally testing zero-shot on every category of a target.

This is the zero-shot transfer protocol of FAPrompt and AnomalyCLIP: train once on the defect images
(with masks) and normal images of one dataset's test split, all categories together, then evaluate
with no further training on each category of datasets never seen.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import pandas as pd
from anomalib.data import AnomalibDataModule
from anomalib.data.datasets import AnomalibDataset
from anomalib.data.utils import random_split
from anomalib.utils.attrs import get_nested_attr
from torch.utils.data import DataLoader
from torchvision.transforms.v2 import Transform

from anomalib_faprompt.components.options import check_count
from anomalib_faprompt.errors import InvalidInputError

from .authors_index import META_FILE, meta_train_normals
from .dataset import SkippingDataLoader
from .sources import (
    DATASETS,
    available_categories,
    category_dataset,
    check_root,
    image_files,
    layout_root,
    prepare_category,
    source_name,
)

__all__ = ["AuxiliaryDataModule", "concatenate"]

logger = logging.getLogger(__name__)


def concatenate(datasets: list[AnomalibDataset]) -> AnomalibDataset:
    """One dataset with the samples of all (of any anomalib dataset types), sorted by image path."""
    combined = copy.deepcopy(datasets[0])
    samples = pd.concat([data.samples for data in datasets], ignore_index=True)
    samples.attrs["task"] = datasets[0].samples.attrs.get("task", "segmentation")
    combined.samples = samples
    return combined


def _as_list(value: str | Path | list[str | Path]) -> list:
    return list(value) if isinstance(value, list | tuple) else [value]


class AuxiliaryDataModule(AnomalibDataModule):
    """Trains on the test split of one or more datasets; tests on a held-out part, or zero-shot on a target.

    The training data is the test split of every selected category of every source (defect images with
    masks and normal images), concatenated. A label-aware portion is held out for validation, or none with
    ``val_split_ratio=0`` (the papers' protocol: training on the whole test split; there is then no
    validation dataloader and Lightning skips validation). With a ``target_dataset``, the test stage runs
    one dataloader per target category, in ``test_categories`` order (each category is evaluated on its
    own by :class:`anomalib_faprompt.metrics.PerCategoryEvaluator`); a category with no images keeps its
    place with an empty dataloader. Without a target, the test set is the held-out portion (one dataloader,
    named ``held_out``). Nothing is written into the dataset folders (a missing MVTecAD or Visa in
    anomalib's default folder, ``MVTecAD`` or ``visa``, is downloaded and prepared by anomalib's own
    datamodules, as ``anomalib train --data Visa`` would; any other missing folder is an error).

    Images and masks are read with :class:`anomalib_faprompt.data.dataset.CheckedImageDataset`: 16-bit
    files are scaled correctly, an unreadable file is named in the error, and a defect image's mask of
    another size than the image, or with no defect pixel, is an error naming the mask (in training and in
    test data).

    Args:
        root: Root of the auxiliary dataset, or one root per entry of ``dataset``.
        dataset: ``"MVTecAD"``, ``"Visa"`` (anomalib's layouts), ``"Folder"`` (custom data: ``root`` holds
            ``normal_dir``, ``abnormal_dir`` and ``mask_dir``) or ``"MetaJson"`` (the authors' index: ``root``
            holds ``meta.json``, whose ``test`` part is read), or a list of them (one per root).
        categories: Categories to train on (in any source that has them); ``None`` for all.
        masks: Load defect masks, of the training and the target data (required by the pixel losses and metrics).
            ``False`` trains with image labels only (set ``pixel_losses=False`` on the model too) and tests with image
            metrics only; with ``True``, a defect image without a mask is an error.
        normal_dir: ``Folder`` only: sub-folder of normal images.
        abnormal_dir: ``Folder`` only: sub-folder of defect images.
        mask_dir: ``Folder`` only: sub-folder of defect masks.
        val_split_ratio: Fraction of the training data held out for validation, in [0, 1); 0 trains on all of it.
        target_dataset: ``"MVTecAD"``, ``"Visa"`` or ``"MetaJson"`` to test zero-shot on; ``None`` tests on the
            held-out part.
        target_root: Root of the target dataset (for ``MetaJson``, the folder that holds ``meta.json``).
        target_categories: Target categories to test on; ``None`` for all.
        train_batch_size: Training batch size (at least 1).
        eval_batch_size: Validation and test batch size (at least 1).
        num_workers: Data loader worker processes (0: the images load in the main process).
        augmentations: Augmentations of the training data.
        seed: Seed of the validation split.
        name: Name of the data in the results path (``<model>/<name>/<category>/``); by default the sources'
            names, ``_to_`` and the target's: a dataset's name (``MVTecAD``, ``Visa``) when the folder holds
            that dataset's categories, else the root folder's name (``synthetic_source_to_synthetic_target``).
        skip_unreadable: Leave out image or mask files that cannot be decoded (truncated, damaged) instead
            of stopping; the skipped files are listed in ``skipped_files`` and in a logged warning at the end of
            the stage, and the test table counts them in a note of their category. Off by default: an unreadable
            file is an error naming it.

    Example:
        >>> datamodule = AuxiliaryDataModule(  # doctest: +SKIP
        ...     root="./datasets/MVTecAD", target_dataset="Visa", target_root="./datasets/visa"
        ... )
    """

    def __init__(
        self,
        root: str | Path | list[str | Path] = "./datasets/MVTecAD",
        dataset: str | list[str] = "MVTecAD",
        categories: list[str] | None = None,
        masks: bool = True,
        normal_dir: str = "good",
        abnormal_dir: str = "defect",
        mask_dir: str = "ground_truth",
        val_split_ratio: float = 0.1,
        target_dataset: str | None = None,
        target_root: str | Path | None = None,
        target_categories: list[str] | None = None,
        train_batch_size: int = 8,
        eval_batch_size: int = 8,
        num_workers: int = 8,
        augmentations: Transform | None = None,
        seed: int = 111,
        name: str | None = None,
        skip_unreadable: bool = False,
    ) -> None:
        super().__init__(
            train_batch_size=train_batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            train_augmentations=augmentations,
            val_split_mode="from_dir",
            test_split_mode="from_dir",
            seed=seed,
        )
        check_count("train_batch_size", train_batch_size, why="images per training step")
        check_count("eval_batch_size", eval_batch_size, why="images per validation or test step")
        check_count("num_workers", num_workers, minimum=0, why="0 loads the images in the main process")
        roots, datasets = [Path(path) for path in _as_list(root)], _as_list(dataset)
        if len(datasets) == 1 and len(roots) > 1:
            datasets = datasets * len(roots)
        if len(datasets) != len(roots):
            msg = f"`dataset` ({len(datasets)} entries) and `root` ({len(roots)} entries) must pair up one to one."
            raise InvalidInputError(msg)
        for dataset_name in [*datasets, *([target_dataset] if target_dataset else [])]:
            if dataset_name not in DATASETS:
                msg = f"Unknown dataset '{dataset_name}': use one of {DATASETS}."
                raise InvalidInputError(msg)
        if target_dataset == "Folder":
            msg = (
                "`target_dataset` must be 'MVTecAD', 'Visa' or 'MetaJson'; test a folder with "
                "`anomalib test --data Folder`."
            )
            raise InvalidInputError(msg)
        if target_dataset and target_root is None:
            msg = f"`target_root` is required with `target_dataset='{target_dataset}'`."
            raise InvalidInputError(msg)
        if not 0 <= val_split_ratio < 1:
            msg = f"`val_split_ratio` must be in [0, 1) (0: train on all images, no validation), got {val_split_ratio}."
            raise InvalidInputError(msg)
        for dataset_name, path in zip(datasets, roots, strict=True):
            check_root(dataset_name, path, "root")
        if target_dataset:
            check_root(target_dataset, target_root, "target_root")
        self.sources = list(zip(datasets, roots, strict=True))
        self.categories = list(categories) if categories else None
        self.masks = masks
        self.folder_dirs = {"normal_dir": normal_dir, "abnormal_dir": abnormal_dir, "mask_dir": mask_dir}
        self.val_split_ratio = val_split_ratio
        self.target_dataset = target_dataset
        self.target_root = Path(target_root) if target_root is not None else None
        self.target_categories = list(target_categories) if target_categories else None
        self.target_data: list[AnomalibDataset] = []
        self._name = name
        self.skip_unreadable = skip_unreadable
        self.skipped_files: dict[str, str] = {}
        self._reported: set[str] = set()

    @property
    def name(self) -> str:
        """The ``name`` argument, or the sources' names joined by '+', and the target's after ``_to_``."""
        if self._name:
            return self._name
        source = "+".join(dict.fromkeys(source_name(dataset, root) for dataset, root in self.sources))
        if not self.target_dataset:
            return source
        return f"{source}_to_{source_name(self.target_dataset, self.target_root, 'target_root')}"

    @property
    def category(self) -> str:
        """``all``, or the trained categories joined by '+'."""
        return "+".join(self.categories) if self.categories else "all"

    @category.setter
    def category(self, category: str) -> None:
        self.categories = None if category == "all" else category.split("+")

    def training_categories(self) -> list[tuple[str, Path, str]]:
        """``(dataset, root, category)`` of every category trained on."""
        selected = [
            (dataset, root, name)
            for dataset, root in self.sources
            for name in available_categories(dataset, root)
            if dataset == "Folder" or self.categories is None or name in self.categories
        ]
        unknown = set(self.categories or []) - {name for *_, name in selected}
        if unknown:
            msg = f"Categories {sorted(unknown)} (argument `categories`) are in none of the sources {self.sources}."
            raise InvalidInputError(msg)
        return selected

    @property
    def test_categories(self) -> list[str]:
        """Names of the test dataloaders: the target's categories, or ``held_out`` (the held-out part)."""
        if not self.target_dataset:
            return ["held_out"]
        available = available_categories(self.target_dataset, self.target_root, "target_root")
        if self.target_categories is None:
            return available
        unknown = set(self.target_categories) - set(available)
        if unknown:
            msg = (
                f"Target categories {sorted(unknown)} (argument `target_categories`) are not in {self.target_root}, "
                f"which has {available}."
            )
            raise InvalidInputError(msg)
        return list(self.target_categories)

    def normal_training_images(self, index: int) -> tuple[str, list[Path], str]:
        """The category of test dataloader ``index`` and its normal training images (few-shot and calibration images).

        Returns:
            The category, its normal training images, and where they were looked for (for messages).

        Raises:
            InvalidInputError: There is no target dataset (the held-out part mixes the auxiliary categories).
        """
        if not self.target_dataset:
            msg = (
                "k_shot > 0 and false_alarm_rate take each target category's references and calibration images from "
                "its training images, and this AuxiliaryDataModule has no target (it tests on the held-out part): set "
                "`target_dataset`, or give the images with the model's `few_shot_source` and `calibration_source`."
            )
            raise InvalidInputError(msg)
        category = self.test_categories[index]
        if self.target_dataset == "MetaJson":
            where = f"the 'train' part of '{self.target_root / META_FILE}'"
            return category, meta_train_normals(self.target_root, category), where
        folder = layout_root(self.target_dataset, self.target_root) / category / "train" / "good"
        return category, image_files(folder), f"'{folder}'"

    def prepare_data(self) -> None:
        """Download or prepare (with anomalib's datamodules) whatever category is missing; else fail clearly."""
        for dataset, root, name in self.training_categories():
            prepare_category(dataset, root, name)
        if self.target_dataset:
            for name in self.test_categories:
                prepare_category(self.target_dataset, self.target_root, name)

    def _setup(self, _stage: str | None = None) -> None:
        parts = [
            category_dataset(dataset, root, name, masks=self.masks, **self.folder_dirs)
            for dataset, root, name in self.training_categories()
        ]
        empty = [f"{part.category} ({part.name})" for part in parts if not len(part)]
        if len(empty) == len(parts):
            msg = f"No training images in {self.sources} (arguments `root`, `dataset`, `categories`)."
            raise InvalidInputError(msg)
        if empty:
            logger.warning("Training categories with no images: %s.", ", ".join(empty))
        data = concatenate(parts)
        if self.val_split_ratio:
            self.train_data, self.val_data = random_split(data, self.val_split_ratio, label_aware=True, seed=self.seed)
            if not len(self.val_data):
                msg = (
                    f"val_split_ratio={self.val_split_ratio} holds out no image of the {len(data)} training images "
                    f"(the split is per label, rounded down): raise it, or set it to 0 to train on all of them."
                )
                raise InvalidInputError(msg)
        else:
            self.train_data, self.val_data = data, data.subsample([])
        self.test_data = copy.deepcopy(self.val_data)
        if self.target_dataset:
            self.target_data = [
                category_dataset(self.target_dataset, self.target_root, name, masks=self.masks)
                for name in self.test_categories
            ]
            empty = [name for name, part in zip(self.test_categories, self.target_data, strict=True) if not len(part)]
            if empty:
                logger.warning(
                    "Target categories with no images under '%s': %s. They keep their place among the test "
                    "dataloaders, with no batches.",
                    self.target_root,
                    ", ".join(empty),
                )
        for part in [self.train_data, self.val_data, self.test_data, *self.target_data]:
            part.skip_unreadable = self.skip_unreadable

    def _create_test_split(self) -> None:
        """Nothing: ``_setup`` sets the test data (anomalib's split would move training images into an empty one)."""

    def _update_augmentations(self) -> None:
        """Also give the target datasets the model's resize (as anomalib does for the test subset)."""
        super()._update_augmentations()
        model_transform = get_nested_attr(self, "trainer.model.pre_processor.transform", None)
        for data in self.target_data:
            if model_transform:
                self._update_subset_augmentations(data, self.test_augmentations, model_transform)
            else:
                data.augmentations = self.test_augmentations

    def _loader(self, data: AnomalibDataset, train: bool = False) -> SkippingDataLoader:
        return SkippingDataLoader(
            data,
            skipped=self.skipped_files,
            shuffle=train,
            batch_size=self.train_batch_size if train else self.eval_batch_size,
            num_workers=self.num_workers,
            collate_fn=self.external_collate_fn or data.collate_fn,
        )

    def train_dataloader(self) -> DataLoader:
        """The training data, shuffled."""
        return self._loader(self.train_data, train=True)

    def val_dataloader(self) -> DataLoader | list:
        """The held-out part; none (an empty list, so that Lightning skips validation) with ``val_split_ratio=0``."""
        return self._loader(self.val_data) if len(self.val_data) else []

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        """The held-out part, or one dataloader per target category (in ``test_categories`` order).

        Raises:
            ValueError: There is nothing to test on (``val_split_ratio=0`` without a target, or every target
                category is empty).
        """
        if not self.target_dataset:
            if not len(self.test_data):
                msg = (
                    "Nothing to test on: `val_split_ratio` is 0 (every image trains) and there is no "
                    "`target_dataset`. Set `target_dataset` and `target_root`, or a `val_split_ratio` above 0."
                )
                raise InvalidInputError(msg)
            return self._loader(self.test_data)
        if not any(len(data) for data in self.target_data):
            msg = f"No images in any target category {self.test_categories} under '{self.target_root}'."
            raise InvalidInputError(msg)
        return [self._loader(data) for data in self.target_data]

    def teardown(self, stage: str | None = None) -> None:
        """Log a warning naming the files skipped as unreadable (``skip_unreadable``) and not reported yet."""
        new = {path: reason for path, reason in self.skipped_files.items() if path not in self._reported}
        if new:
            files = "; ".join(f"{path} ({reason})" for path, reason in new.items())
            when = getattr(stage, "value", stage)  # Lightning passes its TrainerFn enum: 'fit', 'test', ...
            logger.warning("Skipped %d unreadable file(s) in stage '%s': %s", len(new), when, files)
            self._reported |= set(new)
