"""Synthetic defect datasets in anomalib's MVTec AD layout, for offline runs and tests.

Each category has a texture of its own; anomalous images carry bright or dark blobs, and their
masks mark exactly the changed pixels::

    root/<category>/train/good/000.png
    root/<category>/test/good/000.png
    root/<category>/test/defect/000.png
    root/<category>/ground_truth/defect/000_mask.png

Run ``python -m anomalib_faprompt.data.synthetic ROOT`` to write one. The generator writes its parameters
into ``ROOT/synthetic.json`` last. A ``ROOT`` that already holds exactly the dataset of the same parameters
(its manifest, and the files that manifest lists, unchanged, nothing else) is kept as it is; any other
``ROOT`` that exists and is not empty is refused unless ``--overwrite`` is given.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["MANIFEST", "make_synthetic_dataset", "synthetic_dataset_kept"]

# The file, in the dataset root, that records the parameters of the dataset written there (written last).
MANIFEST = "synthetic.json"


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


def _files(root: Path) -> list[Path]:
    """The files under ``root`` except the manifest, relative to ``root``, sorted."""
    return sorted(path.relative_to(root) for path in root.rglob("*") if path.is_file() and path != root / MANIFEST)


def _digest(root: Path, categories: list[str]) -> str:
    """A SHA-256 digest of the files (names and contents) of the category folders under ``root``."""
    digest = hashlib.sha256()
    for relative in _files(root):
        if relative.parts[0] in categories:
            digest.update(relative.as_posix().encode() + b"\0" + (root / relative).read_bytes())
    return digest.hexdigest()


def _refusal(root: Path, reason: str) -> FileExistsError:
    """The error that refuses to write into ``root``, saying why after "is not empty"."""
    msg = (
        f"'{root}' is not empty{reason}; the synthetic dataset is not written over it. Choose another folder, or "
        "overwrite (`--overwrite`, `overwrite=True`) to replace its category folders."
    )
    return FileExistsError(msg)


def _read_manifest(root: Path) -> dict | None:
    """The manifest in ``root``; ``None`` if there is none or it is not one of this generator's."""
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and isinstance(manifest.get("parameters"), dict) else None


def synthetic_dataset_kept(root: str | Path, parameters: dict) -> bool:
    """Whether ``root`` already holds exactly the synthetic dataset of ``parameters`` (then it is kept).

    Args:
        root: Dataset folder.
        parameters: The generator's parameters (``categories`` as a list, sizes, counts, ``seed``).

    Returns:
        ``True`` if ``root`` holds that dataset and nothing else; ``False`` if ``root`` is missing or empty.

    Raises:
        FileExistsError: ``root`` holds anything else; the message says what differs where it can.
    """
    root = Path(root)
    if not root.is_dir() or not any(root.iterdir()):
        return False
    manifest = _read_manifest(root)
    if manifest is None:
        raise _refusal(root, f" and holds no synthetic dataset manifest ({MANIFEST})")
    written = manifest["parameters"]
    differences = [
        f"{name} {written.get(name)!r}, not {value!r}"
        for name, value in parameters.items()
        if written.get(name) != value
    ]
    if differences:
        raise _refusal(root, f": it holds the synthetic dataset of other parameters ({'; '.join(differences)})")
    categories = [str(name) for name in parameters["categories"]]
    others = sorted({relative.parts[0] for relative in _files(root)} - set(categories))
    others += sorted(path.name for path in root.iterdir() if path.is_dir() and not any(path.iterdir()))
    if others:
        raise _refusal(root, f": besides this synthetic dataset it holds {', '.join(others)}")
    if _digest(root, categories) != manifest.get("digest"):
        raise _refusal(root, ": the files of this synthetic dataset were changed since it was written")
    return True


def _parameters(
    categories: tuple[str, ...], image_size: int, n_train: int, n_good: int, n_defect: int, seed: int
) -> dict:
    """The parameters of a dataset as its manifest records them."""
    return {
        "categories": list(categories),
        "image_size": image_size,
        "n_train": n_train,
        "n_good": n_good,
        "n_defect": n_defect,
        "seed": seed,
    }


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
    """Write a synthetic dataset in the MVTec AD layout, with its parameters in ``root/synthetic.json``.

    Args:
        root: Folder to write into (created if missing); it must be empty unless ``overwrite`` is set, or hold
            exactly the dataset of the same parameters (then it is kept, not rewritten).
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
        FileExistsError: ``root`` is not empty, does not hold exactly this dataset, and ``overwrite`` is not set.
    """
    root = Path(root)
    parameters = _parameters(categories, image_size, n_train, n_good, n_defect, seed)
    if not overwrite and synthetic_dataset_kept(root, parameters):
        return root
    (root / MANIFEST).unlink(missing_ok=True)
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
    root.mkdir(parents=True, exist_ok=True)
    manifest = {
        "generator": "anomalib_faprompt.data.synthetic",
        "parameters": parameters,
        "digest": _digest(root, [str(name) for name in categories]),
    }
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
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
    arguments = {"categories": tuple(args.categories), "image_size": args.image_size, "n_defect": args.n_defect}
    defaults = inspect.signature(make_synthetic_dataset).parameters  # n_train, n_good: not on the command line
    counts = {"n_train": defaults["n_train"].default, "n_good": defaults["n_good"].default}
    parameters = _parameters(**arguments, **counts, seed=args.seed)
    try:
        if not args.overwrite and synthetic_dataset_kept(args.root, parameters):
            print(f"'{args.root}' already holds this synthetic dataset; kept")  # noqa: T201
            return
        make_synthetic_dataset(args.root, **arguments, seed=args.seed, overwrite=args.overwrite)
    except FileExistsError as error:
        parser.error(str(error))
    print(f"wrote {args.root}")  # noqa: T201


if __name__ == "__main__":
    main()
