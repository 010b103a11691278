"""The dataset index files of the authors' code (``meta.json``), read as their ``dataset.py`` reads them.

AnomalyCLIP's ``generate_dataset_json/*.py`` (which FAPrompt reuses) writes one ``meta.json`` at a dataset's root:
``{"train": {cls: [item, ...]}, "test": {cls: [item, ...]}}``, each item with ``img_path`` and ``mask_path``
(relative to that folder), ``cls_name``, ``specie_name`` and ``anomaly`` (0 or 1). Only the ``test`` part is read:
the papers train on the auxiliary dataset's test part and test on the target's. Categories are the items'
``cls_name``, in the order they first appear; a category listed with no items is an error naming it when it is read.

A defect item's mask is its ``mask_path`` file. Datasets without masks (brain MRI, head CT, ...) give a folder or
``""`` as ``mask_path``: a category none of whose defect items has a mask file is classification-only (image
metrics only), as with ``masks=False``. A category where some defect items have a mask file and others do not is
an error naming one of the latter.

Nothing in the index may lead out of its folder (:mod:`.paths`): a category name (``cls_name``) must be one folder
name, as it names the folder of the category's heat-maps, and every ``img_path`` and ``mask_path`` (of both parts)
must stay inside the folder that holds ``meta.json``. An item that repeats an earlier item of its category is scored
as often as it is listed, as by the authors' ``test.py``, and one warning line per index file says so; a repeated
image with other fields (another label or mask) is an error.
"""

from __future__ import annotations

import json
import logging
import os
from functools import cache
from pathlib import Path

import pandas as pd

from anomalib_faprompt.errors import InvalidInputError, MissingInputError

from .paths import folder_name_problem, path_problem

__all__ = ["META_FILE", "meta_categories", "meta_samples", "meta_train_normals", "read_meta"]

META_FILE = "meta.json"
PART = "test"
FIELDS = {"img_path": str, "mask_path": str, "cls_name": str, "specie_name": str, "anomaly": int}
PATH_FIELDS = ("img_path", "mask_path")
FIX_ITEM = "Fix the item, or write the index again."

logger = logging.getLogger(__name__)


def _item_error(
    file: Path, category: str, index: int, item: object, problem: str, part: str = PART, advice: str = FIX_ITEM
) -> InvalidInputError:
    name = item.get("img_path") if isinstance(item, dict) else None
    described = f"'{part}' item {index} of {category!r}" + (f" ({name})" if isinstance(name, str) else "")
    return InvalidInputError(f"'{file}': {described} {problem}. {advice}")


def _check_paths(file: Path, category: str, index: int, item: dict, part: str = PART) -> None:
    """Refuse an item whose image or mask path may lead out of the index's folder."""
    for field in PATH_FIELDS:
        value = item.get(field)
        problem = path_problem(value) if isinstance(value, str) and value else None
        if problem:
            raise _item_error(
                file,
                category,
                index,
                item,
                f"has {field}={value!r}: a path of the index must stay inside the index's folder, and this one "
                f"{problem}",
                part,
                f"Give the path relative to '{file.parent}', without '..'.",
            )


def _check_item(root: Path, file: Path, category: str, index: int, item: object) -> dict:
    if not isinstance(item, dict):
        raise _item_error(file, category, index, item, f"is a {type(item).__name__}, not an object with {list(FIELDS)}")
    for field, kind in FIELDS.items():
        if field not in item:
            raise _item_error(file, category, index, item, f"has no field '{field}'")
        value = item[field]
        if field == "anomaly":
            if isinstance(value, bool) or value not in (0, 1):
                raise _item_error(file, category, index, item, f"has anomaly={value!r}: it must be 0 or 1")
        elif not isinstance(value, kind) or (field in ("img_path", "cls_name") and not value):
            raise _item_error(file, category, index, item, f"has {field}={value!r}: it must be a non-empty string")
    problem = folder_name_problem(item["cls_name"])
    if problem:
        raise _item_error(
            file,
            category,
            index,
            item,
            f"has cls_name={item['cls_name']!r}: a category name becomes the name of its heat-maps' folder, and "
            f"this one {problem}",
            advice="Rename the category in the index to one folder name (no '/', '\\', ':' or '..').",
        )
    _check_paths(file, category, index, item)
    image = root / item["img_path"]
    if not image.is_file():
        raise _item_error(file, category, index, item, f"names an image that does not exist: '{image}'")
    mask = item["mask_path"]
    if item["anomaly"] == 1 and mask and not (root / mask).exists():
        raise _item_error(file, category, index, item, f"names a mask that does not exist: '{root / mask}'")
    return item


def _check_repeats(file: Path, listed: list[tuple[str, int, dict]]) -> None:
    """Refuse an image listed twice in a category with other fields; warn, in one line, of exact repeats.

    Args:
        file: The index file, for messages.
        listed: ``(key in the part, position under it, item)`` of every checked item, in file order.
    """
    first: dict[tuple[str, str], tuple[int, dict]] = {}
    repeats = []
    for key, index, item in listed:
        image = (item["cls_name"], os.path.normpath(item["img_path"]))
        if image not in first:
            first[image] = (index, item)
            continue
        earlier_index, earlier = first[image]
        differing = [field for field in FIELDS if item[field] != earlier[field] and field != "img_path"]
        if differing:
            raise _item_error(
                file,
                key,
                index,
                item,
                f"names the image of item {earlier_index} with other fields ({', '.join(differing)}): an image has "
                "one label",
                advice="Keep one of the two items.",
            )
        repeats.append((key, index, item, earlier_index))
    if repeats:
        key, index, item, earlier_index = repeats[0]
        logger.warning(
            "'%s': %d '%s' item(s) repeat an earlier item of their category, e.g. item %d of %r (%s) repeats item %d: "
            "each is scored and counted in the metrics as often as it is listed, as by the authors' test.py. Remove "
            "the repeats to count each image once.",
            file,
            len(repeats),
            PART,
            index,
            key,
            item["img_path"],
            earlier_index,
        )


@cache
def _load(file: Path, modified: float) -> object:  # noqa: ARG001  (cache key)
    """The parsed index file, read once per version of the file (never changed by the callers)."""
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        msg = f"'{file}' is not a readable JSON index ({error}). Write it again with the dataset's generator script."
        raise InvalidInputError(msg) from error


@cache
def _read(file: Path, modified: float) -> tuple[tuple[str, tuple[dict, ...]], ...]:
    """The checked ``test`` items by category, read (and repeats reported) once per version of the file."""
    index = _load(file, modified)
    part = index.get(PART) if isinstance(index, dict) else None
    if not isinstance(part, dict) or not part:
        msg = f"'{file}' has no '{PART}' part with categories ({{\"{PART}\": {{\"<cls_name>\": [<item>, ...]}}}})."
        raise InvalidInputError(msg)
    root, grouped, listed = file.parent, {}, []
    for category, items in part.items():
        if not isinstance(items, list):
            msg = f"'{file}': '{PART}' category {category!r} is a {type(items).__name__}, not a list of items."
            raise InvalidInputError(msg)
        if not items:
            grouped.setdefault(category, [])  # listed, and named when it is read (meta_samples)
        for index_in_category, item in enumerate(items):
            checked = _check_item(root, file, category, index_in_category, item)
            grouped.setdefault(checked["cls_name"], []).append(checked)
            listed.append((category, index_in_category, checked))
    _check_repeats(file, listed)
    return tuple((category, tuple(items)) for category, items in grouped.items())


def read_meta(root: str | Path, argument: str = "root") -> dict[str, list[dict]]:
    """The checked ``test`` items of ``<root>/meta.json`` by category (``cls_name``), in file order.

    Args:
        root: The folder that holds ``meta.json`` (the paths in it are relative to it).
        argument: The argument that names ``root``, for messages.

    Raises:
        MissingInputError: ``<root>/meta.json`` does not exist.
        InvalidInputError: The file is no JSON index, an item lacks a field or has an unknown value, or names an
            image or mask that does not exist; the message names the file and the item.
    """
    file = Path(root) / META_FILE
    if not file.is_file():
        msg = (
            f"'{file}' does not exist (argument `{argument}`): MetaJson reads the `meta.json` that the authors' "
            "generate_dataset_json scripts write at a dataset's root. Pass the folder that holds it."
        )
        raise MissingInputError(msg)
    file = file.resolve()
    return {category: list(items) for category, items in _read(file, file.stat().st_mtime)}


def meta_categories(root: str | Path, argument: str = "root") -> list[str]:
    """The categories of the ``test`` part of ``<root>/meta.json``, in the order they first appear."""
    return list(read_meta(root, argument))


def meta_samples(root: str | Path, category: str, masks: bool) -> pd.DataFrame:
    """The samples table of one category of ``<root>/meta.json`` (see :class:`~.dataset.CheckedImageDataset`).

    Args:
        root: The folder that holds ``meta.json``.
        category: The category (``cls_name``).
        masks: Read the defect masks; the category is classification-only without them, or when none of its
            defect items has a mask file.

    Raises:
        InvalidInputError: The category has no items, or some of its defect items have a mask file and others
            do not.
    """
    root = Path(root).resolve()
    items = read_meta(root).get(category, [])
    if not items:
        msg = (
            f"'{root / META_FILE}': category '{category}' has no items in the '{PART}' part, which holds the images "
            "that are tested (and trained on). Give it its test items (the dataset's generate_dataset_json script "
            "writes them), or leave it out with `categories` (`target_categories` for a target index)."
        )
        raise InvalidInputError(msg)
    defects = [item for item in items if item["anomaly"] == 1]
    with_mask = [item for item in defects if item["mask_path"] and (root / item["mask_path"]).is_file()]
    if with_mask and len(with_mask) != len(defects):
        item = next(item for item in defects if item not in with_mask)
        msg = (
            f"'{root / META_FILE}': defect image '{item['img_path']}' of '{category}' has no mask file "
            f"(mask_path={item['mask_path']!r}) while {len(with_mask)} other defect images of the category have one. "
            "Give it its mask, or read the dataset without masks (`masks: false`)."
        )
        raise InvalidInputError(msg)
    segmentation = masks and (bool(with_mask) or not defects)
    rows = [
        (
            str(root / item["img_path"]),
            item["specie_name"],
            item["anomaly"],
            str(root / item["mask_path"]) if segmentation and item["anomaly"] == 1 else "",
        )
        for item in items
    ]
    samples = pd.DataFrame(rows, columns=["image_path", "label", "label_index", "mask_path"])
    samples["split"] = "test"
    samples.attrs["task"] = "segmentation" if segmentation else "classification"
    return samples


def meta_train_normals(root: str | Path, category: str) -> list[Path]:
    """The normal images of ``category`` in the ``train`` part of ``<root>/meta.json`` (few-shot references).

    The ``train`` part is read only here; it may be missing or empty (several generators write none).

    Raises:
        InvalidInputError: An item of the ``train`` part names a path that may lead out of the index's folder.
    """
    file = (Path(root) / META_FILE).resolve()
    index = _load(file, file.stat().st_mtime)
    part = index.get("train") if isinstance(index, dict) else None
    normals = []
    for key, items in (part or {}).items():
        for position, item in enumerate(items if isinstance(items, list) else []):
            if isinstance(item, dict) and item.get("cls_name") == category and item.get("anomaly") == 0:
                _check_paths(file, key, position, item, part="train")
                normals.append(file.parent / item["img_path"])
    return normals
