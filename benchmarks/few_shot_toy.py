"""The toy protocol at k_shot 0, 1 and 4 for FAPrompt and AnomalyCLIP: one table of the means over categories.

Writes the README's two synthetic datasets (``alpha``, ``beta`` -> ``gamma``, ``delta``, ``epsilon``) into a
temporary folder, trains each tiny model (random CLIP, the settings of ``configs/faprompt_synthetic_tiny.yaml``)
for ``--epochs`` on the source's test split, seeded, and tests it zero-shot on every target category at each
``k_shot``: the references are ``k_shot`` of the category's ``train/good`` images. Prints a Markdown table.

Run: ``python benchmarks/few_shot_toy.py`` (a few minutes on two cores).
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import warnings
from pathlib import Path

from anomalib.engine import Engine
from lightning.pytorch import seed_everything

from anomalib_faprompt import AnomalyCLIP, FAPrompt
from anomalib_faprompt.data import AuxiliaryDataModule, make_synthetic_dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, for its tests' tiny model
from tests.helpers.models import TINY_MODEL_ARGS

METRICS = ("image_AUROC", "image_AUPR", "pixel_AUROC", "pixel_AUPRO")


def datamodule(source: Path, target: Path) -> AuxiliaryDataModule:
    """The protocol's data: train on the source's test split, test on every target category."""
    return AuxiliaryDataModule(
        root=source, val_split_ratio=0.25, target_dataset="MVTecAD", target_root=target, num_workers=0,
        train_batch_size=4,
    )  # fmt: skip


def main() -> None:
    """Train, test at each k_shot, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--shots", type=int, nargs="*", default=[0, 1, 4])
    parser.add_argument("--seed", type=int, default=111)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    rows = []
    with tempfile.TemporaryDirectory() as temporary:
        root = Path(temporary)
        source = make_synthetic_dataset(root / "synthetic_source", categories=("alpha", "beta"))
        target = make_synthetic_dataset(root / "synthetic_target", categories=("gamma", "delta", "epsilon"), seed=1)
        for model_class in (FAPrompt, AnomalyCLIP):
            seed_everything(args.seed)
            model = model_class(**TINY_MODEL_ARGS, visualizer=False)
            engine = Engine(
                accelerator="cpu", max_epochs=args.epochs, default_root_dir=root / "train", logger=False,
                enable_progress_bar=False,
            )  # fmt: skip
            engine.fit(model, datamodule=datamodule(source, target))
            for k_shot in args.shots:
                seed_everything(args.seed)
                model = model_class(**TINY_MODEL_ARGS, visualizer=False, weights=engine.best_model_path, k_shot=k_shot)
                tester = Engine(
                    accelerator="cpu", default_root_dir=root / f"{model_class.__name__}_{k_shot}", logger=False,
                    enable_progress_bar=False,
                )  # fmt: skip
                tester.test(model, datamodule=datamodule(source, target), verbose=False)
                table = Path(tester.trainer.default_root_dir) / "per_category_results.csv"
                with table.open() as file:
                    mean = next(row for row in csv.DictReader(file) if row["category"] == "mean")
                rows.append((model_class.__name__, k_shot, [float(mean[metric]) for metric in METRICS]))
    print(f"\nToy protocol (tiny random CLIP, {args.epochs} epochs, seed {args.seed}), mean over the categories\n")
    print("| model | k_shot | " + " | ".join(METRICS) + " |")
    print("|---|---|" + "---|" * len(METRICS))
    for name, k_shot, values in rows:
        print(f"| {name} | {k_shot} | " + " | ".join(f"{100 * value:.1f}" for value in values) + " |")


if __name__ == "__main__":
    main()
