"""The false-alarm guarantee measured: realised false-alarm rates over random draws of calibration images.

Trains the tiny FAPrompt of ``configs/faprompt_synthetic_tiny.yaml`` (random CLIP, seeded) for ``--epochs`` on the
README's synthetic source dataset, writes ``--pool`` normal images of one synthetic target category, and scores them
once, as calibration images are scored (``score_images``). Then, for each false-alarm rate ``a`` and number ``n`` of
calibration images that can give it, ``--draws`` times: ``n`` of the pool at random calibrate the threshold, the rest
are the normal images to be inspected, and the share of them flagged is the realised false-alarm rate. Prints a
Markdown table: the mean, 5th and 95th percentile over the draws, beside the theory (the chance of a false alarm
``1 - k / (n + 1)``, its bounds ``[a - 1 / (n + 1), a]``, and the 5th and 95th percentile of one draw's realised rate,
from the beta-binomial law).

Run: ``python benchmarks/calibration_guarantee.py`` (about a minute on two cores).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
from anomalib.engine import Engine
from lightning.pytorch import seed_everything

from anomalib_faprompt import FAPrompt
from anomalib_faprompt.components.calibration import (
    expected_false_alarm_rate,
    images_needed,
    rank,
    realised_false_alarm_rates,
    realised_rate_quantiles,
)
from anomalib_faprompt.data import AuxiliaryDataModule, make_synthetic_dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, for its tests' tiny model
from tests.helpers.models import TINY_MODEL_ARGS

RATES = (0.01, 0.05, 0.1)
SIZES = (20, 50, 200)


def trained_model(root: Path, epochs: int, seed: int) -> FAPrompt:
    """The tiny FAPrompt trained on the README's synthetic source dataset (its test split), seeded."""
    source = make_synthetic_dataset(root / "synthetic_source", categories=("alpha", "beta"), seed=0)
    seed_everything(seed, verbose=False)
    model = FAPrompt(**TINY_MODEL_ARGS, visualizer=False)
    datamodule = AuxiliaryDataModule(root=source, val_split_ratio=0.25, num_workers=0, train_batch_size=4)
    engine = Engine(
        accelerator="cpu", devices=1, max_epochs=epochs, default_root_dir=root / "results", logger=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    engine.fit(model, datamodule=datamodule)
    return model


def main() -> None:
    """Train, score the pool once, draw, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", type=int, default=1000, help="normal images scored once")
    parser.add_argument("--draws", type=int, default=2000, help="random draws of calibration images per row")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=111)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory() as temporary:
        root = Path(temporary)
        model = trained_model(root, args.epochs, args.seed)
        pool = make_synthetic_dataset(
            root / "pool", categories=("gamma",), n_train=args.pool, n_good=0, n_defect=0, seed=1
        )
        files = sorted((pool / "gamma" / "train" / "good").glob("*.png"))
        scores, _ = model.score_images(files)
    scores = np.asarray(scores)
    print(
        f"{len(scores)} normal images of the synthetic category 'gamma', scored once by the tiny FAPrompt "
        f"({args.epochs} epochs, seed {args.seed}); {args.draws} draws per row; ties among the scores: "
        f"{len(scores) - len(np.unique(scores))}.\n"
    )
    header = (
        "| a | n | k | realised: mean | 5th pct | 95th pct | theory: 1 - k/(n+1) | bounds [a - 1/(n+1), a] "
        "| 5th pct | 95th pct |"
    )
    print(header)
    print("|" + "---:|" * (header.count("|") - 1))
    for rate in RATES:
        for n in SIZES:
            if n < images_needed(rate):
                continue
            rates = realised_false_alarm_rates(scores, n, rate, args.draws, seed=args.seed)
            low, high = realised_rate_quantiles(n, rate, len(scores) - n)
            cells = [
                f"{rate:g}", str(n), str(rank(n, rate)), f"{rates.mean():.4f}", f"{np.quantile(rates, 0.05):.4f}",
                f"{np.quantile(rates, 0.95):.4f}", f"{expected_false_alarm_rate(n, rate):.4f}",
                f"[{max(rate - 1 / (n + 1), 0):.4f}, {rate:.4f}]", f"{low:.4f}", f"{high:.4f}",
            ]  # fmt: skip
            print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
