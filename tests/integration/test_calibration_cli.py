"""`anomalib test`, `predict` and `export` with `--model.false_alarm_rate` on the toy data, from a checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from anomalib.data.utils import read_image

from anomalib_faprompt.data import make_synthetic_dataset
from tests.helpers.commands import REPO, anomalib_cli
from tests.helpers.data import csv_rows

CONFIG = REPO / "configs" / "faprompt_synthetic_tiny.yaml"


@pytest.fixture(scope="module")
def trained(synthetic_source, faprompt_checkpoint, tmp_path_factory) -> tuple[Path, Path, Path]:
    """The README's toy protocol's source and checkpoint (the session's), and a target with ten normal training
    images per category to calibrate on."""
    root = tmp_path_factory.mktemp("calibration_cli")
    target = make_synthetic_dataset(root / "target", categories=("gamma", "delta"), n_train=10, seed=1)
    return synthetic_source, target, faprompt_checkpoint


def test_cli_test_with_a_false_alarm_rate_calibrates_each_category(trained, tmp_path):
    source, target, checkpoint = trained
    output = anomalib_cli(
        "test", "--config", CONFIG, "--data.root", source, "--data.target_root", target, "--ckpt_path", checkpoint,
        "--model.false_alarm_rate", "0.1", "--default_root_dir", tmp_path / "results", cwd=tmp_path,
    ).output  # fmt: skip
    (thresholds,) = (tmp_path / "results").rglob("calibration_thresholds.csv")
    run = thresholds.parent
    rows = csv_rows(thresholds)
    assert [(row["category"], row["n"], row["k"]) for row in rows] == [("delta", "10", "10"), ("gamma", "10", "10")]
    listed = csv_rows(run / "calibration_images.csv")
    for row in rows:  # n = 10, a = 0.1: k = ceil(11 * 0.9) = 10, the largest listed score
        mine = [item for item in listed if item["category"] == row["category"]]
        assert float(row["image_threshold"]) == max(float(item["score"]) for item in mine)
        assert sorted(Path(item["file"]) for item in mine) == sorted(
            (target / row["category"] / "train" / "good").glob("*")
        )
    table = csv_rows(run / "per_category_results.csv")
    assert [row["category"] for row in table] == ["delta", "gamma", "mean"]
    assert all(row["image_false_alarms"] != "" and row["image_defects_flagged"] != "" for row in table)
    assert "I-false_alarms" in output
    assert "false_alarm_rate = 0.1: labels at each category's thresholds" in " ".join(output.split())


def test_cli_predict_with_a_false_alarm_rate_and_a_threshold_set_by_the_user(trained, tmp_path):
    """With `--ckpt_path`, the threshold the user sets decides, not the checkpoint's post-processor settings."""
    _, target, checkpoint = trained
    folder = target / "gamma" / "test"
    common = ["predict", "--config", CONFIG, "--ckpt_path", checkpoint, "--data", folder]
    calibration = ["--model.false_alarm_rate", "0.1", "--model.calibration_source", target / "delta" / "train" / "good"]
    anomalib_cli(*common, *calibration, "--default_root_dir", tmp_path / "calibrated", cwd=tmp_path)
    user = [
        "--model.post_processor", "anomalib.post_processing.PostProcessor",
        "--model.post_processor.enable_normalization", "false",
        "--model.post_processor.image_sensitivity", "0.7",
    ]  # fmt: skip
    anomalib_cli(*common, *user, "--default_root_dir", tmp_path / "user", cwd=tmp_path)
    (thresholds,) = csv_rows(next((tmp_path / "calibrated").rglob("calibration_thresholds.csv")))
    calibrated = csv_rows(next((tmp_path / "calibrated").rglob("predictions.csv")))
    assert list(calibrated[0]) == ["file", "score", "label", "p_value", "threshold"]
    for row in calibrated:
        assert row["label"] == str(int(float(row["score"]) > float(thresholds["image_threshold"])))
        assert row["threshold"] == thresholds["image_threshold"]
    set_by_user = csv_rows(next((tmp_path / "user").rglob("predictions.csv")))
    scores = np.array([float(row["score"]) for row in set_by_user])
    assert ((scores > 0.3) & (scores <= 0.5)).any()  # 0.3 and the checkpoint's 0.5 label differently
    assert [row["label"] for row in set_by_user] == [str(int(score > np.float32(0.3))) for score in scores]


def test_cli_export_with_a_false_alarm_rate_carries_the_thresholds(trained, tmp_path):
    import onnxruntime as ort

    data, target, checkpoint = trained
    source = target / "delta" / "train" / "good"
    anomalib_cli(
        "export", "--config", CONFIG, "--data.root", data, "--data.target_root", target, "--ckpt_path", checkpoint,
        "--model.false_alarm_rate", "0.1", "--model.calibration_source", source, "--export_type", "onnx",
        "--export_root", tmp_path / "export", cwd=tmp_path,
    )  # fmt: skip
    (thresholds,) = csv_rows(tmp_path / "export" / "weights" / "onnx" / "calibration_thresholds.csv")
    assert (thresholds["category"], thresholds["n"]) == ("calibration_source", "10")
    session = ort.InferenceSession(
        str(tmp_path / "export" / "weights" / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    files = sorted((target / "delta" / "test").glob("*/*.png"))
    images = torch.stack([read_image(path, as_tensor=True) for path in files]).numpy()
    names = [output.name for output in session.get_outputs()]
    outputs = dict(zip(names, session.run(None, {session.get_inputs()[0].name: images}), strict=True))
    threshold = float(thresholds["image_threshold"])
    assert np.array_equal(outputs["pred_label"].astype(bool), outputs["pred_score"] > threshold)
    assert not np.array_equal(outputs["pred_label"].astype(bool), outputs["pred_score"] > 0.5)
