"""The test splits of anomalib's image datasets, one category at a time, as training or evaluation data.

A *source* is a dataset name (``"MVTecAD"``, ``"Visa"`` or ``"Folder"``) and a root folder. MVTecAD
and Visa are read with anomalib's own datasets; missing data is downloaded and prepared with
anomalib's own datamodules (``prepare_data``: Visa's raw download is split into the
``visa_pytorch`` layout next to it, as anomalib does). ``Folder`` is custom data: a folder of normal
images, a folder of defect images and a folder of their masks.

A defect image's mask is the file in the mask folder named like the image (``000.png``) or with a
``_mask`` suffix (``000_mask.png``), as in anomalib's MVTec AD and Folder layouts.
"""

from __future__ import annotations

from pathlib import Path

from anomalib.data import MVTecAD, Visa
from anomalib.data.datasets import AnomalibDataset, FolderDataset, MVTecADDataset, VisaDataset
from anomalib.data.datasets.image.mvtecad import CATEGORIES as MVTECAD_CATEGORIES
from anomalib.data.datasets.image.visa import CATEGORIES as VISA_CATEGORIES

__all__ = ["DATASETS", "available_categories", "category_dataset", "missing_masks", "prepare_category"]

DATASETS = ("MVTecAD", "Visa", "Folder")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_DATAMODULES = {"MVTecAD": MVTecAD, "Visa": Visa}
_KNOWN_CATEGORIES = {"MVTecAD": MVTECAD_CATEGORIES, "Visa": VISA_CATEGORIES}
_DOWNLOADS = {
    "MVTecAD": "https://www.mvtec.com/company/research/datasets/mvtec-ad",
    "Visa": "https://github.com/amazon-science/spot-diff",
}


def _check_dataset(dataset: str) -> None:
    if dataset not in DATASETS:
        msg = f"Unknown dataset '{dataset}': use one of {DATASETS}."
        raise ValueError(msg)


def layout_root(dataset: str, root: Path) -> Path:
    """The folder holding one sub-folder per category in the MVTec AD layout."""
    return root / "visa_pytorch" if dataset == "Visa" else root


def available_categories(dataset: str, root: str | Path) -> list[str]:
    """Categories of a source: the prepared category folders, else anomalib's list (to be downloaded).

    Args:
        dataset: ``"MVTecAD"``, ``"Visa"`` or ``"Folder"``.
        root: Dataset root.

    Returns:
        Category names; for ``Folder``, the folder's name.
    """
    _check_dataset(dataset)
    root = Path(root)
    if dataset == "Folder":
        return [root.name]
    layout = layout_root(dataset, root)
    found = sorted(path.name for path in layout.iterdir() if (path / "test").is_dir()) if layout.is_dir() else []
    return found or list(_KNOWN_CATEGORIES[dataset])


def prepare_category(dataset: str, root: str | Path, category: str) -> None:
    """Make sure a category is on disk, downloading or preparing it with anomalib's datamodule if needed.

    Raises:
        FileNotFoundError: The data is missing and could not be downloaded; the message says where to place it.
    """
    _check_dataset(dataset)
    root = Path(root)
    if dataset == "Folder":
        if not root.is_dir():
            msg = f"Custom dataset folder '{root}' (argument `root`) does not exist."
            raise FileNotFoundError(msg)
        return
    if (layout_root(dataset, root) / category / "test").is_dir():
        return
    try:
        _DATAMODULES[dataset](root=root, category=category).prepare_data()
    except Exception as error:
        layout = "<root>/<category>/{test,ground_truth}/..." if dataset == "MVTecAD" else "<root>/<category>/Data/..."
        msg = (
            f"{dataset} category '{category}' is not under '{root}' and could not be downloaded ({error!r}). "
            f"Offline, download {dataset} from {_DOWNLOADS[dataset]} and extract it so that it reads {layout} "
            f"with <root> = '{root}'"
            + (" (anomalib then writes its train/test split into <root>/visa_pytorch)." if dataset == "Visa" else ".")
        )
        raise FileNotFoundError(msg) from error


def _images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(path for path in folder.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES)


def missing_masks(abnormal_dirs: list[Path], mask_dirs: list[Path]) -> list[Path]:
    """Defect images with no mask file (same name, or name + ``_mask``, in the matching mask folder)."""
    missing = []
    for abnormal_dir, mask_dir in zip(abnormal_dirs, mask_dirs, strict=True):
        stems = {path.stem for path in _images(mask_dir)}
        missing += [image for image in _images(abnormal_dir) if not {image.stem, f"{image.stem}_mask"} & stems]
    return missing


def _defect_dirs(category_root: Path) -> tuple[list[Path], list[Path]]:
    test = category_root / "test"
    defects = sorted(path.name for path in test.iterdir() if path.is_dir() and path.name != "good")
    return [test / name for name in defects], [category_root / "ground_truth" / name for name in defects]


MISSING_MASKS_MESSAGE = (
    "{count} defect image(s) of '{where}' have no mask file (e.g. {examples}). Masks are the ground truth of the "
    "pixel losses and metrics, and a missing one is not treated as an empty mask. Add the masks (same file name, "
    "or name + '_mask', in {mask_dirs}), remove those images, or train with image-level losses only: "
    "`masks: false` on the data and `pixel_losses: false` on the model."
)


def _raise_on_missing(abnormal_dirs: list[Path], mask_dirs: list[Path], where: Path) -> None:
    missing = missing_masks(abnormal_dirs, mask_dirs)
    if missing:
        examples = ", ".join(str(path) for path in missing[:3])
        names = ", ".join(f"'{path}'" for path in sorted(set(mask_dirs)))
        raise ValueError(
            MISSING_MASKS_MESSAGE.format(count=len(missing), where=where, examples=examples, mask_dirs=names)
        )


def category_dataset(
    dataset: str,
    root: str | Path,
    category: str,
    masks: bool = True,
    normal_dir: str = "good",
    abnormal_dir: str = "defect",
    mask_dir: str = "ground_truth",
) -> AnomalibDataset:
    """The test split of one category (for ``Folder``: every image of the folder).

    Args:
        dataset: ``"MVTecAD"``, ``"Visa"`` or ``"Folder"``.
        root: Dataset root.
        category: Category name (ignored for ``Folder``).
        masks: Load defect masks; with ``False`` the dataset is image-level only (no ``gt_mask``).
        normal_dir: ``Folder`` only: sub-folder of normal images.
        abnormal_dir: ``Folder`` only: sub-folder of defect images.
        mask_dir: ``Folder`` only: sub-folder of masks.

    Returns:
        An anomalib dataset whose anomalous samples all have a mask file when ``masks`` is set.

    Raises:
        ValueError: ``masks`` is set and a defect image has no mask.
    """
    _check_dataset(dataset)
    root = Path(root)
    if dataset == "Folder":
        normal, abnormal, mask = root / normal_dir, root / abnormal_dir, root / mask_dir
        for folder, argument in ((normal, "normal_dir"), (abnormal, "abnormal_dir")):
            if not folder.is_dir():
                msg = f"Folder '{folder}' (argument `{argument}`, under `root`) does not exist."
                raise FileNotFoundError(msg)
        if masks:
            _raise_on_missing([abnormal], [mask], abnormal)
        data = FolderDataset(
            name=root.name, root=root, normal_dir=normal, abnormal_dir=abnormal, mask_dir=mask if masks else None
        )
    else:
        category_root = layout_root(dataset, root) / category
        abnormal_dirs, mask_dirs = _defect_dirs(category_root)
        if masks:
            _raise_on_missing(abnormal_dirs, mask_dirs, category_root / "test")
            dataset_class = MVTecADDataset if dataset == "MVTecAD" else VisaDataset
            data = dataset_class(root=layout_root(dataset, root), category=category, split="test")
        else:
            data = FolderDataset(
                name=category,
                root=category_root,
                normal_dir=category_root / "test" / "good",
                abnormal_dir=abnormal_dirs,
            )
    if masks:
        samples = data.samples
        unmasked = samples[(samples.label_index == 1) & (samples.mask_path.fillna("") == "")]
        if len(unmasked):
            raise ValueError(
                MISSING_MASKS_MESSAGE.format(
                    count=len(unmasked), where=root, examples=", ".join(unmasked.image_path[:3]), mask_dirs=root
                )
            )
    return data
