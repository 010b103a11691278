"""``FAPrompt`` and ``AnomalyCLIP`` as attributes of ``anomalib.models``: ``--model FAPrompt``, ``get_model``.

anomalib's CLI resolves ``--model NAME`` among the imported subclasses of ``AnomalibModule``, and
``anomalib.models.get_model`` (and ``list_models``) among its direct subclasses: both find the models once they
are imported. A config's ``class_path: FAPrompt`` (or ``anomalib.models.FAPrompt``: a benchmark config) is looked
up as an attribute of ``anomalib.models``, which this module sets, once, after ``anomalib.models`` has loaded
(importing the models) or, when the package's own import is what loads ``anomalib.models``, after
``anomalib_faprompt.models`` has loaded.
"""

from __future__ import annotations

import sys
from typing import Any

from anomalib_faprompt.integration.patching import patching
from anomalib_faprompt.names import MODEL_NAMES


def _package_is_importing() -> bool:
    """Whether a module of this package (not the integration) is being imported now: it imported anomalib."""
    return any(
        name.startswith("anomalib_faprompt.")
        and not name.startswith("anomalib_faprompt.integration")
        and getattr(getattr(module, "__spec__", None), "_initializing", False)
        for name, module in list(sys.modules.items())
    )


def publish(module: Any, models: Any) -> None:  # noqa: ANN401
    """Set the model classes of ``models`` (and their names in ``__all__``) on ``anomalib.models``."""
    if all(hasattr(module, name) for name in MODEL_NAMES):
        return

    with patching("publishing FAPrompt and AnomalyCLIP on anomalib.models") as patch:
        if patch is None:
            return
        patch.set(module, "__all__", [*module.__all__, *(name for name in MODEL_NAMES if name not in module.__all__)])
        for name in MODEL_NAMES:
            patch.set(module, name, getattr(models, name))


def on_anomalib_models(module: Any) -> None:  # noqa: ANN401
    """Hook run after ``anomalib.models`` loaded: publish (unless the package's import is what loaded it)."""
    if not _package_is_importing():
        from anomalib_faprompt import models  # noqa: PLC0415  (the hook stays cheap until anomalib.models loads)

        publish(module, models)


def on_package_models(module: Any) -> None:  # noqa: ANN401
    """Hook run after ``anomalib_faprompt.models`` loaded (which has imported ``anomalib.models``)."""
    publish(sys.modules["anomalib.models"], module)
