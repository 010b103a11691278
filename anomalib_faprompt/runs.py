"""Run folders that never replace an earlier run's files: ``<root>/v<N>``, a relative ``latest``, undone on failure.

A run that stops before its end (an error, Ctrl-C) puts ``latest`` back; its folder is removed if the run wrote
nothing there, and otherwise kept with a file :data:`INCOMPLETE` that says what stopped it.

:mod:`anomalib_faprompt.integration.workspace` gives this package's runs in anomalib's ``Engine`` these folders.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from anomalib_faprompt.errors import InvalidInputError

__all__ = [
    "INCOMPLETE",
    "RunFolder",
    "check_writable",
    "checkpoint_run_dir",
    "launcher_run_dir",
    "new_version_dir",
    "share_run_dir",
]

logger = logging.getLogger(__name__)

_VERSION = re.compile(r"^v(\d+)$")
# "<pid of the process that chose it><os.pathsep><run folder>": read by the processes that process launches.
RUN_DIR_VARIABLE = "ANOMALIB_FAPROMPT_RUN_DIR"
# What a run writes into its folder before any of its work: a folder holding nothing else is removed on failure.
BEFORE_WORK = {"config.yaml"}
# The file that marks the folder of a run that stopped before its end: the other files there are partial.
INCOMPLETE = "INCOMPLETE"


def check_writable(folder: str | Path, argument: str) -> None:
    """Refuse, in one line naming it, a results folder that is a file or cannot be created or written.

    Raises:
        InvalidInputError: The folder (or a parent) is a file, or cannot be written.
    """
    path = Path(folder).expanduser().absolute()
    existing = next(parent for parent in (path, *path.parents) if parent.exists())
    problem = None
    if not existing.is_dir():
        problem = f"'{existing}' is a file"
    elif not os.access(existing, os.W_OK | os.X_OK):
        problem = f"'{existing}' cannot be written"
    if problem is not None:
        msg = f"Results folder '{folder}' ({argument}): {problem}. Pass a folder that can be written."
        raise InvalidInputError(msg)


def new_version_dir(root: Path) -> Path:
    """Create and return ``root/v<N>``, one past the highest version folder there; ``latest`` is not touched."""
    root.mkdir(parents=True, exist_ok=True)
    numbers = [int(match.group(1)) for child in root.iterdir() if (match := _VERSION.match(child.name))]
    number = max(numbers, default=-1) + 1
    while True:
        folder = root / f"v{number}"
        try:
            folder.mkdir()
        except FileExistsError:
            number += 1
        else:
            return folder


def checkpoint_run_dir(checkpoint: str | Path) -> Path:
    """The run folder of a checkpoint: ``<run>`` for ``<run>/weights/lightning/<file>``, else the file's folder."""
    folder = Path(checkpoint).resolve().parent
    if folder.name == "lightning" and folder.parent.name == "weights":
        return folder.parent.parent
    return folder


def point_latest(latest: Path, target: str) -> None:
    """Make the link ``latest`` point at ``target`` (as written), replacing it in one step."""
    temporary = latest.with_name(f".latest.{os.getpid()}")
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(target, target_is_directory=True)
    temporary.replace(latest)


@dataclass
class RunFolder:
    """A run's new version folder, and where ``latest`` pointed before (``moved``: a training run moved it)."""

    folder: Path
    moved: bool = False
    previous: str | None = None
    created: tuple[Path, ...] = ()  # the folders above it that this run created, deepest first

    @classmethod
    def create(cls, root: Path, move_latest: bool) -> RunFolder:
        """A new ``root/v<N>``; with ``move_latest``, ``root/latest`` points at it by a relative link."""
        created = tuple(folder for folder in (root, *root.parents) if not folder.exists())
        run = cls(new_version_dir(root), moved=move_latest, created=created)
        latest = root / "latest"
        if move_latest:
            run.previous = os.readlink(latest) if latest.is_symlink() else None
            point_latest(latest, run.folder.name)
        return run

    def undo(self, stopped: str) -> None:
        """After a run that stopped: ``latest`` back; the folder removed if it holds no work, else marked incomplete.

        Args:
            stopped: What stopped, and what stopped it, e.g. "`test` stopped by Ctrl-C (KeyboardInterrupt)".
        """
        latest = self.folder.parent / "latest"
        if self.moved and latest.is_symlink() and latest.resolve() == self.folder.resolve():
            if self.previous is None:
                latest.unlink()
            else:
                point_latest(latest, self.previous)
        written = {path.relative_to(self.folder).as_posix() for path in self.folder.rglob("*") if path.is_file()}
        if self.folder.is_dir() and written <= BEFORE_WORK:
            logger.info("The run failed before writing anything: %s is removed again.", self.folder)
            shutil.rmtree(self.folder)
            for folder in self.created:
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
        elif self.folder.is_dir():
            (self.folder / INCOMPLETE).write_text(f"{stopped}: the files in this folder are partial.\n")
            logger.warning("%s: what it wrote stays in %s, marked by the file %s.", stopped, self.folder, INCOMPLETE)


def launcher_run_dir() -> Path | None:
    """The run folder chosen by the process that launched this one as another rank, or ``None``."""
    pid, _, folder = os.environ.get(RUN_DIR_VARIABLE, "").partition(os.pathsep)
    if int(os.environ.get("LOCAL_RANK", "0")) > 0 and pid == str(os.getppid()) and folder:
        return Path(folder)
    return None


def share_run_dir(run_dir: Path) -> None:
    """Hand ``run_dir`` down to the ranks this process will launch (they inherit its environment)."""
    os.environ[RUN_DIR_VARIABLE] = f"{os.getpid()}{os.pathsep}{run_dir}"
