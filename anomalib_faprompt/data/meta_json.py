"""A dataset indexed by the authors' ``meta.json``, as an anomalib datamodule."""

from __future__ import annotations

from pathlib import Path

from torchvision.transforms.v2 import Transform

from anomalib_faprompt.errors import InvalidInputError

from .authors_index import META_FILE, meta_categories
from .auxiliary import AuxiliaryDataModule

__all__ = ["MetaJson"]


class MetaJson(AuxiliaryDataModule):
    """The ``test`` part of a ``meta.json`` index: one test dataloader per category (``cls_name``).

    What the authors' ``test.py`` evaluates, for ``anomalib test`` and ``predict`` with a trained model (or an
    authors' prompt file as ``--model.weights``): every category on its own, tabled per category and averaged.
    ``anomalib train`` trains on the same ``test`` part, as the authors' ``train.py`` does on its auxiliary dataset;
    to train on one index and test on another, use :class:`AuxiliaryDataModule` with ``dataset="MetaJson"`` and
    ``target_dataset="MetaJson"``.

    Args:
        root: The folder that holds ``meta.json`` (its paths are relative to it).
        categories: Categories to read; ``None`` for all.
        masks: Read defect masks (pixel metrics); ``False`` for image metrics only. Categories without mask files
            are image-level whatever this says.
        val_split_ratio: Fraction held out for validation when training, in [0, 1).
        train_batch_size: Training batch size (at least 1).
        eval_batch_size: Test batch size (at least 1).
        num_workers: Data loader worker processes (0: the images load in the main process).
        augmentations: Augmentations of the training data.
        seed: Seed of the validation split.
        name: Name of the data in the results path; by default the root folder's name.
        skip_unreadable: Leave out image or mask files that cannot be decoded, instead of stopping.

    Example:
        >>> datamodule = MetaJson(root="./datasets/visa")  # doctest: +SKIP
    """

    def __init__(
        self,
        root: str | Path = "./datasets/visa",
        categories: list[str] | None = None,
        masks: bool = True,
        val_split_ratio: float = 0.0,
        train_batch_size: int = 8,
        eval_batch_size: int = 8,
        num_workers: int = 8,
        augmentations: Transform | None = None,
        seed: int = 111,
        name: str | None = None,
        skip_unreadable: bool = False,
    ) -> None:
        super().__init__(
            root=root,
            dataset="MetaJson",
            categories=categories,
            masks=masks,
            val_split_ratio=val_split_ratio,
            target_dataset="MetaJson",
            target_root=root,
            target_categories=categories,
            train_batch_size=train_batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            augmentations=augmentations,
            seed=seed,
            name=name or Path(root).resolve().name,
            skip_unreadable=skip_unreadable,
        )
        available = meta_categories(root)
        unknown = [category for category in categories or [] if category not in available]
        if unknown:
            msg = (
                f"Categories {unknown} (argument `categories`) are not in '{Path(root) / META_FILE}', which has "
                f"{', '.join(available)}."
            )
            raise InvalidInputError(msg)
