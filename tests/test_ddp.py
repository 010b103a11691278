"""Lightning DDP on two CPU processes (gloo): training and the per-category test give one process's table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from anomalib_faprompt.data import make_synthetic_dataset

REPO = Path(__file__).resolve().parents[1]

PAPER_AUPRO = """\
model:
  init_args:
    evaluator:
      class_path: anomalib_faprompt.metrics.PerCategoryEvaluator
      init_args:
        aupro: [exact, paper]
"""


def _anomalib(*arguments: str | Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "anomalib.cli.cli", *map(str, arguments)]
    process = subprocess.run(command, capture_output=True, text=True, cwd=REPO, check=False)
    assert process.returncode == 0, process.stderr[-3000:]
    return process


@pytest.mark.slow
def test_two_processes_give_the_single_process_table(tmp_path):
    source = make_synthetic_dataset(tmp_path / "source", categories=("alpha", "beta"), n_train=1, seed=0)
    # 7 test images per category: with two ranks, Lightning's sampler repeats one image of each category; "solo"
    # has one defect image, so that the second rank's only sample is a repeat (no own sample, still gathered).
    target = make_synthetic_dataset(
        tmp_path / "target", categories=("gamma", "delta"), n_train=1, n_good=3, n_defect=4, seed=1
    )
    make_synthetic_dataset(target, categories=("solo",), n_train=1, n_good=0, n_defect=1, seed=2)
    overlay = tmp_path / "paper_aupro.yaml"
    overlay.write_text(PAPER_AUPRO)
    config = ["--config", REPO / "configs" / "faprompt_synthetic_tiny.yaml", "--config", overlay]
    data = ["--data.root", source, "--data.target_root", target, "--data.eval_batch_size", "2"]

    ddp = _anomalib(
        "train", *config, *data, "--trainer.max_epochs", "1", "--default_root_dir", tmp_path / "ddp",
        "--trainer.devices", "2", "--trainer.strategy", "ddp",
    )  # fmt: skip
    (table,) = (tmp_path / "ddp").rglob("per_category_results.csv")
    (checkpoint,) = (tmp_path / "ddp").rglob("*.ckpt")
    single = _anomalib("test", *config, *data, "--ckpt_path", checkpoint, "--default_root_dir", tmp_path / "single")
    (single_table,) = (tmp_path / "single").rglob("per_category_results.csv")

    lines, single_lines = table.read_text().splitlines(), single_table.read_text().splitlines()
    # The same images, gathered in another order: equal up to float32 summation order (pixel AUROC).
    assert lines[0] == single_lines[0]
    for line, single_line in zip(lines[1:], single_lines[1:], strict=True):
        cells, single_cells = line.split(","), single_line.split(",")
        assert cells[0] == single_cells[0]
        assert [cell == "" for cell in cells] == [cell == "" for cell in single_cells]
        assert [float(cell) for cell in cells[1:] if cell] == pytest.approx(
            [float(cell) for cell in single_cells[1:] if cell], abs=1e-6
        )
    assert lines[0] == "category,image_AUROC,image_AUPR,pixel_AUROC,pixel_AUPRO,pixel_AUPRO_paper"
    assert [line.split(",")[0] for line in lines[1:]] == ["delta", "gamma", "solo", "mean"]
    assert lines[3].startswith("solo,,,0.")  # no normal image: image metrics empty; pixel metrics computed
    # Rank 0 alone prints the table, and Lightning's per-dataloader table and sync_dist warnings are gone.
    assert ddp.stdout.count("image_AUROC  image_AUPR") == 1
    assert f"checkpoint: {checkpoint}" in ddp.stdout
    assert "solo: image_AUROC, image_AUPR not computable: no normal image." in ddp.stdout
    assert "DataLoader 0" not in ddp.stdout + single.stdout
    assert "sync_dist" not in ddp.stderr
