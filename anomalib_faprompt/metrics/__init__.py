"""Metrics: a fast AUPRO, the papers' AUPRO, an evaluator that reports per category, and the result tables."""

from anomalib_faprompt.report.tables import markdown_table, write_tables

from .aupro import AUPRO, PaperAUPRO, paper_aupro, pro_curve
from .evaluator import PerCategoryEvaluator

__all__ = ["AUPRO", "PaperAUPRO", "PerCategoryEvaluator", "markdown_table", "paper_aupro", "pro_curve", "write_tables"]
