"""The report command: Markdown tables and bar charts from a benchmark results CSV."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from matplotlib.image import imread

from anomalib_faprompt.integration.benchmark import collect
from anomalib_faprompt.report import load_results, main, metric_table


def _row(model: str, category: str, **metrics: float) -> dict:
    row = {"job_duration": 1.0, "model.class_path": model, "data.class_path": "Visa"}
    if model != "WinClip":
        row["model.init_args.weights"] = f"{model}.ckpt"
    return {**row, "data.init_args.category": category, **metrics}


@pytest.fixture
def results(tmp_path):
    rows = [
        _row("FAPrompt", "pcb1", image_AUROC=0.9, pixel_AUPRO=0.5),
        _row("FAPrompt", "candle", image_AUROC=0.8, pixel_AUPRO=0.7),
        _row("WinClip", "pcb1", image_AUROC=0.6, image_F1Score=0.4),
        _row("WinClip", "candle", image_AUROC=0.95, image_F1Score=0.3),
        _row("AnomalyCLIP", "pcb1", image_AUROC=0.7, pixel_AUPRO=0.6),  # candle failed
    ]
    path = tmp_path / "results.csv"
    collect(rows).to_csv(path, index=False)
    return path


def test_collect_takes_the_union_of_keys():
    frame = collect([{"a": 1, "b": 2.0}, {"a": 3, "c": 4.0}])
    assert list(frame.columns) == ["a", "b", "c"]
    assert frame["a"].tolist() == [1, 3]
    assert math.isnan(frame["b"][1])
    assert math.isnan(frame["c"][0])


def test_metric_table_is_models_by_categories_with_a_mean(results):
    frame = load_results(results)
    table = metric_table(frame, "image_AUROC")
    assert list(table.index) == ["FAPrompt", "WinClip", "AnomalyCLIP"]
    assert list(table.columns) == ["candle", "pcb1", "mean"]
    assert table.loc["FAPrompt", "candle"] == 0.8
    assert table.loc["FAPrompt", "mean"] == pytest.approx(0.85)
    assert table.loc["WinClip", "mean"] == pytest.approx(0.775)
    assert math.isnan(table.loc["AnomalyCLIP", "candle"])
    assert math.isnan(table.loc["AnomalyCLIP", "mean"])  # no mean over an incomplete set of categories


def test_report_writes_markdown_and_a_chart_per_metric(results, tmp_path):
    output = tmp_path / "report"
    main([str(results), "--output", str(output)])
    markdown = (output / "comparison.md").read_text()
    assert "| model | candle | pcb1 | mean |" in markdown
    assert "| FAPrompt | 80.0 | **90.0** | **85.0** |" in markdown  # image_AUROC, best per column in bold
    assert "| WinClip | **95.0** | 60.0 | 77.5 |" in markdown
    assert "| AnomalyCLIP | – | 70.0 | – |" in markdown
    assert "| WinClip | – | – | – |" in markdown  # pixel_AUPRO: WinClip has none
    for metric in ["image_AUROC", "pixel_AUPRO", "image_F1Score"]:
        assert f"## {metric}" in markdown
        assert imread(output / f"{metric}.png").ndim == 3


def test_models_of_one_class_in_several_configurations_get_their_init_args(tmp_path):
    rows = [_row("FAPrompt", "pcb1", image_AUROC=0.9), _row("FAPrompt", "pcb1", image_AUROC=0.7)]
    rows[1]["model.init_args.weights"] = "other.ckpt"
    path = tmp_path / "results.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    assert load_results(path)["model"].tolist() == ["FAPrompt (weights=FAPrompt.ckpt)", "FAPrompt (weights=other.ckpt)"]


def test_bad_results_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.csv"):
        load_results(tmp_path / "missing.csv")
    path = tmp_path / "other.csv"
    pd.DataFrame({"model.class_path": ["FAPrompt"], "job_duration": [1.0]}).to_csv(path, index=False)
    with pytest.raises(ValueError, match="no metric column"):
        load_results(path)
