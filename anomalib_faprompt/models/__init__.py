"""Models of this package."""

from .faprompt import FAPrompt

__all__ = ["FAPrompt"]
