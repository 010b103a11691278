"""Few-shot: the memory bank of normal references, its map and score, and the references of each category."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from anomalib.data.utils import read_image
from anomalib.engine import Engine
from lightning.pytorch import seed_everything

from anomalib_faprompt import AnomalyCLIP, FAPrompt
from anomalib_faprompt.components.few_shot import default_few_shot_layers
from anomalib_faprompt.data import AuxiliaryDataModule, make_synthetic_dataset
from anomalib_faprompt.data.references import SOURCE, choose_references, folder_candidates
from anomalib_faprompt.errors import InputError, InvalidInputError
from anomalib_faprompt.models.few_shot import run_seed
from tests.helpers.commands import REPO, anomalib_cli
from tests.helpers.models import as_if_trained, tiny_args

CONFIG = REPO / "configs" / "faprompt_synthetic_tiny.yaml"


@pytest.fixture(scope="module")
def target(tmp_path_factory) -> Path:
    """Three categories; four normal training images each (the candidates), six normal and six defect test images."""
    return make_synthetic_dataset(tmp_path_factory.mktemp("few") / "target", ("gamma", "delta", "epsilon"), seed=1)


def _images(folder: Path) -> torch.Tensor:
    return torch.stack([read_image(path, as_tensor=True) for path in sorted(folder.glob("*.png"))])


def _model(model_class: type, **overrides):
    torch.manual_seed(0)
    return as_if_trained(model_class(**tiny_args(visualizer=False, **overrides)))


def _ordinary_tokens(model, images: torch.Tensor, layers: tuple[int, ...]) -> list[torch.Tensor]:
    """The ordinary residual stream's patch tokens after each block, with open_clip's own blocks."""
    visual = model.model.backbone.clip.visual
    x = visual._embeds(model.pre_processor.transform(images))
    tokens = {}
    for index, block in enumerate(visual.transformer.resblocks):
        x = block(x)
        tokens[index + 1] = x[:, 1:]
    return [tokens[layer] for layer in layers]


def test_default_layers_are_the_quarter_points():
    assert default_few_shot_layers(24) == (6, 12, 18, 24)
    assert default_few_shot_layers(3) == (1, 2, 3)
    assert default_few_shot_layers(12) == (3, 6, 9, 12)


@pytest.mark.parametrize("model_class", [FAPrompt, AnomalyCLIP])
def test_map_and_score_against_a_direct_computation_of_the_rule(model_class, target):
    model = _model(model_class, k_shot=2)
    references = sorted((target / "gamma" / "train" / "good").glob("*.png"))[:2]
    test = torch.cat(
        [_images(target / "gamma" / "test" / "defect")[:2], _images(target / "gamma" / "test" / "good")[:1]]
    )
    with torch.no_grad():
        zero_shot = model(test)
        model.set_references(references)
        few_shot = model(test)
        layers = model.model.few_shot.layers
        bank = _ordinary_tokens(model, torch.stack([read_image(p, as_tensor=True) for p in references]), layers)
        ours = _ordinary_tokens(model, test, layers)
    association = torch.zeros(test.shape[0], ours[0].shape[1])
    for test_tokens, reference_tokens in zip(ours, bank, strict=True):
        candidates = F.normalize(reference_tokens.flatten(0, 1), dim=-1)
        for image in range(test.shape[0]):
            for patch in range(test_tokens.shape[1]):
                cosine = (F.normalize(test_tokens[image, patch], dim=-1) * candidates).sum(-1).max()
                association[image, patch] += (1 - cosine) / 2 / len(layers)
    expected_score = 0.5 * (zero_shot.pred_score + association.amax(dim=1))
    torch.testing.assert_close(few_shot.pred_score, expected_score, rtol=0, atol=1e-5)
    # Upsampling and blur are linear: the blurred mean of the two patch maps is the mean of the blurred maps.
    expected_map = 0.5 * (zero_shot.anomaly_map + model.model.pixel_map(association))
    torch.testing.assert_close(few_shot.anomaly_map, expected_map, rtol=0, atol=1e-5)
    assert (association > 1e-3).any()


def test_a_reference_scored_as_a_test_image_has_a_few_shot_map_of_zero(target):
    model = _model(FAPrompt, k_shot=2)
    references = sorted((target / "delta" / "train" / "good").glob("*.png"))[:2]
    model.set_references(references)
    images = model.pre_processor.transform(torch.stack([read_image(p, as_tensor=True) for p in references]))
    with torch.no_grad():
        _, _, tokens = model.model.encode_image(images, (model.model.backbone.depth,))
        association = model.model.few_shot.association(tokens)
    assert association.abs().max() < 1e-6


@pytest.mark.parametrize("model_class", [FAPrompt, AnomalyCLIP])
def test_the_torch_model_stores_the_references_the_lightning_model_reads(model_class, target):
    """`set_references(files)` reads and pre-processes the files; the torch model encodes and keeps them."""
    files = sorted((target / "gamma" / "train" / "good").glob("*.png"))[:2]
    images = _images(target / "gamma" / "test" / "defect")[:2]
    lightning = _model(model_class, k_shot=2)
    lightning.set_references(files)
    torch_model = _model(model_class, k_shot=2).model.train()
    batch = lightning.pre_processor.transform(torch.stack([read_image(path, as_tensor=True) for path in files]))
    torch_model.store_references(batch, files)
    assert torch_model.training  # its mode is kept
    assert torch_model.few_shot.references == tuple(map(str, files))
    torch_model.eval()
    with torch.no_grad():
        expected, stored = lightning(images), torch_model(lightning.pre_processor.transform(images))
    torch.testing.assert_close(stored.pred_score, expected.pred_score, rtol=0, atol=0)
    torch.testing.assert_close(stored.anomaly_map, expected.anomaly_map, rtol=0, atol=0)
    torch_model.clear_references()
    assert not torch_model.few_shot.is_set
    assert torch_model.few_shot.references == ()


def test_the_references_of_few_shot_source_are_drawn_with_the_seed_given(target, monkeypatch):
    source = target / "gamma" / "train" / "good"  # four images, two drawn
    model = _model(FAPrompt, k_shot=2, few_shot_source=str(source))
    monkeypatch.setenv("PL_GLOBAL_SEED", "3")  # what `seed_everything(3)` leaves: not read by a draw given its seed
    draws = {seed: model.source_references(seed) for seed in range(8)}
    for seed, files in draws.items():
        assert files == choose_references(folder_candidates(source), 2, seed, SOURCE, "")
        assert files == model.source_references(seed)
    assert len({tuple(files) for files in draws.values()}) > 1


def test_without_references_the_outputs_are_the_zero_shot_ones_bit_for_bit(target):
    zero = _model(FAPrompt)
    few = _model(FAPrompt, k_shot=2)
    images = _images(target / "gamma" / "test" / "defect")[:3]
    with torch.no_grad():
        before = zero(images)
        few.set_references(sorted((target / "gamma" / "train" / "good").glob("*.png"))[:2])
        few.model.clear_references()
        after = few(images)
    assert torch.equal(before.pred_score, after.pred_score)
    assert torch.equal(before.anomaly_map, after.anomaly_map)
    assert not any(name.startswith("model.few_shot") for name in few.state_dict())


def test_the_choice_is_reproducible_with_the_seed_and_never_from_the_test_split(target):
    candidates = sorted((target / "gamma" / "train" / "good").glob("*.png"))
    first = choose_references(candidates, 2, 111, "gamma", "train/good")
    assert first == choose_references(list(reversed(candidates)), 2, 111, "gamma", "train/good")
    choices = {tuple(choose_references(candidates, 2, seed, "gamma", "train/good")) for seed in range(10)}
    assert len(choices) > 1
    datamodule = AuxiliaryDataModule(root=target, target_dataset="MVTecAD", target_root=target, num_workers=0)
    for index, category in enumerate(datamodule.test_categories):
        name, found, _ = datamodule.normal_training_images(index)
        assert name == category
        assert found == sorted((target / category / "train" / "good").glob("*.png"))
        assert all("/test/" not in str(path) for path in found)


def _references_file(root: Path) -> dict[str, list[str]]:
    (path,) = root.rglob("few_shot_references.csv")
    rows: dict[str, list[str]] = {}
    with path.open() as file:
        for row in csv.DictReader(file):
            rows.setdefault(row["category"], []).append(row["file"])
    return rows


@pytest.mark.slow
def test_each_category_is_scored_against_its_own_bank(target, tmp_path):
    torch.manual_seed(0)
    model = _model(FAPrompt, k_shot=2)
    datamodule = AuxiliaryDataModule(
        root=target, target_dataset="MVTecAD", target_root=target, target_categories=["gamma", "delta"], num_workers=0
    )
    engine = Engine(accelerator="cpu", default_root_dir=tmp_path, logger=False, enable_progress_bar=False)
    predictions = engine.predict(model, datamodule=datamodule)
    references = _references_file(tmp_path)
    assert set(references) == {"gamma", "delta"}
    for category, files in references.items():
        assert len(files) == 2
        assert all(Path(file).parent == target / category / "train" / "good" for file in files)
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


@pytest.mark.slow
def test_k_shot_zero_writes_the_zero_shot_table_and_no_references(target, tmp_path):
    tables = {}
    source = str(target / "delta" / "train" / "good")
    for name, arguments in (("zero", {}), ("own", {"k_shot": 2}), ("source", {"k_shot": 2, "few_shot_source": source})):
        datamodule = AuxiliaryDataModule(
            root=target, target_dataset="MVTecAD", target_root=target, target_categories=["gamma"], num_workers=0
        )
        root = tmp_path / name
        Engine(accelerator="cpu", default_root_dir=root, logger=False, enable_progress_bar=False).test(
            _model(FAPrompt, **arguments), datamodule=datamodule
        )
        tables[name] = (next(root.rglob("per_category_results.md")).read_text(), list(root.rglob("few_shot_*")))
    assert "k_shot" not in tables["zero"][0]
    assert not tables["zero"][1]
    assert "k_shot = 2: each category scored against its own normal references" in tables["own"][0]
    assert len(tables["own"][1]) == 1
    assert f"k_shot = 2: every category scored against the same references from `{source}`" in tables["source"][0]


@pytest.mark.slow
def test_missing_and_unreadable_references_are_named_before_any_test_image(target, tmp_path):
    def test(model, data_root: Path) -> None:
        datamodule = AuxiliaryDataModule(root=data_root, target_dataset="MVTecAD", target_root=data_root, num_workers=0)
        engine = Engine(accelerator="cpu", default_root_dir=tmp_path / "run", logger=False, enable_progress_bar=False)
        engine.test(model, datamodule=datamodule)

    with pytest.raises(InvalidInputError, match=r"k_shot=5 needs 5 normal reference images of 'delta'.* has 4"):
        test(_model(FAPrompt, k_shot=5), target)
    damaged = tmp_path / "damaged"
    shutil.copytree(target, damaged)
    broken = sorted((damaged / "epsilon" / "train" / "good").glob("*.png"))
    for path in broken:
        path.write_bytes(b"not a png")
    with pytest.raises(
        InputError, match=rf"Cannot read '{damaged}/epsilon/train/good/.*Replace or remove this reference"
    ):
        test(_model(FAPrompt, k_shot=4), damaged)
    assert not list((tmp_path / "run").rglob("per_category_results*"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InvalidInputError, match=rf"Reference folder '{empty}' .* holds no image file"):
        FAPrompt(**tiny_args(k_shot=2, few_shot_source=str(empty)))
    with pytest.raises(ValueError, match="few_shot_source is used only with k_shot > 0"):
        FAPrompt(**tiny_args(few_shot_source=str(target / "gamma" / "train" / "good")))


@pytest.mark.slow
def test_an_export_carries_its_bank_and_one_without_references_is_refused(target, tmp_path):
    import onnxruntime as ort
    import openvino as ov

    model = _model(AnomalyCLIP, k_shot=2)
    with pytest.raises(InvalidInputError, match=r"k_shot=2 and no references to export with"):
        model.to_onnx(tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    source = target / "gamma" / "train" / "good"
    sourced = _model(AnomalyCLIP, k_shot=2, few_shot_source=str(source))
    onnx_file = sourced.to_onnx(tmp_path / "onnx")
    xml = sourced.to_openvino(tmp_path / "openvino")
    images = _images(target / "gamma" / "test" / "defect")[:3]
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


@pytest.mark.slow
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


def test_the_few_shot_benchmark_config_puts_every_k_shot_beside_winclip(tmp_path):
    import yaml

    from anomalib_faprompt.pipelines import checks
    from anomalib_faprompt.report.benchmark import load_results

    config = yaml.safe_load((REPO / "configs" / "benchmark_few_shot.yaml").read_text())
    assert checks.unknown_arguments(config) == []
    jobs = checks.jobs(config)
    shots = {}
    for job in jobs:
        shots.setdefault(job["model"]["class_path"], set()).add(job["model"]["init_args"]["k_shot"])
    assert shots == {name: {0, 1, 2, 4} for name in ("FAPrompt", "AnomalyCLIP", "WinClip")}
    rows = ["model.class_path,model.init_args.k_shot,data.init_args.category,image_AUROC"]
    rows += [f"{name},{k},candle,0.{50 + k}" for name in ("FAPrompt", "WinClip") for k in (0, 4)]
    (tmp_path / "results.csv").write_text("\n".join(rows) + "\n")
    labels = list(dict.fromkeys(load_results(tmp_path / "results.csv")["model"]))
    assert labels == ["FAPrompt (k_shot=0)", "FAPrompt (k_shot=4)", "WinClip (k_shot=0)", "WinClip (k_shot=4)"]


@pytest.mark.slow
def test_predict_on_files_takes_its_references_from_few_shot_source(target, tmp_path, monkeypatch):
    source = target / "delta" / "train" / "good"
    model = _model(FAPrompt, k_shot=3, few_shot_source=str(source))
    engine = Engine(accelerator="cpu", default_root_dir=tmp_path, logger=False, enable_progress_bar=False)
    for variable in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS"):  # given back after the test
        monkeypatch.setenv(variable, "0")
    seed_everything(5)
    predictions = engine.predict(model, data_path=target / "delta" / "test" / "defect")
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
    without = _model(FAPrompt, k_shot=2)
    with pytest.raises(InvalidInputError, match=r"k_shot=2 needs normal reference images.*`few_shot_source`"):
        engine.predict(without, data_path=target / "delta" / "test" / "defect")


@pytest.mark.slow
def test_an_anomalib_datamodule_gives_its_train_split_as_references(target, tmp_path):
    """What a benchmark job runs: one anomalib datamodule per category, fit (zero-shot: validates) then test."""
    from anomalib.data import MVTecAD

    datamodule = MVTecAD(root=target, category="gamma", num_workers=0, train_batch_size=4, eval_batch_size=4)
    engine = Engine(accelerator="cpu", default_root_dir=tmp_path, logger=False, enable_progress_bar=False)
    model = _model(FAPrompt, k_shot=2)
    model.zero_shot = True
    engine.fit(model, datamodule=datamodule)
    engine.test(model, datamodule=datamodule)
    ((category, files),) = _references_file(tmp_path).items()
    assert category == "gamma"
    assert len(files) == 2
    assert all(Path(file).parent == target / "gamma" / "train" / "good" for file in files)


@pytest.mark.slow
def test_an_export_from_a_checkpoint_keeps_the_users_few_shot_settings(anomalyclip_checkpoint, target, tmp_path):
    """`anomalib export --ckpt_path C --model.k_shot 2 --model.few_shot_source S` and `--model.weights C`: the graph
    of the torch model the user built, bank included (Engine.export is what the command line calls)."""
    import onnxruntime as ort
    import openvino as ov
    from anomalib.deploy import ExportType

    source = str(target / "gamma" / "train" / "good")
    few_shot = {"k_shot": 2, "few_shot_source": source, "visualizer": False}
    images = _images(target / "gamma" / "test" / "defect")[:3]
    reference = AnomalyCLIP(**tiny_args(weights=str(anomalyclip_checkpoint), **few_shot)).eval()
    reference.set_references(reference.source_references(run_seed()))  # the export's draw: the run's seed
    with torch.no_grad():
        expected = reference(images)
    engine = Engine(accelerator="cpu", default_root_dir=tmp_path, logger=False, enable_progress_bar=False)
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
