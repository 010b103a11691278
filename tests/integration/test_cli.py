"""anomalib's command line with this package: the seed applied, the package's errors last, benchmark checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from anomalib.cli.cli import AnomalibCLI

from anomalib_faprompt.data import make_synthetic_dataset
from anomalib_faprompt.models import base
from anomalib_faprompt.pipelines import checks
from tests.helpers.commands import REPO, anomalib_cli

CONFIG = REPO / "configs" / "faprompt_synthetic_tiny.yaml"


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cli_data")
    source = make_synthetic_dataset(root / "source", categories=("alpha",), n_good=4, n_defect=4)
    target = make_synthetic_dataset(root / "target", categories=("gamma", "delta"), n_good=2, n_defect=2, seed=1)
    return source, target


def _learned(checkpoint: Path) -> dict[str, torch.Tensor]:
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    return {key: value for key, value in state.items() if "prompt" in key or "prior_net" in key or "ctx" in key}


def test_seed_everything_makes_two_cli_runs_bit_identical(datasets, tmp_path):
    source, target = datasets
    runs = []
    for name in ("a", "b"):
        result = anomalib_cli(
            "train",
            "--config",
            "configs/faprompt_synthetic_tiny.yaml",
            "--data.root",
            str(source),
            "--data.target_root",
            str(target),
            "--trainer.max_epochs",
            "1",
            "--default_root_dir",
            str(tmp_path / name),
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert "Seed set to 111" in result.stdout + result.stderr
        runs.append(tmp_path / name)
    tables = [next(run.rglob("per_category_results.csv")).read_bytes() for run in runs]
    assert tables[0] == tables[1]
    prompts = [_learned(next(run.rglob("model.ckpt"))) for run in runs]
    assert prompts[0]
    assert prompts[0].keys() == prompts[1].keys()
    for key, value in prompts[0].items():
        assert torch.equal(value, prompts[1][key]), key


def test_a_constructor_error_is_the_last_line(tmp_path):
    missing = tmp_path / "nonexistent.ckpt"
    result = anomalib_cli(
        "train", "--config", "configs/faprompt_synthetic_tiny.yaml", "--model.weights", missing, returncode=2
    )
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert lines[-2] == "anomalib train: FAPrompt could not be built:"
    assert str(missing) in lines[-1]
    assert "does not exist" in lines[-1]
    assert "Expected a <class 'NoneType'>" not in result.stderr


@pytest.mark.parametrize(
    ("subcommand", "argument", "value", "bound"),
    [("test", "eval_batch_size", "0", "at least 1 (images per validation or test step)"),
     ("train", "num_workers", "-1", "at least 0 (0 loads the images in the main process)")],
)  # fmt: skip
def test_a_loader_size_the_data_cannot_use_is_the_last_line(datasets, tmp_path, subcommand, argument, value, bound):
    source, target = datasets
    command = ["--config", CONFIG, "--data.root", source, "--data.target_root", target, f"--data.{argument}", value]
    result = anomalib_cli(subcommand, *command, "--default_root_dir", tmp_path / "results", returncode=2)
    assert result.output.strip().splitlines()[-2:] == [
        f"anomalib {subcommand}: AuxiliaryDataModule could not be built:",
        f"{argument}={value} must be an integer of {bound}.",
    ]
    assert "Traceback" not in result.output
    assert not (tmp_path / "results").exists()


def test_the_shipped_benchmark_config_names_unreadable_checkpoints_before_any_job(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    for name in ("faprompt_mvtec.ckpt", "anomalyclip_mvtec.ckpt"):
        (tmp_path / "checkpoints" / name).write_text("not a checkpoint")
    result = anomalib_cli(
        "benchmark", "--config", REPO / "configs" / "benchmark_zero_shot.yaml", cwd=tmp_path, returncode=2
    )
    last = (result.stdout + result.stderr).strip().splitlines()[-1]
    assert last.startswith("InvalidInputError: benchmark config")
    assert "checkpoints/faprompt_mvtec.ckpt' (FAPrompt.weights) is not a readable anomalib checkpoint" in last
    assert "is not a readable anomalib checkpoint: the file is not written by torch.save." in last  # a text file
    assert "checkpoints/anomalyclip_mvtec.ckpt' (AnomalyCLIP.weights)" in last
    assert last.endswith("Nothing was run.")
    assert not (tmp_path / "datasets").exists()  # nothing downloaded


def test_the_shipped_benchmark_config_names_its_missing_checkpoints(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the config names ./checkpoints/...
    config = yaml.safe_load((REPO / "configs" / "benchmark_zero_shot.yaml").read_text())
    with pytest.raises(checks.MissingFilesError) as missing:
        checks.check_config(config, "benchmark_zero_shot.yaml")
    assert "./checkpoints/faprompt_mvtec.ckpt (FAPrompt.weights)" in str(missing.value)
    assert "./checkpoints/anomalyclip_mvtec.ckpt (AnomalyCLIP.weights)" in str(missing.value)


def _refused_in_process(args: list[str], capsys: pytest.CaptureFixture[str]) -> list[str]:
    """``anomalib ARGS`` in this process (the command line refuses it before building anything): its stderr lines."""
    with pytest.raises(SystemExit) as exited:
        AnomalibCLI([str(arg) for arg in args])
    assert exited.value.code == 2
    return capsys.readouterr().err.strip().splitlines()


def test_an_unwritable_results_root_is_one_line_before_any_work(tmp_path, capsys, monkeypatch):
    def no_clip(*_args, **_kwargs):
        raise AssertionError("a model was built before the results folder was checked")

    monkeypatch.setattr(base, "build_backbone", no_clip)
    blocker = tmp_path / "results"
    blocker.write_text("a file where the results should go")
    *_, what, error = _refused_in_process(["train", "--config", CONFIG, "--default_root_dir", blocker / "runs"], capsys)
    assert what == "anomalib train:"
    assert error == (
        f"InvalidInputError: Results folder '{blocker / 'runs'}' (--default_root_dir): '{blocker}' is a file. "
        "Pass a folder that can be written."
    )
    assert blocker.read_text() == "a file where the results should go"


def test_a_value_jsonargparse_cannot_read_is_one_line():
    result = anomalib_cli("fit", "--config", CONFIG, "--model.temperature", "nan", returncode=2)
    assert result.stderr.strip().splitlines() == [
        "anomalib: --model.temperature: Expected a <class 'float'>. Got value: nan Pass a finite number."
    ]
