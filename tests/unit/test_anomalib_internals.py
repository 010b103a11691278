"""Canaries: the anomalib internals the integration patches or copies are still what it was written against.

Each test fails when a new anomalib (or jsonargparse) release moves one of them, so that the test suite, not a user,
finds out. docs/anomalib-integration.md names the canary of each patch.
"""

from __future__ import annotations

import inspect
import types
from pathlib import Path
from typing import Optional

import pytest
from anomalib import LearningType
from anomalib.cli import pipelines as cli_pipelines
from anomalib.cli.cli import AnomalibCLI
from anomalib.engine import Engine
from anomalib.models import AnomalibModule
from anomalib.pipelines import Benchmark as AnomalibBenchmark
from anomalib.pipelines.benchmark.job import BenchmarkJob
from jsonargparse import ArgumentParser
from jsonargparse import Namespace as JsonNamespace

from anomalib_faprompt.integration import workspace
from anomalib_faprompt.integration.cli import package_error
from anomalib_faprompt.pipelines import Benchmark

# owner, attribute, its parameters in anomalib 2.7 (what the wrappers bind by name)
PATCHED = [
    (AnomalibCLI, "init_parser", ["kwargs"]),
    (AnomalibCLI, "instantiate_classes", ["self"]),
    (AnomalibCLI, "_run_subcommand", ["self"]),
    (Engine, "_setup_workspace", ["self", "model", "train_dataloaders", "val_dataloaders", "test_dataloaders",
                                  "datamodule", "dataset", "versioned_dir"]),
    (Engine, "_should_run_validation", ["model", "ckpt_path"]),
    (Engine, "predict", ["self", "model", "dataloaders", "datamodule", "dataset", "return_predictions", "ckpt_path",
                         "data_path"]),
    (Engine, "fit", ["self", "model", "train_dataloaders", "val_dataloaders", "datamodule", "ckpt_path"]),
    (Engine, "train", ["self", "model", "train_dataloaders", "val_dataloaders", "test_dataloaders", "datamodule",
                       "ckpt_path"]),
    (Engine, "test", ["self", "model", "dataloaders", "ckpt_path", "verbose", "datamodule"]),
    (Engine, "validate", ["self", "model", "dataloaders", "ckpt_path", "verbose", "datamodule"]),
    (Engine, "export", ["self", "model", "export_type", "export_root", "model_file_name", "input_size",
                        "compression_type", "datamodule", "metric", "max_drop", "ov_args", "ov_kwargs", "onnx_kwargs",
                        "ckpt_path"]),
]  # fmt: skip


@pytest.mark.parametrize(("owner", "name", "parameters"), PATCHED, ids=[f"{o.__name__}.{n}" for o, n, _ in PATCHED])
def test_patched_functions_keep_their_parameters(owner, name, parameters):
    original = inspect.unwrap(getattr(owner, name))
    assert list(inspect.signature(original).parameters) == parameters
    assert getattr(owner, name) is not original  # the start-up hook wrapped it


def test_run_root_names_run_folders_as_anomalib(tmp_path):
    """The package names a run's folder itself; anomalib's `_setup_workspace` must still name it the same way."""
    model = types.SimpleNamespace(name="FAPrompt")
    cases = [
        {"datamodule": types.SimpleNamespace(name="MVTecAD", category="bottle")},
        {"dataset": types.SimpleNamespace(name="Folder", category=None)},
        {"test_dataloaders": types.SimpleNamespace(train_data=types.SimpleNamespace(name="Visa", category="candle"))},
    ]
    anomalib_setup = inspect.unwrap(Engine._setup_workspace)
    for case in cases:
        engine = Engine(default_root_dir=tmp_path / "results")
        anomalib_setup(engine, model, **case)  # no `latest` there: anomalib's folder is <root>/latest
        expected = Path(engine._cache.args["default_root_dir"]).parent
        engine = Engine(default_root_dir=tmp_path / "results")
        loaders = [case.get(name) for name in ("train_dataloaders", "val_dataloaders", "test_dataloaders")]
        ours = workspace.run_root(
            engine, model, *loaders, datamodule=case.get("datamodule"), dataset=case.get("dataset")
        )
        assert ours == expected


def test_anomalib_still_validates_zero_shot_models_and_warns_without_a_checkpoint():
    zero_shot = types.SimpleNamespace(learning_type=LearningType.ZERO_SHOT)
    assert inspect.unwrap(Engine._should_run_validation)(zero_shot, None) is True  # what the patch turns off
    assert workspace.NO_CKPT_WARNING in inspect.getsource(inspect.unwrap(Engine.predict))


def test_the_benchmark_job_the_package_copies_is_unchanged():
    """ZeroShotBenchmarkJob copies anomalib's job run and save; the pipeline replaces the runners' generators."""
    run = inspect.getsource(inspect.unwrap(BenchmarkJob.run))
    for line in (
        "seed_everything(self.seed)",
        "engine.fit(self.model, self.datamodule)",
        "engine.test(self.model, self.datamodule)",
        '"fit_duration": test_start_time - fit_start_time',
    ):
        assert line in run, line  # fmt: skip
    assert 'Path("runs") / BenchmarkJob.name / datetime.now().strftime' in inspect.getsource(BenchmarkJob.save)
    assert cli_pipelines.PIPELINE_REGISTRY["benchmark"] is AnomalibBenchmark
    assert issubclass(Benchmark, AnomalibBenchmark)
    (runner,) = Benchmark._setup_runners({"accelerator": "cpu"})
    assert type(runner.generator).__name__ == "ZeroShotBenchmarkJobGenerator"
    assert runner.generator.accelerator == "cpu"


def test_jsonargparse_messages_still_carry_the_package_error():
    """The one-line errors are read from jsonargparse's messages: a parse error and a constructor's error."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--model", type=Optional[AnomalibModule])  # as LightningCLI adds it  # noqa: UP045
    with pytest.raises(Exception) as parse_error:  # noqa: PT011  (jsonargparse's ArgumentError)
        parser.parse_args(["--model", "FAPrompt", "--model.temperature", "nan"])
    expected = "--model.temperature: Expected a <class 'float'>. Got value: nan Pass a finite number."
    assert package_error(str(parse_error.value)) == expected
    config = parser.parse_args(["--model", "FAPrompt", "--model.image_size", "0"])
    assert isinstance(config.model, JsonNamespace)
    with pytest.raises(ValueError) as build_error:  # noqa: PT011
        parser.instantiate_classes(config)
    assert package_error(str(build_error.value)) == "image_size=0 must be an integer of at least 1."
