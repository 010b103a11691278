"""The zero-shot transfer protocol: train on one synthetic dataset's test split, report per category on another."""

from __future__ import annotations

import csv
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from anomalib.data import ImageBatch, MVTecAD, PredictDataset
from anomalib.data.datasets import MVTecADDataset
from anomalib.engine import Engine
from anomalib.metrics import AUPR, AUROC
from anomalib.metrics import aupro as anomalib_aupro
from sklearn.metrics import average_precision_score, roc_auc_score

from anomalib_faprompt import AnomalyCLIP, FAPrompt
from anomalib_faprompt.data import AuxiliaryDataModule, make_synthetic_dataset
from anomalib_faprompt.metrics import PerCategoryEvaluator
from tests.helpers.commands import REPO, anomalib_cli
from tests.helpers.models import tiny_args

TARGET_CATEGORIES = ["delta", "epsilon", "gamma"]
METRICS = ["image_AUROC", "image_AUPR", "pixel_AUROC", "pixel_AUPRO"]


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(path): (path.stat().st_size, path.stat().st_mtime_ns) for path in root.rglob("*")}


def _engine(root: Path, **kwargs) -> Engine:
    return Engine(accelerator="cpu", default_root_dir=root, logger=False, enable_progress_bar=False, **kwargs)


@pytest.fixture
def datasets(synthetic_source, synthetic_target) -> tuple[Path, Path]:
    return synthetic_source, synthetic_target


@pytest.fixture(scope="module")
def cli_run(synthetic_source, synthetic_target, tmp_path_factory) -> dict:
    """``anomalib train --config configs/faprompt_synthetic_tiny.yaml`` on the synthetic pair."""
    source, target = synthetic_source, synthetic_target
    before = _snapshot(source.parent)
    results = tmp_path_factory.mktemp("results")
    anomalib_cli(
        "train", "--config", REPO / "configs" / "faprompt_synthetic_tiny.yaml", "--data.root", source,
        "--data.target_root", target, "--trainer.max_epochs", "1", "--default_root_dir", results,
    )  # fmt: skip
    (table,) = results.rglob("per_category_results.csv")
    (checkpoint,) = results.rglob("*.ckpt")
    with table.open() as file:
        rows = {row["category"]: {name: float(row[name]) for name in METRICS} for row in csv.DictReader(file)}
    return {"table": table, "rows": rows, "checkpoint": checkpoint, "unchanged": before == _snapshot(source.parent)}


@pytest.fixture(scope="module")
def trained(cli_run) -> FAPrompt:
    return FAPrompt.load_from_checkpoint(cli_run["checkpoint"], map_location="cpu").eval()


@pytest.fixture(scope="module")
def predictions(trained, synthetic_target, tmp_path_factory) -> dict[str, dict[str, torch.Tensor]]:
    """Predictions of the trained model on each target category, through anomalib's own MVTecAD datamodule."""
    target = synthetic_target
    engine = _engine(tmp_path_factory.mktemp("predict"))
    outputs = {}
    for category in TARGET_CATEGORIES:
        datamodule = MVTecAD(root=target, category=category, eval_batch_size=8, num_workers=0)
        batches = engine.predict(model=trained, datamodule=datamodule)
        outputs[category] = {
            field: torch.cat([getattr(batch, field) for batch in batches])
            for field in ("pred_score", "pred_label", "anomaly_map", "gt_label", "gt_mask")
        }
    return outputs


@pytest.mark.slow
def test_cli_protocol_writes_per_category_tables(cli_run):
    assert list(cli_run["rows"]) == [*TARGET_CATEGORIES, "mean"]
    for name in METRICS:
        values = [cli_run["rows"][category][name] for category in TARGET_CATEGORIES]
        assert cli_run["rows"]["mean"][name] == pytest.approx(np.mean(values), abs=1e-9)
    markdown = cli_run["table"].with_suffix(".md").read_text().splitlines()
    assert markdown[0] == "| Category | Image AUROC | Image AUPR | Pixel AUROC | Pixel AUPRO |"
    assert [line.split("|")[1].strip() for line in markdown[2:]] == [*TARGET_CATEGORIES, "**mean**"]
    gamma = cli_run["rows"]["gamma"]
    assert markdown[-2] == "| gamma | " + " | ".join(f"{100 * gamma[name]:.1f}" for name in METRICS) + " |"
    assert cli_run["unchanged"], "training wrote into the source dataset folder"


@pytest.mark.slow
def test_table_equals_independent_computation_per_category(cli_run, predictions):
    for category in TARGET_CATEGORIES:
        output, row = predictions[category], cli_run["rows"][category]
        labels, scores = output["gt_label"].numpy(), output["pred_score"].numpy()
        masks, maps = output["gt_mask"].flatten().numpy(), output["anomaly_map"].flatten().numpy()
        assert row["image_AUROC"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-6)
        assert row["image_AUPR"] == pytest.approx(average_precision_score(labels, scores), abs=1e-6)
        assert row["pixel_AUROC"] == pytest.approx(roc_auc_score(masks, maps), abs=1e-5)
        aupro = anomalib_aupro._AUPRO()
        aupro.update(output["anomaly_map"].squeeze(1), output["gt_mask"])
        assert row["pixel_AUPRO"] == pytest.approx(float(aupro.compute()), abs=1e-5)


@pytest.mark.slow
def test_target_scores_are_the_raw_model_probabilities(trained, predictions, datasets):
    output = predictions["gamma"]
    dataset = MVTecADDataset(root=datasets[1], category="gamma", split="test")
    images = torch.stack([dataset[index].image for index in range(len(dataset))])
    with torch.no_grad():
        raw = trained.model(trained.pre_processor.transform(images))
    torch.testing.assert_close(output["pred_score"], raw.pred_score, rtol=0, atol=1e-6)
    torch.testing.assert_close(output["anomaly_map"], raw.anomaly_map.squeeze(1), rtol=0, atol=1e-6)
    assert torch.equal(output["pred_label"], output["pred_score"] >= 0.5)


@pytest.mark.slow
def test_checkpoint_tests_on_an_anomalib_datamodule_without_training(cli_run, datasets, tmp_path):
    # What `anomalib test --model FAPrompt --ckpt_path ... --data MVTecAD --data.category gamma` runs.
    _, target = datasets
    model = FAPrompt.load_from_checkpoint(cli_run["checkpoint"], map_location="cpu")
    (results,) = _engine(tmp_path).test(
        model=model, datamodule=MVTecAD(root=target, category="gamma", eval_batch_size=8, num_workers=0)
    )
    for name in METRICS:
        assert results[name] == pytest.approx(cli_run["rows"]["gamma"][name], abs=1e-6)
    (table,) = tmp_path.rglob("per_category_results.csv")
    assert table.read_text().splitlines()[1].startswith("gamma,")


@pytest.mark.slow
def test_predict_on_a_folder_of_images(trained, predictions, datasets, tmp_path):
    # What `anomalib predict --ckpt_path ... --data path/to/images` runs.
    _, target = datasets
    folder = target / "gamma" / "test" / "defect"
    batches = _engine(tmp_path).predict(model=trained, dataset=PredictDataset(folder, image_size=(64, 64)))
    scores = torch.cat([batch.pred_score for batch in batches])
    paths = [Path(path).name for batch in batches for path in batch.image_path]
    assert paths == sorted(path.name for path in folder.iterdir())
    with torch.no_grad():
        dataset = PredictDataset(folder, image_size=(64, 64))
        images = torch.stack([dataset[index].image for index in range(len(paths))])
        raw = trained.model(trained.pre_processor.transform(images)).pred_score
    torch.testing.assert_close(scores, raw, rtol=0, atol=1e-6)


def test_evaluator_computes_each_dataloader_separately(tmp_path):
    metrics = [
        AUROC(fields=["pred_score", "gt_label"], prefix="image_"),
        AUPR(fields=["pred_score", "gt_label"], prefix="image_"),
    ]
    evaluator = PerCategoryEvaluator(test_metrics=metrics)
    trainer = SimpleNamespace(
        test_dataloaders=[None, None],
        datamodule=SimpleNamespace(test_categories=["first", "second"]),
        barebones=True,
        callback_metrics={},
        logged_metrics={},
        default_root_dir=tmp_path,
        is_global_zero=True,
    )
    generator = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 0, 1, 1, 0, 1, 0, 1])
    data = {
        "first": 0.6 * torch.rand(8, generator=generator) + 0.3 * labels,
        "second": 0.4 + 0.6 * torch.rand(8, generator=generator),
    }
    evaluator.on_test_epoch_start(trainer, None)
    for index, scores in enumerate(data.values()):
        for start in (0, 4):
            batch = ImageBatch(
                image=torch.zeros(4, 3, 4, 4), pred_score=scores[start : start + 4], gt_label=labels[start : start + 4]
            )
            evaluator.on_test_batch_end(trainer, None, None, batch, start // 4, index)
    evaluator.on_test_epoch_end(trainer, None)

    expected = {
        category: {"image_AUROC": roc_auc_score(labels, scores), "image_AUPR": average_precision_score(labels, scores)}
        for category, scores in data.items()
    }
    for category, values in expected.items():
        for name, value in values.items():
            assert evaluator.category_results[category][name] == pytest.approx(value, abs=1e-6)
            assert float(trainer.logged_metrics[f"{category}/{name}"]) == pytest.approx(value, abs=1e-6)
    mean_auroc = np.mean([values["image_AUROC"] for values in expected.values()])
    assert float(trainer.logged_metrics["image_AUROC"]) == pytest.approx(mean_auroc, abs=1e-6)
    pooled = roc_auc_score(torch.cat([labels, labels]), torch.cat(list(data.values())))
    assert not math.isclose(mean_auroc, pooled, abs_tol=1e-3)
    with (tmp_path / "per_category_results.csv").open() as file:
        rows = list(csv.reader(file))
    assert rows[0] == ["category", "image_AUROC", "image_AUPR"]
    assert [row[0] for row in rows[1:]] == ["first", "second", "mean"]
    assert float(rows[1][1]) == pytest.approx(expected["first"]["image_AUROC"], abs=1e-6)


def test_auxiliary_data_sources_masks_and_categories(datasets, tmp_path):
    source, _ = datasets
    datamodule = AuxiliaryDataModule(root=source, val_split_ratio=0.25, num_workers=0)
    datamodule.setup()
    samples = datamodule.train_data.samples
    assert len(samples) + len(datamodule.val_data.samples) == 2 * 12
    assert set(datamodule.val_data.samples.label_index) == {0, 1}
    item = next(datamodule.train_data[index] for index in range(len(samples)) if samples.label_index[index] == 1)
    assert set(item.gt_mask.unique().tolist()) == {0, 1}
    assert datamodule.name == "synthetic_source"  # MVTec AD's layout, not its categories: named after the folder
    assert datamodule.category == "all"

    only_alpha = AuxiliaryDataModule(root=source, categories=["alpha"], val_split_ratio=0.25, num_workers=0)
    only_alpha.setup()
    paths = [*only_alpha.train_data.samples.image_path, *only_alpha.val_data.samples.image_path]
    assert len(paths) == 12
    assert all("/alpha/" in path for path in paths)
    with pytest.raises(ValueError, match="val_split_ratio"):
        AuxiliaryDataModule(root=source, categories=["alpha"], val_split_ratio=0.05).setup()
    with pytest.raises(ValueError, match="omega"):
        AuxiliaryDataModule(root=source, categories=["omega"]).setup()

    folder = tmp_path / "custom"
    shutil.copytree(source / "beta" / "test" / "good", folder / "good")
    shutil.copytree(source / "beta" / "test" / "defect", folder / "defect")
    shutil.copytree(source / "beta" / "ground_truth" / "defect", folder / "ground_truth")
    both = AuxiliaryDataModule(
        root=[source, folder], dataset=["MVTecAD", "Folder"], categories=["alpha"], val_split_ratio=0.25
    )
    both.setup()
    combined = [*both.train_data.samples.itertuples(), *both.val_data.samples.itertuples()]
    assert len(combined) == 12 + 12
    assert all(row.mask_path for row in combined if row.label_index == 1)
    assert both.name == "synthetic_source+custom"

    visa = tmp_path / "visa"  # anomalib's prepared VisA layout: <root>/visa_pytorch/<category>/...
    make_synthetic_dataset(visa / "visa_pytorch", categories=("candle", "pcb1"), n_train=1, n_good=4, n_defect=4)
    transfer = AuxiliaryDataModule(
        root=source, val_split_ratio=0.25, target_dataset="Visa", target_root=visa, target_categories=["pcb1"]
    )
    transfer.prepare_data()
    transfer.setup()
    assert transfer.name == "synthetic_source_to_Visa"
    assert transfer.test_categories == ["pcb1"]
    (loader,) = transfer.test_dataloader()
    assert len(loader.dataset) == 8
    assert all("/visa_pytorch/pcb1/" in path for path in loader.dataset.samples.image_path)


@pytest.mark.slow
def test_missing_masks_raise_or_train_image_level_only(datasets, tmp_path):
    source, _ = datasets
    root = tmp_path / "partial"
    shutil.copytree(source / "alpha", root / "alpha")
    missing = root / "alpha" / "ground_truth" / "defect" / "002_mask.png"
    missing.unlink()
    with pytest.raises(ValueError, match=r"002\.png.*pixel_losses: false"):
        AuxiliaryDataModule(root=root).setup()

    datamodule = AuxiliaryDataModule(root=root, masks=False, val_split_ratio=0.25, train_batch_size=4, num_workers=0)
    datamodule.setup()
    assert datamodule.train_data.task == "classification"
    assert len(datamodule.train_data) + len(datamodule.val_data) == 12
    assert all(datamodule.train_data[index].gt_mask is None for index in range(3))

    model = FAPrompt(**tiny_args(pixel_losses=False))
    engine = _engine(tmp_path / "run", max_epochs=1, limit_train_batches=2, limit_val_batches=1)
    engine.fit(model=model, datamodule=datamodule)
    logged = engine.trainer.logged_metrics
    assert "train_loss_ce" in logged
    assert "train_loss_local" not in logged
    assert "train_loss_dap_local" not in logged

    with pytest.raises(ValueError, match="pixel_losses=False"):
        FAPrompt(**tiny_args()).targets(next(iter(datamodule.train_dataloader())))


def test_target_without_masks_is_refused_or_tested_image_level_with_masks_false(datasets, tmp_path):
    source, target = datasets
    root = tmp_path / "target"
    shutil.copytree(target / "gamma", root / "gamma")
    for mask in (root / "gamma" / "ground_truth").rglob("*.png"):
        mask.unlink()
    with pytest.raises(ValueError, match=r"gamma.*no mask file.*`masks: false` on the data \(image metrics only"):
        AuxiliaryDataModule(root=source, target_dataset="MVTecAD", target_root=root, num_workers=0).setup()

    datamodule = AuxiliaryDataModule(
        root=source, masks=False, target_dataset="MVTecAD", target_root=root, num_workers=0
    )
    datamodule.setup()
    (gamma,) = datamodule.target_data
    assert gamma.task == "classification"
    assert sorted(set(gamma.samples.label_index)) == [0, 1]
    assert all(gamma[index].gt_mask is None for index in range(len(gamma)))


@pytest.mark.parametrize(("model_class", "pixel_terms"), [(FAPrompt, {"local", "dap_local"}), (AnomalyCLIP, {"local"})])
def test_image_level_losses_are_the_pixel_free_subset(model_class, pixel_terms, tiny_model_args):
    model = model_class(**tiny_model_args)
    images, labels = torch.randn(2, 3, 64, 64), torch.tensor([0, 1])
    masks = torch.zeros(2, 64, 64)
    masks[1, 10:20, 10:20] = 1
    torch.manual_seed(0)
    full = model.compute_losses(images, labels, masks)
    torch.manual_seed(0)
    image_level = model.compute_losses(images, labels, None)
    assert set(full) - set(image_level) == pixel_terms
    assert image_level
    for name, value in image_level.items():
        torch.testing.assert_close(value, full[name])
