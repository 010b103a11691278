"""The start-up hook: run this package's anomalib integration when anomalib's modules load.

anomalib has no plugin registry. ``anomalib_faprompt_models.pth`` (in site-packages) imports ``anomalib_faprompt``
at start-up, which calls :func:`install` (standard library only). It puts an import finder first on
``sys.meta_path`` that runs a hook of :data:`HOOKS` after its module executes (at once for one already imported).
``ANOMALIB_FAPROMPT_NO_HOOK=1`` switches all of it off; the models then work by their class paths only.
"""

import os
import sys

SWITCH = "ANOMALIB_FAPROMPT_NO_HOOK"

# module name -> (module of this package holding the hook, function name); the hook gets the loaded module.
HOOKS = {
    "anomalib.models": ("anomalib_faprompt.integration.publish", "on_anomalib_models"),
    "anomalib_faprompt.models": ("anomalib_faprompt.integration.publish", "on_package_models"),
    "anomalib.cli.cli": ("anomalib_faprompt.integration.cli", "patch_cli"),
    "anomalib.engine.engine": ("anomalib_faprompt.integration.workspace", "patch_engine"),
}
# module name -> (module, function name) of a function run just before the module executes.
BEFORE = {
    "anomalib.models": ("anomalib_faprompt.integration.quiet", "importing_anomalib_models"),
}


def switched_off() -> bool:
    """Whether ``ANOMALIB_FAPROMPT_NO_HOOK`` is set (to anything but ``""`` or ``"0"``)."""
    return os.environ.get(SWITCH, "") not in {"", "0"}


def _call(target: tuple[str, str], *args: object) -> object:
    """Import ``target`` lazily and call it; a failure becomes one warning and never breaks the import."""
    try:
        module = __import__(target[0], fromlist=[target[1]])
        return getattr(module, target[1])(*args)
    except Exception as error:  # noqa: BLE001  (a broken plugin must never break anomalib itself)
        import warnings  # noqa: PLC0415  (only on a failure: the hook stays cheap)

        warnings.warn(
            f"anomalib_faprompt: {target[0]}.{target[1]} failed, anomalib is left as it was: {error!r}", stacklevel=3
        )
        return None


class _Loader:
    """Wraps the real loader of a module: runs its ``BEFORE`` function, the module, then its hook."""

    def __init__(self, loader: object, name: str, finder: "_Finder") -> None:
        self._loader = loader
        self._name = name
        self._finder = finder

    def __getattr__(self, name: str) -> object:
        return getattr(self._loader, name)

    def exec_module(self, module: object) -> None:
        self._finder.done(self._name)
        if self._name in BEFORE:
            _call(BEFORE[self._name])
        try:
            self._loader.exec_module(module)
        except BaseException:
            self._finder.retry(self._name)  # a failed import leaves no module: hook the next try
            raise
        _call(HOOKS[self._name], module)


class _Finder:
    """Meta-path finder that wraps the loaders of the hooked modules until each has been executed once.

    A ``find_spec`` alone (``importlib.util.find_spec``) does not use a hook up: only the execution does.
    """

    def __init__(self, pending: set[str]) -> None:
        self._pending = pending

    def done(self, name: str) -> None:
        self._pending.discard(name)
        if not self._pending and self in sys.meta_path:
            sys.meta_path.remove(self)

    def retry(self, name: str) -> None:
        self._pending.add(name)
        if self not in sys.meta_path:
            sys.meta_path.insert(0, self)

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> object:
        if fullname not in self._pending:
            return None
        for finder in sys.meta_path:
            find_spec = getattr(finder, "find_spec", None) if finder is not self else None
            spec = find_spec(fullname, path, target) if find_spec else None
            if spec is not None:
                if spec.loader is not None and not isinstance(spec.loader, _Loader):
                    spec.loader = _Loader(spec.loader, fullname, self)
                return spec
        return None


_installed = False


def install() -> None:
    """Run the hooks of modules already imported and install the finder for the others (once; not when off)."""
    global _installed  # noqa: PLW0603  (once per process)
    if _installed or switched_off():
        return
    _installed = True
    pending = set()
    for name in HOOKS:
        if name in sys.modules:
            _call(HOOKS[name], sys.modules[name])
        else:
            pending.add(name)
    if pending:
        sys.meta_path.insert(0, _Finder(pending))
