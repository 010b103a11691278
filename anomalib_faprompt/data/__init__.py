"""Data modules and synthetic data for prompt-learning anomaly detectors.

The names are imported on first access, so that ``python -m anomalib_faprompt.data.synthetic`` does not
import the module it runs (runpy warns about that) and importing this package stays cheap.
"""

from importlib import import_module

__all__ = ["AuxiliaryDataModule", "MetaJson", "make_synthetic_dataset"]

_MODULES = {"AuxiliaryDataModule": ".auxiliary", "MetaJson": ".meta_json", "make_synthetic_dataset": ".synthetic"}


def __getattr__(name: str) -> object:
    if name in _MODULES:
        return getattr(import_module(_MODULES[name], __name__), name)
    msg = f"module '{__name__}' has no attribute '{name}'"
    raise AttributeError(msg)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
