"""Training on the test split of an auxiliary dataset: defect images with masks plus normal images."""

from __future__ import annotations

from functools import reduce
from operator import add
from pathlib import Path

from anomalib.data import AnomalibDataModule
from anomalib.data.datasets import MVTecADDataset
from anomalib.data.utils import random_split
from torchvision.transforms.v2 import Transform

__all__ = ["AuxiliaryDataModule"]


class AuxiliaryDataModule(AnomalibDataModule):
    """All categories of an MVTec-AD-layout dataset's test split, for training FAPrompt and AnomalyCLIP.

    The test split holds defect images with masks and normal images: the models train on it, with a
    label-aware validation portion held out (also used as the test set). Nothing is written into
    the dataset folder.

    Args:
        root: Dataset root with one folder per category (``<category>/test``, ``<category>/ground_truth``).
        categories: Categories to use; ``None`` for every folder of ``root`` that has a ``test`` split.
        val_split_ratio: Fraction held out for validation.
        train_batch_size: Training batch size.
        eval_batch_size: Validation and test batch size.
        num_workers: Data loader workers.
        augmentations: Augmentations applied to every subset.
        seed: Seed of the validation split.
    """

    def __init__(
        self,
        root: str | Path = "./datasets/MVTecAD",
        categories: list[str] | None = None,
        val_split_ratio: float = 0.1,
        train_batch_size: int = 8,
        eval_batch_size: int = 8,
        num_workers: int = 8,
        augmentations: Transform | None = None,
        seed: int = 111,
    ) -> None:
        super().__init__(
            train_batch_size=train_batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            augmentations=augmentations,
            val_split_mode="from_dir",
            test_split_mode="from_dir",
            seed=seed,
        )
        self.root = Path(root)
        self.categories = list(categories) if categories else None
        self.val_split_ratio = val_split_ratio

    @property
    def category(self) -> str:
        """All categories trained on, joined by '+'."""
        return "+".join(self._categories())

    @category.setter
    def category(self, category: str) -> None:
        self.categories = category.split("+")

    def _categories(self) -> list[str]:
        if self.categories:
            return self.categories
        if not self.root.is_dir():
            msg = (
                f"Auxiliary dataset root '{self.root}' (argument `root`) does not exist. Place the dataset "
                f"there in the MVTec AD layout (<category>/test/..., <category>/ground_truth/...)."
            )
            raise FileNotFoundError(msg)
        return sorted(path.name for path in self.root.iterdir() if (path / "test").is_dir())

    def _setup(self, _stage: str | None = None) -> None:
        categories = self._categories()
        if not categories:
            msg = f"No category folder with a 'test' split under '{self.root}' (argument `root`)."
            raise FileNotFoundError(msg)
        data = reduce(add, [MVTecADDataset(root=self.root, category=name, split="test") for name in categories])
        self.train_data, self.val_data = random_split(data, self.val_split_ratio, label_aware=True, seed=self.seed)
        self.test_data = self.val_data
