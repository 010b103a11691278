"""Result tables: per-category tables of a run and model x category tables of a benchmark comparison.

One formatter, one missing-value marker and one rule for every table of the package:

- values are fractions in the CSV (full precision, an empty cell where a value is missing) and percentages
  with one decimal in Markdown and on the console;
- a missing value (NaN: it cannot be computed, or a job produced none) shows as :data:`MISSING`, never as 0;
- a mean over categories skips the missing values; a mean that skipped any is marked ``*`` and explained
  in a footnote (``mean of image_AUROC over 2 of 3 categories``).

Per-category results are ``{category: {metric name: value}}``, as the
:class:`~anomalib_faprompt.metrics.PerCategoryEvaluator` collects them; ``notes`` are short sentences
printed below a table (e.g. why a metric cannot be computed for a category).
"""

from __future__ import annotations

import csv
import math
import textwrap
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from anomalib_faprompt.files import unused_stem

__all__ = [
    "MEAN",
    "MISSING",
    "column_title",
    "console_table",
    "comparison_markdown",
    "comparison_notes",
    "format_percent",
    "is_missing",
    "markdown_table",
    "mean_notes",
    "mean_of_present",
    "metric_table",
    "repeat_notes",
    "results_rows",
    "setting_text",
    "short_title",
    "write_tables",
]

MEAN = "mean"
MISSING = "–"
PARTIAL = "*"
_PREFIXES = {"image": ("Image", "I"), "pixel": ("Pixel", "P")}


def is_missing(value: float | None) -> bool:
    """Whether a value is missing (``None`` or NaN)."""
    return value is None or math.isnan(value)


def format_percent(value: float | None) -> str:
    """A fraction as a percentage with one decimal (``0.8125`` -> ``81.2``); :data:`MISSING` for NaN."""
    if is_missing(value):
        return MISSING
    text = f"{100 * value:.1f}"
    return "0.0" if text == "-0.0" else text


def column_title(name: str) -> str:
    """Markdown title of a metric: ``image_AUPR`` -> ``Image AUPR``; other names unchanged."""
    prefix, _, rest = name.partition("_")
    if prefix in _PREFIXES and rest:
        return f"{_PREFIXES[prefix][0]} {rest.replace('_', ' ')}"
    return name


def short_title(name: str) -> str:
    """Console title of a metric: ``image_AUPR`` -> ``I-AUPR``, ``pixel_AUPRO`` -> ``P-AUPRO``."""
    prefix, _, rest = name.partition("_")
    if prefix in _PREFIXES and rest:
        return f"{_PREFIXES[prefix][1]}-{rest}"
    return name


def mean_of_present(values: Iterable[float]) -> tuple[float, int]:
    """Mean of the values that are not missing, and how many there were (NaN and 0 when none)."""
    present = [value for value in values if not is_missing(value)]
    return (sum(present) / len(present) if present else math.nan), len(present)


def results_rows(results: dict[str, dict[str, float]]) -> tuple[list[str], list[tuple[str, list[float]]]]:
    """Metric names and ``(row name, values)`` for each category, then ``mean`` over categories.

    A metric a category lacks is NaN; the mean of a metric skips the categories where it is NaN (NaN when
    it is NaN everywhere).
    """
    names = list(dict.fromkeys(name for values in results.values() for name in values))
    rows = [(category, [values.get(name, math.nan) for name in names]) for category, values in results.items()]
    means = [mean_of_present(values[column] for _, values in rows)[0] for column in range(len(names))]
    return names, [*rows, (MEAN, means)]


def _partial_means(results: dict[str, dict[str, float]]) -> dict[str, int]:
    """Metrics whose mean skipped a missing category, with the number of categories it averages."""
    names, rows = results_rows(results)
    counts = {name: mean_of_present(values[column] for _, values in rows[:-1])[1] for column, name in enumerate(names)}
    return {name: count for name, count in counts.items() if 0 < count < len(results)}


def mean_notes(results: dict[str, dict[str, float]]) -> list[str]:
    """A footnote for each mean that skipped a missing category (``mean of X over 2 of 3 categories.``)."""
    return [
        f"mean of {name} over {count} of {len(results)} categories." for name, count in _partial_means(results).items()
    ]


def _cell(value: float, partial: bool) -> str:
    return format_percent(value) + (PARTIAL if partial else "")


def markdown_table(results: dict[str, dict[str, float]], notes: Sequence[str] | None = None) -> str:
    """Markdown table: a row per category and a **mean** row, in percent with one decimal, notes below.

    Args:
        results: ``{category: {metric name: fraction}}``; NaN where a value cannot be computed.
        notes: Sentences listed below the table (before the footnotes on partial means).

    Returns:
        The Markdown text, ending with a newline.
    """
    names, rows = results_rows(results)
    partial = _partial_means(results)
    lines = ["| Category | " + " | ".join(column_title(name) for name in names) + " |", "|---|" + "---:|" * len(names)]
    for category, values in rows:
        is_mean = category == MEAN
        cells = [_cell(value, is_mean and name in partial) for name, value in zip(names, values, strict=True)]
        label = f"**{category}**" if is_mean else category
        lines.append(f"| {label} | " + " | ".join(cell.replace(PARTIAL, "\\" + PARTIAL) for cell in cells) + " |")
    footnotes = [*(notes or []), *(f"\\{PARTIAL} {note}" for note in mean_notes(results))]
    if footnotes:
        lines += ["", *(f"- {note}" for note in footnotes)]
    return "\n".join(lines) + "\n"


def _blocks(widths: list[int], room: int) -> list[list[int]]:
    """Split column indices into consecutive blocks whose widths add up to at most ``room`` (one at least)."""
    blocks: list[list[int]] = []
    used = room
    for index, width in enumerate(widths):
        if used + width > room:
            blocks.append([])
            used = 0
        blocks[-1].append(index)
        used += width
    return blocks


def console_table(results: dict[str, dict[str, float]], notes: Sequence[str] | None = None, width: int = 80) -> str:
    """Plain-text table for a terminal or log: categories as rows, short metric names, notes below.

    Metric columns that do not fit in ``width`` continue in a second block with the category column
    repeated; notes are wrapped to ``width``.

    Args:
        results: ``{category: {metric name: fraction}}``; NaN where a value cannot be computed.
        notes: Sentences printed below the table (before the footnotes on partial means).
        width: Maximal line length.

    Returns:
        The text, without a trailing newline.
    """
    names, rows = results_rows(results)
    partial = _partial_means(results)
    labels = [category for category, _ in rows]
    label_width = max(len("Category"), *(len(label) for label in labels))
    cells = [
        [_cell(value, category == MEAN and name in partial) for name, value in zip(names, values, strict=True)]
        for category, values in rows
    ]
    # a value is right-aligned with one character left for the partial-mean mark, so decimals line up
    widths = [
        max(len(short_title(name)), *(len(row[column].rstrip(PARTIAL)) + 1 for row in cells))
        for column, name in enumerate(names)
    ]
    lines: list[str] = []
    for block in _blocks([2 + w for w in widths], max(width - label_width, 1)):
        if lines:
            lines.append("")
        header = "Category".ljust(label_width) + "".join("  " + short_title(names[c]).rjust(widths[c]) for c in block)
        lines.append(header)
        for label, row in zip(labels, cells, strict=True):
            if label == MEAN:
                lines.append("-" * len(header))
            text = label.ljust(label_width)
            for column in block:
                value = row[column]
                mark = PARTIAL if value.endswith(PARTIAL) else " "
                text += "  " + (value.rstrip(PARTIAL).rjust(widths[column] - 1) + mark)
            lines.append(text.rstrip())
    legend = f"Percent; I- image, P- pixel metrics; {MISSING} not computable."
    footnotes = [legend, *(notes or []), *(f"{PARTIAL} {note}" for note in mean_notes(results))]
    lines.append("")
    lines += [textwrap.fill(note, width=width, subsequent_indent="  ") for note in footnotes]
    return "\n".join(lines)


def write_tables(
    results: dict[str, dict[str, float]],
    directory: Path,
    name: str,
    notes: Sequence[str] | None = None,
) -> tuple[Path, Path]:
    """Write ``<name>.csv`` (fractions, full precision, empty cell where missing) and ``<name>.md``.

    Tables already there (an earlier test into the same folder) are kept: the new ones are ``<name>_1``, ...

    Args:
        results: ``{category: {metric name: fraction}}``; NaN where a value cannot be computed.
        directory: Output folder (created).
        name: File name without suffix.
        notes: Sentences written below the Markdown table.

    Returns:
        The CSV and Markdown paths.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    names, rows = results_rows(results)
    name = unused_stem(directory, name, (".csv", ".md"))
    csv_path, markdown_path = directory / f"{name}.csv", directory / f"{name}.md"
    with csv_path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["category", *names])
        for category, values in rows:
            writer.writerow([category, *("" if is_missing(value) else repr(value + 0.0) for value in values)])
    markdown_path.write_text(markdown_table(results, notes), encoding="utf-8")
    return csv_path, markdown_path


def metric_table(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Models x categories of one metric of a benchmark, plus the mean over the categories with a value.

    Args:
        frame: Rows with ``model``, ``category`` and the metric column; repeated rows of a model and category are
            averaged (runs of a seed grid: :func:`repeat_notes` names them under the table).
        metric: The metric column.

    Returns:
        The table; models in order of first appearance, categories sorted, ``mean`` last (NaN where a
        model has no value at all).
    """
    table = frame.pivot_table(index="model", columns="category", values=metric, aggfunc="mean", dropna=False)
    table = table.reindex(index=list(dict.fromkeys(frame["model"])), columns=sorted(frame["category"].unique()))
    table[MEAN] = table.mean(axis=1, skipna=True)
    return table


def setting_text(value: object) -> str:
    """A setting or seed as written in a note: ``42.0`` (an integer column with an empty cell) -> ``42``."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _runs_text(runs: pd.DataFrame, metric: str) -> str:
    """What a cell of repeated runs is: ``mean of 3 runs (seeds 1, 2, 3)``, with the runs without a value."""
    present = runs[metric].notna()
    count = int(present.sum())
    text = f"{count} runs" if count == len(runs) else f"{count} of {len(runs)} runs"
    text = f"mean of {text}" if count > 1 else text
    if "seed" in runs:
        seeds = [setting_text(seed) for seed in runs["seed"][present]]
        text += f" (seed{'s' if len(seeds) > 1 else ''} {', '.join(seeds)}"
        absent = [setting_text(seed) for seed in runs["seed"][~present]]
        if absent:
            text += f"; no result for seed{'s' if len(absent) > 1 else ''} {', '.join(absent)}"
        text += ")"
    return text


def repeat_notes(frame: pd.DataFrame, metric: str) -> list[str]:
    """A note for each value of a :func:`metric_table` that is the mean of repeated rows, naming the runs.

    The categories of a model with the same runs share a note (``FAPrompt, every category: mean of 3 runs
    (seeds 1, 2, 3).``); a cell without any value gets none (it shows :data:`MISSING`).

    Args:
        frame: Rows with ``model``, ``category``, the metric column and, where known, ``seed``.
        metric: The metric column.

    Returns:
        The notes, models in order of first appearance, categories sorted.
    """
    categories = sorted(frame["category"].unique())
    notes = []
    for model in dict.fromkeys(frame["model"]):
        texts: dict[str, list[str]] = {}
        for category, runs in frame[frame["model"] == model].groupby("category", sort=True):
            if len(runs) > 1 and runs[metric].notna().any():
                texts.setdefault(_runs_text(runs, metric), []).append(str(category))
        for text, where in texts.items():
            cells = "every category" if len(where) > 1 and where == categories else ", ".join(where)
            notes.append(f"{model}, {cells}: {text}.")
    return notes


def _counts(table: pd.DataFrame) -> pd.Series:
    """Number of categories with a value, per model."""
    return table.drop(columns=MEAN).notna().sum(axis=1)


def comparison_notes(table: pd.DataFrame) -> list[str]:
    """A footnote for each model whose mean skipped a missing category, naming the categories."""
    categories = [column for column in table.columns if column != MEAN]
    notes = []
    for model, count in _counts(table).items():
        if 0 < count < len(categories):
            missing = ", ".join(category for category in categories if is_missing(table.loc[model, category]))
            notes.append(f"{model}: mean over {count} of {len(categories)} categories (no result for {missing}).")
    return notes


def comparison_markdown(table: pd.DataFrame, notes: Sequence[str] = ()) -> str:
    """Markdown of a :func:`metric_table`: percent, best of a column in bold, partial means marked, notes below.

    A column's best value is bold only when at least two models have a value there; a mean over fewer
    categories than the others (marked ``*``, see :func:`comparison_notes`) does not compete. ``notes`` (e.g.
    :func:`repeat_notes`) are listed below the table, before the footnotes on partial means.
    """
    counts = _counts(table)
    complete = counts == len(table.columns) - 1
    partial = (counts > 0) & ~complete
    lines = ["| model | " + " | ".join(map(str, table.columns)) + " |", "|:--|" + "--:|" * len(table.columns)]
    best = {}
    for column in table.columns:
        values = table[column][complete] if column == MEAN else table[column]
        values = values.dropna()
        best[column] = values.max() if len(values) >= 2 else None
    for model, row in table.iterrows():
        cells = []
        for column in table.columns:
            text = format_percent(row[column])
            if column == MEAN and partial[model]:
                text += "\\" + PARTIAL
            elif best[column] is not None and row[column] == best[column]:
                text = f"**{text}**"
            cells.append(text)
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    footnotes = [*notes, *(f"\\{PARTIAL} {note}" for note in comparison_notes(table))]
    if footnotes:
        lines += ["", *(f"- {note}" for note in footnotes)]
    return "\n".join(lines)
