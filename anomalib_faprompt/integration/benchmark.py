"""Fixes that let anomalib 2.7's benchmark pipeline compare zero-shot models of different kinds.

The start-up hook (:mod:`anomalib_faprompt.integration.hook`) applies them when anomalib's benchmark modules
are imported; they change behaviour only while a benchmark job or the benchmark pipeline runs:

1. ``BenchmarkJob.run`` calls ``engine.fit(model, datamodule)``, which passes the datamodule in the place of
   the training dataloaders. Lightning's ``Trainer.fit`` accepts that, but anomalib's ``Engine.fit`` hands
   zero-shot models (WinClip, AnomalyVFM; FAPrompt and AnomalyCLIP with trained ``weights``) to
   ``Trainer.validate`` without it, and the job fails. While a job runs, the job module's ``Engine`` is
   :class:`BenchmarkEngine`, which takes a datamodule in that place as the datamodule, as Lightning does
   (any other call is ``Engine.fit`` unchanged). Outside a job run the module's ``Engine`` is anomalib's.
2. ``BenchmarkJob.collect`` builds the table from the keys of the first job's result, so models with
   different ``init_args`` or test metrics stop it with a ``KeyError`` and no ``results.csv`` is written.
   :func:`collect` gives the same table when all keys agree, and leaves a cell empty where a job has no such key.
   A job of the config without a result (it failed, or did not run) gets a row of its settings with no metric
   and ``status`` "no result": the summary, ``results.csv`` and the report show the gap and mark the means.
3. The console table (one column per key, 35 of them: an empty grid at 80 columns) becomes
   :func:`summary_lines`: model x category for the AUROCs, in percent.
4. ``Benchmark.run`` first checks that the checkpoint and weights files the config names for this package's
   models exist (one line naming the missing ones, before any model is built or downloaded) and that each
   ``weights`` file is a readable checkpoint of its model, trained with the structural hyperparameters of each job
   that names it; that every ``init_args`` name exists in its class; and that MVTecAD or Visa data is where the
   config says, so that anomalib never downloads into a mistyped folder. It ends with one line naming the jobs
   that failed or did not run; the command line then exits with status 1.
5. ``Benchmark.run`` sends every log record to ``runs/pipeline.log`` by giving *each* logger the same file handler.
   A record then passes that handler once per logger on its way up (up to 5 times for anomalib's loggers), and,
   with the console handler already on the root logger, the format with time, logger and level is never set.
   While the pipeline runs, :func:`redirect_logs` writes each record once, with that format, and removes the
   file handler afterwards.
"""

from __future__ import annotations

import inspect
import json
import logging
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
from anomalib.engine import Engine
from anomalib.models import AnomalibModule
from anomalib.utils.config import flatten_dict
from lightning.pytorch import LightningDataModule

from anomalib_faprompt.errors import InputError, InvalidInputError, MissingInputError
from anomalib_faprompt.integration.patching import patching
from anomalib_faprompt.integration.quiet import quiet_command

__all__ = ["BenchmarkEngine", "MissingFilesError", "collect", "patch_job", "patch_pipeline", "summary_lines"]

PACKAGE_MODELS = ("FAPrompt", "AnomalyCLIP")
FILE_ARGUMENTS = ("weights", "pretrained")
SUMMARY_METRICS = ("image_AUROC", "pixel_AUROC")
WIDTH = 80
LOG_FILE = "runs/pipeline.log"
LOG_FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"  # the format anomalib means to set


class MissingFilesError(MissingInputError):
    """Files named by a benchmark config for this package's models do not exist."""


class BenchmarkEngine(Engine):
    """anomalib's :class:`~anomalib.engine.Engine`, taking a datamodule given as training dataloaders."""

    expects_zero_shot = True  # a job fits zero-shot models on purpose: no "trains nothing" line per job

    def fit(
        self,
        model: AnomalibModule,
        train_dataloaders: Any = None,
        val_dataloaders: Any = None,
        datamodule: LightningDataModule | None = None,
        ckpt_path: str | Path | None = None,
    ) -> None:
        """``Engine.fit``; a datamodule passed as ``train_dataloaders`` is used as ``datamodule``."""
        if datamodule is None and isinstance(train_dataloaders, LightningDataModule):
            train_dataloaders, datamodule = None, train_dataloaders
        super().fit(model, train_dataloaders, val_dataloaders, datamodule, ckpt_path)


NO_RESULT = "no result"


def _is_result_of(job: dict[str, Any], row: dict[str, Any]) -> bool:
    """Whether a result row comes from the job: every model and data setting they both name is equal."""
    keys = [key for key in job if key.startswith(("model.", "data.")) and key in row]
    return all(str(job[key]) == str(row[key]) for key in keys)


def collect(results: list[dict[str, Any]], expected: list[dict[str, Any]] | None = None) -> pd.DataFrame:
    """One row per job, one column per key of any job (in order of first appearance), empty where absent.

    Args:
        results: The result dicts of the benchmark jobs.
        expected: The job containers of the config: each job without a result gets a row of its settings, no
            metric, and ``status`` "no result", so that tables and means show the gap.

    Returns:
        The results table.
    """
    rows = [dict(result) for result in results]
    unmatched = list(range(len(rows)))
    for job in map(flatten_dict, expected or []):
        match = next((index for index in unmatched if _is_result_of(job, rows[index])), None)
        if match is None:
            rows.append({**job, "status": NO_RESULT})
        else:
            unmatched.remove(match)
    return pd.DataFrame(rows)


def _label(model: Any, category: Any) -> str:
    return f"{model}/{category}" if category is not None and not pd.isna(category) else str(model)


def summary_lines(frame: pd.DataFrame, width: int = WIDTH) -> list[str]:
    """The benchmark's console summary: per AUROC, categories x models in percent, and the mean; fits ``width``.

    A model without a value for a category shows ``-``; its mean is then over the categories it has, marked ``*``.
    Repeated jobs of a model and category (a grid over seeds) show their mean, and a note below names them.

    Args:
        frame: The collected results (one row per job).
        width: The console width to fit.

    Returns:
        The lines to print.
    """
    if frame is None or frame.empty or "model.class_path" not in frame:
        return ["benchmark: no results"]
    from anomalib_faprompt.report import model_labels  # noqa: PLC0415 (matplotlib, only once there are results)
    from anomalib_faprompt.tables import repeat_notes  # noqa: PLC0415

    categories = frame.get("data.init_args.category", pd.Series(["-"] * len(frame), index=frame.index)).fillna("-")
    frame = frame.assign(model_class=frame["model.class_path"].map(_class_name))
    frame = frame.assign(_category=categories.astype(str), _model=model_labels(frame))
    runs = frame.assign(model=frame["_model"], category=frame["_category"])  # the columns repeat_notes reads
    models = list(dict.fromkeys(frame["_model"]))
    names = list(dict.fromkeys(frame["_category"]))
    first = max(len(name) for name in [*names, "category", "mean"])
    lines, footnote, repeats = [], False, {}
    for metric in (metric for metric in SUMMARY_METRICS if metric in frame):
        values = frame.pivot_table(index="_category", columns="_model", values=metric, aggfunc="mean")
        repeats.update(dict.fromkeys(f"{metric}: {note}" for note in repeat_notes(runs, metric)))
        columns = [max(len(model), 6) for model in models]
        start = 0
        while start < len(models):  # as many model columns as fit the width
            stop = start + 1
            while stop < len(models) and first + sum(column + 2 for column in columns[start : stop + 1]) <= width:
                stop += 1
            chunk = list(zip(models[start:stop], columns[start:stop], strict=True))
            lines.append(f"{metric} (%)")
            lines.append("  ".join([f"{'category':<{first}}", *(f"{model:>{column}}" for model, column in chunk)]))
            for name in [*names, "mean"]:
                cells = []
                for model, column in chunk:
                    column_values = values[model] if model in values else pd.Series(dtype=float)
                    if name == "mean":
                        present = column_values.reindex(names).dropna()
                        text = f"{100 * present.mean():.1f}" if len(present) else "-"
                        if 0 < len(present) < len(names):
                            text, footnote = text + "*", True
                    else:
                        value = column_values.get(name)
                        text = f"{100 * value:.1f}" if value is not None and not pd.isna(value) else "-"
                    cells.append(f"{text:>{column}}")
                lines.append("  ".join([f"{name:<{first}}", *cells]))
            lines.append("")
            start = stop
    if footnote:
        lines.append("* mean over the categories with a result (a job failed or did not run)")
    lines.extend(repeats)
    lines.append("All metrics: results.csv (below); report: python -m anomalib_faprompt.report")
    return lines


def print_summary(frame: pd.DataFrame) -> None:
    """Print :func:`summary_lines` (replaces ``BenchmarkJob._print_tabular_results``)."""
    print("\n".join(summary_lines(frame)))  # noqa: T201  (the benchmark's console table)


class _RunState:
    """One benchmark run in this process: the jobs' errors, the collected table, the failed jobs."""

    def __init__(self) -> None:
        self.errors: dict[str, list[str]] = {}
        self.completed: list[str] = []  # jobs run in this process (the serial runner)
        self.collected: pd.DataFrame | None = None
        self.failed: list[str] = []
        self.expected: list[dict[str, Any]] = []  # the job containers of the config being run

    def reset(self) -> None:
        self.__init__()


STATE = _RunState()


def _reason(error: BaseException) -> str:
    """The first line of the innermost error a job's error was raised from (anomalib wraps them)."""
    while error.__cause__ is not None:
        error = error.__cause__
    return f"{type(error).__name__}: {error}".splitlines()[0]


def patch_job(module: Any) -> None:
    """Apply fixes 1 to 3 to anomalib's benchmark job module (``anomalib.pipelines.benchmark.job``)."""
    job_class = module.BenchmarkJob
    original_run, original_collect = job_class.run, job_class.collect

    def run(self: Any, task_id: int | None = None) -> dict[str, Any]:
        engine = module.Engine
        module.Engine = BenchmarkEngine
        label = _label(self.flat_cfg.get("model.class_path"), self.flat_cfg.get("data.init_args.category"))
        try:
            result = original_run(self, task_id)
        except Exception as error:
            STATE.errors.setdefault(label, []).append(_reason(error))
            raise
        finally:
            module.Engine = engine
        STATE.completed.append(label)
        return result

    def collect_results(results: list[dict[str, Any]]) -> pd.DataFrame:
        STATE.collected = collect(results, STATE.expected)
        return STATE.collected

    run.__doc__ = original_run.__doc__
    collect_results.__doc__ = original_collect.__doc__
    with patching("the fixes to anomalib's benchmark job") as patch:
        if patch is not None:
            patch.set(job_class, "run", run)
            patch.set(job_class, "collect", staticmethod(collect_results))
            patch.set(job_class, "_print_tabular_results", staticmethod(print_summary))


def _jobs(args: dict[str, Any]) -> list[dict[str, Any]]:
    """The job containers of a benchmark config (``model``, ``data``, ``seed`` each)."""
    from anomalib.pipelines.components.utils import get_iterator_from_grid_dict

    return list(get_iterator_from_grid_dict(args.get("benchmark") or {}))


def _class_name(spec: Any) -> str:
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
    for job in _jobs(args):
        model = job.get("model") or {}
        name = _class_name(model)
        if name not in PACKAGE_MODELS or not isinstance(model, dict):
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
    from anomalib_faprompt.models.authors import check_authors_model, is_authors_file  # noqa: PLC0415
    from anomalib_faprompt.models.checkpoint import (  # noqa: PLC0415
        check_is_checkpoint,
        check_model_name,
        check_structure,
        load_file,
    )

    problems: list[str] = []
    checkpoints: dict[tuple[str, str], dict[str, Any] | None] = {}
    seen = set()
    for job in _jobs(args):
        model = job.get("model")
        name = _class_name(model)
        init_args = dict((model.get("init_args") or {}) if isinstance(model, dict) else {})
        weights = init_args.get("weights")
        key = (name, json.dumps(init_args, sort_keys=True, default=str))
        if name not in PACKAGE_MODELS or not isinstance(weights, str) or key in seen:
            continue
        seen.add(key)
        if not Path(weights).expanduser().is_file():
            continue
        model_class, source = _class_of("model", name), f"{name}.weights"
        where = f"'{weights}' ({source})"
        try:
            if (name, weights) not in checkpoints:
                checkpoints[name, weights] = None
                checkpoint = load_file(model_class, weights, source)
                if is_authors_file(checkpoint):
                    # The model checks sizes, prompt texts and CLIP weights when it is built.
                    check_authors_model(name, checkpoint["prompt_learner"], where)
                    continue
                check_is_checkpoint(checkpoint, where)
                check_model_name(name, checkpoint, where)
                checkpoints[name, weights] = checkpoint
            checkpoint = checkpoints[name, weights]
            if checkpoint is not None:
                hparams = _hyperparameters(model_class, init_args)
                hparams.update(model_class.resolved_defaults(hparams, authors_file=False))
                check_structure(model_class, hparams, checkpoint, where)
        except InputError as error:
            problems.append(str(error))
    return problems


def _class_of(part: str, name: str) -> type | None:
    """The class a job's ``model`` or ``data`` names (this package's models, anomalib's), or ``None``."""
    if part == "model" and name in PACKAGE_MODELS:
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
    for job in _jobs(args):
        for part in ("model", "data"):
            spec = job.get(part)
            if not isinstance(spec, dict):
                continue
            name, init_args = _class_name(spec), spec.get("init_args") or {}
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
    for job in _jobs(args):
        data = job.get("data")
        dataset = _class_name(data)
        if not isinstance(data, dict) or dataset not in ("MVTecAD", "Visa"):
            continue
        init_args = _hyperparameters(_class_of("data", dataset), data.get("init_args") or {})
        try:
            check_category(dataset, init_args["root"], str(init_args["category"]), "data.init_args.root")
        except InputError as error:
            if str(error) not in problems:
                problems.append(str(error))
    return problems


def failed_jobs(
    args: dict[str, Any],
    collected: pd.DataFrame | None,
    errors: dict[str, list[str]],
    completed: list[str] | None = None,
) -> list[str]:
    """The jobs of the config without a result, each with its error where known.

    Args:
        args: The benchmark config.
        collected: The collected results, ``None`` when the runner stopped before collecting them.
        errors: Job label -> errors of its runs in this process.
        completed: Labels of the jobs that completed in this process (used when nothing was collected).

    Returns:
        ``"<model>/<category> (<error or 'did not run'>)"`` per job without a result.
    """
    expected = Counter(
        _label(_class_name(job.get("model")), ((job.get("data") or {}).get("init_args") or {}).get("category"))
        for job in _jobs(args)
    )
    done: Counter = Counter(completed or [])
    if collected is not None and "status" in collected:
        collected = collected[collected["status"] != NO_RESULT]
    if collected is not None and not collected.empty and "model.class_path" in collected:
        categories = collected.get("data.init_args.category", pd.Series([None] * len(collected), index=collected.index))
        done = Counter(
            _label(_class_name(model), category)
            for model, category in zip(collected["model.class_path"], categories, strict=True)
        )
    failed = []
    for label, count in (expected - done).items():
        reasons = errors.get(label) or ["did not run"]
        failed.extend(f"{label} ({reason})" for reason in reasons[:count])
        failed.extend(f"{label} (did not run)" for _ in range(count - len(reasons[:count])))
    return failed


def redirect_logs(log_file: str) -> logging.FileHandler:
    """Send every log record to ``log_file`` once: through the root logger, and each logger that does not propagate.

    Other handlers of named loggers are removed, as anomalib's ``redirect_logs`` does; the root logger's stay.

    Returns:
        The file handler, for :func:`end_redirect`.
    """
    Path(log_file).parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.getLogger().addHandler(handler)
    for named in list(logging.root.manager.loggerDict.values()):
        if isinstance(named, logging.Logger):
            named.handlers = [] if named.propagate else [handler]
    logging.captureWarnings(capture=True)
    return handler


def end_redirect(handler: logging.FileHandler) -> None:
    """Detach and close a handler of :func:`redirect_logs`, so that later runs in this process do not write there."""
    for named in [logging.getLogger(), *logging.root.manager.loggerDict.values()]:
        if isinstance(named, logging.Logger) and handler in named.handlers:
            named.removeHandler(handler)
    handler.close()


def patch_pipeline(module: Any) -> None:
    """Apply fixes 4 and 5 to anomalib's benchmark pipeline (``anomalib.pipelines.benchmark.pipeline``)."""
    pipeline_class = module.Benchmark
    original_run = pipeline_class.run
    base = sys.modules[inspect.unwrap(original_run).__module__]  # the module whose run calls redirect_logs

    def run(self: Any, args: Any = None) -> None:
        config = self._get_args(args) if args is not None else None
        STATE.reset()
        if config is not None:
            STATE.expected = _jobs(config)
            if any(_class_name(job.get("model")) in PACKAGE_MODELS for job in STATE.expected):
                quiet_command("benchmark")
            missing = missing_files(config)
            if missing:
                names = ", ".join(f"{path} ({', '.join(models)})" for path, models in missing.items())
                msg = (
                    f"benchmark config {args.config}: missing files: {names}. Train the models and copy their "
                    "checkpoints there first (README, 'Comparing FAPrompt, AnomalyCLIP, WinCLIP and AnomalyVFM'); "
                    "nothing was run."
                )
                raise MissingFilesError(msg)
            unusable = unknown_arguments(config) + unusable_data(config) + unusable_weights(config)
            if unusable:
                msg = f"benchmark config {args.config}: {' '.join(unusable)} Nothing was run."
                raise InvalidInputError(msg)
        handlers: list[logging.FileHandler] = []
        anomalib_redirect = base.redirect_logs
        base.redirect_logs = lambda log_file: handlers.append(redirect_logs(log_file))
        try:
            original_run(self, args)
        finally:
            base.redirect_logs = anomalib_redirect
            for handler in handlers:
                end_redirect(handler)
        if config is not None:
            STATE.failed = failed_jobs(config, STATE.collected, STATE.errors, STATE.completed)
            if STATE.failed:
                total = len(_jobs(config))
                print(  # noqa: T201  (the last line of the benchmark's output)
                    f"benchmark: {len(STATE.failed)} of {total} jobs failed or did not run: {'; '.join(STATE.failed)}"
                    f" (details in {LOG_FILE})",
                )

    run.__doc__ = original_run.__doc__
    with patching("the fixes to anomalib's benchmark pipeline") as patch:
        if patch is not None:
            if not hasattr(base, "redirect_logs"):
                msg = f"{base.__name__} has no redirect_logs"
                raise AttributeError(msg)
            patch.set(pipeline_class, "run", run)
