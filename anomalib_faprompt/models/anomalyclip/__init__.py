"""AnomalyCLIP model."""

from .lightning_model import AnomalyCLIP
from .torch_model import AnomalyCLIPModel

__all__ = ["AnomalyCLIP", "AnomalyCLIPModel"]
