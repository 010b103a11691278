"""anomalib's command line with this package: the seed applied, the package's errors last, benchmark checks."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from anomalib_faprompt.data import make_synthetic_dataset

ROOT = Path(__file__).parents[1]
ANOMALIB = shutil.which("anomalib", path=str(Path(sys.executable).parent)) or "anomalib"


def _anomalib(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([ANOMALIB, *args], capture_output=True, text=True, timeout=900, cwd=cwd)


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
        result = _anomalib(
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
    result = _anomalib("train", "--config", "configs/faprompt_synthetic_tiny.yaml", "--model.weights", str(missing))
    assert result.returncode == 2
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert lines[-2] == "anomalib train: FAPrompt could not be built:"
    assert str(missing) in lines[-1]
    assert "does not exist" in lines[-1]
    assert "Expected a <class 'NoneType'>" not in result.stderr


def test_the_shipped_benchmark_config_names_unreadable_checkpoints_before_any_job(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    for name in ("faprompt_mvtec.ckpt", "anomalyclip_mvtec.ckpt"):
        (tmp_path / "checkpoints" / name).write_text("not a checkpoint")
    result = _anomalib("benchmark", "--config", str(ROOT / "configs" / "benchmark_zero_shot.yaml"), cwd=tmp_path)
    assert result.returncode == 2
    last = (result.stdout + result.stderr).strip().splitlines()[-1]
    assert last.startswith("InvalidInputError: benchmark config")
    assert "checkpoints/faprompt_mvtec.ckpt' (FAPrompt.weights) is not a readable anomalib checkpoint" in last
    assert "checkpoints/anomalyclip_mvtec.ckpt' (AnomalyCLIP.weights)" in last
    assert last.endswith("Nothing was run.")
    assert not (tmp_path / "datasets").exists()  # nothing downloaded


def test_the_shipped_benchmark_config_names_its_missing_checkpoints(tmp_path):
    result = _anomalib("benchmark", "--config", str(ROOT / "configs" / "benchmark_zero_shot.yaml"), cwd=tmp_path)
    assert result.returncode == 2
    last = (result.stdout + result.stderr).strip().splitlines()[-1]
    assert "./checkpoints/faprompt_mvtec.ckpt (FAPrompt.weights)" in last
    assert "./checkpoints/anomalyclip_mvtec.ckpt (AnomalyCLIP.weights)" in last
    assert not (tmp_path / "datasets").exists()  # nothing downloaded


def test_other_models_are_not_seeded_as_with_the_hook_switched_off(tmp_path):
    """Padim through `anomalib fit --seed_everything 5`: with the hook as with ANOMALIB_FAPROMPT_NO_HOOK=1, no seed."""
    import os

    arguments = [
        ANOMALIB, "fit", "--model", "Padim", "--model.pre_trained", "false", "--data", "MVTecAD",
        "--data.root", str(tmp_path / "missing" / "MVTecAD"), "--seed_everything", "5",
        "--trainer.max_epochs", "0", "--default_root_dir", str(tmp_path / "results"),
    ]  # fmt: skip
    outputs = []
    for switch in ("0", "1"):
        env = {**os.environ, "ANOMALIB_FAPROMPT_NO_HOOK": switch, "HF_HUB_OFFLINE": "1"}
        result = subprocess.run(arguments, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
        outputs.append(result.stdout + result.stderr)
    assert all("Seed set to 5" not in output for output in outputs)
    assert all("Padim" in output or "padim" in output.lower() for output in outputs)
