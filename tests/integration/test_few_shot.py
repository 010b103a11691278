"""Few-shot through anomalib's Engine, command line and exports: the references of each category, refusals."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from anomalib.data.utils import read_image
from lightning.pytorch import seed_everything

from anomalib_faprompt import AnomalyCLIP, FAPrompt
from anomalib_faprompt.data import AuxiliaryDataModule, make_synthetic_dataset
from anomalib_faprompt.errors import InputError, InvalidInputError
from anomalib_faprompt.models.few_shot import run_seed
from tests.helpers.commands import REPO, anomalib_cli
from tests.helpers.data import read_images
from tests.helpers.engine import cpu_engine
from tests.helpers.models import tiny_args, trained_like

CONFIG = REPO / "configs" / "faprompt_synthetic_tiny.yaml"


def _references_file(root: Path) -> dict[str, list[str]]:
    (path,) = root.rglob("few_shot_references.csv")
    rows: dict[str, list[str]] = {}
    with path.open() as file:
        for row in csv.DictReader(file):
            rows.setdefault(row["category"], []).append(row["file"])
    return rows


def test_each_category_is_scored_against_its_own_bank(synthetic_target, tmp_path):
    torch.manual_seed(0)
    model = trained_like(FAPrompt, visualizer=False, k_shot=2)
    datamodule = AuxiliaryDataModule(
        root=synthetic_target,
        target_dataset="MVTecAD",
        target_root=synthetic_target,
        target_categories=["gamma", "delta"],
        num_workers=0,
    )
    engine = cpu_engine(tmp_path)
    predictions = engine.predict(model, datamodule=datamodule)
    references = _references_file(tmp_path)
    assert set(references) == {"gamma", "delta"}
    for category, files in references.items():
        assert len(files) == 2
        assert all(Path(file).parent == synthetic_target / category / "train" / "good" for file in files)
    assert not model.model.few_shot.is_set  # cleared after the run
    for index, (category, other) in enumerate((("gamma", "delta"), ("delta", "gamma"))):
        scores = torch.cat([batch.pred_score for batch in predictions[index]])
        paths = [path for batch in predictions[index] for path in batch.image_path]
        images = model.pre_processor.transform(torch.stack([read_image(p, as_tensor=True) for p in paths]))
        direct = {}
        for bank in (category, other):
            model.set_references(references[bank])
            with torch.no_grad():
                direct[bank] = model.model(images).pred_score
        torch.testing.assert_close(scores, direct[category], rtol=0, atol=1e-5)
        assert (scores - direct[other]).abs().max() > 1e-4


def test_k_shot_zero_writes_the_zero_shot_table_and_no_references(synthetic_target, tmp_path):
    tables = {}
    source = str(synthetic_target / "delta" / "train" / "good")
    for name, arguments in (("zero", {}), ("own", {"k_shot": 2}), ("source", {"k_shot": 2, "few_shot_source": source})):
        datamodule = AuxiliaryDataModule(
            root=synthetic_target,
            target_dataset="MVTecAD",
            target_root=synthetic_target,
            target_categories=["gamma"],
            num_workers=0,
        )
        root = tmp_path / name
        cpu_engine(root).test(trained_like(FAPrompt, visualizer=False, **arguments), datamodule=datamodule)
        tables[name] = (next(root.rglob("per_category_results.md")).read_text(), list(root.rglob("few_shot_*")))
    assert "k_shot" not in tables["zero"][0]
    assert not tables["zero"][1]
    assert "k_shot = 2: each category scored against its own normal references" in tables["own"][0]
    assert len(tables["own"][1]) == 1
    assert f"k_shot = 2: every category scored against the same references from `{source}`" in tables["source"][0]


def test_missing_and_unreadable_references_are_named_before_any_test_image(synthetic_target, tmp_path):
    def test(model, data_root: Path) -> None:
        datamodule = AuxiliaryDataModule(root=data_root, target_dataset="MVTecAD", target_root=data_root, num_workers=0)
        engine = cpu_engine(tmp_path / "run")
        engine.test(model, datamodule=datamodule)

    with pytest.raises(InvalidInputError, match=r"k_shot=5 needs 5 normal reference images of 'delta'.* has 4"):
        test(trained_like(FAPrompt, visualizer=False, k_shot=5), synthetic_target)
    damaged = tmp_path / "damaged"
    shutil.copytree(synthetic_target, damaged)
    broken = sorted((damaged / "epsilon" / "train" / "good").glob("*.png"))
    for path in broken:
        path.write_bytes(b"not a png")
    with pytest.raises(
        InputError, match=rf"Cannot read '{damaged}/epsilon/train/good/.*Replace or remove this reference"
    ):
        test(trained_like(FAPrompt, visualizer=False, k_shot=4), damaged)
    assert not list((tmp_path / "run").rglob("per_category_results*"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InvalidInputError, match=rf"Reference folder '{empty}' .* holds no image file"):
        FAPrompt(**tiny_args(k_shot=2, few_shot_source=str(empty)))
    with pytest.raises(ValueError, match="few_shot_source is used only with k_shot > 0"):
        FAPrompt(**tiny_args(few_shot_source=str(synthetic_target / "gamma" / "train" / "good")))


def test_an_export_carries_its_bank_and_one_without_references_is_refused(synthetic_target, tmp_path):
    import onnxruntime as ort
    import openvino as ov

    model = trained_like(AnomalyCLIP, visualizer=False, k_shot=2)
    with pytest.raises(InvalidInputError, match=r"k_shot=2 and no references to export with"):
        model.to_onnx(tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    source = synthetic_target / "gamma" / "train" / "good"
    sourced = trained_like(AnomalyCLIP, visualizer=False, k_shot=2, few_shot_source=str(source))
    onnx_file = sourced.to_onnx(tmp_path / "onnx")
    xml = sourced.to_openvino(tmp_path / "openvino")
    images = read_images(synthetic_target / "gamma" / "test" / "defect")[:3]
    with torch.no_grad():
        expected = sourced(images)
    assert sourced.model.few_shot.is_set
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    outputs = dict(zip(names, session.run(None, {session.get_inputs()[0].name: images.numpy()}), strict=True))
    compiled = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    vino = {key.get_any_name(): value for key, value in compiled(images.numpy()).items()}
    for result in (outputs, vino):
        assert np.abs(result["pred_score"] - expected.pred_score.numpy()).max() < 1e-4
        assert np.abs(result["anomaly_map"] - expected.anomaly_map.numpy()).max() < 1e-4
    sourced.model.clear_references()
    with torch.no_grad():
        zero_shot = sourced(images)
    assert np.abs(outputs["pred_score"] - zero_shot.pred_score.numpy()).max() > 1e-3


def test_cli_toy_protocol_with_two_shots(tmp_path):
    source = make_synthetic_dataset(tmp_path / "source", categories=("alpha",), n_good=4, n_defect=4)
    target = make_synthetic_dataset(tmp_path / "target", categories=("gamma", "delta"), n_good=3, n_defect=3, seed=1)
    anomalib_cli(
        "train", "--config", CONFIG, "--data.root", source, "--data.target_root", target, "--trainer.max_epochs", "1",
        "--model.k_shot", "2", "--default_root_dir", tmp_path / "results",
    )  # fmt: skip
    references = _references_file(tmp_path / "results")
    assert set(references) == {"gamma", "delta"}
    assert all(len(files) == 2 for files in references.values())
    (table,) = (tmp_path / "results").rglob("per_category_results.md")
    assert "k_shot = 2" in table.read_text()


def test_predict_on_files_takes_its_references_from_few_shot_source(synthetic_target, tmp_path, monkeypatch):
    source = synthetic_target / "delta" / "train" / "good"
    model = trained_like(FAPrompt, visualizer=False, k_shot=3, few_shot_source=str(source))
    engine = cpu_engine(tmp_path)
    for variable in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS"):  # given back after the test
        monkeypatch.setenv(variable, "0")
    seed_everything(5)
    predictions = engine.predict(model, data_path=synthetic_target / "delta" / "test" / "defect")
    (files,) = _references_file(tmp_path).values()
    assert files == model.source_references(5)  # drawn with the run's seed
    assert len(files) == 3
    assert all(Path(file).parent == source for file in files)
    paths = [path for batch in predictions for path in batch.image_path]
    images = model.pre_processor.transform(torch.stack([read_image(p, as_tensor=True) for p in paths]))
    model.set_references(files)
    with torch.no_grad():
        direct = model.model(images).pred_score
    torch.testing.assert_close(torch.cat([batch.pred_score for batch in predictions]), direct, rtol=0, atol=1e-5)
    with pytest.raises(InputError, match=r"Reference folder '.*missing' \(argument `few_shot_source`\) does not exist"):
        FAPrompt(**tiny_args(k_shot=2, few_shot_source=str(tmp_path / "missing")))
    without = trained_like(FAPrompt, visualizer=False, k_shot=2)
    with pytest.raises(InvalidInputError, match=r"k_shot=2 needs normal reference images.*`few_shot_source`"):
        engine.predict(without, data_path=synthetic_target / "delta" / "test" / "defect")


def test_an_anomalib_datamodule_gives_its_train_split_as_references(synthetic_target, tmp_path):
    """What a benchmark job runs: one anomalib datamodule per category, fit (zero-shot: validates) then test."""
    from anomalib.data import MVTecAD

    datamodule = MVTecAD(root=synthetic_target, category="gamma", num_workers=0, train_batch_size=4, eval_batch_size=4)
    engine = cpu_engine(tmp_path)
    model = trained_like(FAPrompt, visualizer=False, k_shot=2)
    model.zero_shot = True
    engine.fit(model, datamodule=datamodule)
    engine.test(model, datamodule=datamodule)
    ((category, files),) = _references_file(tmp_path).items()
    assert category == "gamma"
    assert len(files) == 2
    assert all(Path(file).parent == synthetic_target / "gamma" / "train" / "good" for file in files)


def test_an_export_from_a_checkpoint_keeps_the_users_few_shot_settings(
    anomalyclip_checkpoint, synthetic_target, tmp_path
):
    """`anomalib export --ckpt_path C --model.k_shot 2 --model.few_shot_source S` and `--model.weights C`: the graph
    of the torch model the user built, bank included (Engine.export is what the command line calls)."""
    import onnxruntime as ort
    import openvino as ov
    from anomalib.deploy import ExportType

    source = str(synthetic_target / "gamma" / "train" / "good")
    few_shot = {"k_shot": 2, "few_shot_source": source, "visualizer": False}
    images = read_images(synthetic_target / "gamma" / "test" / "defect")[:3]
    reference = AnomalyCLIP(**tiny_args(weights=str(anomalyclip_checkpoint), **few_shot)).eval()
    reference.set_references(reference.source_references(run_seed()))  # the export's draw: the run's seed
    with torch.no_grad():
        expected = reference(images)
    engine = cpu_engine(tmp_path)
    trained = AnomalyCLIP(**tiny_args(weights=str(anomalyclip_checkpoint), **few_shot))
    exports = {
        "ckpt_path, onnx": (ExportType.ONNX, AnomalyCLIP(**tiny_args(**few_shot)), anomalyclip_checkpoint),
        "ckpt_path, openvino": (ExportType.OPENVINO, AnomalyCLIP(**tiny_args(**few_shot)), anomalyclip_checkpoint),
        "weights, onnx": (ExportType.ONNX, trained, None),
    }
    for name, (export_type, model, checkpoint) in exports.items():
        path = engine.export(model, export_type, export_root=tmp_path / name.replace(", ", "_"), ckpt_path=checkpoint)
        if export_type == ExportType.ONNX:
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            names = [output.name for output in session.get_outputs()]
            outputs = dict(zip(names, session.run(None, {session.get_inputs()[0].name: images.numpy()}), strict=True))
        else:
            compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
            outputs = {key.get_any_name(): value for key, value in compiled(images.numpy()).items()}
        assert np.abs(outputs["pred_score"] - expected.pred_score.numpy()).max() < 1e-4, name
        assert np.abs(outputs["anomaly_map"] - expected.anomaly_map.numpy()).max() < 1e-4, name
    without = AnomalyCLIP(**tiny_args(k_shot=2, visualizer=False))
    with pytest.raises(InvalidInputError, match=r"k_shot=2 and no references to export with"):
        engine.export(without, ExportType.ONNX, export_root=tmp_path / "refused", ckpt_path=anomalyclip_checkpoint)
