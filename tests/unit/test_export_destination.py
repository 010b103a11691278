"""Where an export goes: into its checkpoint's run folder by default, and never over an earlier export."""

from __future__ import annotations

from pathlib import Path

import pytest
from anomalib.deploy import ExportType

from anomalib_faprompt.errors import ExistingOutputError
from anomalib_faprompt.runs import checkpoint_run_dir
from tests.helpers.models import each_model, tiny_args

FILES = {ExportType.TORCH: "model.pt", ExportType.ONNX: "model.onnx", ExportType.OPENVINO: "model.xml"}


def test_run_folder_of_a_checkpoint(run_checkpoint: Path, tmp_path: Path):
    run = run_checkpoint.parents[2]
    assert checkpoint_run_dir(run_checkpoint) == run
    assert checkpoint_run_dir(run.parent / "latest" / "weights" / "lightning" / "model.ckpt") == run
    assert checkpoint_run_dir(tmp_path / "elsewhere.ckpt") == tmp_path


@pytest.mark.parametrize("export_type", list(FILES), ids=lambda export_type: export_type.value)
@each_model
def test_an_earlier_export_is_kept(tmp_path: Path, export_type: ExportType, model_class: type):
    earlier = tmp_path / "weights" / export_type.value / FILES[export_type]
    earlier.parent.mkdir(parents=True)
    earlier.write_text("earlier export")
    model = model_class(**tiny_args())
    with pytest.raises(ExistingOutputError, match=f"'{earlier}' holds an earlier export") as error:
        getattr(model, f"to_{export_type.value}")(tmp_path)
    assert isinstance(error.value, FileExistsError)
    assert earlier.read_text() == "earlier export"
    assert sorted(path.name for path in tmp_path.rglob("*") if path.is_file()) == [FILES[export_type]]
