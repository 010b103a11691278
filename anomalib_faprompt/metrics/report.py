"""Per-category result tables: CSV (fractions, full precision) and Markdown (percentages, as in the papers)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

__all__ = ["COLUMN_TITLES", "markdown_table", "results_rows", "write_tables"]

COLUMN_TITLES = {
    "image_AUROC": "Image AUROC",
    "image_AUPR": "Image AP",
    "pixel_AUROC": "Pixel AUROC",
    "pixel_AUPRO": "Pixel AUPRO",
}


def results_rows(results: dict[str, dict[str, float]]) -> tuple[list[str], list[tuple[str, list[float]]]]:
    """Metric names and ``(row name, values)`` for each category, then ``mean`` over categories.

    The mean of a metric skips categories where it is NaN (not computable, e.g. no masks).
    """
    names = list(dict.fromkeys(name for values in results.values() for name in values))
    rows = [(category, [values.get(name, math.nan) for name in names]) for category, values in results.items()]
    means = []
    for column in range(len(names)):
        present = [values[column] for _, values in rows if not math.isnan(values[column])]
        means.append(sum(present) / len(present) if present else math.nan)
    return names, [*rows, ("mean", means)]


def markdown_table(results: dict[str, dict[str, float]]) -> str:
    """Markdown table: one row per category and a ``mean`` row, metrics in percent with one decimal."""
    names, rows = results_rows(results)
    header = "| Category | " + " | ".join(COLUMN_TITLES.get(name, name) for name in names) + " |"
    rule = "|---|" + "---:|" * len(names)
    lines = [header, rule]
    for category, values in rows:
        cells = " | ".join("-" if math.isnan(value) else f"{100 * value:.1f}" for value in values)
        label = f"**{category}**" if category == "mean" else category
        lines.append(f"| {label} | {cells} |")
    return "\n".join(lines) + "\n"


def write_tables(results: dict[str, dict[str, float]], directory: Path, name: str) -> tuple[Path, Path]:
    """Write ``<name>.csv`` (fractions; empty cell when not computable) and ``<name>.md``; return both paths."""
    directory.mkdir(parents=True, exist_ok=True)
    names, rows = results_rows(results)
    csv_path, markdown_path = directory / f"{name}.csv", directory / f"{name}.md"
    with csv_path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["category", *names])
        for category, values in rows:
            writer.writerow([category, *("" if math.isnan(value) else repr(value) for value in values)])
    markdown_path.write_text(markdown_table(results))
    return csv_path, markdown_path
