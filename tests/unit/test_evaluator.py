"""The per-category evaluator: metrics that cannot be computed, empty categories, the printed table, AUPRO options."""

from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from anomalib.data import ImageBatch
from anomalib.data.datasets import MVTecADDataset
from sklearn.metrics import average_precision_score, roc_auc_score
from torch.utils.data import DataLoader, Subset

from anomalib_faprompt import FAPrompt
from anomalib_faprompt.data import make_synthetic_dataset
from anomalib_faprompt.metrics import PaperAUPRO, PerCategoryEvaluator, paper_aupro
from anomalib_faprompt.metrics.aupro import pro_curve
from anomalib_faprompt.report.tables import console_table
from tests.helpers.data import METRICS, prediction_fields
from tests.helpers.engine import cpu_engine


def _trainer(tmp_path: Path, names: list[str]) -> SimpleNamespace:
    return SimpleNamespace(
        test_dataloaders=[None] * len(names),
        datamodule=SimpleNamespace(test_categories=names),
        barebones=True,
        callback_metrics={},
        logged_metrics={},
        default_root_dir=tmp_path,
        is_global_zero=True,
    )


def _run(evaluator: PerCategoryEvaluator, trainer: SimpleNamespace, data: dict[int, dict[str, torch.Tensor]]) -> None:
    """Feed each dataloader's data in batches of 3, as Lightning calls the hooks."""
    evaluator.on_test_epoch_start(trainer, None)
    for index, fields in data.items():
        count = len(fields["gt_label"])
        for batch_index, start in enumerate(range(0, count, 3)):
            part = {name: value[start : start + 3] for name, value in fields.items()}
            batch = ImageBatch(image=torch.zeros(len(part["gt_label"]), 3, 8, 8), **part)
            evaluator.on_test_batch_end(trainer, None, None, batch, batch_index, index)
    evaluator.on_test_epoch_end(trainer, None)


def test_metrics_that_cannot_be_computed_are_empty_with_a_note(tmp_path, capsys):
    names = ["mixed", "normal_only", "defect_only"]
    data = {
        0: prediction_fields(0, [0, 1, 0, 1, 1, 0, 0]),
        1: prediction_fields(1, [0, 0, 0, 0]),
        2: prediction_fields(2, [1, 1, 1, 1, 1]),
    }
    evaluator = PerCategoryEvaluator()
    trainer = _trainer(tmp_path, names)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        _run(evaluator, trainer, data)
    assert not record, [str(warning.message) for warning in record]  # no metric computed on one class only

    results = evaluator.category_results
    mixed, defect_only = data[0], data[2]
    assert results["mixed"]["image_AUROC"] == pytest.approx(
        roc_auc_score(mixed["gt_label"], mixed["pred_score"]), abs=1e-6
    )
    assert results["mixed"]["image_AUPR"] == pytest.approx(
        average_precision_score(mixed["gt_label"], mixed["pred_score"]), abs=1e-6
    )
    assert all(math.isnan(results["normal_only"][name]) for name in METRICS)
    assert math.isnan(results["defect_only"]["image_AUROC"])
    assert math.isnan(results["defect_only"]["image_AUPR"])
    # Defect images hold normal pixels too: the pixel metrics of a defect-only category are computable.
    assert results["defect_only"]["pixel_AUROC"] == pytest.approx(
        roc_auc_score(defect_only["gt_mask"].flatten(), defect_only["anomaly_map"].flatten()), abs=1e-6
    )
    fpr, pro = pro_curve(defect_only["anomaly_map"], defect_only["gt_mask"])
    assert results["defect_only"]["pixel_AUPRO"] == pytest.approx(float(torch.trapezoid(pro, fpr) / fpr[-1]), abs=1e-6)
    assert evaluator.notes == [
        "normal_only: image_AUROC, image_AUPR not computable: no defect image.",
        "normal_only: pixel_AUROC, pixel_AUPRO not computable: no defect pixel.",
        "defect_only: image_AUROC, image_AUPR not computable: no normal image.",
    ]
    # The mean skips the empty cells: image metrics from "mixed" alone, pixel metrics from two categories.
    assert float(trainer.logged_metrics["image_AUROC"]) == pytest.approx(results["mixed"]["image_AUROC"], abs=1e-6)
    pixel_mean = (results["mixed"]["pixel_AUROC"] + results["defect_only"]["pixel_AUROC"]) / 2
    assert float(trainer.logged_metrics["pixel_AUROC"]) == pytest.approx(pixel_mean, abs=1e-6)
    assert math.isnan(float(trainer.logged_metrics["normal_only/image_AUROC"]))

    with (tmp_path / "per_category_results.csv").open() as file:
        rows = {row["category"]: row for row in csv.DictReader(file)}
    assert rows["normal_only"]["image_AUROC"] == rows["normal_only"]["pixel_AUPRO"] == ""
    assert float(rows["mean"]["image_AUROC"]) == pytest.approx(results["mixed"]["image_AUROC"], abs=1e-12)
    markdown = (tmp_path / "per_category_results.md").read_text()
    assert "normal_only: image_AUROC, image_AUPR not computable: no defect image." in markdown
    printed = capsys.readouterr().out
    assert "defect_only: image_AUROC, image_AUPR not computable: no normal image." in printed
    assert (
        f"Results in {tmp_path.resolve()}: per_category_results.csv, per_category_results.md; no checkpoint" in printed
    )


def test_a_category_without_images_is_reported_not_dropped(tmp_path):
    names = ["first", "empty", "last"]
    data = {0: prediction_fields(3, [0, 1, 0, 1]), 2: prediction_fields(4, [1, 0, 0, 1, 1])}
    evaluator = PerCategoryEvaluator()
    trainer = _trainer(tmp_path, names)
    _run(evaluator, trainer, data)
    assert list(evaluator.category_results) == names
    assert all(math.isnan(value) for value in evaluator.category_results["empty"].values())
    assert list(evaluator.category_results["empty"]) == METRICS
    assert evaluator.notes == ["empty: no images."]
    first, last = (evaluator.category_results[name]["image_AUROC"] for name in ("first", "last"))
    assert float(trainer.logged_metrics["image_AUROC"]) == pytest.approx((first + last) / 2, abs=1e-6)
    with (tmp_path / "per_category_results.csv").open() as file:
        rows = list(csv.reader(file))
    assert [row[0] for row in rows[1:]] == ["first", "empty", "last", "mean"]
    assert rows[2] == ["empty", "", "", "", ""]


def test_a_mask_free_category_leaves_the_pixel_metrics_empty(tmp_path):
    fields = prediction_fields(5, [0, 1, 1, 0])
    del fields["gt_mask"]
    evaluator = PerCategoryEvaluator()
    trainer = _trainer(tmp_path, ["nomasks"])
    _run(evaluator, trainer, {0: fields})
    values = evaluator.category_results["nomasks"]
    assert values["image_AUROC"] == pytest.approx(roc_auc_score(fields["gt_label"], fields["pred_score"]), abs=1e-6)
    assert math.isnan(values["pixel_AUROC"])
    assert evaluator.notes == ["nomasks: pixel_AUROC, pixel_AUPRO not computable: no masks."]


def test_the_papers_aupro_is_an_evaluator_option(tmp_path):
    evaluator = PerCategoryEvaluator(aupro=["exact", "paper"])
    assert [metric.name for metric in evaluator.test_metrics] == [*METRICS, "pixel_AUPRO_paper"]
    assert [metric.name for metric in PerCategoryEvaluator(aupro=["paper"]).test_metrics][-1] == "pixel_AUPRO_paper"
    fields = prediction_fields(6, [0, 1, 1, 0, 1, 0, 1])
    trainer = _trainer(tmp_path, ["only"])
    _run(evaluator, trainer, {0: fields})
    value = evaluator.category_results["only"]["pixel_AUPRO_paper"]
    assert value == pytest.approx(paper_aupro(fields["anomaly_map"], fields["gt_mask"]), abs=1e-12)
    assert value != pytest.approx(evaluator.category_results["only"]["pixel_AUPRO"], abs=1e-4)
    with pytest.raises(ValueError, match="aupro"):
        PerCategoryEvaluator(aupro=["exact", "papers"])
    with pytest.raises(ValueError, match="PaperAUPRO"):
        PerCategoryEvaluator(test_metrics=[PaperAUPRO(fields=["anomaly_map", "gt_mask"])], aupro=["paper"])


def test_engine_test_prints_the_table_and_where_it_is(tmp_path, tiny_model_args, capsys):
    """Through Lightning: an empty dataloader among others, the package's table instead of Lightning's."""
    root = make_synthetic_dataset(tmp_path / "data", categories=("gamma", "delta"), n_train=1, n_good=2, n_defect=3)
    datasets = [MVTecADDataset(root=root, category=name, split="test") for name in ("gamma", "delta")]
    loaders = [
        DataLoader(data, batch_size=2, collate_fn=datasets[0].collate_fn)
        for data in (datasets[0], Subset(datasets[1], []), datasets[1])
    ]
    model = FAPrompt(**tiny_model_args, visualizer=False)
    engine = cpu_engine(tmp_path / "results")
    returned = engine.test(model=model, dataloaders=loaders)
    printed = capsys.readouterr().out

    results = model.evaluator.category_results
    assert list(results) == ["dataloader_0", "dataloader_1", "dataloader_2"]
    assert all(math.isnan(value) for value in results["dataloader_1"].values())
    assert model.evaluator.notes == ["dataloader_1: no images."]
    assert "Test metric" not in printed
    assert "DataLoader 0" not in printed
    table = console_table(results, model.evaluator.notes)
    assert "dataloader_1: no images." in table
    assert all(len(line) <= 80 for line in table.splitlines())
    lines = printed.strip().splitlines()
    assert "\n".join(lines[:-1]) == table
    folder = Path(engine.trainer.default_root_dir).resolve()
    assert lines[-1].startswith(f"Results in {folder}: per_category_results.csv, per_category_results.md; ")
    assert returned[0]["dataloader_2/image_AUROC"] == pytest.approx(results["dataloader_2"]["image_AUROC"], abs=1e-6)
    assert returned[0]["image_AUROC"] == pytest.approx(
        np.mean([results[name]["image_AUROC"] for name in ("dataloader_0", "dataloader_2")]), abs=1e-6
    )


def test_a_calibrated_run_adds_the_realised_false_alarms_and_the_defects_flagged_with_their_mean(tmp_path):
    """From the labels: the share of each category's normal images flagged, and of its defect images; mean row."""
    labels = {"a": [0, 0, 0, 0, 1, 1, 1], "b": [0, 0, 1], "c": [0, 0]}
    flagged = {"a": [1, 0, 0, 0, 1, 1, 0], "b": [0, 0, 1], "c": [1, 0]}
    data = {}
    for index, name in enumerate(labels):
        fields = prediction_fields(index, labels[name])
        data[index] = {**fields, "pred_label": torch.tensor(flagged[name], dtype=torch.bool)}
    tables = {}
    for calibrated in (False, True):
        evaluator = PerCategoryEvaluator()
        trainer = _trainer(tmp_path / str(calibrated), list(labels))
        module = SimpleNamespace(hparams={"false_alarm_rate": 0.1 if calibrated else None})
        evaluator.on_test_epoch_start(trainer, module)
        for index, fields in data.items():
            count = len(fields["gt_label"])
            for batch_index, start in enumerate(range(0, count, 2)):  # batches of 2: counts add up over batches
                part = {name: value[start : start + 2] for name, value in fields.items()}
                batch = ImageBatch(image=torch.zeros(len(part["gt_label"]), 3, 8, 8), **part)
                evaluator.on_test_batch_end(trainer, module, None, batch, batch_index, index)
        evaluator.on_test_epoch_end(trainer, module)
        tables[calibrated] = (evaluator, (tmp_path / str(calibrated) / "per_category_results.md").read_text())
    plain, _ = tables[False]
    assert all(list(values) == METRICS for values in plain.category_results.values())
    evaluator, markdown = tables[True]
    results = evaluator.category_results
    assert (results["a"]["image_false_alarms"], results["a"]["image_defects_flagged"]) == (0.25, 2 / 3)
    assert (results["b"]["image_false_alarms"], results["b"]["image_defects_flagged"]) == (0.0, 1.0)
    assert results["c"]["image_false_alarms"] == 0.5
    assert math.isnan(results["c"]["image_defects_flagged"])
    means = evaluator.mean_results()
    assert means["image_false_alarms"] == pytest.approx((0.25 + 0.0 + 0.5) / 3)
    assert means["image_defects_flagged"] == pytest.approx((2 / 3 + 1.0) / 2)
    assert "| Image false alarms | Image defects flagged |" in markdown
    assert "| **mean** |" in markdown
    assert "c: image_AUROC, image_AUPR, image_defects_flagged not computable: no defect image." in markdown
