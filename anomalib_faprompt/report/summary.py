"""The console summary of an ``anomalib benchmark`` run: per AUROC, categories x models in percent.

anomalib prints one column per result key (35 of them: an empty grid at 80 columns); the benchmark of
:mod:`anomalib_faprompt.pipelines` prints these lines instead.
"""

from __future__ import annotations

import pandas as pd

from anomalib_faprompt.report.benchmark import model_labels
from anomalib_faprompt.report.tables import repeat_notes

__all__ = ["summary_lines"]

SUMMARY_METRICS = ("image_AUROC", "pixel_AUROC")
WIDTH = 80


def summary_lines(frame: pd.DataFrame, results: str = "results.csv", width: int = WIDTH) -> list[str]:
    """The benchmark's console summary: per AUROC, categories x models in percent, and the mean; fits ``width``.

    A model without a value for a category shows ``-``; its mean is then over the categories it has, marked ``*``.
    Repeated jobs of a model and category (a grid over seeds) show their mean, and a note below names them.

    Args:
        frame: The collected results (one row per job).
        results: The ``results.csv`` they are written to, for the last line.
        width: The console width to fit.

    Returns:
        The lines to print.
    """
    if frame is None or frame.empty or "model.class_path" not in frame:
        return ["benchmark: no results"]
    categories = frame.get("data.init_args.category", pd.Series(["-"] * len(frame), index=frame.index)).fillna("-")
    frame = frame.assign(_category=categories.astype(str), _model=model_labels(frame))
    runs = frame.assign(model=frame["_model"], category=frame["_category"])  # the columns repeat_notes reads
    models = list(dict.fromkeys(frame["_model"]))
    names = list(dict.fromkeys(frame["_category"]))
    first = max(len(name) for name in [*names, "category", "mean"])
    lines, footnote, repeats = [], False, {}
    for metric in (metric for metric in SUMMARY_METRICS if metric in frame):
        values = frame.pivot_table(index="_category", columns="_model", values=metric, aggfunc="mean")
        repeats.update(dict.fromkeys(f"{metric}: {note}" for note in repeat_notes(runs, metric)))
        columns = [max(len(model), 6) for model in models]
        start = 0
        while start < len(models):  # as many model columns as fit the width
            stop = start + 1
            while stop < len(models) and first + sum(column + 2 for column in columns[start : stop + 1]) <= width:
                stop += 1
            chunk = list(zip(models[start:stop], columns[start:stop], strict=True))
            lines.append(f"{metric} (%)")
            lines.append("  ".join([f"{'category':<{first}}", *(f"{model:>{column}}" for model, column in chunk)]))
            for name in [*names, "mean"]:
                cells = []
                for model, column in chunk:
                    column_values = values[model] if model in values else pd.Series(dtype=float)
                    if name == "mean":
                        present = column_values.reindex(names).dropna()
                        text = f"{100 * present.mean():.1f}" if len(present) else "-"
                        if 0 < len(present) < len(names):
                            text, footnote = text + "*", True
                    else:
                        value = column_values.get(name)
                        text = f"{100 * value:.1f}" if value is not None and not pd.isna(value) else "-"
                    cells.append(f"{text:>{column}}")
                lines.append("  ".join([f"{name:<{first}}", *cells]))
            lines.append("")
            start = stop
    if footnote:
        lines.append("* mean over the categories with a result (a job failed or did not run)")
    lines.extend(repeats)
    lines.append(f"All metrics: {results}; report: python -m anomalib_faprompt.report {results}")
    return lines
