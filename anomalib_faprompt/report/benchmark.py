"""Turn an anomalib benchmark ``results.csv`` into a Markdown comparison and one bar chart per metric.

Usage::

    python -m anomalib_faprompt.report runs/benchmark/<time>/results.csv [--output DIR]

writes, into ``DIR`` (default: ``report/`` beside the results file), ``comparison.md`` (for every metric, a
table of models x categories plus their mean, in percent) and ``<metric>.png`` (grouped bars with their
values, one group per category and one for the mean; a dashed line at 50% for an AUROC). Metrics are the
result columns named ``image_*`` and ``pixel_*``; a model is named by its class, with the ``init_args`` that
tell its rows apart when one class appears in several configurations. Rows of one model and category that differ
in the ``seed`` alone (besides their results: durations, metrics, ``status``), or not at all (the same results
twice), are repeated runs: the table shows their mean and a note under it says of how many runs and which seeds.
Rows of one model and category that differ in anything else (``data.class_path``, ``data.init_args.root`` or
another data argument, the accelerator, ...) are refused with an error naming the lines, columns and values: they
are results of different datasets or settings, and their mean would be a number of neither.

The tables follow :mod:`anomalib_faprompt.report.tables`: a missing result shows as ``–`` (never as 0), a mean
skips missing categories and says so in a footnote, and a column's best value is bold only when at least
two models have one. A metric that only one model reports gets no chart (there is nothing to compare);
the Markdown says so. Notes below the title say how models that are not this package's post-process
their scores (WinClip and AnomalyVFM normalise with statistics of the target data, at their own input
size). A folder that holds the report of other results (another content: ``comparison.md``'s first line names
the results file and its SHA-256) is refused, with its files kept; the report of the same results is written again,
also from a copied or moved folder.
"""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Sequence
from pathlib import Path

import matplotlib as mpl

mpl.use("Agg")

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from anomalib_faprompt.errors import ExistingOutputError, InvalidInputError
from anomalib_faprompt.names import MODEL_NAMES
from anomalib_faprompt.report.tables import (
    MEAN,
    MISSING,
    comparison_markdown,
    format_percent,
    metric_table,
    repeat_notes,
    setting_text,
)

__all__ = [
    "NORMALISING_MODELS",
    "bar_chart",
    "load_results",
    "main",
    "markdown_report",
    "metric_table",
    "model_labels",
    "setting_columns",
    "write_report",
]

MODEL_COLUMN = "model.class_path"
CATEGORY_COLUMN = "data.init_args.category"
METRIC_PREFIXES = ("image_", "pixel_")
RUN_COLUMNS = ("seed", "status")
"""Columns that may differ between repeated runs of one model and dataset (besides metrics and ``*_duration``)."""
_DERIVED_COLUMNS = ("model", "model_class", "category")

NORMALISING_MODELS = {"WinClip": 240, "AnomalyVFM": 768}
"""anomalib models whose default post-processor min-max normalises with statistics of the data, and the
side of the square their default pre-processor resizes images to."""


def metric_columns(frame: pd.DataFrame) -> list[str]:
    """The metric columns, in the order of the file."""
    return [column for column in frame.columns if column.startswith(METRIC_PREFIXES)]


def _read_csv(path: Path) -> pd.DataFrame:
    """Read the file, with every problem reported as one line naming it."""
    if not path.is_file():
        problem = "does not exist" if not path.exists() else "is not a file"
        msg = f"Results file '{path}' {problem}. Pass the results.csv that `anomalib benchmark` wrote."
        raise FileNotFoundError(msg)
    try:
        # blank lines are kept (as empty rows, dropped below) so that row i is line i + 2 of the file
        frame = pd.read_csv(path, skip_blank_lines=False)
    except pd.errors.EmptyDataError:
        msg = f"'{path}' is empty. Pass the results.csv that `anomalib benchmark` wrote after a job finished."
        raise ValueError(msg) from None
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        first_line = str(error).strip().splitlines()[0]
        msg = f"'{path}' is not a readable CSV file ({first_line}). Pass the results.csv of `anomalib benchmark`."
        raise ValueError(msg) from None
    return frame


def _check_numbers(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    """The metric columns as floats; a cell that is not a fraction in [0, 1] is an error naming its line and column."""
    frame = frame.copy()
    for column in metric_columns(frame):
        numbers = pd.to_numeric(frame[column], errors="coerce")
        bad = frame[column].notna() & (numbers.isna() | ~numbers.between(0.0, 1.0))
        if bad.any():
            row = bad.idxmax()
            what = "is not a number" if pd.isna(numbers[row]) else "is outside [0, 1]"
            msg = (
                f"'{path}', line {row + 2}, column '{column}': '{frame[column][row]}' {what}. "
                "Correct it (metrics are fractions in [0, 1]) or leave the cell empty where there is no result."
            )
            raise InvalidInputError(msg)
        frame[column] = numbers.astype(float)
    return frame


def setting_columns(frame: pd.DataFrame) -> list[str]:
    """The columns that say what a row ran (model, data, accelerator, ...): all but metrics, seed, status, durations."""
    return [
        column
        for column in frame.columns
        if not column.startswith(METRIC_PREFIXES)
        and column not in (*RUN_COLUMNS, *_DERIVED_COLUMNS)
        and not column.endswith("_duration")
    ]


def _check_repeats(frame: pd.DataFrame, path: Path) -> None:
    """Refuse rows of one model and category that differ in more than the seed (their mean would be wrong).

    ``frame`` keeps the index of :func:`_read_csv`, so that row ``i`` is line ``i + 2`` of the file.
    """
    settings = setting_columns(frame)
    given = frame[settings].astype(object)
    texts = given.where(given.notna(), "not set").apply(lambda column: column.map(setting_text))
    for (model, category), rows in frame.groupby(["model", "category"], sort=False):
        if len(rows) < 2:
            continue
        group = texts.loc[rows.index]
        differing = [column for column in settings if group[column].nunique() > 1]
        if differing:
            details = ", ".join(
                f"{column} ({', '.join(map(repr, dict.fromkeys(group[column])))})" for column in differing
            )
            lines = ", ".join(str(index + 2) for index in rows.index)
            msg = (
                f"'{path}': the rows of {model}, category {category} (lines {lines}) differ in {details}, not in the "
                "seed alone: the report averages only repeated runs of one model and dataset. Report each dataset "
                "from its own results file (keep its rows only)."
            )
            raise ValueError(msg)


def load_results(path: str | Path) -> pd.DataFrame:
    """Read a benchmark results CSV as rows of ``model``, ``model_class``, ``category`` and the metrics.

    Args:
        path: ``results.csv`` written by ``anomalib benchmark``.

    Returns:
        The results with a ``model`` label, its ``model_class`` and a ``category`` column; metrics as
        floats, NaN where a cell is empty.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: The file is empty or not a CSV, lacks the model column, has no metric column or no
            row, a metric cell is not a number (the message names the line and column), or rows of one model
            and category differ in more than the seed (e.g. the dataset root; the message names lines,
            columns and values).
    """
    path = Path(path)
    frame = _read_csv(path)
    if MODEL_COLUMN not in frame.columns:
        msg = f"'{path}' has no '{MODEL_COLUMN}' column: it is not a results.csv of `anomalib benchmark`."
        raise ValueError(msg)
    if not metric_columns(frame):
        msg = f"'{path}' has no metric column (named {' or '.join(p + '*' for p in METRIC_PREFIXES)}): no job finished."
        raise ValueError(msg)
    frame = _check_numbers(frame, path).dropna(how="all")
    if frame.empty:
        msg = f"'{path}' has a header but no rows: no job finished. anomalib's benchmark log says why."
        raise ValueError(msg)
    frame["model_class"] = model_classes(frame)
    frame["model"] = model_labels(frame)
    frame["category"] = frame[CATEGORY_COLUMN].astype(str) if CATEGORY_COLUMN in frame.columns else "all"
    _check_repeats(frame, path)
    return frame.reset_index(drop=True)


def model_classes(frame: pd.DataFrame) -> pd.Series:
    """The class name of each row's model (the last part of its ``model.class_path``)."""
    return frame[MODEL_COLUMN].astype(str).str.split(".").str[-1]


def model_labels(frame: pd.DataFrame) -> pd.Series:
    """Class name of each row's model, plus the ``init_args`` that differ between rows of the same class.

    An argument one row sets and another leaves out differs too: the row without it shows ``<name>=default``.
    """
    names = model_classes(frame)
    init_args = [column for column in frame.columns if column.startswith("model.init_args.")]
    given = frame[init_args].astype(object)
    texts = given.where(given.notna(), "default").astype(str)
    labels = names.copy()
    for name in names.unique():
        rows = texts[names == name]
        varying = [column for column in init_args if rows[column].nunique() > 1]
        if varying:
            details = rows[varying].apply(
                lambda row, keys=varying: ", ".join(
                    f"{key.removeprefix('model.init_args.')}={row[key]}" for key in keys
                ),
                axis=1,
            )
            labels[names == name] = name + " (" + details + ")"
    return labels


def model_notes(classes: Sequence[str]) -> list[str]:
    """How the given model classes post-process their scores and which image size they use."""
    notes = []
    ours = [name for name in MODEL_NAMES if name in classes]
    if ours:
        notes.append(
            f"{' and '.join(ours)} output probabilities thresholded at 0.5: no statistic of the target data "
            "enters their scores; images at the models' `image_size`."
        )
    normalising = {name: side for name, side in NORMALISING_MODELS.items() if name in classes}
    if normalising:
        names = " and ".join(normalising)
        sizes = " and ".join(f"{side} x {side} ({name})" for name, side in normalising.items())
        notes.append(
            f"{names} keep{'s' if len(normalising) == 1 else ''} anomalib's default post-processor: it min-max "
            "normalises scores and maps with statistics of the target's validation split (by default the test "
            "split itself for MVTec AD and VisA) and picks the F1 thresholds with that split's labels, so F1 "
            "scores are not zero-shot; AUROCs depend on the ranking only and do not change with the default "
            f"split. Images at {sizes}."
        )
    return notes


def _charted(table: pd.DataFrame) -> pd.DataFrame:
    """The models with at least one value."""
    return table.dropna(how="all")


def markdown_report(frame: pd.DataFrame, source: str) -> str:
    """The whole comparison: notes on the models, then one section per metric.

    Args:
        frame: Results from :func:`load_results`.
        source: Where the results come from (printed under the title).

    Returns:
        Markdown text.
    """
    datasets = ", ".join(frame["data.class_path"].astype(str).unique()) if "data.class_path" in frame else "?"
    parts = [
        "# Zero-shot comparison",
        "",
        (
            f"Results of `anomalib benchmark` ({source}), dataset {datasets}, in percent. {MISSING}: no result; "
            "bold: the best of a column where at least two models have a value; \\*: a mean over fewer categories."
        ),
    ]
    notes = model_notes(list(dict.fromkeys(frame["model_class"])))
    if notes:
        parts += ["", *(f"- {note}" for note in notes)]
    for metric in metric_columns(frame):
        table = metric_table(frame, metric)
        parts += ["", f"## {metric}", "", comparison_markdown(table, repeat_notes(frame, metric))]
        charted = _charted(table)
        if len(charted) < 2:
            who = f"only {charted.index[0]} reports it" if len(charted) else "no model reports it"
            parts += ["", f"No chart: {who}."]
    return "\n".join(parts) + "\n"


def bar_chart(table: pd.DataFrame, metric: str) -> Figure:
    """Grouped bars of one metric: a group per category and one for the mean, a bar per model.

    Every bar carries its value; a missing value draws no bar and the label ``–`` (a 0.0 draws a bar of
    height 0 labelled ``0.0``); a mean over fewer categories is hatched and labelled with ``*``. An AUROC
    gets a dashed line at 50% (chance). Models without any value of the metric are left out.

    Args:
        table: Table from :func:`~anomalib_faprompt.tables.metric_table`.
        metric: Metric name (the title).

    Returns:
        The figure (close it with ``matplotlib.pyplot.close``).
    """
    colors = {model: f"C{index}" for index, model in enumerate(table.index)}  # same colour in every chart
    table = _charted(table)
    groups = list(table.columns)
    counts = table.drop(columns=MEAN).notna().sum(axis=1)
    n_models = len(table.index)
    width = 0.8 / max(n_models, 1)
    crowded = len(groups) * n_models > 16
    figure, axes = plt.subplots(figsize=(max(6.0, 0.35 * len(groups) * n_models + 2.0), 4.8))
    for index, (model, row) in enumerate(table.iterrows()):
        offsets = [group + (index - (n_models - 1) / 2) * width for group in range(len(groups))]
        partial = 0 < counts[model] < len(groups) - 1
        bars = axes.bar(offsets, (100 * row).fillna(0.0).to_list(), width=width, label=str(model), color=colors[model])
        labels = []
        for bar, column in zip(bars, groups, strict=True):
            value = row[column]
            label = format_percent(value)
            if pd.isna(value):  # no bar; the marker stands upright on the axis where the bar would be
                bar.set_visible(False)
                axes.text(bar.get_x() + bar.get_width() / 2, 1.0, label, ha="center", va="bottom", fontsize=9)
                label = ""
            elif column == MEAN and partial:
                bar.set_hatch("//")
                label += "*"
            labels.append(label)
        axes.bar_label(bars, labels=labels, padding=2, fontsize=7, rotation=90 if crowded else 0)
    if "AUROC" in metric:
        axes.axhline(50, color="black", linewidth=1.0, linestyle="--", label="50% (chance)")
    axes.set_xticks(range(len(groups)), groups, rotation=30 if len(groups) > 6 else 0, ha="right")
    axes.axvline(len(groups) - 1.5, color="grey", linewidth=0.8, linestyle=":")
    axes.set_ylim(0, 115 if crowded else 108)
    axes.set_yticks(range(0, 101, 20))
    axes.set_ylabel(f"{metric} (%)")
    axes.set_title(metric)
    axes.grid(axis="y", alpha=0.3)
    axes.legend(
        loc="upper center",
        bbox_to_anchor=(0.5, -0.18 if len(groups) > 6 else -0.1),
        ncol=n_models + 1,
    )
    figure.tight_layout()
    return figure


SOURCE_PREFIX, SOURCE_SUFFIX = "<!-- results: ", " -->"  # comparison.md's first line: its results file


def _digest(results: Path) -> str:
    """SHA-256 of a results file's content."""
    return hashlib.sha256(results.read_bytes()).hexdigest()


def report_source(markdown: Path) -> tuple[str, str] | None:
    """The results file a ``comparison.md`` was made from and its SHA-256, or ``None`` when it does not say."""
    try:
        first = markdown.read_text(encoding="utf-8").split("\n", 1)[0]
    except (OSError, UnicodeDecodeError):
        return None
    if not (first.startswith(SOURCE_PREFIX) and first.endswith(SOURCE_SUFFIX)):
        return None
    path, _, digest = first.removeprefix(SOURCE_PREFIX).removesuffix(SOURCE_SUFFIX).rpartition(" sha256 ")
    return (path, digest) if path else None


def write_report(results: str | Path, output: str | Path | None = None) -> list[Path]:
    """Write ``comparison.md`` and a ``<metric>.png`` per metric that two models or more report.

    Args:
        results: ``results.csv`` of ``anomalib benchmark``.
        output: Output folder (created); default ``report/`` beside ``results``.

    Returns:
        The written files, the Markdown first.

    Raises:
        ExistingOutputError: ``output`` holds a report that was not made from ``results``; nothing is written.
    """
    frame = load_results(results)
    digest = _digest(Path(results))
    output = Path(output) if output is not None else Path(results).parent / "report"
    markdown = output / "comparison.md"
    made_from = report_source(markdown)  # None when there is none, or it does not say
    if markdown.exists() and (made_from is None or made_from[1] != digest):
        what = f"the report of '{made_from[0]}'" if made_from else "a report that does not name its results file"
        msg = (
            f"'{output}' holds {what}, which is kept. Pass another `--output` for the report of '{results}', or "
            "remove that folder first."
        )
        raise ExistingOutputError(msg)
    output.mkdir(parents=True, exist_ok=True)
    text = markdown_report(frame, str(results))
    markdown.write_text(
        f"{SOURCE_PREFIX}{Path(results).resolve()} sha256 {digest}{SOURCE_SUFFIX}\n{text}", encoding="utf-8"
    )
    written = [markdown]
    for metric in metric_columns(frame):
        table = metric_table(frame, metric)
        if len(_charted(table)) < 2:
            continue
        figure = bar_chart(table, metric)
        path = output / f"{metric}.png"
        figure.savefig(path, dpi=120)
        plt.close(figure)
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``python -m anomalib_faprompt.report RESULTS_CSV [--output DIR]``."""
    parser = argparse.ArgumentParser(prog="anomalib-faprompt-report", description=__doc__.splitlines()[0])
    parser.add_argument("results", help="results.csv written by `anomalib benchmark`")
    parser.add_argument("--output", default=None, help="output folder (default: report/ beside the results file)")
    args = parser.parse_args(argv)
    try:
        written = write_report(args.results, args.output)
    except (FileNotFoundError, FileExistsError, ValueError) as error:
        parser.exit(1, f"{parser.prog}: error: {error}\n")
    for path in written:
        print(path)  # noqa: T201  (the command's output)
