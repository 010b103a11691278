"""The test splits of anomalib's image datasets, one category at a time, as training or evaluation data.

A *source* is a dataset name (``"MVTecAD"``, ``"Visa"``, ``"Folder"`` or ``"MetaJson"``) and a root folder. MVTecAD
and Visa data are read in anomalib's MVTec AD layout (Visa's prepared ``visa_pytorch`` folder); missing
data is downloaded and prepared with anomalib's own datamodules (``prepare_data``: Visa's raw download is
split into the ``visa_pytorch`` layout next to it, as anomalib does). ``Folder`` is custom data: a folder
of normal images, a folder of defect images and a folder of their masks. ``MetaJson`` is a dataset indexed by
the authors' ``meta.json`` (:mod:`.authors_index`): its root is the folder that holds the file; nothing is downloaded.

A defect image's mask is the file in the mask folder named like the image (``000.png``) or with a
``_mask`` suffix (``000_mask.png``), with any image suffix (PNG, JPEG, BMP, TIFF), as in anomalib's
MVTec AD and Folder layouts. Images and masks are paired by name, not by position.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pandas as pd
from anomalib.data import MVTecAD, Visa
from anomalib.data.datasets.image.mvtecad import CATEGORIES as MVTECAD_CATEGORIES
from anomalib.data.datasets.image.visa import CATEGORIES as VISA_CATEGORIES

from anomalib_faprompt.errors import InvalidInputError, MissingInputError

from .authors_index import meta_categories, meta_samples
from .dataset import CheckedImageDataset

__all__ = [
    "DATASETS",
    "available_categories",
    "check_anomalib_datamodule",
    "category_dataset",
    "check_category",
    "check_root",
    "image_files",
    "is_download_folder",
    "missing_masks",
    "prepare_category",
    "source_name",
]

logger = logging.getLogger(__name__)

DATASETS = ("MVTecAD", "Visa", "Folder", "MetaJson")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_DATAMODULES = {"MVTecAD": MVTecAD, "Visa": Visa}
_KNOWN_CATEGORIES = {"MVTecAD": MVTECAD_CATEGORIES, "Visa": VISA_CATEGORIES}
# The folder names of anomalib's default roots (``./datasets/MVTecAD``, ``./datasets/visa``): a missing root
# of that name is downloaded into; any other missing root is reported instead.
_DOWNLOAD_FOLDERS = {"MVTecAD": "MVTecAD", "Visa": "visa"}
_DOWNLOADS = {
    "MVTecAD": "https://www.mvtec.com/company/research/datasets/mvtec-ad",
    "Visa": "https://github.com/amazon-science/spot-diff",
}


def _check_dataset(dataset: str) -> None:
    if dataset not in DATASETS:
        msg = f"Unknown dataset '{dataset}': use one of {DATASETS}."
        raise InvalidInputError(msg)


def layout_root(dataset: str, root: Path) -> Path:
    """The folder holding one sub-folder per category in the MVTec AD layout."""
    return root / "visa_pytorch" if dataset == "Visa" else root


def is_download_folder(dataset: str, root: Path) -> bool:
    """Whether ``root`` is named like anomalib's default folder of ``dataset`` (the only folders downloaded into)."""
    return root.name == _DOWNLOAD_FOLDERS[dataset]


def _no_categories_message(dataset: str, root: Path, argument: str) -> str:
    """Why an existing folder that is not a download location cannot be used: it holds no category folders."""
    layout = "<root>/<category>/test/..." if dataset == "MVTecAD" else "<root>/visa_pytorch/<category>/test/..."
    msg = (
        f"Dataset folder '{root}' (argument `{argument}`) holds no category folders with a `test/` sub-folder "
        f"({dataset} layout: {layout}), and it is not downloaded into (only folders named "
        f"`{_DOWNLOAD_FOLDERS[dataset]}` are)."
    )
    if (root / "test").is_dir():
        parent = root.parent if root.name not in ("", "..") else root.resolve().parent
        if dataset == "Visa" and parent.name == "visa_pytorch":
            parent = parent.parent
        msg += f" '{root}' looks like one category folder: pass its parent '{parent}' as `{argument}`."
    return msg


def available_categories(dataset: str, root: str | Path, argument: str = "root") -> list[str]:
    """Categories of a source: the prepared category folders, else anomalib's list (to be downloaded or prepared).

    anomalib's list is used only where anomalib's datamodule may fetch the data: a folder named like anomalib's
    default (``MVTecAD``, ``visa``), or a folder holding VisA's raw download (to be split into ``visa_pytorch``).

    Args:
        dataset: ``"MVTecAD"``, ``"Visa"``, ``"Folder"`` or ``"MetaJson"``.
        root: Dataset root.
        argument: The argument that names ``root``, for the error message.

    Returns:
        Category names; for ``Folder``, the folder's name.

    Raises:
        InvalidInputError: ``root`` exists, holds no category folders and is not a download location; the
            message says so, and to pass the parent when ``root`` looks like a category folder itself.
    """
    _check_dataset(dataset)
    root = Path(root)
    if dataset == "Folder":
        return [root.resolve().name]
    if dataset == "MetaJson":
        return meta_categories(root, argument)
    layout = layout_root(dataset, root)
    found = sorted(path.name for path in layout.iterdir() if (path / "test").is_dir()) if layout.is_dir() else []
    if found:
        return found
    raw_visa = dataset == "Visa" and any((root / name).is_dir() for name in VISA_CATEGORIES)
    if not root.is_dir() or is_download_folder(dataset, root) or raw_visa:
        return list(_KNOWN_CATEGORIES[dataset])
    raise InvalidInputError(_no_categories_message(dataset, root, argument))


def source_name(dataset: str, root: str | Path, argument: str = "root") -> str:
    """A readable name of a source: the dataset's name if it holds that dataset's categories, else its folder's.

    ``MVTecAD`` data with MVTec AD's categories is ``"MVTecAD"``; data in the MVTec AD layout with other
    categories (a synthetic or custom dataset) and ``Folder`` data are named after their root folder.
    """
    _check_dataset(dataset)
    if dataset in ("Folder", "MetaJson"):
        return Path(root).resolve().name
    if set(available_categories(dataset, root, argument)) <= set(_KNOWN_CATEGORIES[dataset]):
        return dataset
    return Path(root).resolve().name


def check_root(dataset: str, root: str | Path, argument: str = "root") -> None:
    """Fail in one line, before any download, when a dataset folder cannot be used and is not a download location.

    A missing root named like anomalib's default download folder (``MVTecAD``, ``visa``) is left to
    :func:`prepare_category` to download into; any other missing root is most likely a typo or a dataset
    not written yet. An existing root other than those must hold its categories (see
    :func:`available_categories`): nothing is downloaded into it.

    Raises:
        MissingInputError: The folder does not exist; the message says how to create it.
        InvalidInputError: The folder holds no category folders and is not a download location.
    """
    _check_dataset(dataset)
    root = Path(root)
    if dataset == "MetaJson":
        meta_categories(root, argument)
        return
    if root.is_dir():
        if dataset != "Folder":
            available_categories(dataset, root, argument)
        return
    if dataset == "Folder":
        msg = f"Custom dataset folder '{root}' (argument `{argument}`) does not exist."
        raise MissingInputError(msg)
    if is_download_folder(dataset, root):
        return
    default = _DOWNLOAD_FOLDERS[dataset]
    msg = (
        f"Dataset folder '{root}' (argument `{argument}`) does not exist. Write a synthetic dataset there with "
        f"`python -m anomalib_faprompt.data.synthetic {root}`, point `{argument}` at your {dataset} data, or at a "
        f"folder named `{default}` (e.g. `./datasets/{default}`) to let anomalib download {dataset} into it."
    )
    raise MissingInputError(msg)


def _missing_parents(path: Path) -> list[Path]:
    """``path`` and those of its parents that do not exist, deepest first."""
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing


def check_category(dataset: str, root: str | Path, category: str, argument: str = "root") -> None:
    """Fail in one line where anomalib's datamodule would download ``category`` into a folder it must not write to.

    The root must pass :func:`check_root`; an existing root not named like a download folder must hold the
    category (prepared, or VisA's raw data that anomalib splits). Nothing is read beyond folder names.

    Args:
        dataset: ``"MVTecAD"``, ``"Visa"``, ``"Folder"`` or ``"MetaJson"``.
        root: Dataset root.
        category: The category to read.
        argument: The argument that names ``root``, for the message.

    Raises:
        MissingInputError: The root or the category is missing where nothing may be downloaded.
        InvalidInputError: The root exists but holds no category folders.
    """
    _check_dataset(dataset)
    root = Path(root)
    check_root(dataset, root, argument)
    if dataset == "MetaJson":
        if category not in meta_categories(root, argument):
            msg = (
                f"Category '{category}' is not in '{root / 'meta.json'}' (argument `{argument}`), which has "
                f"{', '.join(meta_categories(root, argument))}."
            )
            raise MissingInputError(msg)
        return
    if dataset == "Folder" or not root.is_dir() or is_download_folder(dataset, root):
        return
    if (layout_root(dataset, root) / category / "test").is_dir() or (root / category).is_dir():
        return
    available = ", ".join(available_categories(dataset, root, argument))
    msg = (
        f"{dataset} category '{category}' is not under '{root}' (argument `{argument}`), which holds {available}, "
        f"and it is not downloaded there (only folders named `{_DOWNLOAD_FOLDERS[dataset]}` are downloaded into): "
        "place the category there, or leave it out."
    )
    raise MissingInputError(msg)


def prepare_category(dataset: str, root: str | Path, category: str) -> None:
    """Make sure a category is on disk, downloading or preparing it with anomalib's datamodule if needed.

    Only a root named like anomalib's default folder (``MVTecAD``, ``visa``) is downloaded into; in another
    root, anomalib only prepares data that is there (VisA's split). When the download fails, the folders it
    created are removed again.

    Raises:
        FileNotFoundError: The data is missing and could not be downloaded; the message says where to place it.
    """
    _check_dataset(dataset)
    root = Path(root)
    if dataset in ("Folder", "MetaJson"):
        check_category(dataset, root, category)
        return
    if (layout_root(dataset, root) / category / "test").is_dir():
        return
    check_category(dataset, root, category)
    created = _missing_parents(root.resolve())
    try:
        _DATAMODULES[dataset](root=root, category=category).prepare_data()
    except Exception as error:
        if created:
            shutil.rmtree(created[0], ignore_errors=True)
            for folder in created[1:]:
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
        layout = "<root>/<category>/{test,ground_truth}/..." if dataset == "MVTecAD" else "<root>/<category>/Data/..."
        msg = (
            f"{dataset} category '{category}' is not under '{root}' and could not be downloaded ({error!r}). "
            f"Offline, download {dataset} from {_DOWNLOADS[dataset]} and extract it so that it reads {layout} "
            f"with <root> = '{root}'"
            + (" (anomalib then writes its train/test split into <root>/visa_pytorch)." if dataset == "Visa" else ".")
        )
        raise MissingInputError(msg) from error


def image_files(folder: Path) -> list[Path]:
    """The image files directly in ``folder`` (PNG, JPEG, BMP, TIFF), sorted; none if it is not a folder."""
    if not folder.is_dir():
        return []
    return sorted(path for path in folder.iterdir() if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES)


def _pair_masks(images: list[Path], mask_dir: Path) -> tuple[dict[Path, Path], list[Path], list[Path]]:
    """Each image's mask by name; the images without a mask; the mask files of no image.

    Raises:
        ValueError: An image has two mask files (e.g. ``000.png`` and ``000_mask.png``).
    """
    masks: dict[str, list[Path]] = {}
    for mask in image_files(mask_dir):
        masks.setdefault(mask.stem, []).append(mask)
    paired, missing = {}, []
    for image in images:
        candidates = masks.get(image.stem, []) + masks.get(f"{image.stem}_mask", [])
        if len(candidates) > 1:
            files = ", ".join(map(str, candidates))
            msg = f"Defect image '{image}' has {len(candidates)} mask files ({files}): keep one."
            raise InvalidInputError(msg)
        if candidates:
            paired[image] = candidates[0]
        else:
            missing.append(image)
    unused = sorted({mask for found in masks.values() for mask in found} - set(paired.values()))
    return paired, missing, unused


def missing_masks(abnormal_dirs: list[Path], mask_dirs: list[Path]) -> list[Path]:
    """Defect images with no mask file (same name, or name + ``_mask``, in the matching mask folder)."""
    return [
        image
        for abnormal_dir, mask_dir in zip(abnormal_dirs, mask_dirs, strict=True)
        for image in _pair_masks(image_files(abnormal_dir), mask_dir)[1]
    ]


def _defect_dirs(category_root: Path) -> tuple[list[Path], list[Path]]:
    """The defect folders of a category in the MVTec AD layout and their mask folders (also those of no image)."""
    test, truth = category_root / "test", category_root / "ground_truth"
    names = {path.name for path in test.iterdir() if path.is_dir() and path.name != "good"} if test.is_dir() else set()
    names |= {path.name for path in truth.iterdir() if path.is_dir()} if truth.is_dir() else set()
    return [test / name for name in sorted(names)], [truth / name for name in sorted(names)]


MISSING_MASKS_MESSAGE = (
    "{count} defect image(s) of '{where}' have no mask file (e.g. {examples}). Masks are the ground truth of the "
    "pixel losses and metrics, and a missing one is not treated as an empty mask. Add the masks (same file name, "
    "or name + '_mask', in {mask_dirs}), remove those images, or do without masks: `masks: false` on the data "
    "(image metrics only; to train, also `pixel_losses: false` on the model)."
)


def _samples(
    normal: list[Path], defects: list[tuple[list[Path], Path]], masks: bool, where: Path
) -> tuple[pd.DataFrame, list[Path]]:
    """The samples table of normal images and (defect images, mask folder) pairs, and the unused mask files.

    Raises:
        ValueError: ``masks`` is set and a defect image has no mask.
    """
    rows = [(str(path), "good", 0, "") for path in normal]
    missing, unused = [], []
    for images, mask_dir in defects:
        paired, without, extra = _pair_masks(images, mask_dir) if masks else ({}, [], [])
        missing += without
        unused += extra
        rows += [(str(path), path.parent.name, 1, str(paired.get(path, ""))) for path in images]
    if missing:
        examples = ", ".join(str(path) for path in missing[:3])
        names = ", ".join(f"'{path}'" for path in sorted({mask_dir for _, mask_dir in defects}))
        msg = MISSING_MASKS_MESSAGE.format(count=len(missing), where=where, examples=examples, mask_dirs=names)
        raise InvalidInputError(msg)
    samples = pd.DataFrame(rows, columns=["image_path", "label", "label_index", "mask_path"])
    samples["split"] = "test"
    samples.attrs["task"] = "segmentation" if masks else "classification"
    return samples, unused


def category_dataset(
    dataset: str,
    root: str | Path,
    category: str,
    masks: bool = True,
    normal_dir: str = "good",
    abnormal_dir: str = "defect",
    mask_dir: str = "ground_truth",
) -> CheckedImageDataset:
    """The test split of one category (for ``Folder``: every image of the folder); empty if it has no images.

    Args:
        dataset: ``"MVTecAD"``, ``"Visa"``, ``"Folder"`` or ``"MetaJson"``.
        root: Dataset root (relative to the working directory, or absolute).
        category: Category name (ignored for ``Folder``).
        masks: Load defect masks; with ``False`` the dataset is image-level only (no ``gt_mask``).
        normal_dir: ``Folder`` only: sub-folder of normal images.
        abnormal_dir: ``Folder`` only: sub-folder of defect images.
        mask_dir: ``Folder`` only: sub-folder of masks.

    Returns:
        A dataset whose anomalous samples all have a mask file when ``masks`` is set. Mask files that belong
        to no image are ignored with a logged warning that names them.

    Raises:
        ValueError: ``masks`` is set and a defect image has no mask, or has two.
        FileNotFoundError: A ``Folder`` sub-folder does not exist.
    """
    _check_dataset(dataset)
    root = Path(root).resolve()
    if dataset == "Folder":
        normal, abnormal = root / normal_dir, root / abnormal_dir
        for folder, argument in ((normal, "normal_dir"), (abnormal, "abnormal_dir")):
            if not folder.is_dir():
                msg = f"Folder '{folder}' (argument `{argument}`, under `root`) does not exist."
                raise MissingInputError(msg)
        name, category, where = root.name, root.name, abnormal
        samples, unused = _samples(image_files(normal), [(image_files(abnormal), root / mask_dir)], masks, where)
    elif dataset == "MetaJson":
        name, samples, unused = root.name, meta_samples(root, category, masks), []
    else:
        category_root = layout_root(dataset, root) / category
        abnormal_dirs, mask_dirs = _defect_dirs(category_root)
        name, where = dataset, category_root / "test"
        defects = [(image_files(folder), truth) for folder, truth in zip(abnormal_dirs, mask_dirs, strict=True)]
        samples, unused = _samples(image_files(where / "good"), defects, masks, where)
    if unused:
        logger.warning(
            "%d mask file(s) under '%s' belong to no defect image and are ignored: %s%s",
            len(unused),
            root,
            ", ".join(str(path) for path in unused[:5]),
            ", ..." if len(unused) > 5 else "",
        )
    return CheckedImageDataset(samples, name=name, category=category)


def check_anomalib_datamodule(datamodule: object) -> None:
    """Refuse, in one line, anomalib's MVTecAD or Visa data whose category is not where ``root`` says."""
    from anomalib.data import MVTecAD, Visa  # noqa: PLC0415

    if type(datamodule) in (MVTecAD, Visa):
        check_category(type(datamodule).__name__, datamodule.root, str(datamodule.category), "data.init_args.root")
