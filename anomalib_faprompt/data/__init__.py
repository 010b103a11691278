"""Data modules and synthetic data for prompt-learning anomaly detectors."""

from .auxiliary import AuxiliaryDataModule
from .synthetic import make_synthetic_dataset

__all__ = ["AuxiliaryDataModule", "make_synthetic_dataset"]
