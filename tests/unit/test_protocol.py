"""The zero-shot transfer protocol's parts: per-category evaluation, the auxiliary data, image-level losses.

tests/integration/test_protocol.py runs the protocol through anomalib's command line and Engine.
"""

from __future__ import annotations

import csv
import math
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from anomalib.data import ImageBatch
from anomalib.metrics import AUPR, AUROC
from sklearn.metrics import average_precision_score, roc_auc_score

from anomalib_faprompt import AnomalyCLIP, FAPrompt
from anomalib_faprompt.data import AuxiliaryDataModule, make_synthetic_dataset
from anomalib_faprompt.metrics import PerCategoryEvaluator


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


def test_auxiliary_data_sources_masks_and_categories(synthetic_source, tmp_path):
    source = synthetic_source
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


def test_target_without_masks_is_refused_or_tested_image_level_with_masks_false(
    synthetic_source, synthetic_target, tmp_path
):
    source, target = synthetic_source, synthetic_target
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
