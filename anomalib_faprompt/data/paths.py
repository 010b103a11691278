r"""Names and paths read from users' files that the package turns into paths, checked before any is used.

A category name becomes a folder (``images/<category>/`` of a run's heat-maps): it must be one folder name.
An index's image and mask paths are read relative to the index's folder: they must stay inside it, as written.
Both rules are lexical and the same on every system (``\\`` counts as a separator, a drive as an absolute path);
symbolic links inside a root are followed, as the files of a dataset may be links.
"""

from __future__ import annotations

from pathlib import PurePosixPath, PureWindowsPath

__all__ = ["folder_name_problem", "path_problem"]

_SEPARATORS = ("/", "\\", ":")


def folder_name_problem(name: str) -> str | None:
    r"""Why ``name`` cannot be one folder name inside another folder; ``None`` when it can.

    Refused: ``""``, ``"."``, ``".."``, a name holding ``/``, ``\\`` or ``:`` (separators and drives somewhere), and
    control characters (a line break, say).
    """
    if name in ("", ".", ".."):
        return f"{name!r} names no folder of its own"
    separators = [separator for separator in _SEPARATORS if separator in name]
    if separators:
        return f"holds {' and '.join(map(repr, separators))}, which a folder name cannot hold"
    if not name.isprintable():
        return "holds a control character"
    return None


def path_problem(path: str) -> str | None:
    """Why a path read relative to a root may leave it; ``None`` when it stays inside.

    Refused: an absolute path or one with a drive (POSIX or Windows), and a ``..`` part anywhere (``a/../b`` too:
    through a linked folder, ``..`` may lead anywhere).
    """
    if PurePosixPath(path).is_absolute():
        return "is absolute"
    if PureWindowsPath(path).anchor:
        return f"starts with {PureWindowsPath(path).anchor!r}, a drive or root"
    if ".." in PureWindowsPath(path).parts:
        return "holds '..', which may lead out of it"
    return None
