"""Where an export goes: into its checkpoint's run folder by default, and never over an earlier export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from anomalib.deploy import ExportType
from anomalib.engine import Engine

from anomalib_faprompt import AnomalyCLIP, FAPrompt
from anomalib_faprompt.errors import ExistingOutputError, InvalidInputError, MissingInputError
from anomalib_faprompt.runs import checkpoint_run_dir
from tests.helpers.commands import anomalib_cli
from tests.helpers.data import logged_warnings
from tests.helpers.models import tiny_args, write_checkpoint

QUIET = {"logger": False, "enable_progress_bar": False, "enable_model_summary": False}
FILES = {ExportType.TORCH: "model.pt", ExportType.ONNX: "model.onnx", ExportType.OPENVINO: "model.xml"}


@pytest.fixture(scope="module")
def run_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny FAPrompt's checkpoint in anomalib's run layout, ``<root>/v0`` with ``latest -> v0``."""
    root = tmp_path_factory.mktemp("results") / "FAPrompt" / "data" / "all"
    path = write_checkpoint(FAPrompt(**tiny_args()), _mkdirs(root / "v0" / "weights" / "lightning") / "model.ckpt")
    (root / "latest").symlink_to("v0", target_is_directory=True)
    return path


def _mkdirs(folder: Path) -> Path:
    folder.mkdir(parents=True)
    return folder


def test_run_folder_of_a_checkpoint(run_checkpoint: Path, tmp_path: Path):
    run = run_checkpoint.parents[2]
    assert checkpoint_run_dir(run_checkpoint) == run
    assert checkpoint_run_dir(run.parent / "latest" / "weights" / "lightning" / "model.ckpt") == run
    assert checkpoint_run_dir(tmp_path / "elsewhere.ckpt") == tmp_path


@pytest.mark.parametrize("export_type", list(FILES), ids=lambda export_type: export_type.value)
@pytest.mark.parametrize("model_class", [FAPrompt, AnomalyCLIP], ids=lambda cls: cls.__name__)
def test_an_earlier_export_is_kept(tmp_path: Path, export_type: ExportType, model_class: type):
    earlier = _mkdirs(tmp_path / "weights" / export_type.value) / FILES[export_type]
    earlier.write_text("earlier export")
    model = model_class(**tiny_args())
    with pytest.raises(ExistingOutputError, match=f"'{earlier}' holds an earlier export") as error:
        getattr(model, f"to_{export_type.value}")(tmp_path)
    assert isinstance(error.value, FileExistsError)
    assert earlier.read_text() == "earlier export"
    assert sorted(path.name for path in tmp_path.rglob("*") if path.is_file()) == [FILES[export_type]]


def test_engine_exports_into_the_checkpoints_run_folder(run_checkpoint: Path):
    run = run_checkpoint.parents[2]
    latest = run.parent / "latest" / "weights" / "lightning" / "model.ckpt"
    engine = Engine(accelerator="cpu", devices=1, default_root_dir=run.parents[3] / "elsewhere", **QUIET)
    path = engine.export(FAPrompt(**tiny_args()), ExportType.TORCH, ckpt_path=latest)
    assert path == run / "weights" / "torch" / "model.pt"
    exported = torch.load(path, weights_only=False)["model"]
    saved = torch.load(run_checkpoint, weights_only=False)["state_dict"]
    learned = {name: value for name, value in saved.items() if "prompt" in name}
    assert learned, "the checkpoint holds learned prompts"
    for name, value in learned.items():
        torch.testing.assert_close(exported.state_dict()[name], value, rtol=0, atol=0)
    assert not (run.parents[3] / "elsewhere").exists()
    before = path.read_bytes()
    with pytest.raises(ExistingOutputError, match="holds an earlier export"):
        Engine(accelerator="cpu", devices=1, **QUIET).export(FAPrompt(**tiny_args()), "torch", ckpt_path=latest)
    assert path.read_bytes() == before


def test_zero_shot_model_exports_into_its_weights_run_folder(run_checkpoint: Path, tmp_path: Path):
    model = FAPrompt(**tiny_args(weights=str(run_checkpoint)))
    engine = Engine(accelerator="cpu", devices=1, default_root_dir=tmp_path, **QUIET)
    path = engine.export(model, ExportType.TORCH, export_root=tmp_path / "chosen")
    assert path == tmp_path / "chosen" / "weights" / "torch" / "model.pt", "an explicit export_root is kept"
    (run_checkpoint.parents[2] / "weights" / "torch" / "model.pt").unlink(missing_ok=True)
    path = engine.export(model, ExportType.TORCH)
    assert path == run_checkpoint.parents[2] / "weights" / "torch" / "model.pt"


@pytest.mark.slow
def test_cli_export_twice_names_the_kept_file(run_checkpoint: Path, tmp_path: Path):
    config = tmp_path / "tiny.yaml"
    config.write_text(json.dumps({"model": {"class_path": "FAPrompt", "init_args": tiny_args()}}))  # JSON is YAML
    command = ["export", "--config", config, "--ckpt_path", run_checkpoint, "--export_type", "torch"]
    command += ["--export_root", tmp_path / "out"]
    anomalib_cli(*command)
    second = anomalib_cli(*command, returncode=2)
    exported = tmp_path / "out" / "weights" / "torch" / "model.pt"
    assert second.stderr.strip().splitlines()[-1] == (
        f"ExistingOutputError: '{exported}' holds an earlier export, which is kept. Pass another `export_root` "
        "(`--export_root` on the command line), or remove that file to export here again."
    )


def test_export_names_a_bad_checkpoint_or_root_before_any_work(run_checkpoint: Path, tmp_path: Path):
    engine = Engine(accelerator="cpu", devices=1, default_root_dir=tmp_path / "results", **QUIET)
    other = write_checkpoint(AnomalyCLIP(**tiny_args()), tmp_path / "anomalyclip.ckpt")
    with pytest.raises(MissingInputError, match=f"'{tmp_path / 'nope.ckpt'}' \\(`ckpt_path`\\) does not exist"):
        engine.export(FAPrompt(**tiny_args()), ExportType.TORCH, ckpt_path=tmp_path / "nope.ckpt")
    with pytest.raises(MissingInputError, match=f"'{tmp_path}' \\(`ckpt_path`\\) is a directory"):
        engine.export(FAPrompt(**tiny_args()), ExportType.TORCH, ckpt_path=tmp_path)
    with pytest.raises(InvalidInputError, match=f"^'{other}' \\(`ckpt_path`\\) is a checkpoint of AnomalyCLIP, not of"):
        engine.export(FAPrompt(**tiny_args()), ExportType.TORCH, ckpt_path=other)
    with pytest.raises(InvalidInputError, match=f"`export_root` '{other}' is a file: pass a folder"):
        engine.export(FAPrompt(**tiny_args()), ExportType.TORCH, ckpt_path=run_checkpoint, export_root=other)
    assert not (tmp_path / "results").exists()
    assert not (tmp_path / "weights").exists()


def test_exporting_prompts_that_were_never_learned_warns(run_checkpoint: Path, tmp_path: Path, caplog):
    untrained = "FAPrompt is exported with prompts that were never trained"
    FAPrompt(**tiny_args()).to_torch(tmp_path / "untrained")
    (message,) = logged_warnings(caplog, untrained)
    assert "the exported model scores as a random start" in message
    assert "--ckpt_path" in message
    caplog.clear()
    FAPrompt.load_from_checkpoint(run_checkpoint).to_torch(tmp_path / "checkpoint")
    FAPrompt(**tiny_args(weights=str(run_checkpoint))).to_torch(tmp_path / "weights")
    assert not logged_warnings(caplog, untrained)
