"""Tables and reports of results: the evaluator's per-category tables, the benchmark's summary and its report.

- :mod:`.tables`: Markdown, CSV and console tables of per-category metrics (written by the evaluator and the report).
- :mod:`.summary`: the console summary of an ``anomalib benchmark`` run.
- :mod:`.benchmark`: ``python -m anomalib_faprompt.report results.csv``, a benchmark's Markdown comparison and charts.
"""
