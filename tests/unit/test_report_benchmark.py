"""The report command: Markdown tables and bar charts from a benchmark results CSV."""

from __future__ import annotations

import hashlib
import math
import re
import shutil

import matplotlib.pyplot as plt
import pandas as pd
import pytest
from matplotlib.image import imread

from anomalib_faprompt.pipelines.benchmark import collect
from anomalib_faprompt.report.benchmark import (
    NORMALISING_MODELS,
    bar_chart,
    load_results,
    main,
    markdown_report,
    metric_table,
)
from anomalib_faprompt.report.tables import MISSING, comparison_notes


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
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_collect_takes_the_union_of_keys():
    frame = collect([{"a": 1, "b": 2.0}, {"a": 3, "c": 4.0}])
    assert list(frame.columns) == ["a", "b", "c"]
    assert frame["a"].tolist() == [1, 3]
    assert math.isnan(frame["b"][1])
    assert math.isnan(frame["c"][0])


def test_metric_table_is_models_by_categories_with_a_mean_over_the_present_ones(results):
    frame = load_results(results)
    table = metric_table(frame, "image_AUROC")
    assert list(table.index) == ["FAPrompt", "WinClip", "AnomalyCLIP"]
    assert list(table.columns) == ["candle", "pcb1", "mean"]
    assert table.loc["FAPrompt", "candle"] == 0.8
    assert table.loc["FAPrompt", "mean"] == pytest.approx(0.85)
    assert table.loc["WinClip", "mean"] == pytest.approx(0.775)
    assert math.isnan(table.loc["AnomalyCLIP", "candle"])
    assert table.loc["AnomalyCLIP", "mean"] == pytest.approx(0.7)  # pcb1 alone, footnoted
    assert comparison_notes(table) == ["AnomalyCLIP: mean over 1 of 2 categories (no result for candle)."]
    assert math.isnan(metric_table(frame, "pixel_AUPRO").loc["WinClip", "mean"])


def test_report_tables_bold_only_where_models_compete(results, tmp_path):
    output = tmp_path / "report"
    main([str(results), "--output", str(output)])
    sections = (output / "comparison.md").read_text().split("\n## ")
    assert sections[1].splitlines() == [
        "image_AUROC",
        "",
        "| model | candle | pcb1 | mean |",
        "|:--|--:|--:|--:|",
        "| FAPrompt | 80.0 | **90.0** | **85.0** |",
        "| WinClip | **95.0** | 60.0 | 77.5 |",
        f"| AnomalyCLIP | {MISSING} | 70.0 | 70.0\\* |",  # a partial mean does not compete
        "",
        "- \\* AnomalyCLIP: mean over 1 of 2 categories (no result for candle).",
    ]
    assert sections[2].splitlines()[4:7] == [
        "| FAPrompt | 70.0 | 50.0 | 60.0 |",  # the only value of candle and the only complete mean: not bold
        f"| WinClip | {MISSING} | {MISSING} | {MISSING} |",
        f"| AnomalyCLIP | {MISSING} | **60.0** | 60.0\\* |",
    ]
    assert sections[3].splitlines()[4:] == [
        f"| FAPrompt | {MISSING} | {MISSING} | {MISSING} |",
        "| WinClip | 30.0 | 40.0 | 35.0 |",
        f"| AnomalyCLIP | {MISSING} | {MISSING} | {MISSING} |",
        "",
        "No chart: only WinClip reports it.",
    ]
    for metric in ["image_AUROC", "pixel_AUPRO"]:
        assert imread(output / f"{metric}.png").ndim == 3
    assert not (output / "image_F1Score.png").exists()


def test_report_notes_say_how_each_model_normalises(results):
    frame = load_results(results)
    header = markdown_report(frame, "r.csv").split("\n## ")[0]
    assert "FAPrompt and AnomalyCLIP output probabilities thresholded at 0.5" in header
    assert "WinClip keeps anomalib's default post-processor: it min-max normalises" in header
    assert "Images at 240 x 240 (WinClip)." in header
    assert "AnomalyVFM" not in header
    frame.loc[frame["model_class"] == "FAPrompt", "model_class"] = "AnomalyVFM"
    header = markdown_report(frame, "r.csv").split("\n## ")[0]
    assert "WinClip and AnomalyVFM keep anomalib's default post-processor" in header
    assert "Images at 240 x 240 (WinClip) and 768 x 768 (AnomalyVFM)." in header
    assert "AnomalyCLIP output probabilities" in header


def test_normalising_models_are_described_as_installed_anomalib_builds_them():
    import anomalib.models
    from torchvision.transforms.v2 import Resize

    for name, side in NORMALISING_MODELS.items():
        model_class = getattr(anomalib.models, name)
        assert model_class.configure_post_processor().enable_normalization, name
        resizes = [t for t in model_class.configure_pre_processor().transform.transforms if isinstance(t, Resize)]
        assert [list(t.size) for t in resizes] == [[side, side]], name


def _bar_labels(axes):
    return [text.get_text() for text in axes.texts]


def test_chart_labels_every_bar_and_marks_chance_for_an_auroc(results):
    frame = load_results(results)
    figure = bar_chart(metric_table(frame, "image_AUROC"), "image_AUROC")
    axes = figure.axes[0]
    assert _bar_labels(axes) == ["80.0", "90.0", "85.0", "95.0", "60.0", "77.5", MISSING, "", "70.0", "70.0*"]
    bars = axes.patches
    visible = [(round(bar.get_height(), 6), bar.get_hatch()) for bar in bars if bar.get_visible()]
    assert visible == [(80, None), (90, None), (85, None), (95, None), (60, None), (77.5, None), (70, None), (70, "//")]
    assert not bars[6].get_visible()  # AnomalyCLIP, candle: its marker stands where the bar would be
    assert axes.texts[6].get_position()[0] == pytest.approx(bars[6].get_x() + bars[6].get_width() / 2)
    chance = [line for line in axes.get_lines() if list(line.get_ydata()) == [50, 50]]
    assert len(chance) == 1
    assert chance[0].get_linestyle() == "--"
    plt.close(figure)
    figure = bar_chart(metric_table(frame, "pixel_AUPRO"), "pixel_AUPRO")
    assert not [line for line in figure.axes[0].get_lines() if list(line.get_ydata()) == [50, 50]]
    assert len(figure.axes[0].patches) == 6  # WinClip has no pixel_AUPRO: no bars
    plt.close(figure)


def test_chart_draws_zero_as_a_value_and_missing_as_missing(tmp_path):
    rows = [_row("FAPrompt", "a", image_AUROC=0.0), _row("FAPrompt", "b", image_AUROC=0.5)]
    rows += [_row("AnomalyCLIP", "a", image_AUROC=0.25), _row("AnomalyCLIP", "b")]
    path = tmp_path / "results.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    figure = bar_chart(metric_table(load_results(path), "image_AUROC"), "image_AUROC")
    axes = figure.axes[0]
    assert _bar_labels(axes) == ["0.0", "50.0", "25.0", MISSING, "25.0", "", "25.0*"]
    assert [bar.get_visible() for bar in axes.patches] == [True, True, True, True, False, True]
    plt.close(figure)


@pytest.mark.parametrize(
    ("argument", "value", "labels"),
    [
        ("weights", "other.ckpt", ["FAPrompt (weights=FAPrompt.ckpt)", "FAPrompt (weights=other.ckpt)"]),
        # set by one configuration only: the other shows the default
        ("local_score", "released", ["FAPrompt (local_score=default)", "FAPrompt (local_score=released)"]),
    ],
)
def test_models_of_one_class_in_several_configurations_get_their_init_args(tmp_path, argument, value, labels):
    rows = [_row("FAPrompt", "pcb1", image_AUROC=0.9), _row("FAPrompt", "pcb1", image_AUROC=0.7)]
    rows[1][f"model.init_args.{argument}"] = value
    path = tmp_path / "results.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    assert load_results(path)["model"].tolist() == labels
    assert len(metric_table(load_results(path), "image_AUROC")) == 2  # two rows, not their average


def test_bad_results_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.csv"):
        load_results(tmp_path / "missing.csv")
    with pytest.raises(FileNotFoundError, match="is not a file"):
        load_results(tmp_path)
    path = tmp_path / "other.csv"
    pd.DataFrame({"model.class_path": ["FAPrompt"], "job_duration": [1.0]}).to_csv(path, index=False)
    with pytest.raises(ValueError, match="no metric column"):
        load_results(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", r"'.*results\.csv' is empty\. Pass the results\.csv that `anomalib benchmark` wrote"),
        ("model.class_path,image_AUROC\n", r"'.*results\.csv' has a header but no rows: no job finished"),
        (
            "model.class_path,image_AUROC\nFAPrompt,0.5\n\nWinClip,abc\n",
            r"'.*results\.csv', line 4, column 'image_AUROC': 'abc' is not a number\. Correct it",
        ),
        ('model.class_path,image_AUROC\nFAPrompt,0.5\n"x\n', r"'.*results\.csv' is not a readable CSV file"),
        (
            "model.class_path,image_AUROC\nFAPrompt,0.5\nWinClip,inf\n",
            r"'.*results\.csv', line 3, column 'image_AUROC': 'inf' is outside \[0, 1\]\. Correct it",
        ),
        (
            "model.class_path,pixel_AUPRO\nFAPrompt,1.5\n",
            r"'.*results\.csv', line 2, column 'pixel_AUPRO': '1.5' is outside \[0, 1\]",
        ),
        ("model.class_path,image_AUPR\nFAPrompt,-0.2\n", r"line 2, column 'image_AUPR': '-0.2' is outside \[0, 1\]"),
    ],
    ids=["empty", "header-only", "non-numeric", "broken", "infinite", "above-one", "negative"],
)
def test_cli_names_the_file_and_what_to_do_in_one_line(tmp_path, capsys, text, message):
    path = tmp_path / "results.csv"
    path.write_text(text)
    with pytest.raises(SystemExit) as exit_info:
        main([str(path), "--output", str(tmp_path / "out")])
    assert exit_info.value.code == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert error.startswith("anomalib-faprompt-report: error: ")
    assert re.search(message, error), error
    assert not (tmp_path / "out").exists()


def test_report_goes_beside_the_results_and_never_over_another_report(results, tmp_path, capsys):
    main([str(results)])
    report = results.parent / "report"
    markdown = report / "comparison.md"
    digest = hashlib.sha256(results.read_bytes()).hexdigest()
    first_lines = [f"<!-- results: {results.resolve()} sha256 {digest} -->", "# Zero-shot comparison"]
    assert markdown.read_text().splitlines()[:2] == first_lines
    assert capsys.readouterr().out.splitlines() == [
        str(markdown),
        str(report / "image_AUROC.png"),
        str(report / "pixel_AUPRO.png"),
    ]
    kept = {path.name: path.read_bytes() for path in report.iterdir()}
    main([str(results), "--output", str(report)])  # the report of the same results: written again
    assert markdown.read_text() == kept["comparison.md"].decode()
    other = tmp_path / "other" / "results.csv"
    other.parent.mkdir()
    pd.read_csv(results).assign(image_AUROC=0.5).to_csv(other, index=False)
    with pytest.raises(SystemExit) as exit_:
        main([str(other), "--output", str(report)])
    assert exit_.value.code == 1
    assert capsys.readouterr().err.strip() == (
        f"anomalib-faprompt-report: error: '{report}' holds the report of '{results.resolve()}', which is kept. "
        f"Pass another `--output` for the report of '{other}', or remove that folder first."
    )
    assert {path.name: path.read_bytes() for path in report.iterdir()} == kept
    moved = tmp_path / "moved"
    shutil.copytree(results.parent, moved, ignore=shutil.ignore_patterns("other"))
    main([str(moved / "results.csv")])  # the same results in a copied folder: written again
    assert (moved / "report" / "comparison.md").read_text().startswith(f"<!-- results: {moved / 'results.csv'} ")
    markdown.write_text("# an older report\n")
    with pytest.raises(SystemExit):
        main([str(results), "--output", str(report)])
    assert "holds a report that does not name its results file" in capsys.readouterr().err


def _write(tmp_path, rows) -> object:
    path = tmp_path / "results.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _section(output, metric: str) -> list[str]:
    sections = (output / "comparison.md").read_text().split("\n## ")
    return next(section for section in sections if section.startswith(metric + "\n")).splitlines()


def test_runs_of_a_seed_grid_are_averaged_and_each_mean_is_named(tmp_path):
    rows = [
        {"seed": 1, **_row("FAPrompt", "gamma", image_AUROC=0.5)},
        {"seed": 2, **_row("FAPrompt", "gamma", image_AUROC=0.75)},
        {"seed": 3, **_row("FAPrompt", "gamma", image_AUROC=1.0)},
        {"seed": 1, **_row("FAPrompt", "delta", image_AUROC=0.25)},
        {"seed": 2, **_row("FAPrompt", "delta", image_AUROC=0.5)},
        {"seed": 3, **_row("FAPrompt", "delta"), "status": "no result"},  # failed: 2 of 3 runs
        {"seed": 1, **_row("WinClip", "gamma", image_AUROC=0.625)},
        {"seed": 1, **_row("WinClip", "delta", image_AUROC=0.125)},
    ]
    output = tmp_path / "report"
    main([str(_write(tmp_path, rows)), "--output", str(output)])
    # gamma: (0.5 + 0.75 + 1.0) / 3 = 0.75; delta: (0.25 + 0.5) / 2 = 0.375; mean: (0.75 + 0.375) / 2 = 0.5625  # noqa: ERA001
    # WinClip: one run each, mean (0.625 + 0.125) / 2 = 0.375
    assert _section(output, "image_AUROC")[2:] == [
        "| model | delta | gamma | mean |",
        "|:--|--:|--:|--:|",
        "| FAPrompt | **37.5** | **75.0** | **56.2** |",
        "| WinClip | 12.5 | 62.5 | 37.5 |",
        "",
        "- FAPrompt, delta: mean of 2 of 3 runs (seeds 1, 2; no result for seed 3).",
        "- FAPrompt, gamma: mean of 3 runs (seeds 1, 2, 3).",
    ]


def test_one_note_for_the_categories_with_the_same_runs(tmp_path):
    rows = [
        {"seed": seed, **_row("FAPrompt", category, image_AUROC=value)}
        for category, values in [("gamma", [0.5, 0.25]), ("delta", [1.0, 0.75])]
        for seed, value in zip([7, 8], values, strict=True)
    ]
    rows.append({"seed": 7, **_row("WinClip", "gamma", image_AUROC=0.5)})
    output = tmp_path / "report"
    main([str(_write(tmp_path, rows)), "--output", str(output)])
    lines = _section(output, "image_AUROC")
    # delta (1.0 + 0.75) / 2 = 0.875, gamma (0.5 + 0.25) / 2 = 0.375, mean 0.625
    assert lines[4] == "| FAPrompt | 87.5 | 37.5 | 62.5 |"
    assert "- FAPrompt, every category: mean of 2 runs (seeds 7, 8)." in lines
    assert not [line for line in lines if line.startswith("- WinClip")]


def test_rows_repeated_with_equal_settings_are_named_as_runs(tmp_path):
    # the same results concatenated twice, then the case QA found: equal settings, other values
    rows = [{"seed": 42, **_row("FAPrompt", "pcb1", image_AUROC=0.5)}, {"seed": 42, **_row("WinClip", "pcb1")}]
    rows[1]["image_AUROC"] = 0.25
    output = tmp_path / "report"
    main([str(_write(tmp_path, rows + rows)), "--output", str(output)])
    lines = _section(output, "image_AUROC")
    assert lines[4:] == [
        "| FAPrompt | **50.0** | **50.0** |",
        "| WinClip | 25.0 | 25.0 |",
        "",
        "- FAPrompt, pcb1: mean of 2 runs (seeds 42, 42).",
        "- WinClip, pcb1: mean of 2 runs (seeds 42, 42).",
    ]
    rows = [{"seed": 42, **_row("FAPrompt", "pcb1", image_AUROC=value)} for value in [0.5, 0.125]]
    output = tmp_path / "report_2"  # other results: not into the first report's folder
    main([str(_write(tmp_path, rows)), "--output", str(output)])
    lines = _section(output, "image_AUROC")
    # (0.5 + 0.125) / 2 = 0.3125
    assert lines[4:] == [
        "| FAPrompt | 31.2 | 31.2 |",
        "",
        "- FAPrompt, pcb1: mean of 2 runs (seeds 42, 42).",
        "",
        "No chart: only FAPrompt reports it.",
    ]


@pytest.mark.parametrize(
    ("column", "values"),
    [
        ("data.init_args.root", ["./datasets/visa", "/data/visa_copy"]),
        ("data.class_path", ["Visa", "Folder"]),
        ("data.init_args.eval_batch_size", [32, 8]),
    ],
)
def test_rows_of_other_data_are_refused_not_averaged(tmp_path, capsys, column, values):
    rows = [
        {"seed": 1, **_row("WinClip", "pcb1", image_AUROC=0.5)},
        {"seed": 1, **_row("FAPrompt", "pcb1", image_AUROC=0.583)},
        {"seed": 2, **_row("FAPrompt", "pcb1", image_AUROC=0.11)},  # and another seed: still refused
        {"seed": 1, **_row("FAPrompt", "candle", image_AUROC=0.9)},
    ]
    rows[1][column], rows[2][column] = values
    path = _write(tmp_path, rows)
    with pytest.raises(ValueError, match="differ in") as error:
        load_results(path)
    message = str(error.value)
    assert message == (
        f"'{path}': the rows of FAPrompt, category pcb1 (lines 3, 4) differ in {column} "
        f"({', '.join(map(repr, map(str, values)))}), not in the seed alone: the report averages only repeated runs "
        "of one model and dataset. Report each dataset from its own results file (keep its rows only)."
    )
    assert "seed" not in message.split("differ in")[1].split("(", maxsplit=1)[0]
    with pytest.raises(SystemExit) as exit_info:
        main([str(path), "--output", str(tmp_path / "out")])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == f"anomalib-faprompt-report: error: {message}\n"
    assert not (tmp_path / "out").exists()


def test_a_setting_left_out_by_one_row_differs_too(tmp_path):
    rows = [_row("FAPrompt", "pcb1", image_AUROC=0.5), _row("FAPrompt", "pcb1", image_AUROC=0.25)]
    rows[1]["data.init_args.root"] = "/data/visa_copy"
    with pytest.raises(ValueError, match=r"differ in data\.init_args\.root \('not set', '/data/visa_copy'\)"):
        load_results(_write(tmp_path, rows))
