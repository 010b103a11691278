"""Errors in what the user gave (files, data, checkpoints, arguments), as opposed to errors of the code.

Their messages name the file or argument and say what to do. anomalib's command line, for this package's models,
prints such an error as its last line and exits with status 2, without a traceback (:mod:`.integration.cli`).
Each also is the built-in error it used to be (``ValueError``, ``FileNotFoundError``, ``FileExistsError``,
``ModuleNotFoundError``).
"""

from __future__ import annotations

__all__ = ["ExistingOutputError", "InputError", "InvalidInputError", "MissingInputError", "MissingPackageError"]


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
