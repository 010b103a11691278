"""The few-shot references and the calibration images: which normal images of a category serve as what.

Each test dataloader (one per target category in the zero-shot protocol) gets ``k_shot`` images of its own
category's normal training images, never of its test split: ``<category>/train/good`` in the MVTec AD and VisA
layouts, the normal items of the ``train`` part of a ``meta.json`` index, the normal images of an anomalib
datamodule's train split. With ``few_shot_source``, a folder of normal images, ``k_shot`` of its images serve every
image of the run. The choice is reproducible: the sorted candidates (absolute paths) sampled with a generator
seeded by the seed given (the models give the run's seed: :func:`anomalib_faprompt.models.few_shot.run_seed`) and
the category name.

The calibration images of a false-alarm rate (:mod:`anomalib_faprompt.models.calibration`) are chosen from the
same candidates (or from ``calibration_source``) the same way, after leaving out the references, so that the two
never share an image. No reference or calibration image may be one of the images tested or predicted
(:func:`check_not_scored`).
"""

from __future__ import annotations

import csv
import random
from collections.abc import Iterable, Sequence
from pathlib import Path

from anomalib_faprompt.errors import InvalidInputError, MissingInputError
from anomalib_faprompt.files import unused_stem

from .sources import IMAGE_SUFFIXES, image_files

__all__ = [
    "REFERENCES_FILE",
    "SOURCE",
    "check_not_scored",
    "choose_calibration",
    "choose_references",
    "dataloader_images",
    "datamodule_candidates",
    "folder_candidates",
    "write_references",
]

REFERENCES_FILE = "few_shot_references"
# The category name of the references of `few_shot_source`, which serve every category.
SOURCE = "few_shot_source"


def folder_candidates(folder: str | Path, argument: str = "few_shot_source") -> list[Path]:
    """The image files of a ``few_shot_source`` (or ``calibration_source``) folder (not its sub-folders), sorted.

    Raises:
        MissingInputError: The folder does not exist.
        InvalidInputError: It holds no image file.
    """
    folder = Path(folder)
    what = "Calibration folder" if argument == "calibration_source" else "Reference folder"
    if not folder.is_dir():
        msg = f"{what} '{folder}' (argument `{argument}`) does not exist: pass a folder of images."
        raise MissingInputError(msg)
    images = image_files(folder)
    if not images:
        msg = (
            f"{what} '{folder}' (argument `{argument}`) holds no image file "
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
    files = _resolved(candidates)
    if len(files) < k_shot:
        fix = "add images to it" if category == SOURCE else "give references with `few_shot_source`"
        of = "" if category == SOURCE else f" of '{category}'"
        msg = (
            f"k_shot={k_shot} needs {k_shot} normal reference images{of}, and {where} has {len(files)}: "
            f"lower `k_shot`, or {fix}."
        )
        raise InvalidInputError(msg)
    return _sample(files, k_shot, seed, category)


def _resolved(files: Iterable[str | Path]) -> list[str]:
    """The absolute paths of ``files``, without repeats, sorted."""
    return sorted(dict.fromkeys(str(Path(file).resolve()) for file in files))


def _sample(files: list[str], count: int, seed: int, key: str) -> list[str]:
    """``count`` of the sorted ``files``, drawn with a generator seeded by ``(seed, key)``, sorted."""
    return sorted(random.Random(f"{seed}:{key}").sample(files, count))  # noqa: S311  (a reproducible draw, no secret)


def choose_calibration(
    candidates: Sequence[str | Path], references: Iterable[str | Path], most: int, seed: int, category: str
) -> list[str]:
    """The calibration images of a category: the candidates that are no reference, at most ``most`` of them.

    All of them when there are at most ``most``; else ``most`` drawn as the references are, with the generator of
    ``(seed, "<category>:calibration")``.
    """
    left_out = set(_resolved(references))
    files = [file for file in _resolved(candidates) if file not in left_out]
    return _sample(files, min(most, len(files)), seed, f"{category}:calibration")


def dataloader_images(dataloaders: object) -> set[str]:
    """The absolute paths of the images of every dataloader (anomalib's datasets and its ``PredictDataset``)."""
    loaders = dataloaders if isinstance(dataloaders, list | tuple) else [dataloaders]
    files: set[str] = set()
    for loader in loaders:
        dataset = getattr(loader, "dataset", None)
        samples = getattr(dataset, "samples", None)
        if samples is not None and "image_path" in samples:
            files.update(samples["image_path"])
        else:
            files.update(map(str, getattr(dataset, "image_filenames", None) or []))
    return set(_resolved(files))


def check_not_scored(scored: set[str], files: Iterable[str | Path], what: str, why: str, stage: str, fix: str) -> None:
    """Refuse, in one line naming them, images that are both ``what`` (references, calibration images) and scored.

    Args:
        scored: The absolute paths of the images tested or predicted (:func:`dataloader_images`).
        files: The reference or calibration images.
        what: What they are, e.g. "few-shot references".
        why: Why that is refused, a sentence.
        stage: "test" or "predict".
        fix: What to do, e.g. "take the references from another folder (`few_shot_source`)".

    Raises:
        InvalidInputError: Some are scored.
    """
    both = [file for file in _resolved(files) if file in scored]
    if both:
        named = ", ".join(f"'{file}'" for file in both[:3]) + (", ..." if len(both) > 3 else "")
        msg = (
            f"{len(both)} image(s) to be {stage}ed are also {what} ({named}): {why} {stage.capitalize()} other images, "
            f"or {fix}."
        )
        raise InvalidInputError(msg)


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
