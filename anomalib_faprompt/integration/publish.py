"""``FAPrompt`` and ``AnomalyCLIP`` on ``anomalib.models``: ``--model FAPrompt``, ``get_model``, ``list_models``.

anomalib's CLI resolves ``--model NAME`` among the imported subclasses of ``AnomalibModule``;
``anomalib.models.get_model`` looks a config's ``class_path`` up on ``anomalib.models`` and a plain name among
the direct subclasses of ``AnomalibModule``, which ``list_models`` lists. This package's models derive from a
shared base class, so without help ``list_models`` would list that base class and not the models.

Whatever is imported first, both hooks below run: after ``anomalib.models`` has loaded (it imports this
package's models, unless these are what is importing ``anomalib.models``) and after
``anomalib_faprompt.models`` has loaded. The one that finds both complete publishes.
"""

from __future__ import annotations

import sys
from typing import Any

from anomalib_faprompt.integration.patching import patching

MODEL_NAMES = ("FAPrompt", "AnomalyCLIP")


def _package_models() -> Any:
    """``anomalib_faprompt.models`` if its import has completed, else ``None``."""
    models = sys.modules.get("anomalib_faprompt.models")
    return models if models is not None and all(hasattr(models, name) for name in MODEL_NAMES) else None


def publish() -> bool:
    """Set the models on ``anomalib.models`` and make its model lookups know them, once both are imported.

    Returns:
        Whether the models are published.
    """
    module, models = sys.modules.get("anomalib.models"), _package_models()
    if module is None or models is None or not hasattr(module, "list_models"):
        return False
    if getattr(module.list_models, "_anomalib_faprompt", False):
        return True
    classes = {name: getattr(models, name) for name in MODEL_NAMES}
    with patching("publishing FAPrompt and AnomalyCLIP on anomalib.models") as patch:
        if patch is None:
            return False
        for name, model_class in classes.items():
            patch.set(module, name, model_class)
        patch.set(module, "__all__", [*module.__all__, *(name for name in MODEL_NAMES if name not in module.__all__)])
        patch.set(module, "list_models", _list_models(module.list_models, module, classes))
        patch.set(module, "_get_model_class_by_name", _get_model_class(module._get_model_class_by_name, classes))
        return True
    return False


def _list_models(original: Any, module: Any, classes: dict[str, type]) -> Any:
    """The ``list_models`` of anomalib, with this package's models instead of their shared base class."""
    from anomalib.utils.path import convert_to_snake_case, convert_to_title_case

    convert = {"snake": convert_to_snake_case, "title": convert_to_title_case, "pascal": lambda name: name}

    def list_models(case: str = "snake") -> set[str]:
        names = original(case)
        package_bases = {
            cls.__name__
            for cls in module.AnomalibModule.__subclasses__()
            if cls.__module__.startswith("anomalib_faprompt.") and cls.__name__ not in classes
        }
        return (names - {convert[case](name) for name in package_bases}) | {convert[case](name) for name in classes}

    list_models.__doc__ = original.__doc__
    list_models._anomalib_faprompt = True  # noqa: SLF001
    return list_models


def _get_model_class(original: Any, classes: dict[str, type]) -> Any:
    """The ``_get_model_class_by_name`` of anomalib, also finding this package's models (``get_model("FAPrompt")``)."""
    from anomalib.utils.path import convert_snake_to_pascal_case

    def get_model_class_by_name(name: str) -> type:
        wanted = convert_snake_to_pascal_case(name).lower()
        for model_name, model_class in classes.items():
            if wanted in {model_name.lower(), convert_snake_to_pascal_case(model_name).lower()}:
                return model_class
        return original(name)

    return get_model_class_by_name


def _package_is_importing() -> bool:
    """Whether a module of this package (not the integration) is being imported now: it imported anomalib."""
    return any(
        name.startswith("anomalib_faprompt.")
        and not name.startswith("anomalib_faprompt.integration")
        and getattr(getattr(module, "__spec__", None), "_initializing", False)
        for name, module in list(sys.modules.items())
    )


def on_anomalib_models(module: Any) -> None:  # noqa: ARG001  (hook signature; publish() finds the module)
    """Hook run after ``anomalib.models`` loaded: import this package's models and publish them.

    When the package's own code is what imports ``anomalib.models`` (``from anomalib_faprompt import FAPrompt``,
    ``import anomalib_faprompt.components``), importing the models here would be circular: the hook of
    ``anomalib_faprompt.models`` publishes them once they are imported.
    """
    if "anomalib_faprompt.models" not in sys.modules and not _package_is_importing():
        import anomalib_faprompt.models  # noqa: F401  (its own hook publishes)
    publish()


def on_package_models(module: Any) -> None:  # noqa: ARG001  (hook signature)
    """Hook run after ``anomalib_faprompt.models`` loaded (which has imported ``anomalib.models``)."""
    publish()
