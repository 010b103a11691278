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
    "error_text",
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


def error_text(error: BaseException) -> str:
    """``<type>: <message>`` of an error; of one re-raised from a ``DataLoader`` worker, its last line alone.

    Such an error carries the worker's traceback in its message; its last line is the error itself.
    """
    message = f"{type(error).__name__}: {error}"
    if "Original Traceback" in message:
        message = message.rstrip().splitlines()[-1]
    return message


def exit_with(error: BaseException, what: str) -> None:
    """Print ``what`` and :func:`error_text` of the error as the last lines; exit with its ``exit_code`` (else 2)."""
    print(f"{what}:", file=sys.stderr)  # noqa: T201
    print(error_text(error), file=sys.stderr)  # noqa: T201
    raise SystemExit(getattr(error, "exit_code", 2)) from None
