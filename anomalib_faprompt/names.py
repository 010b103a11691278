"""The names of the package's models, in one place (standard library only: the start-up hook reads them)."""

from __future__ import annotations

__all__ = ["MODEL_NAMES", "PACKAGE"]

MODEL_NAMES = ("FAPrompt", "AnomalyCLIP")
PACKAGE = "anomalib_faprompt"
