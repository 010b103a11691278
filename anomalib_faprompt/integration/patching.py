"""All-or-nothing patches of anomalib, for the versions they were written against."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# The anomalib versions whose internals the integration patches (the dependency bound in pyproject.toml).
SUPPORTED_ANOMALIB = ((2, 7), (2, 8))


def anomalib_supported() -> bool:
    """Whether the installed anomalib is in ``[2.7, 2.8)``, the versions the patches were written against."""
    import anomalib  # noqa: PLC0415  (the hook runs before anomalib is imported)

    try:
        version = tuple(int(part) for part in anomalib.__version__.split(".")[:2])
    except ValueError:
        return False
    return SUPPORTED_ANOMALIB[0] <= version < SUPPORTED_ANOMALIB[1]


class Patch:
    """Collects attribute replacements; :meth:`undo` restores every one of them."""

    def __init__(self) -> None:
        self._undo: list[tuple[Any, str, Any, bool]] = []

    def set(self, owner: object, name: str, value: object) -> None:
        """Replace ``owner.name`` by ``value`` (recorded for :meth:`undo`)."""
        had, old = name in vars(owner), vars(owner).get(name)
        setattr(owner, name, value)
        self._undo.append((owner, name, old, had))

    def undo(self) -> None:
        """Restore every replaced attribute, last first."""
        for owner, name, old, had in reversed(self._undo):
            if had:
                setattr(owner, name, old)
            else:
                delattr(owner, name)
        self._undo.clear()


@contextmanager
def patching(what: str) -> Iterator[Patch | None]:
    """Yield a :class:`Patch` for a supported anomalib, else ``None`` and one warning.

    If the block raises, every replacement made in it is undone and one warning names ``what``: anomalib is
    left exactly as it was.
    """
    if not anomalib_supported():
        import anomalib  # noqa: PLC0415  (the hook runs before anomalib is imported)

        warnings.warn(
            f"anomalib_faprompt: {what} not applied: written for anomalib >=2.7,<2.8, found {anomalib.__version__}",
            stacklevel=3,
        )
        yield None
        return
    patch = Patch()
    try:
        yield patch
    except Exception as error:  # noqa: BLE001  (a broken plugin must never break anomalib itself)
        patch.undo()
        warnings.warn(f"anomalib_faprompt: {what} not applied, anomalib left as it was: {error!r}", stacklevel=3)
