"""Models of this package."""

from anomalib_faprompt._register import publish

from .anomalyclip import AnomalyCLIP
from .faprompt import FAPrompt

__all__ = ["AnomalyCLIP", "FAPrompt"]

# anomalib.models may have been imported while this module was (a circular import): publish now.
publish()
