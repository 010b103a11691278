"""Several processes (gloo on CPU): the evaluator's table is one process's; DDP training and test through the CLI."""

from __future__ import annotations

import math
import re
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from anomalib.data import ImageBatch
from torch import distributed
from torch import multiprocessing as mp
from torch.utils.data import DataLoader, DistributedSampler

from anomalib_faprompt.data import make_synthetic_dataset
from anomalib_faprompt.metrics import PerCategoryEvaluator
from tests.helpers.commands import REPO, anomalib_cli
from tests.helpers.data import prediction_fields

PAPER_AUPRO = """\
model:
  init_args:
    evaluator:
      class_path: anomalib_faprompt.metrics.PerCategoryEvaluator
      init_args:
        aupro: [exact, paper]
"""


# Category -> image labels: 7 images (two ranks: one repeat), normal images only, a single defect image (the
# second rank's only sample is a repeat), no image at all.
CATEGORIES = {"odd": [0, 1, 0, 1, 1, 0, 0], "normal_only": [0, 0, 0], "solo": [1], "empty": []}


def _batch(data: dict[str, torch.Tensor], indices: list[int]) -> ImageBatch:
    indices = torch.tensor(indices, dtype=torch.long)
    fields = {name: value[indices] for name, value in data.items()}
    return ImageBatch(image=torch.zeros(len(indices), 3, 8, 8), **fields)


def _evaluate(rank: int, world_size: int, folder: Path) -> dict:
    """Feed every category to a fresh evaluator as Lightning would (with a distributed sampler on several ranks)."""
    loaders = []
    for seed, labels in enumerate(CATEGORIES.values()):
        indices = range(len(labels))
        sampler = DistributedSampler(indices, world_size, rank, shuffle=False) if world_size > 1 else None
        loaders.append(
            DataLoader(
                indices, batch_size=3, sampler=sampler, collate_fn=partial(_batch, prediction_fields(seed, labels))
            )
        )
    trainer = SimpleNamespace(
        test_dataloaders=loaders,
        datamodule=SimpleNamespace(test_categories=list(CATEGORIES)),
        barebones=True,
        callback_metrics={},
        logged_metrics={},
        default_root_dir=folder / f"rank{rank}",
        is_global_zero=rank == 0,
        strategy=SimpleNamespace(root_device=torch.device("cpu")),
    )
    evaluator = PerCategoryEvaluator(aupro=["exact", "paper"])
    evaluator.on_test_epoch_start(trainer, None)
    for index, loader in enumerate(loaders):
        for batch_index, batch in enumerate(loader):
            evaluator.on_test_batch_end(trainer, None, None, batch, batch_index, index)
    evaluator.on_test_epoch_end(trainer, None)
    return {"results": evaluator.category_results, "notes": evaluator.notes}


def _worker(rank: int, world_size: int, folder: Path) -> None:
    distributed.init_process_group("gloo", init_method=f"file://{folder / 'store'}", rank=rank, world_size=world_size)
    try:
        torch.save(_evaluate(rank, world_size, folder), folder / f"rank{rank}.pt")
    finally:
        distributed.destroy_process_group()


def test_two_ranks_report_the_single_process_table(tmp_path, capsys):
    single = _evaluate(0, 1, tmp_path / "single")
    capsys.readouterr()
    mp.spawn(_worker, args=(2, tmp_path), nprocs=2)
    assert single["notes"] == [
        "normal_only: image_AUROC, image_AUPR not computable: no defect image.",
        "normal_only: pixel_AUROC, pixel_AUPRO, pixel_AUPRO_paper not computable: no defect pixel.",
        "solo: image_AUROC, image_AUPR not computable: no normal image.",
        "empty: no images.",
    ]
    assert not math.isnan(single["results"]["solo"]["pixel_AUPRO"])
    for rank in (0, 1):
        ranked = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        assert ranked["notes"] == single["notes"]
        assert list(ranked["results"]) == list(CATEGORIES)
        for category, values in single["results"].items():
            for name, value in values.items():
                assert ranked["results"][category][name] == pytest.approx(value, abs=1e-6, nan_ok=True), (
                    category,
                    name,
                )
    assert (tmp_path / "rank0" / "per_category_results.csv").is_file()
    assert not (tmp_path / "rank1").exists()  # only rank 0 writes


def test_two_processes_give_the_single_process_table(tmp_path):
    source = make_synthetic_dataset(tmp_path / "source", categories=("alpha", "beta"), n_train=1, seed=0)
    # 7 test images per category: with two ranks, Lightning's sampler repeats one image of each category; "solo"
    # has one defect image, so that the second rank's only sample is a repeat (no own sample, still gathered).
    target = make_synthetic_dataset(
        tmp_path / "target", categories=("gamma", "delta"), n_train=1, n_good=3, n_defect=4, seed=1
    )
    make_synthetic_dataset(target, categories=("solo",), n_train=1, n_good=0, n_defect=1, seed=2, overwrite=True)
    overlay = tmp_path / "paper_aupro.yaml"
    overlay.write_text(PAPER_AUPRO)
    config = ["--config", REPO / "configs" / "faprompt_synthetic_tiny.yaml", "--config", overlay]
    data = ["--data.root", source, "--data.target_root", target, "--data.eval_batch_size", "2"]

    ddp = anomalib_cli(
        "train", *config, *data, "--trainer.max_epochs", "1", "--default_root_dir", tmp_path / "ddp",
        "--trainer.devices", "2", "--trainer.strategy", "ddp",
    )  # fmt: skip
    (table,) = (tmp_path / "ddp").rglob("per_category_results.csv")
    (checkpoint,) = (tmp_path / "ddp").rglob("*.ckpt")
    single = anomalib_cli("test", *config, *data, "--ckpt_path", checkpoint, "--default_root_dir", tmp_path / "single")
    (single_table,) = (tmp_path / "single").rglob("per_category_results.csv")

    lines, single_lines = table.read_text().splitlines(), single_table.read_text().splitlines()
    # The same images, gathered in another order and computed in other batches (each rank batches its own share):
    # equal up to float32 rounding. The papers' AUPRO bins the thresholds between the maps' minimum and maximum, so
    # a rounding difference that moves a bin edge past a pixel moves it by a step (4.6e-6 seen once in CI).
    assert lines[0] == single_lines[0]
    names = lines[0].split(",")[1:]
    # 1e-4 for the binned AUPRO: far below what a lost or doubled image would move.
    tolerance = [1e-4 if name == "pixel_AUPRO_paper" else 1e-6 for name in names]
    for line, single_line in zip(lines[1:], single_lines[1:], strict=True):
        cells, single_cells = line.split(",")[1:], single_line.split(",")[1:]
        assert line.split(",")[0] == single_line.split(",")[0]
        assert [cell == "" for cell in cells] == [cell == "" for cell in single_cells]
        for name, cell, single_cell, bound in zip(names, cells, single_cells, tolerance, strict=True):
            if cell:
                assert float(cell) == pytest.approx(float(single_cell), abs=bound), (line, name)
    assert lines[0] == "category,image_AUROC,image_AUPR,pixel_AUROC,pixel_AUPRO,pixel_AUPRO_paper"
    assert [line.split(",")[0] for line in lines[1:]] == ["delta", "gamma", "solo", "mean"]
    assert lines[3].startswith("solo,,,0.")  # no normal image: image metrics empty; pixel metrics computed
    # Rank 0 alone prints the table, and Lightning's per-dataloader table and sync_dist warnings are gone.
    assert ddp.stdout.count("Results in ") == 1
    assert f"checkpoint: {checkpoint}" in ddp.stdout
    assert ddp.stdout.count("solo: image_AUROC, image_AUPR not computable: no normal image.") == 1
    assert "DataLoader 0" not in ddp.stdout + single.stdout
    assert "sync_dist" not in ddp.stderr
    # One run folder for both ranks, and `latest` on it: the second rank starts no version folder of its own.
    (run,) = version_folders(tmp_path / "ddp")
    assert table.parent == run
    assert checkpoint.is_relative_to(run)
    assert (run.parent / "latest").resolve() == run.resolve()

    # predict on two ranks: each rank's predictions in the one new run folder.
    folder = target / "gamma" / "test" / "defect"
    anomalib_cli(
        "predict", *config, "--ckpt_path", checkpoint, "--data", folder, "--default_root_dir", tmp_path / "predict",
        "--trainer.devices", "2", "--trainer.strategy", "ddp",
    )  # fmt: skip
    (predicted,) = version_folders(tmp_path / "predict")
    files = sorted(path.name for path in predicted.glob("predictions*.csv"))
    assert files == ["predictions.rank0.csv", "predictions.rank1.csv"]
    rows = [line for name in files for line in (predicted / name).read_text().splitlines()[1:]]
    assert len(rows) == len(list(folder.glob("*.png")))


def version_folders(root: Path) -> list[Path]:
    """The run folders (``v<N>``) anywhere below ``root``."""
    return [path for path in root.rglob("v*") if path.is_dir() and re.fullmatch(r"v\d+", path.name)]
