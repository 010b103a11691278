"""The few-shot references: which normal images of a category serve as its memory bank.

Each test dataloader (one per target category in the zero-shot protocol) gets ``k_shot`` images of its own
category's normal training images, never of its test split: ``<category>/train/good`` in the MVTec AD and VisA
layouts, the normal items of the ``train`` part of a ``meta.json`` index, the normal images of an anomalib
datamodule's train split. With ``few_shot_source``, a folder of normal images, ``k_shot`` of its images serve every
image of the run. The choice is reproducible: the sorted candidates (absolute paths) sampled with a generator
seeded by the run's seed (``seed_everything``; 0 without) and the category name.
"""

from __future__ import annotations

import csv
import os
import random
from collections.abc import Sequence
from pathlib import Path

from anomalib_faprompt.errors import InvalidInputError, MissingInputError
from anomalib_faprompt.files import unused_stem

from .sources import IMAGE_SUFFIXES, image_files

__all__ = [
    "REFERENCES_FILE",
    "SOURCE",
    "choose_references",
    "datamodule_candidates",
    "folder_candidates",
    "run_seed",
    "write_references",
]

REFERENCES_FILE = "few_shot_references"
# The category name of the references of `few_shot_source`, which serve every category.
SOURCE = "few_shot_source"


def run_seed() -> int:
    """The run's seed: what ``seed_everything`` set (``PL_GLOBAL_SEED``), else 0."""
    return int(os.environ.get("PL_GLOBAL_SEED", "0"))


def folder_candidates(folder: str | Path) -> list[Path]:
    """The image files of a ``few_shot_source`` folder (not its sub-folders), sorted.

    Raises:
        MissingInputError: The folder does not exist.
        InvalidInputError: It holds no image file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        msg = f"Reference folder '{folder}' (argument `few_shot_source`) does not exist: pass a folder of images."
        raise MissingInputError(msg)
    images = image_files(folder)
    if not images:
        msg = (
            f"Reference folder '{folder}' (argument `few_shot_source`) holds no image file "
            f"({', '.join(IMAGE_SUFFIXES)}): put normal images of the product there."
        )
        raise InvalidInputError(msg)
    return images


def datamodule_candidates(datamodule: object, index: int) -> tuple[str, list[str], str]:
    """The category of a datamodule's test dataloader ``index`` and its normal training images.

    This package's datamodules say it themselves (``normal_training_images``); for an anomalib datamodule they are
    the normal images of its train split.

    Returns:
        The category, the candidates, and where they were looked for (for messages).
    """
    if hasattr(datamodule, "normal_training_images"):
        category, images, where = datamodule.normal_training_images(index)
        return category, [str(path) for path in images], where
    category = str(getattr(datamodule, "category", "") or type(datamodule).__name__)
    train = getattr(datamodule, "train_data", None)
    samples = getattr(train, "samples", None)
    if samples is None:
        return category, [], f"the train split of {type(datamodule).__name__}"
    normal = samples[samples.label_index == 0]
    return category, [str(path) for path in normal.image_path], f"the train split of {type(datamodule).__name__}"


def choose_references(candidates: Sequence[str | Path], k_shot: int, seed: int, category: str, where: str) -> list[str]:
    """``k_shot`` of the candidates, reproducibly: the sorted candidates sampled with ``(seed, category)``.

    Args:
        candidates: The category's normal training images.
        k_shot: How many to take.
        seed: The run's seed.
        category: The category, for the generator and messages.
        where: Where the candidates come from, for messages.

    Raises:
        InvalidInputError: Fewer candidates than ``k_shot``.
    """
    files = sorted(dict.fromkeys(str(Path(candidate).resolve()) for candidate in candidates))
    if len(files) < k_shot:
        fix = "add images to it" if category == SOURCE else "give references with `few_shot_source`"
        of = "" if category == SOURCE else f" of '{category}'"
        msg = (
            f"k_shot={k_shot} needs {k_shot} normal reference images{of}, and {where} has {len(files)}: "
            f"lower `k_shot`, or {fix}."
        )
        raise InvalidInputError(msg)
    return sorted(random.Random(f"{seed}:{category}").sample(files, k_shot))


def write_references(directory: str | Path, references: dict[str, Sequence[str]]) -> Path:
    """Write ``few_shot_references.csv`` (``category, file``) into ``directory``, never over an earlier one."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{unused_stem(directory, REFERENCES_FILE, ('.csv',))}.csv"
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["category", "file"])
        writer.writerows((category, reference) for category, files in references.items() for reference in files)
    return path
