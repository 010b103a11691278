"""Where ``Engine.export`` and ``anomalib export`` put an export: the checkpoint's run folder, never over another."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from anomalib.deploy import ExportType

from anomalib_faprompt import AnomalyCLIP, FAPrompt
from anomalib_faprompt.errors import ExistingOutputError, InvalidInputError, MissingInputError
from tests.helpers.commands import anomalib_cli
from tests.helpers.data import logged_warnings
from tests.helpers.engine import cpu_engine
from tests.helpers.models import tiny_args, write_checkpoint


def test_engine_exports_into_the_checkpoints_run_folder(run_checkpoint: Path):
    run = run_checkpoint.parents[2]
    latest = run.parent / "latest" / "weights" / "lightning" / "model.ckpt"
    engine = cpu_engine(run.parents[3] / "elsewhere")
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
        cpu_engine().export(FAPrompt(**tiny_args()), "torch", ckpt_path=latest)
    assert path.read_bytes() == before


def test_zero_shot_model_exports_into_its_weights_run_folder(run_checkpoint: Path, tmp_path: Path):
    model = FAPrompt(**tiny_args(weights=str(run_checkpoint)))
    engine = cpu_engine(tmp_path)
    path = engine.export(model, ExportType.TORCH, export_root=tmp_path / "chosen")
    assert path == tmp_path / "chosen" / "weights" / "torch" / "model.pt", "an explicit export_root is kept"
    (run_checkpoint.parents[2] / "weights" / "torch" / "model.pt").unlink(missing_ok=True)
    path = engine.export(model, ExportType.TORCH)
    assert path == run_checkpoint.parents[2] / "weights" / "torch" / "model.pt"


def test_cli_export_twice_names_the_kept_file(run_checkpoint: Path, tmp_path: Path):
    """The earlier export is ``Engine.export``'s (what the command line runs); the command finds it, keeps it."""
    earlier = cpu_engine().export(
        FAPrompt(**tiny_args()), ExportType.TORCH, export_root=tmp_path / "out", ckpt_path=run_checkpoint
    )
    exported = tmp_path / "out" / "weights" / "torch" / "model.pt"
    assert earlier == exported
    before = exported.read_bytes()
    config = tmp_path / "tiny.yaml"
    config.write_text(json.dumps({"model": {"class_path": "FAPrompt", "init_args": tiny_args()}}))  # JSON is YAML
    command = ["export", "--config", config, "--ckpt_path", run_checkpoint, "--export_type", "torch"]
    second = anomalib_cli(*command, "--export_root", tmp_path / "out", returncode=2)
    assert second.stderr.strip().splitlines()[-1] == (
        f"ExistingOutputError: '{exported}' holds an earlier export, which is kept. Pass another `export_root` "
        "(`--export_root` on the command line), or remove that file to export here again."
    )
    assert exported.read_bytes() == before


def test_export_names_a_bad_checkpoint_or_root_before_any_work(run_checkpoint: Path, tmp_path: Path):
    engine = cpu_engine(tmp_path / "results")
    other = write_checkpoint(AnomalyCLIP(**tiny_args()), tmp_path / "anomalyclip.ckpt")
    with pytest.raises(MissingInputError, match=f"'{tmp_path / 'nope.ckpt'}' \\(`ckpt_path`\\) does not exist"):
        engine.export(FAPrompt(**tiny_args()), ExportType.TORCH, ckpt_path=tmp_path / "nope.ckpt")
    with pytest.raises(MissingInputError, match=f"'{tmp_path}' \\(`ckpt_path`\\) is a directory"):
        engine.export(FAPrompt(**tiny_args()), ExportType.TORCH, ckpt_path=tmp_path)
    with pytest.raises(InvalidInputError, match=f"^'{other}' \\(`ckpt_path`\\) is a checkpoint of AnomalyCLIP, not of"):
        engine.export(FAPrompt(**tiny_args()), ExportType.TORCH, ckpt_path=other)
    with pytest.raises(InvalidInputError, match=f"`export_root` '{other}' is a file: pass a folder"):
        engine.export(FAPrompt(**tiny_args()), ExportType.TORCH, ckpt_path=run_checkpoint, export_root=other)
    with pytest.raises(
        InvalidInputError,
        match=r"^--compression_type INT8_PTQ applies to `--export_type openvino` "
        r"only; with `onnx` the model would be exported uncompressed\. Export to openvino, or leave",
    ):
        engine.export(FAPrompt(**tiny_args()), ExportType.ONNX, ckpt_path=run_checkpoint, compression_type="INT8_PTQ")
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
