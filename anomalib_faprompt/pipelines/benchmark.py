"""anomalib's benchmark pipeline, for configs that compare this package's zero-shot models with others.

``anomalib benchmark --config C`` runs :class:`Benchmark` when ``C`` names ``FAPrompt`` or ``AnomalyCLIP`` (a
config of anomalib's models alone runs anomalib's pipeline, unchanged). It is anomalib's ``Benchmark``, with

1. jobs whose ``fit`` takes the datamodule as Lightning does: anomalib's job calls ``engine.fit(model,
   datamodule)``, and anomalib's ``Engine.fit`` hands a zero-shot model (WinClip, AnomalyVFM; FAPrompt and
   AnomalyCLIP with trained ``weights``) to ``Trainer.validate`` without it, so every such job fails;
2. a row for every job: one that fails (or whose model cannot be built) gets its settings, ``status`` "no result"
   and its ``error``, and the union of all jobs' keys makes the columns (anomalib builds the table from the first
   job's keys: models with other ``init_args`` or metrics stop it with a ``KeyError``, and no ``results.csv``);
3. :func:`~anomalib_faprompt.report.summary.summary_lines` as the console table;
4. the config checked before any model is built (:mod:`.checks`), each ``weights`` file read once for the check
   and every job's model (:func:`~anomalib_faprompt.models.inspection.reading_once`);
5. every log record written once to ``runs/pipeline.log``, with time, logger and level (anomalib gives each logger
   the same file handler, so a record is written up to five times, without that format);
6. :class:`JobsFailedError` at the end, naming the jobs without a result (``anomalib benchmark`` exits with 1).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Generator
from datetime import datetime
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import pandas as pd
from anomalib.data import get_datamodule
from anomalib.engine import Engine
from anomalib.models import AnomalibModule, get_model
from anomalib.pipelines import Benchmark as AnomalibBenchmark
from anomalib.pipelines.benchmark.generator import BenchmarkJobGenerator
from anomalib.pipelines.benchmark.job import BenchmarkJob
from anomalib.pipelines.components.utils import get_iterator_from_grid_dict
from anomalib.utils.config import flatten_dict
from anomalib.utils.logging import hide_output
from jsonargparse import Namespace
from lightning.pytorch import LightningDataModule, seed_everything

from anomalib_faprompt.errors import InputError
from anomalib_faprompt.models.inspection import reading_once
from anomalib_faprompt.pipelines.checks import check_config, class_name, jobs, names_package_models
from anomalib_faprompt.report.summary import summary_lines

__all__ = ["Benchmark", "BenchmarkEngine", "JobsFailedError", "collect", "failed_jobs"]

logger = logging.getLogger(__name__)

LOG_FILE = "runs/pipeline.log"
LOG_FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"  # the format anomalib means to set
NO_RESULT = "no result"


class JobsFailedError(InputError):
    """Jobs of a benchmark have no result (their rows say why); everything else was written."""

    exit_code = 1


class BenchmarkEngine(Engine):
    """anomalib's :class:`~anomalib.engine.Engine`, taking a datamodule given as training dataloaders."""

    expects_zero_shot = True  # a job fits zero-shot models on purpose: no "trains nothing" line per job

    def fit(
        self,
        model: AnomalibModule,
        train_dataloaders: Any = None,  # noqa: ANN401
        val_dataloaders: Any = None,  # noqa: ANN401
        datamodule: LightningDataModule | None = None,
        ckpt_path: str | Path | None = None,
    ) -> None:
        """``Engine.fit``; a datamodule passed as ``train_dataloaders`` is used as ``datamodule``."""
        if datamodule is None and isinstance(train_dataloaders, LightningDataModule):
            train_dataloaders, datamodule = None, train_dataloaders
        super().fit(model, train_dataloaders, val_dataloaders, datamodule, ckpt_path)


def _reason(error: BaseException) -> str:
    """The first line of the innermost error a job's error was raised from (anomalib wraps them)."""
    while error.__cause__ is not None:
        error = error.__cause__
    return f"{type(error).__name__}: {error}".splitlines()[0]


class ZeroShotBenchmarkJob(BenchmarkJob):
    """anomalib's benchmark job on a :class:`BenchmarkEngine`; a failure gives a row saying why, not an exception."""

    def __init__(self, *args: Any, error: str | None = None, **kwargs: Any) -> None:  # noqa: ANN401
        super().__init__(*args, **kwargs)
        self.error = error

    def run(self, task_id: int | None = None) -> dict[str, Any]:
        """Fit and test as anomalib's job does; on failure, the job's settings with ``status`` and ``error``."""
        error = self.error  # the model or data could not be built
        if error is None:
            try:
                return hide_output(self._fit_and_test)(task_id)
            except Exception as exception:  # the job's row says why; the log has the traceback
                logger.exception("Job %s failed", self.flat_cfg.get("model.class_path"))
                error = _reason(exception)
        return {"accelerator": self.accelerator, **self.flat_cfg, "status": NO_RESULT, "error": error}

    def _fit_and_test(self, task_id: int | None) -> dict[str, Any]:
        start = time.time()
        devices: str | list[int] = "auto" if task_id is None else [task_id]
        with TemporaryDirectory() as temp_dir:
            seed_everything(self.seed)
            engine = BenchmarkEngine(accelerator=self.accelerator, devices=devices, default_root_dir=temp_dir)
            fit_start = time.time()
            engine.fit(self.model, self.datamodule)
            test_start = time.time()
            test_results = engine.test(self.model, self.datamodule)
        end = time.time()
        durations = {
            "job_duration": end - start,
            "fit_duration": test_start - fit_start,
            "test_duration": end - test_start,
        }
        return {"accelerator": self.accelerator, **durations, **self.flat_cfg, **test_results[0]}

    @staticmethod
    def collect(results: list[dict[str, Any]]) -> pd.DataFrame:
        """One row per job, one column per key of any job (in order of first appearance), empty where absent."""
        return collect(results)

    @staticmethod
    def save(result: pd.DataFrame) -> None:
        """Print the summary and write ``runs/benchmark/<time>/results.csv``, as anomalib's job does."""
        path = Path("runs") / BenchmarkJob.name / datetime.now().strftime("%Y-%m-%d-%H_%M_%S") / "results.csv"  # noqa: DTZ005
        path.parent.mkdir(parents=True, exist_ok=True)
        result.to_csv(path, index=False)
        print("\n".join(summary_lines(result, str(path))))  # noqa: T201  (the benchmark's console table)


class ZeroShotBenchmarkJobGenerator(BenchmarkJobGenerator):
    """anomalib's job generator, yielding :class:`ZeroShotBenchmarkJob` s (also for a model that cannot be built)."""

    @property
    def job_class(self) -> type:
        """The job class."""
        return ZeroShotBenchmarkJob

    def generate_jobs(self, args: dict, previous_stage_result: object) -> Generator[ZeroShotBenchmarkJob, None, None]:  # noqa: ARG002
        """One job per grid point of ``args``."""
        for container in get_iterator_from_grid_dict(args):
            parts: dict[str, Any] = {"model": None, "datamodule": None}
            error = None
            try:
                parts = {"model": get_model(container["model"]), "datamodule": get_datamodule(container["data"])}
            except Exception as exception:  # noqa: BLE001  (the job's row says why)
                error = _reason(exception)
            yield ZeroShotBenchmarkJob(
                accelerator=self.accelerator,
                seed=container["seed"],
                flat_cfg=flatten_dict(container),
                error=error,
                **parts,
            )


def collect(results: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per result, one column per key of any result (in order of first appearance), empty where absent."""
    return pd.DataFrame([dict(result) for result in results])


def _label(model: Any, category: Any) -> str:  # noqa: ANN401
    return f"{model}/{category}" if category is not None and not pd.isna(category) else str(model)


def failed_jobs(args: dict[str, Any], collected: pd.DataFrame | None) -> list[str]:
    """The jobs of the config without a result: ``"<model>/<category> (<error or 'did not run'>)"`` each.

    Args:
        args: The benchmark config.
        collected: The collected results of every runner, ``None`` when none collected any.
    """
    expected = Counter(
        _label(class_name(job.get("model")), ((job.get("data") or {}).get("init_args") or {}).get("category"))
        for job in jobs(args)
    )
    failed, done = [], Counter()
    if collected is not None and not collected.empty and "model.class_path" in collected:
        categories = collected.get("data.init_args.category", pd.Series([None] * len(collected), index=collected.index))
        statuses = collected.get("status", pd.Series([None] * len(collected), index=collected.index))
        errors = collected.get("error", pd.Series([None] * len(collected), index=collected.index))
        for model, category, status, error in zip(
            collected["model.class_path"], categories, statuses, errors, strict=True
        ):
            label = _label(class_name(model), category)
            done[label] += 1
            if status == NO_RESULT:
                failed.append(f"{label} ({error if isinstance(error, str) else 'did not run'})")
    failed += [f"{label} (did not run)" for label, count in (expected - done).items() for _ in range(count)]
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


class Benchmark(AnomalibBenchmark):
    """anomalib's benchmark pipeline with the fixes above; a config of anomalib's models alone runs unchanged."""

    @staticmethod
    def _setup_runners(args: dict) -> list:
        runners = AnomalibBenchmark._setup_runners(args)  # noqa: SLF001  (anomalib's choice of runners)
        for runner in runners:
            runner.generator = ZeroShotBenchmarkJobGenerator(runner.generator.accelerator)
        return runners

    def run(self, args: Namespace | None = None) -> None:
        """Check the config, run every job, write the results; raise :class:`JobsFailedError` if any has none.

        Raises:
            JobsFailedError: Jobs without a result, named (``results.csv`` and the summary are written).
        """
        config = self._get_args(args)
        if not names_package_models(config):
            AnomalibBenchmark().run(args)  # anomalib's pipeline, its runners and jobs unchanged
            return
        frames = []
        with reading_once():  # the config check and every job's model read a `weights` file once in all
            check_config(config, args.config if args is not None else None)
            runners = self._setup_runners(config)
            handler = redirect_logs(LOG_FILE)
            try:
                for runner in runners:
                    try:
                        frames.append(runner.run(config.get(runner.generator.job_class.name) or {}))
                    except Exception:  # noqa: PERF203  (as anomalib's pipeline: the next runner still runs)
                        logger.exception("An error occurred when running the runner.")
            finally:
                end_redirect(handler)
        failed = failed_jobs(config, pd.concat(frames, ignore_index=True) if frames else None)
        if failed:
            msg = (
                f"benchmark: {len(failed)} of {len(jobs(config))} jobs failed or did not run: {'; '.join(failed)}"
                f" (details in {LOG_FILE})"
            )
            raise JobsFailedError(msg)
