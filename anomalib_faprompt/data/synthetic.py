"""Synthetic defect datasets in anomalib's MVTec AD layout, for offline runs and tests.

Each category has a texture of its own; anomalous images carry bright or dark blobs, and their
masks mark exactly the changed pixels::

    root/<category>/train/good/000.png
    root/<category>/test/good/000.png
    root/<category>/test/defect/000.png
    root/<category>/ground_truth/defect/000_mask.png

Run ``python -m anomalib_faprompt.data.synthetic ROOT`` to write one. A ``ROOT`` that exists and is not
empty is refused unless ``--overwrite`` is given.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["make_synthetic_dataset"]


def _texture(rng: np.random.Generator, size: int, category_index: int) -> np.ndarray:
    """A smooth striped texture whose orientation and colours depend on the category."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    angle = 0.7 * category_index + 0.3
    frequency = 4 + 2 * category_index
    stripes = 0.5 + 0.25 * np.sin(2 * np.pi * frequency * (np.cos(angle) * xx + np.sin(angle) * yy))
    base = np.array([0.3 + 0.1 * (category_index % 3), 0.5, 0.6 - 0.1 * (category_index % 2)])
    image = stripes[..., None] * base[None, None] + rng.normal(0.0, 0.03, (size, size, 3))
    return np.clip(image, 0.0, 1.0)


def _defect_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    """One or two random ellipses covering a few percent of the image."""
    yy, xx = np.mgrid[0:size, 0:size]
    mask = np.zeros((size, size), dtype=bool)
    for _ in range(rng.integers(1, 3)):
        cy, cx = rng.uniform(0.2, 0.8, 2) * size
        ry, rx = rng.uniform(0.06, 0.15, 2) * size
        mask |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    return mask


def _save(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.clip(array, 0.0, 1.0) * 255).astype(np.uint8)).save(path)


def make_synthetic_dataset(
    root: str | Path,
    categories: tuple[str, ...] = ("alpha", "beta"),
    image_size: int = 64,
    n_train: int = 4,
    n_good: int = 6,
    n_defect: int = 6,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write a synthetic dataset in the MVTec AD layout.

    Args:
        root: Folder to write into (created if missing); it must be empty unless ``overwrite`` is set.
        categories: Category names; each gets its own texture.
        image_size: Image side in pixels.
        n_train: Normal training images per category.
        n_good: Normal test images per category.
        n_defect: Defect test images (with masks) per category.
        seed: Random seed.
        overwrite: Write into a non-empty ``root``: the folders of ``categories`` are replaced, anything else
            in ``root`` is kept.

    Returns:
        The root folder.

    Raises:
        FileExistsError: ``root`` is not empty and ``overwrite`` is not set.
    """
    root = Path(root)
    if root.is_dir() and any(root.iterdir()) and not overwrite:
        msg = (
            f"'{root}' is not empty; the synthetic dataset is not written over it. Choose another folder, or "
            "overwrite (`--overwrite`, `overwrite=True`) to replace its category folders."
        )
        raise FileExistsError(msg)
    rng = np.random.default_rng(seed)
    for index, category in enumerate(categories):
        folder = root / category
        if folder.exists():
            shutil.rmtree(folder)
        for split, count in (("train", n_train), ("test", n_good)):
            for number in range(count):
                _save(_texture(rng, image_size, index), folder / split / "good" / f"{number:03d}.png")
        for number in range(n_defect):
            image = _texture(rng, image_size, index)
            mask = _defect_mask(rng, image_size)
            shade = rng.choice([0.05, 0.95])
            image[mask] = shade + rng.normal(0.0, 0.03, (int(mask.sum()), 3))
            _save(image, folder / "test" / "defect" / f"{number:03d}.png")
            _save(mask.astype(float), folder / "ground_truth" / "defect" / f"{number:03d}_mask.png")
    return root


def main() -> None:
    """Command line: write a synthetic dataset."""
    parser = argparse.ArgumentParser(
        prog="python -m anomalib_faprompt.data.synthetic", description=__doc__.splitlines()[0]
    )
    parser.add_argument("root", type=Path, help="folder to write the dataset into")
    parser.add_argument("--categories", nargs="+", default=["alpha", "beta"])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--n-defect", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--overwrite", action="store_true", help="write into a non-empty folder, replacing the categories' folders"
    )
    args = parser.parse_args()
    try:
        make_synthetic_dataset(
            args.root,
            tuple(args.categories),
            args.image_size,
            n_defect=args.n_defect,
            seed=args.seed,
            overwrite=args.overwrite,
        )
    except FileExistsError as error:
        parser.error(str(error))
    print(f"wrote {args.root}")  # noqa: T201


if __name__ == "__main__":
    main()
