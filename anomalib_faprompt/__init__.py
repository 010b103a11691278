"""FAPrompt and AnomalyCLIP zero-shot anomaly detection for anomalib.

The models are imported on first access (``anomalib_faprompt.FAPrompt``). Importing the package installs the
anomalib integration's import hook (:mod:`anomalib_faprompt.integration.hook`, standard library only) unless
``ANOMALIB_FAPROMPT_NO_HOOK=1``; the start-up file ``anomalib_faprompt_models.pth`` imports nothing but this.
"""

from anomalib_faprompt.integration.hook import install as _install_hook

__all__ = ["AnomalyCLIP", "FAPrompt"]

_install_hook()


def __getattr__(name: str) -> object:
    if name in __all__:
        from anomalib_faprompt import models  # noqa: PLC0415  (the models load on first use)

        return getattr(models, name)
    msg = f"module 'anomalib_faprompt' has no attribute '{name}'"
    raise AttributeError(msg)
