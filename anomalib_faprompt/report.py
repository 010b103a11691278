"""Turn an anomalib benchmark ``results.csv`` into a Markdown comparison and one bar chart per metric.

Usage::

    python -m anomalib_faprompt.report runs/benchmark/<time>/results.csv --output reports/zero_shot

writes ``comparison.md`` (for every metric, a table of models x categories plus their mean, in percent,
the best value of each column in bold) and ``<metric>.png`` (grouped bars, one group per category and
one for the mean). Metrics are the result columns named ``image_*`` and ``pixel_*``; a model is named by
its class, with the ``init_args`` that tell its rows apart when one class appears in several
configurations. Repeated rows of one model and category (e.g. a grid over seeds) are averaged. A mean
over categories is left empty when a model lacks one of them (a failed job).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib as mpl

mpl.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

__all__ = ["bar_chart", "load_results", "main", "markdown_report", "metric_table", "write_report"]

MODEL_COLUMN = "model.class_path"
CATEGORY_COLUMN = "data.init_args.category"
METRIC_PREFIXES = ("image_", "pixel_")
MEAN = "mean"
MISSING = "–"


def load_results(path: str | Path) -> pd.DataFrame:
    """Read a benchmark results CSV as rows of ``model``, ``category`` and the metric columns.

    Args:
        path: ``results.csv`` written by ``anomalib benchmark``.

    Returns:
        The results with a ``model`` label and a ``category`` column.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: The file lacks the model column or has no metric column.
    """
    path = Path(path)
    if not path.is_file():
        msg = f"Results file '{path}' does not exist. Pass the results.csv that `anomalib benchmark` wrote."
        raise FileNotFoundError(msg)
    frame = pd.read_csv(path)
    if MODEL_COLUMN not in frame.columns:
        msg = f"'{path}' has no '{MODEL_COLUMN}' column: it is not a results.csv of `anomalib benchmark`."
        raise ValueError(msg)
    if not metric_columns(frame):
        msg = f"'{path}' has no metric column (named {' or '.join(p + '*' for p in METRIC_PREFIXES)}): no job finished."
        raise ValueError(msg)
    frame = frame.copy()
    frame["model"] = _model_labels(frame)
    frame["category"] = frame[CATEGORY_COLUMN].astype(str) if CATEGORY_COLUMN in frame.columns else "all"
    return frame


def metric_columns(frame: pd.DataFrame) -> list[str]:
    """The metric columns, in the order of the file."""
    return [column for column in frame.columns if column.startswith(METRIC_PREFIXES)]


def _model_labels(frame: pd.DataFrame) -> pd.Series:
    """Class name of each row, plus the ``init_args`` that differ between rows of the same class."""
    names = frame[MODEL_COLUMN].astype(str).str.split(".").str[-1]
    init_args = [column for column in frame.columns if column.startswith("model.init_args.")]
    labels = names.copy()
    for name in names.unique():
        rows = frame[names == name]
        varying = [column for column in init_args if rows[column].astype(str).nunique() > 1]
        if varying:
            details = (
                rows[varying]
                .astype(str)
                .apply(
                    lambda row, keys=varying: ", ".join(
                        f"{key.removeprefix('model.init_args.')}={row[key]}" for key in keys
                    ),
                    axis=1,
                )
            )
            labels[names == name] = name + " (" + details + ")"
    return labels


def metric_table(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Models x categories of one metric, plus the mean over categories (empty if a category is missing).

    Args:
        frame: Results from :func:`load_results`.
        metric: A metric column.

    Returns:
        The table; rows in order of first appearance, categories sorted, ``mean`` last.
    """
    table = frame.pivot_table(index="model", columns="category", values=metric, aggfunc="mean", dropna=False)
    table = table.reindex(index=list(dict.fromkeys(frame["model"])), columns=sorted(frame["category"].unique()))
    table[MEAN] = table.mean(axis=1, skipna=False)
    return table


def _format(value: float, best: bool) -> str:
    if value is None or math.isnan(value):
        return MISSING
    text = f"{100 * value:.1f}"
    return f"**{text}**" if best else text


def markdown_table(table: pd.DataFrame) -> str:
    """One table in Markdown, values in percent, the best of each column in bold."""
    header = ["model", *table.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([":--", *["--:"] * len(table.columns)]) + "|"]
    best = table.max(axis=0)
    for model, row in table.iterrows():
        cells = [_format(row[column], row[column] == best[column]) for column in table.columns]
        lines.append("| " + " | ".join([str(model), *cells]) + " |")
    return "\n".join(lines)


def markdown_report(frame: pd.DataFrame, source: str) -> str:
    """The whole comparison: one section per metric.

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
        f"Results of `anomalib benchmark` ({source}), dataset {datasets}, in percent; best per column in bold, "
        f"{MISSING} where a model has no such result.",
    ]
    for metric in metric_columns(frame):
        parts += ["", f"## {metric}", "", markdown_table(metric_table(frame, metric))]
    return "\n".join(parts) + "\n"


def bar_chart(table: pd.DataFrame, metric: str, path: str | Path) -> Path:
    """Grouped bar chart of one metric: a group per category and one for the mean, a bar per model.

    Models without any value of the metric are left out; a missing single value draws no bar.

    Args:
        table: Table from :func:`metric_table`.
        metric: Metric name (the title).
        path: PNG file to write.

    Returns:
        The written path.
    """
    colors = {model: f"C{index}" for index, model in enumerate(table.index)}  # same colour in every chart
    table = table.dropna(how="all")
    groups = list(table.columns)
    n_models = len(table.index)
    width = 0.8 / max(n_models, 1)
    figure, axes = plt.subplots(figsize=(max(6.0, 0.35 * len(groups) * n_models + 2.0), 4.5))
    for index, (model, row) in enumerate(table.iterrows()):
        offsets = [group + (index - (n_models - 1) / 2) * width for group in range(len(groups))]
        axes.bar(offsets, (100 * row.fillna(0.0)).to_list(), width=width, label=str(model), color=colors[model])
    axes.set_xticks(range(len(groups)), groups, rotation=30 if len(groups) > 6 else 0, ha="right")
    axes.axvline(len(groups) - 1.5, color="grey", linewidth=0.8, linestyle="--")
    axes.set_ylim(0, 100)
    axes.set_ylabel(f"{metric} (%)")
    axes.set_title(metric)
    axes.grid(axis="y", alpha=0.3)
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18 if len(groups) > 6 else -0.1), ncol=n_models)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def write_report(results: str | Path, output: str | Path) -> list[Path]:
    """Write ``comparison.md`` and one ``<metric>.png`` per metric into ``output``.

    Args:
        results: ``results.csv`` of ``anomalib benchmark``.
        output: Output folder (created).

    Returns:
        The written files, the Markdown first.
    """
    frame = load_results(results)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    markdown = output / "comparison.md"
    markdown.write_text(markdown_report(frame, str(results)), encoding="utf-8")
    charts = [
        bar_chart(metric_table(frame, metric), metric, output / f"{metric}.png") for metric in metric_columns(frame)
    ]
    return [markdown, *charts]


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``python -m anomalib_faprompt.report RESULTS_CSV --output DIR``."""
    parser = argparse.ArgumentParser(prog="anomalib-faprompt-report", description=__doc__.splitlines()[0])
    parser.add_argument("results", help="results.csv written by `anomalib benchmark`")
    parser.add_argument("--output", default="reports/zero_shot", help="output folder (default: %(default)s)")
    args = parser.parse_args(argv)
    for path in write_report(args.results, args.output):
        print(path)


if __name__ == "__main__":
    main()
