"""Make anomalib resolve this package's models by their short names (``--model FAPrompt``).

anomalib has no plugin registry: its CLI resolves ``--model NAME`` among classes already imported,
and ``anomalib.models.get_model`` (used by ``anomalib benchmark``) looks names up on ``anomalib.models``.
The file ``anomalib_faprompt_models.pth``, installed into site-packages, imports this module at
interpreter start-up. It only installs an import finder (no other import): when ``anomalib.models`` is
first imported, the finder lets it load as usual and then adds this package's models to it; when
anomalib's benchmark job module is imported, it fixes two things there so that the benchmark runs
zero-shot models and gathers the results of different models into one table
(see :mod:`anomalib_faprompt.benchmark`). When this package is what imports ``anomalib.models``
(``from anomalib_faprompt import FAPrompt`` first), its models are not importable yet;
``anomalib_faprompt.models`` then calls :func:`publish` when its import completes.
"""

import sys

MODEL_NAMES = ("FAPrompt", "AnomalyCLIP")
BENCHMARK_JOB_MODULE = "anomalib.pipelines.benchmark.job"


def _warn(what: str, error: Exception) -> None:
    import warnings

    warnings.warn(f"anomalib_faprompt: {what}: {error!r}", stacklevel=3)


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


def _add_models(module: object) -> None:  # noqa: ARG001  (hook signature; publish() finds the module)
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
        _warn("models not registered with anomalib", error)
        return
    publish()


def _patch_benchmark_job(module: object) -> None:
    """Let anomalib's benchmark run zero-shot models and gather the rows of different models."""
    try:
        from anomalib_faprompt.benchmark import patch_benchmark_job
    except Exception as error:  # noqa: BLE001  (a broken plugin must never break anomalib itself)
        _warn("anomalib's benchmark is not patched for zero-shot models", error)
        return
    patch_benchmark_job(module)


HOOKS = {  # module name -> function run on the module after it loaded
    "anomalib.models": _add_models,
    BENCHMARK_JOB_MODULE: _patch_benchmark_job,
}


class _Loader:
    """Wraps the real loader of a module and runs a hook on the module after it ran."""

    def __init__(self, loader: object, hook: object) -> None:
        self._loader = loader
        self._hook = hook

    def __getattr__(self, name: str) -> object:
        return getattr(self._loader, name)

    def create_module(self, spec: object) -> object:
        return self._loader.create_module(spec)

    def exec_module(self, module: object) -> None:
        self._loader.exec_module(module)
        self._hook(module)


class _Finder:
    """Meta-path finder that wraps the loaders of the hooked modules, each once, then removes itself."""

    def __init__(self, pending: dict[str, object]) -> None:
        self._pending = pending

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> object:
        hook = self._pending.pop(fullname, None)
        if hook is None:
            return None
        if not self._pending:
            sys.meta_path.remove(self)
        for finder in sys.meta_path:
            find_spec = getattr(finder, "find_spec", None) if finder is not self else None
            spec = find_spec(fullname, path, target) if find_spec else None
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _Loader(spec.loader, hook)
                return spec
        return None


def install() -> None:
    """Run the hooks of modules already imported; install the finder for the others."""
    pending = {}
    for name, hook in HOOKS.items():
        if name in sys.modules:
            hook(sys.modules[name])
        else:
            pending[name] = hook
    if pending and not any(isinstance(finder, _Finder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Finder(pending))


install()
