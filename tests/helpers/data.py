"""Test data: the synthetic datasets' sizes, model outputs for the evaluator, photos tagged with their orientation."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from anomalib.data.utils import read_image
from PIL import Image

from anomalib_faprompt.data import make_synthetic_dataset

# The synthetic datasets of the README's main job (`python -m anomalib_faprompt.data.synthetic`, default sizes).
SOURCE_CATEGORIES = ("alpha", "beta")
TARGET_CATEGORIES = ("gamma", "delta", "epsilon")
N_GOOD = 6  # normal test images per category
N_DEFECT = 6  # defect test images per category
# Image sizes (width, height) around the models' 64 x 64: larger, smaller, not square.
IMAGE_SIZES = ((64, 64), (150, 97), (41, 53), (300, 280), (64, 90), (33, 33))
METRICS = ["image_AUROC", "image_AUPR", "pixel_AUROC", "pixel_AUPRO"]  # the evaluator's metrics, in its order


def small_dataset(root: Path, categories: tuple[str, ...] = ("alpha",), seed: int = 0) -> Path:
    """A synthetic dataset in the MVTec AD layout: per category 1 normal training image, 2 normal and 2 defect tests."""
    return make_synthetic_dataset(root, categories=categories, n_train=1, n_good=2, n_defect=2, seed=seed)


def truncate(path: Path) -> None:
    """Cut a file to its first half, as an interrupted copy leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Size and modification time of every file and folder under ``root``: equal snapshots, nothing was written."""
    return {str(path): (path.stat().st_size, path.stat().st_mtime_ns) for path in sorted(root.rglob("*"))}


def read_images(folder: Path) -> torch.Tensor:
    """The PNG images of ``folder`` in file-name order, as anomalib reads them: ``(N, 3, H, W)`` in [0, 1]."""
    return torch.stack([read_image(path, as_tensor=True) for path in sorted(folder.glob("*.png"))])


def csv_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV file with a header line (a run's tables, predictions.csv, ...)."""
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def results_table(root: Path) -> dict[str, dict[str, str]]:
    """The per-category table of the one run under ``root`` (its ``per_category_results.csv``), by category."""
    (table,) = root.rglob("per_category_results.csv")
    return {row["category"]: row for row in csv_rows(table)}


def logged_warnings(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    """The warnings this package logged (its advice to the user) that contain ``text``, as caplog captured them."""
    return [
        record.getMessage()
        for record in caplog.records
        if record.name.startswith("anomalib_faprompt.")
        and record.levelno == logging.WARNING
        and text in record.getMessage()
    ]


def prediction_fields(seed: int, labels: list[int], size: int = 8) -> dict[str, torch.Tensor]:
    """A category's labels and model outputs for evaluator tests, seeded.

    Scores and ``size`` x ``size`` maps respond to the defects; every defect image's mask has a square.
    """
    generator = torch.Generator().manual_seed(seed)
    labels = torch.tensor(labels, dtype=torch.long)
    masks = torch.zeros(len(labels), size, size, dtype=torch.bool)
    masks[labels == 1, 2:5, 3:6] = True
    return {
        "gt_label": labels,
        "pred_score": 0.7 * torch.rand(len(labels), generator=generator) + 0.3 * labels,
        "anomaly_map": 0.8 * torch.rand(len(labels), 1, size, size, generator=generator) + 0.2 * masks[:, None],
        "gt_mask": masks,
    }


# EXIF Orientation (tag 0x0112 of IFD0, EXIF 2.32 / CIPA DC-008): how a viewer turns the stored pixels upright;
# 3: half a turn, 6: a quarter turn clockwise, 8: a quarter turn counter-clockwise. `np.rot90(a, k)` turns `a` by k
# quarter turns counter-clockwise.
EXIF_ORIENTATION = 0x0112
TURN_UPRIGHT = {3: 2, 6: -1, 8: 1}


def exif_tagged(orientation: int) -> Image.Exif:
    """EXIF data holding only the orientation tag, as ``PIL.Image.save(..., exif=...)`` writes it into a file."""
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    return exif


def camera_photo(folder: Path, name: str, upright: np.ndarray, orientation: int) -> tuple[Path, Path]:
    """A JPEG as a camera held turned writes it, and the same photo upright as a PNG without a tag.

    The camera stores the pixels as its sensor saw them (``upright`` turned the other way) and tags them with how
    to turn them upright. The PNG holds the JPEG's decoded pixels turned upright by hand (losslessly): the photo
    as a viewer shows it, pixel for pixel.

    Returns:
        ``<name>.jpg`` (tagged) and ``<name>_upright.png``.
    """
    turns = TURN_UPRIGHT[orientation]
    photo = folder / f"{name}.jpg"
    stored = np.ascontiguousarray(np.rot90(upright, -turns))
    Image.fromarray(stored).save(photo, quality=95, exif=exif_tagged(orientation))
    with Image.open(photo) as stored:  # as stored: PIL applies no tag by itself
        decoded = np.asarray(stored.convert("RGB"))
    shown = folder / f"{name}_upright.png"
    Image.fromarray(np.ascontiguousarray(np.rot90(decoded, turns))).save(shown)
    return photo, shown
