"""FAPrompt and AnomalyCLIP zero-shot anomaly detection for anomalib.

The models are imported on first access (``anomalib_faprompt.FAPrompt``), so that the start-up hook
in :mod:`anomalib_faprompt._register` imports nothing but this file.
"""

__all__ = ["AnomalyCLIP", "FAPrompt"]


def __getattr__(name: str) -> object:
    if name in __all__:
        from anomalib_faprompt import models

        return getattr(models, name)
    msg = f"module 'anomalib_faprompt' has no attribute '{name}'"
    raise AttributeError(msg)
