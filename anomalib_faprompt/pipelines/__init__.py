"""anomalib's benchmark pipeline for comparisons of zero-shot models: :class:`~.benchmark.Benchmark`."""

from .benchmark import Benchmark

__all__ = ["Benchmark"]
