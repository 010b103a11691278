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
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import pandas as pd

from anomalib_faprompt.errors import InvalidInputError, MissingInputError

__all__ = ["META_FILE", "meta_categories", "meta_samples", "meta_train_normals", "read_meta"]

META_FILE = "meta.json"
PART = "test"
FIELDS = {"img_path": str, "mask_path": str, "cls_name": str, "specie_name": str, "anomaly": int}


def _item_error(file: Path, category: str, index: int, item: object, problem: str) -> InvalidInputError:
    name = item.get("img_path") if isinstance(item, dict) else None
    described = f"'{PART}' item {index} of '{category}'" + (f" ({name})" if isinstance(name, str) else "")
    return InvalidInputError(f"'{file}': {described} {problem}. Fix the item, or write the index again.")


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
    image = root / item["img_path"]
    if not image.is_file():
        raise _item_error(file, category, index, item, f"names an image that does not exist: '{image}'")
    mask = item["mask_path"]
    if item["anomaly"] == 1 and mask and not (root / mask).exists():
        raise _item_error(file, category, index, item, f"names a mask that does not exist: '{root / mask}'")
    return item


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
    index = _load(file, modified)
    part = index.get(PART) if isinstance(index, dict) else None
    if not isinstance(part, dict) or not part:
        msg = f"'{file}' has no '{PART}' part with categories ({{\"{PART}\": {{\"<cls_name>\": [<item>, ...]}}}})."
        raise InvalidInputError(msg)
    root, grouped = file.parent, {}
    for category, items in part.items():
        if not isinstance(items, list):
            msg = f"'{file}': '{PART}' category '{category}' is a {type(items).__name__}, not a list of items."
            raise InvalidInputError(msg)
        if not items:
            grouped.setdefault(category, [])  # listed, and named when it is read (meta_samples)
        for index_in_category, item in enumerate(items):
            checked = _check_item(root, file, category, index_in_category, item)
            grouped.setdefault(checked["cls_name"], []).append(checked)
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
    """
    file = (Path(root) / META_FILE).resolve()
    index = _load(file, file.stat().st_mtime)
    part = index.get("train") if isinstance(index, dict) else None
    items = [item for items in (part or {}).values() if isinstance(items, list) for item in items]
    return [
        file.parent / item["img_path"]
        for item in items
        if isinstance(item, dict) and item.get("cls_name") == category and item.get("anomaly") == 0
    ]
