"""Metrics: a fast AUPRO, an evaluator that reports per category, and the result tables."""

from ..tables import markdown_table, write_tables
from .aupro import AUPRO, pro_curve
from .evaluator import PerCategoryEvaluator

__all__ = ["AUPRO", "PerCategoryEvaluator", "markdown_table", "pro_curve", "write_tables"]
