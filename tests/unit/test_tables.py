"""Per-category tables: CSV, Markdown and console text against tables computed by hand.

The values are multiples of 1/16, so the means are exact and the expected texts can be written out.
"""

from __future__ import annotations

import math

import pytest

from anomalib_faprompt.report.tables import (
    MISSING,
    column_title,
    console_table,
    format_percent,
    markdown_table,
    mean_notes,
    results_rows,
    short_title,
    write_tables,
)

NAN = math.nan
NOTE = "bravo: image_AUROC, image_AUPR not computable (only normal images)."


@pytest.fixture
def results():
    return {
        "alpha": {"image_AUROC": 0.75, "image_AUPR": 0.5, "pixel_AUROC": 0.875, "pixel_AUPRO": 0.625},
        "bravo": {"image_AUROC": NAN, "image_AUPR": NAN, "pixel_AUROC": 0.9375, "pixel_AUPRO": 0.5},
        "charlie": {"image_AUROC": 0.25, "image_AUPR": 0.125, "pixel_AUROC": 0.8125, "pixel_AUPRO": 0.375},
    }


def test_csv_has_fractions_empty_cells_and_a_mean_that_skips_them(results, tmp_path):
    csv_path, markdown_path = write_tables(results, tmp_path / "out", "table", notes=[NOTE])
    assert (csv_path, markdown_path) == (tmp_path / "out" / "table.csv", tmp_path / "out" / "table.md")
    assert csv_path.read_text().splitlines() == [
        "category,image_AUROC,image_AUPR,pixel_AUROC,pixel_AUPRO",
        "alpha,0.75,0.5,0.875,0.625",
        "bravo,,,0.9375,0.5",
        "charlie,0.25,0.125,0.8125,0.375",
        "mean,0.5,0.3125,0.875,0.5",
    ]
    assert markdown_path.read_text() == markdown_table(results, [NOTE])


def test_markdown_marks_partial_means_and_lists_the_notes(results):
    assert markdown_table(results, [NOTE]) == (
        "| Category | Image AUROC | Image AUPR | Pixel AUROC | Pixel AUPRO |\n"
        "|---|---:|---:|---:|---:|\n"
        "| alpha | 75.0 | 50.0 | 87.5 | 62.5 |\n"
        f"| bravo | {MISSING} | {MISSING} | 93.8 | 50.0 |\n"
        "| charlie | 25.0 | 12.5 | 81.2 | 37.5 |\n"
        "| **mean** | 50.0\\* | 31.2\\* | 87.5 | 50.0 |\n"
        "\n"
        f"- {NOTE}\n"
        "- \\* mean of image_AUROC over 2 of 3 categories.\n"
        "- \\* mean of image_AUPR over 2 of 3 categories.\n"
    )


def test_markdown_of_complete_results_is_the_table_alone():
    results = {"a": {"image_AUROC": 0.5, "pixel_AUPRO": 0.25}, "b": {"image_AUROC": 1.0, "pixel_AUPRO": 0.0}}
    assert markdown_table(results).splitlines() == [
        "| Category | Image AUROC | Pixel AUPRO |",
        "|---|---:|---:|",
        "| a | 50.0 | 25.0 |",
        "| b | 100.0 | 0.0 |",
        "| **mean** | 75.0 | 12.5 |",
    ]


def test_console_table_at_80_columns(results):
    text = console_table(results, [NOTE])
    assert text.splitlines() == [
        "Category  I-AUROC  I-AUPR  P-AUROC  P-AUPRO",
        "alpha       75.0    50.0     87.5     62.5",
        f"bravo          {MISSING}       {MISSING}     93.8     50.0",
        "charlie     25.0    12.5     81.2     37.5",
        "-" * 43,
        "mean        50.0*   31.2*    87.5     50.0",
        "",
        f"Percent; I- image, P- pixel metrics; {MISSING} not computable.",
        NOTE,
        "* mean of image_AUROC over 2 of 3 categories.",
        "* mean of image_AUPR over 2 of 3 categories.",
    ]


def test_console_table_splits_columns_and_wraps_notes_to_the_width(results):
    long_note = "charlie: " + "a very long explanation " * 6
    lines = console_table(results, [long_note], width=30).splitlines()
    assert max(map(len, lines)) <= 30
    headers = [line for line in lines if line.startswith("Category")]
    assert headers == ["Category  I-AUROC  I-AUPR", "Category  P-AUROC  P-AUPRO"]
    assert "mean        50.0*   31.2*" in lines
    assert "mean        87.5     50.0" in lines
    footer = lines[len(lines) - lines[::-1].index("") :]  # after the last empty line
    assert all(line.startswith("  ") for line in footer if not line.startswith(("Percent", "charlie", "*")))
    assert " ".join(line.strip() for line in footer) == " ".join(
        [
            f"Percent; I- image, P- pixel metrics; {MISSING} not computable.",
            long_note.strip(),
            *(f"* {note}" for note in mean_notes(results)),
        ]
    )


def test_a_metric_missing_everywhere_has_no_mean_and_no_mean_note():
    results = {"a": {"image_AUROC": 0.5, "pixel_AUROC": NAN}, "b": {"image_AUROC": 0.25, "pixel_AUROC": NAN}}
    names, rows = results_rows(results)
    assert names == ["image_AUROC", "pixel_AUROC"]
    assert rows[-1][0] == "mean"
    assert rows[-1][1][0] == 0.375
    assert math.isnan(rows[-1][1][1])
    assert mean_notes(results) == []
    assert markdown_table(results).splitlines()[-1] == f"| **mean** | 37.5 | {MISSING} |"


def test_a_category_without_any_value_is_a_row_of_missing_values():
    results = {"a": {"image_AUROC": 0.5, "image_AUPR": 0.75}, "empty": {}}
    lines = markdown_table(results).splitlines()
    assert lines[3] == f"| empty | {MISSING} | {MISSING} |"
    assert lines[4] == "| **mean** | 50.0\\* | 75.0\\* |"
    assert mean_notes(results) == [
        "mean of image_AUROC over 1 of 2 categories.",
        "mean of image_AUPR over 1 of 2 categories.",
    ]


def test_zero_is_a_value_and_negative_zero_is_zero(tmp_path):
    assert format_percent(0.0) == "0.0"
    assert format_percent(-0.0) == "0.0"
    assert format_percent(NAN) == MISSING
    assert format_percent(0.81249) == "81.2"
    csv_path, _ = write_tables({"c": {"image_AUROC": -0.0, "image_AUPR": 0.0}}, tmp_path, "t")
    assert csv_path.read_text().splitlines()[1] == "c,0.0,0.0"


def test_metric_titles_use_the_logged_names():
    assert [column_title(n) for n in ("image_AUROC", "image_AUPR", "pixel_AUPRO", "other")] == [
        "Image AUROC",
        "Image AUPR",
        "Pixel AUPRO",
        "other",
    ]
    assert [short_title(n) for n in ("image_AUPR", "pixel_F1Score", "other")] == ["I-AUPR", "P-F1Score", "other"]


def test_tables_already_in_the_folder_are_kept(results, tmp_path):
    first = write_tables(results, tmp_path, "table")
    kept = [path.read_bytes() for path in first]
    (tmp_path / "table_1.md").write_text("a table of another run")  # the .csv alone free is not enough
    second = write_tables({"alpha": results["alpha"]}, tmp_path, "table")
    assert second == (tmp_path / "table_2.csv", tmp_path / "table_2.md")
    assert [path.read_bytes() for path in first] == kept
    assert (tmp_path / "table_1.md").read_text() == "a table of another run"
    assert second[0].read_text().splitlines()[1:] == ["alpha,0.75,0.5,0.875,0.625", "mean,0.75,0.5,0.875,0.625"]
