"""File names that never replace an earlier run's files in a shared folder."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = ["unused_stem"]


def unused_stem(folder: Path, stem: str, endings: Sequence[str]) -> str:
    """``stem``, else ``stem_1``, ``stem_2``, ...: the first for which no ``folder/<stem><ending>`` exists.

    Args:
        folder: The folder the files go to.
        stem: The preferred name, without its ending.
        endings: Every ending a file of this name may get (e.g. ``".csv"`` and ``".md"``).

    Returns:
        The stem to write under.
    """
    name, number = stem, 0
    while any((folder / f"{name}{ending}").exists() for ending in endings):
        number += 1
        name = f"{stem}_{number}"
    return name
