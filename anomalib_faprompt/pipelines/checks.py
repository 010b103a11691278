"""Checks of a benchmark config, before any model is built: one line naming what is missing or unusable.

anomalib's job generator builds every model while it yields the jobs, so one model that cannot be built stops the
whole benchmark, finished jobs and ``results.csv`` included, and anomalib's MVTecAD and Visa datamodules download
the dataset into a mistyped folder. :func:`check_config` names those problems first.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

from anomalib_faprompt.errors import InputError, InvalidInputError, MissingInputError
from anomalib_faprompt.names import MODEL_NAMES

__all__ = [
    "MissingFilesError",
    "check_config",
    "class_name",
    "jobs",
    "missing_files",
    "names_package_models",
    "unknown_arguments",
    "unusable_data",
    "unusable_weights",
]

FILE_ARGUMENTS = ("weights", "pretrained")


class MissingFilesError(MissingInputError):
    """Files named by a benchmark config for this package's models do not exist."""


def jobs(args: dict[str, Any]) -> list[dict[str, Any]]:
    """The job containers of a benchmark config (``model``, ``data``, ``seed`` each)."""
    from anomalib.pipelines.components.utils import get_iterator_from_grid_dict  # noqa: PLC0415

    return list(get_iterator_from_grid_dict(args.get("benchmark") or {}))


def class_name(spec: Any) -> str:  # noqa: ANN401  (a config value: a class path or a dict)
    """The class name of a job's ``model`` or ``data``: a class path or a ``{"class_path": ...}`` dict."""
    class_path = spec if isinstance(spec, str) else (spec or {}).get("class_path", "")
    return str(class_path).rsplit(".", 1)[-1]


def missing_files(args: dict[str, Any]) -> dict[str, list[str]]:
    """Files named by ``weights`` or ``pretrained`` (a path) of this package's models that do not exist.

    Args:
        args: The benchmark config.

    Returns:
        Missing path -> the models naming it.
    """
    missing: dict[str, list[str]] = {}
    for job in jobs(args):
        model = job.get("model") or {}
        name = class_name(model)
        if name not in MODEL_NAMES or not isinstance(model, dict):
            continue
        for argument in FILE_ARGUMENTS:
            value = (model.get("init_args") or {}).get(argument)
            is_path = isinstance(value, str) and (argument == "weights" or "/" in value or Path(value).suffix)
            if is_path and not Path(value).expanduser().is_file():
                models = missing.setdefault(value, [])
                if f"{name}.{argument}" not in models:
                    models.append(f"{name}.{argument}")
    return missing


def _hyperparameters(cls: type, init_args: dict[str, Any]) -> dict[str, Any]:
    """The arguments a class built with ``init_args`` would get: its constructor's defaults, then those."""
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(cls.__init__).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }
    return {**defaults, **init_args}


def unusable_weights(args: dict[str, Any]) -> list[str]:
    """Why ``weights`` files of this package's models cannot be loaded by their jobs' models.

    A file is unusable when it cannot be read, holds the other model, or was trained with other structural
    hyperparameters (backbone, sizes, prompt lengths, ...) than a job's ``init_args`` and the model's defaults give.
    Checked before any model is built: anomalib's job generator builds every model while it yields the jobs, so
    one that cannot be built would stop the whole benchmark, finished jobs and ``results.csv`` included.

    Args:
        args: The benchmark config.

    Returns:
        One message per unusable file and configuration (files that do not exist are :func:`missing_files`).
    """
    from anomalib_faprompt.models.inspection import inspect_weights, reading_once  # noqa: PLC0415

    problems: list[str] = []
    refused: set[tuple[str, str]] = set()  # files that cannot be read, or are of the other model: named once
    seen = set()
    with reading_once():
        for job in jobs(args):
            model = job.get("model")
            name = class_name(model)
            init_args = dict((model.get("init_args") or {}) if isinstance(model, dict) else {})
            weights = init_args.get("weights")
            key = (name, json.dumps(init_args, sort_keys=True, default=str))
            if name not in MODEL_NAMES or not isinstance(weights, str) or key in seen or (name, weights) in refused:
                continue
            seen.add(key)
            if not Path(weights).expanduser().is_file():
                continue
            model_class = _class_of("model", name)
            try:
                file = inspect_weights(model_class, weights, f"{name}.weights")
            except InputError as error:
                refused.add((name, weights))
                problems.append(str(error))
                continue
            hparams = _hyperparameters(model_class, init_args)
            hparams.update(model_class.resolved_defaults(hparams, authors_file=file.is_authors))
            try:
                file.check_against(model_class, hparams)
            except InputError as error:
                if str(error) not in problems:
                    problems.append(str(error))
    return problems


def _class_of(part: str, name: str) -> type | None:
    """The class a job's ``model`` or ``data`` names (this package's models, anomalib's), or ``None``."""
    if part == "model" and name in MODEL_NAMES:
        from anomalib_faprompt import models  # noqa: PLC0415

        return getattr(models, name)
    import anomalib.data  # noqa: PLC0415
    import anomalib.models  # noqa: PLC0415

    found = getattr(anomalib.models if part == "model" else anomalib.data, name, None)
    return found if isinstance(found, type) else None


def unknown_arguments(args: dict[str, Any]) -> list[str]:
    """The ``init_args`` a job's model or data class does not have (anomalib's generator would stop on them).

    Args:
        args: The benchmark config.

    Returns:
        One message per class and unknown argument set.
    """
    problems = []
    for job in jobs(args):
        for part in ("model", "data"):
            spec = job.get(part)
            if not isinstance(spec, dict):
                continue
            name, init_args = class_name(spec), spec.get("init_args") or {}
            cls = _class_of(part, name)
            if cls is None:
                continue
            parameters = inspect.signature(cls.__init__).parameters
            if any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters.values()):
                continue
            unknown = sorted(set(init_args) - set(parameters))
            if unknown:
                message = (
                    f"{name} has no argument {', '.join(map(repr, unknown))} ({part}.init_args); its arguments are "
                    f"{', '.join(name for name in parameters if name != 'self')}."
                )
                if message not in problems:
                    problems.append(message)
    return problems


def unusable_data(args: dict[str, Any]) -> list[str]:
    """Why the MVTecAD or Visa data of the jobs cannot be read, before anomalib's datamodule would download into it.

    A root that does not exist (unless named like anomalib's download folder), an existing root without category
    folders, or a category that is not under an existing root that is not a download folder: anomalib's
    ``prepare_data`` would download the dataset there (and offline, every job fails with a ``URLError``).

    Args:
        args: The benchmark config.

    Returns:
        One message per problem.
    """
    from anomalib_faprompt.data.sources import check_category  # noqa: PLC0415

    problems = []
    for job in jobs(args):
        data = job.get("data")
        dataset = class_name(data)
        if not isinstance(data, dict) or dataset not in ("MVTecAD", "Visa"):
            continue
        init_args = _hyperparameters(_class_of("data", dataset), data.get("init_args") or {})
        try:
            check_category(dataset, init_args["root"], str(init_args["category"]), "data.init_args.root")
        except InputError as error:
            if str(error) not in problems:
                problems.append(str(error))
    return problems


def names_package_models(args: dict[str, Any]) -> bool:
    """Whether a job of the benchmark config runs one of this package's models."""
    return any(class_name(job.get("model")) in MODEL_NAMES for job in jobs(args))


def check_config(args: dict[str, Any], path: object) -> None:
    """Refuse, naming every problem, a benchmark config whose jobs cannot all run.

    Args:
        args: The benchmark config.
        path: Its file, for the message.

    Raises:
        MissingFilesError: Files named by ``weights`` or ``pretrained`` do not exist.
        InvalidInputError: Unknown ``init_args``, data that is not where the config says, unusable ``weights``.
    """
    missing = missing_files(args)
    if missing:
        names = ", ".join(f"{file} ({', '.join(models)})" for file, models in missing.items())
        msg = (
            f"benchmark config {path}: missing files: {names}. Train the models and copy their checkpoints there "
            "first (docs/benchmark.md); nothing was run."
        )
        raise MissingFilesError(msg)
    unusable = unknown_arguments(args) + unusable_data(args) + unusable_weights(args)
    if unusable:
        msg = f"benchmark config {path}: {' '.join(unusable)} Nothing was run."
        raise InvalidInputError(msg)
