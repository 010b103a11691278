"""The zero-shot transfer protocol: train on one synthetic dataset's test split, report per category on another."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from anomalib.data import MVTecAD, PredictDataset
from anomalib.data.datasets import MVTecADDataset
from anomalib.metrics import aupro as anomalib_aupro
from sklearn.metrics import average_precision_score, roc_auc_score

from anomalib_faprompt import FAPrompt
from anomalib_faprompt.data import AuxiliaryDataModule
from tests.helpers.commands import REPO, anomalib_cli
from tests.helpers.data import METRICS, snapshot
from tests.helpers.engine import cpu_engine
from tests.helpers.models import tiny_args

TARGET_CATEGORIES = ["delta", "epsilon", "gamma"]


@pytest.fixture
def datasets(synthetic_source, synthetic_target) -> tuple[Path, Path]:
    return synthetic_source, synthetic_target


@pytest.fixture(scope="module")
def cli_run(synthetic_source, synthetic_target, tmp_path_factory) -> dict:
    """``anomalib train --config configs/faprompt_synthetic_tiny.yaml`` on the synthetic pair."""
    source, target = synthetic_source, synthetic_target
    before = snapshot(source.parent)
    results = tmp_path_factory.mktemp("results")
    anomalib_cli(
        "train", "--config", REPO / "configs" / "faprompt_synthetic_tiny.yaml", "--data.root", source,
        "--data.target_root", target, "--trainer.max_epochs", "1", "--default_root_dir", results,
    )  # fmt: skip
    (table,) = results.rglob("per_category_results.csv")
    (checkpoint,) = results.rglob("*.ckpt")
    with table.open() as file:
        rows = {row["category"]: {name: float(row[name]) for name in METRICS} for row in csv.DictReader(file)}
    return {"table": table, "rows": rows, "checkpoint": checkpoint, "unchanged": before == snapshot(source.parent)}


@pytest.fixture(scope="module")
def trained(cli_run) -> FAPrompt:
    return FAPrompt.load_from_checkpoint(cli_run["checkpoint"], map_location="cpu").eval()


@pytest.fixture(scope="module")
def predictions(trained, synthetic_target, tmp_path_factory) -> dict[str, dict[str, torch.Tensor]]:
    """Predictions of the trained model on each target category, through anomalib's own MVTecAD datamodule."""
    target = synthetic_target
    engine = cpu_engine(tmp_path_factory.mktemp("predict"))
    outputs = {}
    for category in TARGET_CATEGORIES:
        datamodule = MVTecAD(root=target, category=category, eval_batch_size=8, num_workers=0)
        batches = engine.predict(model=trained, datamodule=datamodule)
        outputs[category] = {
            field: torch.cat([getattr(batch, field) for batch in batches])
            for field in ("pred_score", "pred_label", "anomaly_map", "gt_label", "gt_mask")
        }
    return outputs


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


def test_target_scores_are_the_raw_model_probabilities(trained, predictions, datasets):
    output = predictions["gamma"]
    dataset = MVTecADDataset(root=datasets[1], category="gamma", split="test")
    images = torch.stack([dataset[index].image for index in range(len(dataset))])
    with torch.no_grad():
        raw = trained.model(trained.pre_processor.transform(images))
    torch.testing.assert_close(output["pred_score"], raw.pred_score, rtol=0, atol=1e-6)
    torch.testing.assert_close(output["anomaly_map"], raw.anomaly_map.squeeze(1), rtol=0, atol=1e-6)
    assert torch.equal(output["pred_label"], output["pred_score"] >= 0.5)


def test_checkpoint_tests_on_an_anomalib_datamodule_without_training(cli_run, datasets, tmp_path):
    # What `anomalib test --model FAPrompt --ckpt_path ... --data MVTecAD --data.category gamma` runs.
    _, target = datasets
    model = FAPrompt.load_from_checkpoint(cli_run["checkpoint"], map_location="cpu")
    (results,) = cpu_engine(tmp_path).test(
        model=model, datamodule=MVTecAD(root=target, category="gamma", eval_batch_size=8, num_workers=0)
    )
    for name in METRICS:
        assert results[name] == pytest.approx(cli_run["rows"]["gamma"][name], abs=1e-6)
    (table,) = tmp_path.rglob("per_category_results.csv")
    assert table.read_text().splitlines()[1].startswith("gamma,")


def test_predict_on_a_folder_of_images(trained, predictions, datasets, tmp_path):
    # What `anomalib predict --ckpt_path ... --data path/to/images` runs.
    _, target = datasets
    folder = target / "gamma" / "test" / "defect"
    batches = cpu_engine(tmp_path).predict(model=trained, dataset=PredictDataset(folder, image_size=(64, 64)))
    scores = torch.cat([batch.pred_score for batch in batches])
    paths = [Path(path).name for batch in batches for path in batch.image_path]
    assert paths == sorted(path.name for path in folder.iterdir())
    with torch.no_grad():
        dataset = PredictDataset(folder, image_size=(64, 64))
        images = torch.stack([dataset[index].image for index in range(len(paths))])
        raw = trained.model(trained.pre_processor.transform(images)).pred_score
    torch.testing.assert_close(scores, raw, rtol=0, atol=1e-6)


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
    engine = cpu_engine(tmp_path / "run", max_epochs=1, limit_train_batches=2, limit_val_batches=1)
    engine.fit(model=model, datamodule=datamodule)
    logged = engine.trainer.logged_metrics
    assert "train_loss_ce" in logged
    assert "train_loss_local" not in logged
    assert "train_loss_dap_local" not in logged

    with pytest.raises(ValueError, match="pixel_losses=False"):
        FAPrompt(**tiny_args()).targets(next(iter(datamodule.train_dataloader())))
