"""Errors in what the user gave (files, data, checkpoints, arguments), as opposed to errors of the code.

Their messages name the file or argument and say what to do. anomalib's command line, for this package's models,
prints such an error as its last line and exits with status 2, without a traceback (:mod:`.integration.cli`).
Each also is the built-in error it used to be (``ValueError``, ``FileNotFoundError``, ``FileExistsError``,
``ModuleNotFoundError``).
"""

from __future__ import annotations

import sys

__all__ = [
    "ExistingOutputError",
    "InputError",
    "InvalidInputError",
    "MissingInputError",
    "MissingPackageError",
    "exit_with",
]


class InputError(Exception):
    """Something the user gave is wrong; the message says what and what to do."""

    exit_code = 2  # of the command line that reports it


class InvalidInputError(InputError, ValueError):
    """A file, data set or argument that exists but cannot be used as it is."""


class MissingInputError(InputError, FileNotFoundError):
    """A file or folder that the user named does not exist."""


class ExistingOutputError(InputError, FileExistsError):
    """A file the package would write already exists; it is kept, and the message says where to write instead."""


class MissingPackageError(InputError, ModuleNotFoundError):
    """An optional package that what was asked for needs is not installed; the message names it."""


def exit_with(error: BaseException, what: str) -> None:
    """Print ``what`` and the package's error as the last line(s); exit with the error's ``exit_code`` (else 2).

    An error re-raised from a ``DataLoader`` worker carries the worker's traceback in its message: only its
    last line, the error itself, is printed.
    """
    message = f"{type(error).__name__}: {error}"
    if "Original Traceback" in message:
        message = message.rstrip().splitlines()[-1]
    print(f"{what}:", file=sys.stderr)  # noqa: T201
    print(message, file=sys.stderr)  # noqa: T201
    raise SystemExit(getattr(error, "exit_code", 2)) from None
