"""The authors' files through anomalib's command line and exports: their prompt files and ``meta.json`` datasets.

The files are built as the authors' code builds them (:mod:`tests.helpers.authors_code`,
:mod:`tests.helpers.meta_json`).
"""

from __future__ import annotations

import onnxruntime as ort
import pytest
import torch
import yaml
from anomalib.cli.cli import AnomalibCLI
from anomalib.deploy import ExportType

from anomalib_faprompt import AnomalyCLIP, FAPrompt
from anomalib_faprompt.data import MetaJson
from tests.helpers.authors_code import authors_anomalyclip_file, authors_faprompt_file
from tests.helpers.commands import anomalib_cli
from tests.helpers.data import results_table
from tests.helpers.engine import cpu_engine
from tests.helpers.meta_json import emptied_index
from tests.helpers.models import as_if_trained, tiny_args


def test_a_model_started_from_an_authors_file_exports_with_its_prompts(clip_file, tmp_path):
    direct = as_if_trained(AnomalyCLIP(**tiny_args(pretrained=str(clip_file))))
    path = authors_anomalyclip_file(direct, tmp_path / "epoch_15.pth")
    loaded = AnomalyCLIP(**tiny_args(pretrained=str(clip_file), weights=str(path))).eval()
    onnx_file = cpu_engine().export(loaded, ExportType.ONNX, export_root=tmp_path / "exported")
    images = torch.rand(2, 3, 64, 64)
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    outputs = dict(zip(names, session.run(None, {session.get_inputs()[0].name: images.numpy()}), strict=True))
    with torch.no_grad():
        expected = direct.eval()(images)
    torch.testing.assert_close(torch.from_numpy(outputs["pred_score"]), expected.pred_score, rtol=0, atol=1e-4)
    torch.testing.assert_close(torch.from_numpy(outputs["anomaly_map"]), expected.anomaly_map, rtol=0, atol=1e-4)


def test_cli_test_on_an_index_without_test_items_names_its_category(indexed_target, tmp_path, capsys):
    root = emptied_index(indexed_target, tmp_path / "copy", "gamma", "delta", "epsilon")
    config = {
        "trainer": {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False},
        "model": {"class_path": "FAPrompt", "init_args": tiny_args(visualizer=False)},
        "data": {"class_path": "anomalib_faprompt.data.MetaJson", "init_args": {"root": str(root), "num_workers": 0}},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit) as exited:
        AnomalibCLI(["test", "--config", str(tmp_path / "config.yaml"), "--default_root_dir", str(tmp_path / "r")])
    assert exited.value.code == 2
    *_, what, error = capsys.readouterr().err.strip().splitlines()
    assert what == "anomalib test:"
    assert error.startswith(f"InvalidInputError: '{root.resolve() / 'meta.json'}': category 'delta' has no items in")
    assert not (tmp_path / "r").exists()


def test_cli_test_with_an_authors_file_on_a_meta_json_dataset(indexed_target, clip_file, tmp_path):
    """The advice about settings unlike the authors' test is logged once, also where Python's warnings are off."""
    model = FAPrompt(**tiny_args(pretrained=str(clip_file)))
    weights = authors_faprompt_file(model, tmp_path / "epoch_7.pth")
    config = {
        "seed_everything": 111,
        "trainer": {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False},
        "model": {
            "class_path": "FAPrompt",
            "init_args": tiny_args(pretrained=str(clip_file), weights=str(weights), visualizer=False),
        },
        "data": {"class_path": "anomalib_faprompt.data.MetaJson", "init_args": {"root": str(indexed_target)}},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    process = anomalib_cli(
        "test",
        "--config",
        tmp_path / "config.yaml",
        "--default_root_dir",
        tmp_path / "r",
        cwd=tmp_path,
        env={"PYTHONWARNINGS": "ignore"},
    )
    assert process.output.count("other settings than their test") == 1
    table = results_table(tmp_path / "r")
    assert set(table) == {"gamma", "delta", "epsilon", "mean"}
    released = FAPrompt(
        **tiny_args(
            pretrained=str(clip_file),
            patch_selection="first_k",
            local_score="released",
            weights=str(weights),
            visualizer=False,
        )
    )
    cpu_engine(tmp_path / "direct").test(released, datamodule=MetaJson(root=indexed_target, num_workers=0))
    assert results_table(tmp_path / "direct") == table
