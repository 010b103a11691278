"""Both models end to end on a synthetic MVTec-AD-layout dataset: anomalib's Engine and the `anomalib` command line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback

from anomalib_faprompt import AnomalyCLIP, FAPrompt
from anomalib_faprompt.data import AuxiliaryDataModule
from tests.helpers.commands import REPO, anomalib_cli
from tests.helpers.data import METRICS, csv_rows, results_table
from tests.helpers.engine import cpu_engine
from tests.helpers.models import tiny_args

CONFIG = REPO / "configs" / "faprompt_tiny.yaml"


@pytest.fixture(scope="session")
def dataset_root(synthetic_source) -> Path:
    """Two categories, each 6 normal and 6 defect test images (with masks) and 4 normal training images."""
    return synthetic_source


class _LossRecorder(Callback):
    """Training loss of every step, by epoch."""

    def __init__(self) -> None:
        self.losses: dict[int, list[float]] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.setdefault(trainer.current_epoch, []).append(float(outputs["loss"]))


def test_engine_trains_loss_down_and_tests(dataset_root, tmp_path):
    torch.manual_seed(0)
    model = FAPrompt(**tiny_args())
    datamodule = AuxiliaryDataModule(root=dataset_root, val_split_ratio=0.25, num_workers=0)
    recorder = _LossRecorder()
    engine = cpu_engine(tmp_path, max_epochs=3, callbacks=[recorder])
    engine.fit(model, datamodule=datamodule)

    assert sorted(recorder.losses) == [0, 1, 2]
    means = [sum(values) / len(values) for _, values in sorted(recorder.losses.items())]
    assert all(len(values) == 3 for values in recorder.losses.values())  # 18 training images, batch 8
    assert means[-1] < 0.8 * means[0], means  # without training (learning rate 1e-12) the means stay within 2%

    (results,) = engine.test(model, datamodule=datamodule)
    assert set(METRICS) <= set(results)
    for name in METRICS:
        assert 0.0 <= results[name] <= 1.0, (name, results[name])


# --- the `anomalib` command line in a subprocess ---------------------------------------------------------------------


def _metrics(results: Path) -> dict[str, float]:
    """The test metrics (the mean row) of the run's table, which the evaluator prints and writes."""
    return {name: float(value) for name, value in results_table(results)["mean"].items() if name != "category"}


@pytest.fixture(scope="module")
def cli_train(dataset_root, tmp_path_factory) -> tuple[str, Path]:
    """`anomalib train --model FAPrompt --config configs/faprompt_tiny.yaml` on the synthetic data."""
    results = tmp_path_factory.mktemp("cli_train")
    output = anomalib_cli(
        "train", "--model", "FAPrompt", "--config", CONFIG, "--data.root", dataset_root, "--default_root_dir", results,
        cwd=results,
    ).output  # fmt: skip
    return output, results


def test_cli_train_with_short_name(cli_train):
    output, results = cli_train
    metrics = _metrics(results)
    assert set(metrics) == set(METRICS), output[-3000:]
    assert f"Results in {next(results.rglob('per_category_results.csv')).parent.resolve()}: " in output
    assert all(0.0 <= value <= 1.0 for value in metrics.values())
    assert "max_epochs=2" in output
    assert len(list(results.rglob("*.ckpt"))) == 1


def test_cli_test_with_class_path_reproduces_metrics(cli_train, dataset_root, tmp_path):
    _, results = cli_train
    (checkpoint,) = results.rglob("*.ckpt")
    output = anomalib_cli(
        "test", "--model", "anomalib_faprompt.FAPrompt", "--config", CONFIG, "--data.root", dataset_root,
        "--default_root_dir", tmp_path, "--ckpt_path", checkpoint, cwd=tmp_path,
    ).output  # fmt: skip
    metrics, trained = _metrics(tmp_path), _metrics(results)
    assert set(metrics) == set(METRICS), output[-3000:]
    for name in METRICS:
        assert metrics[name] == pytest.approx(trained[name], abs=1e-6), name


def test_cli_predict_from_checkpoint(cli_train, dataset_root, tmp_path):
    """The command's predictions.csv holds, for every image, the score and label ``Engine.predict`` gives."""
    _, results = cli_train
    (checkpoint,) = results.rglob("*.ckpt")
    images = dataset_root / "alpha" / "test" / "defect"
    anomalib_cli(
        "predict", "--model", "FAPrompt", "--config", CONFIG, "--data", images, "--default_root_dir", tmp_path / "cli",
        "--ckpt_path", checkpoint, "--return_predictions", "false", cwd=tmp_path,
    )  # fmt: skip
    written = sorted(path.name for path in (tmp_path / "cli").rglob("*.png"))
    assert written == sorted(path.name for path in images.glob("*.png"))
    (listed,) = (tmp_path / "cli").rglob("predictions.csv")
    rows = {row["file"]: (float(row["score"]), row["label"]) for row in csv_rows(listed)}
    predictions = cpu_engine(tmp_path / "engine").predict(
        FAPrompt(**tiny_args()), data_path=images, ckpt_path=checkpoint
    )
    expected = {
        path: (float(score), str(int(label)))
        for batch in predictions
        for path, score, label in zip(
            batch.image_path, batch.pred_score.flatten(), batch.pred_label.flatten(), strict=True
        )
    }
    assert sorted(rows) == sorted(str(path) for path in images.glob("*.png"))
    assert rows.keys() == expected.keys()
    for file, (score, label) in rows.items():
        assert score == pytest.approx(expected[file][0], abs=1e-6), file
        assert label == expected[file][1], file


def test_anomalyclip_training_through_engine_lowers_the_loss(synthetic_source, tmp_path):
    datamodule = AuxiliaryDataModule(
        root=synthetic_source, categories=["alpha"], val_split_ratio=0.25, train_batch_size=12, num_workers=0
    )
    torch.manual_seed(0)
    module = AnomalyCLIP(**tiny_args(learning_rate=1e-2))
    before = {name: value.detach().clone() for name, value in module.model.named_parameters()}
    recorder = _LossRecorder()
    engine = cpu_engine(tmp_path, max_epochs=6, callbacks=[recorder])
    engine.fit(module, datamodule=datamodule)

    losses = [loss for _, values in sorted(recorder.losses.items()) for loss in values]
    assert len(losses) == 6  # one batch per epoch (9 or 10 of alpha's 12 images)
    assert losses[-1] < 0.9 * losses[0]
    for name, value in module.model.named_parameters():
        assert torch.equal(value, before[name]) is not value.requires_grad, name  # only the prompts move
