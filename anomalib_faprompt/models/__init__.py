"""Models of this package."""

from .anomalyclip import AnomalyCLIP
from .faprompt import FAPrompt

__all__ = ["AnomalyCLIP", "FAPrompt"]
