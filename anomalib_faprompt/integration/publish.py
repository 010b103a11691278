"""``FAPrompt`` and ``AnomalyCLIP`` on ``anomalib.models``: ``--model FAPrompt``, ``get_model``, ``list_models``.

anomalib's CLI resolves ``--model NAME`` among the imported subclasses of ``AnomalibModule``;
``anomalib.models.get_model`` looks a config's ``class_path`` up on ``anomalib.models`` and a plain name among
the direct subclasses of ``AnomalibModule``, which ``list_models`` lists. This package's models derive from a
shared base class, which ``list_models`` would list as a model too.

Whatever is imported first, the hooks below run: after ``anomalib.models`` has loaded, it gets the models as
attributes (importing them, unless this package's own code is what is importing ``anomalib.models``: then on
first access, through a module ``__getattr__``, or when ``anomalib_faprompt.models`` has loaded), and its
``list_models`` and name look-up know them.
"""

from __future__ import annotations

import sys
from typing import Any

from anomalib_faprompt.integration.patching import patching

MODEL_NAMES = ("FAPrompt", "AnomalyCLIP")


def _classes() -> dict[str, type]:
    """The package's model classes, importing them if needed (not while the package itself imports anomalib)."""
    models = sys.modules.get("anomalib_faprompt.models")
    if models is None or not all(hasattr(models, name) for name in MODEL_NAMES):
        if _package_is_importing():
            return {}
        import anomalib_faprompt.models as models
    return {name: getattr(models, name) for name in MODEL_NAMES}


def publish(module: Any) -> None:
    """Make ``anomalib.models`` know the models: attributes (set now or on first access), lookups, ``__all__``."""
    if getattr(module.list_models, "_anomalib_faprompt", False):
        return
    with patching("publishing FAPrompt and AnomalyCLIP on anomalib.models") as patch:
        if patch is None:
            return
        patch.set(module, "__all__", [*module.__all__, *(name for name in MODEL_NAMES if name not in module.__all__)])
        patch.set(module, "__getattr__", _module_getattr(module))
        patch.set(module, "list_models", _list_models(module.list_models, module))
        patch.set(module, "_get_model_class_by_name", _get_model_class(module._get_model_class_by_name))
        set_classes(module)


def set_classes(module: Any) -> None:
    """Set the model classes as attributes of ``anomalib.models`` if they can be imported now."""
    for name, model_class in _classes().items():
        setattr(module, name, model_class)


def _module_getattr(module: Any) -> Any:
    """``anomalib.models.FAPrompt`` before the classes were set (the package imported anomalib first)."""

    def __getattr__(name: str) -> Any:  # noqa: N807  (PEP 562 module attribute hook)
        if name in MODEL_NAMES:
            classes = _classes()
            if name in classes:
                set_classes(module)
                return classes[name]
        msg = f"module {module.__name__!r} has no attribute {name!r}"
        raise AttributeError(msg)

    return __getattr__


def _list_models(original: Any, module: Any) -> Any:
    """The ``list_models`` of anomalib, with this package's models instead of their shared base class."""
    from anomalib.utils.path import convert_to_snake_case, convert_to_title_case

    convert = {"snake": convert_to_snake_case, "title": convert_to_title_case, "pascal": lambda name: name}

    def list_models(case: str = "snake") -> set[str]:
        names, classes = original(case), _classes()
        package_bases = {
            cls.__name__
            for cls in module.AnomalibModule.__subclasses__()
            if cls.__module__.startswith("anomalib_faprompt.") and cls.__name__ not in MODEL_NAMES
        }
        return (names - {convert[case](name) for name in package_bases}) | {convert[case](name) for name in classes}

    list_models.__doc__ = original.__doc__
    list_models._anomalib_faprompt = True  # noqa: SLF001
    return list_models


def _get_model_class(original: Any) -> Any:
    """The ``_get_model_class_by_name`` of anomalib, also finding this package's models (``get_model("FAPrompt")``)."""
    from anomalib.utils.path import convert_snake_to_pascal_case

    def get_model_class_by_name(name: str) -> type:
        wanted = convert_snake_to_pascal_case(name).lower()
        for model_name, model_class in _classes().items():
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


def on_anomalib_models(module: Any) -> None:
    """Hook run after ``anomalib.models`` loaded: publish (importing the models, unless the package is importing)."""
    publish(module)


def on_package_models(module: Any) -> None:  # noqa: ARG001  (hook signature)
    """Hook run after ``anomalib_faprompt.models`` loaded (which has imported ``anomalib.models``)."""
    anomalib_models = sys.modules.get("anomalib.models")
    if anomalib_models is not None:
        publish(anomalib_models)
        set_classes(anomalib_models)
