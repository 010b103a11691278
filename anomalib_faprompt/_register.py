"""Make anomalib resolve this package's models by their short names (``--model FAPrompt``).

anomalib has no plugin registry: its CLI resolves ``--model NAME`` among classes already imported,
and ``anomalib.models.get_model`` looks names up on ``anomalib.models``. The file
``anomalib_faprompt_models.pth``, installed into site-packages, imports this module at interpreter
start-up. It only installs an import finder (no other import): when ``anomalib.models`` is first
imported, the finder lets it load as usual and then adds this package's models to it. When this package
is what imports ``anomalib.models`` (``from anomalib_faprompt import FAPrompt`` first), its models are
not importable yet; ``anomalib_faprompt.models`` then calls :func:`publish` when its import completes.
"""

import sys

MODEL_NAMES = ("FAPrompt", "AnomalyCLIP")


def publish() -> None:
    """Set this package's models on ``anomalib.models``, once both modules are imported."""
    module = sys.modules.get("anomalib.models")
    models = sys.modules.get("anomalib_faprompt.models")
    if module is None or models is None:
        return
    for name in MODEL_NAMES:
        if hasattr(models, name):
            setattr(module, name, getattr(models, name))
            if name not in getattr(module, "__all__", []):
                module.__all__ = [*getattr(module, "__all__", []), name]


def _add_models() -> None:
    """Import this package's models and publish them on ``anomalib.models``.

    When this package is itself being imported (it imports ``anomalib.models``), importing its models here
    would be circular: they publish themselves at the end of ``anomalib_faprompt.models`` instead.
    """
    if "anomalib_faprompt.models" in sys.modules or "anomalib_faprompt.components" in sys.modules:
        publish()
        return
    try:
        from anomalib_faprompt import models  # noqa: F401  (publishes itself when its import completes)
    except Exception as error:  # noqa: BLE001  (a broken plugin must never break anomalib itself)
        import warnings

        warnings.warn(f"anomalib_faprompt models not registered with anomalib: {error!r}", stacklevel=2)
        return
    publish()


class _Loader:
    """Wraps the real loader of ``anomalib.models`` and registers the models after it ran."""

    def __init__(self, loader: object) -> None:
        self._loader = loader

    def __getattr__(self, name: str) -> object:
        return getattr(self._loader, name)

    def create_module(self, spec: object) -> object:
        return self._loader.create_module(spec)

    def exec_module(self, module: object) -> None:
        self._loader.exec_module(module)
        _add_models()


class _Finder:
    """One-shot meta-path finder for ``anomalib.models``."""

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> object:
        if fullname != "anomalib.models":
            return None
        sys.meta_path.remove(self)
        for finder in sys.meta_path:
            find_spec = getattr(finder, "find_spec", None)
            spec = find_spec(fullname, path, target) if find_spec else None
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _Loader(spec.loader)
                return spec
        return None


def install() -> None:
    """Install the finder, unless ``anomalib.models`` is already imported (then register at once)."""
    if "anomalib.models" in sys.modules:
        _add_models()
    elif not any(isinstance(finder, _Finder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


install()
