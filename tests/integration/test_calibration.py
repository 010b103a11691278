"""Calibrated thresholds in the runs: the images chosen, scored and listed; labels, p-values; refusals; leaks."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from anomalib.data.utils import read_image
from anomalib.post_processing import PostProcessor
from PIL import Image as PILImage

from anomalib_faprompt import FAPrompt
from anomalib_faprompt.data import AuxiliaryDataModule, make_synthetic_dataset
from anomalib_faprompt.errors import InputError, InvalidInputError, MissingInputError
from tests.helpers.commands import REPO, subprocess_env
from tests.helpers.data import csv_rows
from tests.helpers.engine import cpu_engine
from tests.helpers.models import each_model, tiny_args, trained_like, write_checkpoint

CATEGORIES = ("gamma", "delta")


@pytest.fixture(scope="module")
def target(tmp_path_factory) -> Path:
    """Two categories with twelve normal training images each (the candidates), six normal and six defect tests."""
    return make_synthetic_dataset(tmp_path_factory.mktemp("calibration") / "target", CATEGORIES, n_train=12, seed=1)


def _datamodule(target: Path, **kwargs) -> AuxiliaryDataModule:
    return AuxiliaryDataModule(root=target, target_dataset="MVTecAD", target_root=target, num_workers=0, **kwargs)


def _only(root: Path, name: str) -> Path:
    (path,) = root.rglob(name)
    return path


def _direct(model, files: list[str], references: list[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores and map maxima of image files by the torch model itself, against ``references`` (few-shot)."""
    if references:
        model.set_references(references)
    images = model.pre_processor.transform(torch.stack([read_image(file, as_tensor=True) for file in files]))
    model.model.thresholds.clear()
    with torch.no_grad():
        output = model.model(images)
    return output.pred_score, output.anomaly_map.flatten(1).amax(dim=1)


def test_a_calibrated_test_and_predict_list_their_images_and_label_at_the_thresholds(target, tmp_path, monkeypatch):
    """k_shot = 2, a = 0.1: each category's 10 calibration images are its training images less its references; the
    listed scores are the model's; every threshold, label and p-value follows from the listed scores by hand. Each
    reference image is read once per run, though its category's bank is built for the calibration and the test."""
    opened: Counter = Counter()
    open_image = PILImage.open

    def counting_open(file, *args, **kwargs):
        opened[str(file)] += 1
        return open_image(file, *args, **kwargs)

    monkeypatch.setattr(PILImage, "open", counting_open)
    model = trained_like(FAPrompt, visualizer=False, k_shot=2, false_alarm_rate=0.1)
    engine = cpu_engine(tmp_path)
    engine.test(model, datamodule=_datamodule(target))
    read_in_test = Counter(opened)
    predictions = engine.predict(model, datamodule=_datamodule(target))
    assert not model.model.thresholds.is_set  # the thresholds of the run do not outlive it

    run = _only(tmp_path, "calibration_thresholds.csv").parent
    references: dict[str, list[str]] = {}
    for row in csv_rows(run / "few_shot_references.csv"):
        references.setdefault(row["category"], []).append(row["file"])
    for file in (file for files in references.values() for file in files):
        assert (read_in_test[file], opened[file]) == (1, 2), file
    listed: dict[str, list[dict[str, str]]] = {}
    for row in csv_rows(run / "calibration_images.csv"):
        listed.setdefault(row["category"], []).append(row)
    thresholds = {row["category"]: row for row in csv_rows(run / "calibration_thresholds.csv")}
    assert sorted(listed) == sorted(thresholds) == sorted(CATEGORIES)
    assert csv_rows(run / "calibration_images_1.csv") == csv_rows(run / "calibration_images.csv")  # predict: the same
    for category in CATEGORIES:
        files = [row["file"] for row in listed[category]]
        training = sorted(str(path) for path in (target / category / "train" / "good").glob("*.png"))
        assert sorted(files) == sorted(set(training) - set(references[category]))
        scores, maxima = _direct(model, files, references[category])
        listed_scores = [float(row["score"]) for row in listed[category]]
        listed_maxima = [float(row["map_max"]) for row in listed[category]]
        torch.testing.assert_close(torch.tensor(listed_scores), scores, rtol=0, atol=1e-6)
        torch.testing.assert_close(torch.tensor(listed_maxima), maxima, rtol=0, atol=1e-6)
        row = thresholds[category]
        assert (row["n"], row["false_alarm_rate"], row["k"]) == ("10", "0.1", "10")  # k = ceil(11 * 0.9) = 10
        assert float(row["image_threshold"]) == sorted(listed_scores)[9]
        assert float(row["pixel_threshold"]) == sorted(listed_maxima)[9]
        # The table's realised rates: the share of the category's normal (defect) test images above the threshold.
        table = {item["category"]: item for item in csv_rows(run / "per_category_results.csv")}[category]
        for column, folder in (("image_false_alarms", "good"), ("image_defects_flagged", "defect")):
            tested = sorted(str(path) for path in (target / category / "test" / folder).glob("*.png"))
            above = (_direct(model, tested, references[category])[0] > float(row["image_threshold"])).float().mean()
            assert float(table[column]) == pytest.approx(float(above)), (category, column)

    means = csv_rows(run / "per_category_results.csv")[-1]
    assert means["category"] == "mean"
    assert float(means["image_false_alarms"]) == pytest.approx(
        sum(float(row["image_false_alarms"]) for row in csv_rows(run / "per_category_results.csv")[:-1]) / 2
    )
    assert "false_alarm_rate = 0.1: labels at each category's thresholds, calibrated on its normal training" in (
        (run / "per_category_results.md").read_text().replace("\n", " ")
    )

    written = csv_rows(run / "predictions.csv")
    assert list(written[0]) == ["file", "score", "label", "p_value", "threshold"]
    masks = {
        path: mask
        for batches in predictions
        for batch in batches
        for path, mask in zip(batch.image_path, batch.pred_mask, strict=True)
    }
    maps = {
        path: amap
        for batches in predictions
        for batch in batches
        for path, amap in zip(batch.image_path, batch.anomaly_map, strict=True)
    }
    flagged = 0
    for row in written:
        category = Path(row["file"]).parents[2].name
        threshold = float(thresholds[category]["image_threshold"])
        calibration_scores = [float(item["score"]) for item in listed[category]]
        score = float(row["score"])
        assert float(row["threshold"]) == threshold
        assert row["label"] == str(int(score > threshold))
        assert float(row["p_value"]) == pytest.approx((1 + sum(s >= score for s in calibration_scores)) / 11)
        pixel = float(thresholds[category]["pixel_threshold"])
        assert torch.equal(masks[row["file"]], maps[row["file"]] > pixel)
        flagged += row["label"] == "1"
    assert 0 < flagged < len(written)


def test_the_listed_scores_are_those_the_same_images_get_when_predicted(target, tmp_path):
    """The calibration images are scored as images to be inspected are (the guarantee assumes it)."""
    model = trained_like(FAPrompt, visualizer=False, false_alarm_rate=0.1)
    cpu_engine(tmp_path / "test").test(model, datamodule=_datamodule(target, target_categories=["gamma"]))
    listed = {row["file"]: float(row["score"]) for row in csv_rows(_only(tmp_path / "test", "calibration_images.csv"))}
    plain = trained_like(FAPrompt, visualizer=False)
    predictions = cpu_engine(tmp_path / "predict").predict(plain, data_path=target / "gamma" / "train" / "good")
    predicted = {
        path: float(score)
        for batch in predictions
        for path, score in zip(batch.image_path, batch.pred_score, strict=True)
    }
    assert sorted(predicted) == sorted(listed)
    for file, score in listed.items():
        assert score == pytest.approx(predicted[file], abs=1e-6), file


def test_too_few_images_and_missing_sources_are_refused_in_one_line_before_any_test_image(tmp_path):
    few = make_synthetic_dataset(tmp_path / "few", ("gamma",), n_train=4, seed=1)
    with pytest.raises(InvalidInputError) as refused:
        cpu_engine(tmp_path / "run").test(
            trained_like(FAPrompt, visualizer=False, k_shot=2, false_alarm_rate=0.1),
            datamodule=_datamodule(few, val_split_ratio=0),
        )
    assert str(refused.value) == (
        f"false_alarm_rate=0.1 needs at least 9 normal calibration images, and there are 2 of 'gamma' in "
        f"'{few / 'gamma' / 'train' / 'good'}' besides its 2 few-shot references: add normal images, or ask for a "
        "larger false_alarm_rate (with 2: 0.334 or more)."
    )
    assert not list((tmp_path / "run").rglob("per_category_results*"))
    assert not list((tmp_path / "run").rglob("calibration_*"))
    held_out = AuxiliaryDataModule(root=few, val_split_ratio=0.5, num_workers=0)  # no target: no training split
    with pytest.raises(InvalidInputError, match=r"false_alarm_rate take each target category's .*`calibration_source`"):
        cpu_engine(tmp_path / "held_out").test(
            trained_like(FAPrompt, visualizer=False, false_alarm_rate=0.1), datamodule=held_out
        )
    folder = few / "gamma" / "test" / "good"
    with pytest.raises(
        InvalidInputError, match=r"false_alarm_rate=0.1 needs normal calibration images.*`calibration_source`"
    ):
        cpu_engine(tmp_path / "files").predict(
            trained_like(FAPrompt, visualizer=False, false_alarm_rate=0.1), data_path=folder
        )
    with pytest.raises(
        MissingInputError, match=r"Calibration folder '.*nosuch' \(argument `calibration_source`\) does not"
    ):
        FAPrompt(**tiny_args(false_alarm_rate=0.1, calibration_source=str(tmp_path / "nosuch")))
    damaged = tmp_path / "damaged"
    shutil.copytree(few / "gamma" / "train" / "good", damaged)
    for index in range(4, 10):
        shutil.copy(damaged / "000.png", damaged / f"{index:03d}.png")
    (damaged / "003.png").write_bytes(b"not a png")
    model = trained_like(FAPrompt, visualizer=False, false_alarm_rate=0.1, calibration_source=str(damaged))
    with pytest.raises(InputError, match=rf"Cannot read '{damaged}/003.png'.*Replace or remove this calibration image"):
        cpu_engine(tmp_path / "damaged_run").predict(model, data_path=folder)


def test_images_both_scored_and_used_as_references_or_calibration_images_are_refused(target, tmp_path):
    folder = target / "delta" / "train" / "good"
    calibrating = trained_like(FAPrompt, visualizer=False, false_alarm_rate=0.1, calibration_source=str(folder))
    with pytest.raises(InvalidInputError) as refused:
        cpu_engine(tmp_path / "a").predict(calibrating, data_path=folder)
    message = str(refused.value)
    assert message.startswith(f"12 image(s) to be predicted are also calibration images ('{folder / '000.png'}', ")
    assert message.endswith(
        "Predict other images, or take the calibration images from another folder (`calibration_source`)."
    )
    referencing = trained_like(FAPrompt, visualizer=False, k_shot=2, few_shot_source=str(folder))
    with pytest.raises(InvalidInputError, match=r"^2 image\(s\) to be predicted are also few-shot references \("):
        cpu_engine(tmp_path / "b").predict(referencing, data_path=folder)
    assert not list(tmp_path.rglob("predictions.csv"))  # refused before any image was scored


@each_model
def test_a_calibration_source_calibrates_every_image_of_a_folder(model_class, target, tmp_path):
    source = target / "delta" / "train" / "good"
    model = trained_like(model_class, visualizer=False, false_alarm_rate=0.2, calibration_source=str(source))
    predictions = cpu_engine(tmp_path).predict(model, data_path=target / "delta" / "test")
    (row,) = csv_rows(_only(tmp_path, "calibration_thresholds.csv"))
    assert (row["category"], row["n"], row["k"]) == ("all", "12", "11")  # k = ceil(13 * 0.8) = 11
    scores, _ = _direct(model, sorted(str(path) for path in source.glob("*.png")))
    assert float(row["image_threshold"]) == pytest.approx(float(scores.sort().values[10]), abs=1e-6)
    labels = torch.cat([batch.pred_label for batch in predictions])
    assert torch.equal(labels, torch.cat([batch.pred_score for batch in predictions]) > float(row["image_threshold"]))
    assert not math.isnan(float(row["pixel_threshold"]))


# --- which threshold decides: one the user sets, then the calibrated ones, then 0.5 ----------------------------------

USER_THRESHOLD = 0.3  # anomalib's PostProcessor labels at 1 - sensitivity


def _given() -> PostProcessor:
    return PostProcessor(enable_normalization=False, image_sensitivity=0.7, pixel_sensitivity=0.7)


def _labelled_at(scores: torch.Tensor, labels: torch.Tensor, threshold: float) -> None:
    assert ((scores > USER_THRESHOLD) & (scores <= 0.5)).any(), "no score tells 0.3 from 0.5 apart"
    assert torch.equal(labels.bool(), scores > threshold)


def test_a_threshold_the_user_sets_is_honoured_with_a_checkpoint_with_weights_and_in_python(
    faprompt_checkpoint, target, tmp_path
):
    """The training's checkpoint holds its post-processor's settings and an F1 threshold of its validation images:
    neither may override the post-processor the user builds the model with, whichever way the checkpoint comes in."""
    state = torch.load(faprompt_checkpoint, map_location="cpu", weights_only=False)
    assert state["anomalib_post_processor_config"]["image_sensitivity"] == 0.5
    assert not math.isnan(float(state["state_dict"]["post_processor._image_threshold"]))  # the stale F1 threshold
    folder = target / "gamma" / "test"
    by_checkpoint = cpu_engine(tmp_path / "ckpt").predict(
        FAPrompt(**tiny_args(post_processor=_given())), data_path=folder, ckpt_path=faprompt_checkpoint
    )
    by_weights = cpu_engine(tmp_path / "weights").predict(
        FAPrompt(**tiny_args(weights=str(faprompt_checkpoint), post_processor=_given())), data_path=folder
    )
    for predictions in (by_checkpoint, by_weights):
        scores = torch.cat([batch.pred_score for batch in predictions])
        _labelled_at(scores, torch.cat([batch.pred_label for batch in predictions]), USER_THRESHOLD)
    loaded = FAPrompt.load_from_checkpoint(faprompt_checkpoint, post_processor=_given()).eval()
    images = torch.stack([read_image(path, as_tensor=True) for path in sorted(folder.glob("*/*.png"))])
    with torch.no_grad():
        output = loaded(images)
    _labelled_at(output.pred_score, output.pred_label, USER_THRESHOLD)
    assert torch.equal(output.pred_mask, output.anomaly_map > USER_THRESHOLD)


def test_a_user_threshold_comes_before_the_calibrated_one_which_comes_before_one_half(
    faprompt_checkpoint, target, tmp_path, caplog
):
    folder = target / "delta" / "test"
    source = str(target / "delta" / "train" / "good")
    labels = {}
    for name, arguments in (
        ("given", {"post_processor": _given(), "false_alarm_rate": 0.2, "calibration_source": source}),
        ("calibrated", {"false_alarm_rate": 0.2, "calibration_source": source}),
        ("plain", {}),
    ):
        model = FAPrompt(**tiny_args(weights=str(faprompt_checkpoint), visualizer=False, **arguments))
        with caplog.at_level("WARNING"):
            predictions = cpu_engine(tmp_path / name).predict(model, data_path=folder)
        scores = torch.cat([batch.pred_score for batch in predictions])
        labels[name] = torch.cat([batch.pred_label for batch in predictions])
        rows = csv_rows(_only(tmp_path / name, "predictions.csv"))
        if arguments:
            (thresholds,) = csv_rows(_only(tmp_path / name, "calibration_thresholds.csv"))
            calibrated = float(thresholds["image_threshold"])
            expected = USER_THRESHOLD if name == "given" else calibrated
            assert torch.equal(labels[name], scores > expected), name
            assert {float(row["threshold"]) for row in rows} == {float(torch.tensor(expected))}  # as compared: float32
        else:
            assert torch.equal(labels[name], scores > 0.5)
            assert list(rows[0]) == ["file", "score", "label"]
    assert "FAPrompt: the post-processor given sets the thresholds (image: 0.3" in caplog.text
    assert not torch.equal(labels["given"], labels["calibrated"])
    assert not torch.equal(labels["calibrated"], labels["plain"])


# --- thresholds that travel: checkpoints and exports ------------------------------------------------------------------


def test_thresholds_travel_in_a_checkpoint_for_the_rate_they_were_calibrated_for(target, tmp_path):
    model = trained_like(
        FAPrompt, visualizer=False, false_alarm_rate=0.2, calibration_source=str(target / "delta" / "train" / "good")
    )
    calibration = model.calibrate(sorted((target / "gamma" / "train" / "good").glob("*.png")))
    assert calibration.rank == 11  # n = 12: ceil(13 * 0.8)
    assert model.model.thresholds.values()[:2] == pytest.approx(
        (calibration.image_threshold, calibration.pixel_threshold), abs=1e-7
    )
    before = model.model.thresholds.values()
    cpu_engine(tmp_path / "run").predict(model, data_path=target / "gamma" / "test")  # calibrates on delta for the run
    (row,) = csv_rows(_only(tmp_path / "run", "calibration_thresholds.csv"))
    assert float(row["image_threshold"]) != pytest.approx(calibration.image_threshold)
    assert model.model.thresholds.values() == before  # given back after the run, as ordinary tensors
    assert not model.model.thresholds.image.is_inference()
    path = write_checkpoint(model, tmp_path / "calibrated.ckpt")
    same = FAPrompt.load_from_checkpoint(path, false_alarm_rate=0.2)
    assert same.model.thresholds.calibrated_for(0.2)
    assert same.model.thresholds.values() == model.model.thresholds.values()
    for other in (0.1, None):  # calibrated for another rate: nothing stale decides a label
        loaded = FAPrompt.load_from_checkpoint(path, false_alarm_rate=other, calibration_source=None)
        assert not loaded.model.thresholds.is_set, other
        built = FAPrompt(**tiny_args(weights=str(path), false_alarm_rate=other))
        assert not built.model.thresholds.is_set, other
    assert FAPrompt(**tiny_args(weights=str(path), false_alarm_rate=0.2)).model.thresholds.calibrated_for(0.2)
    images = torch.stack([read_image(p, as_tensor=True) for p in sorted((target / "gamma" / "test").glob("*/*.png"))])
    with torch.no_grad():
        output = same.eval()(images)
    assert torch.equal(output.pred_label, output.pred_score > calibration.image_threshold)
    plain = FAPrompt.load_from_checkpoint(path, false_alarm_rate=None, calibration_source=None).eval()
    with torch.no_grad():
        assert torch.equal(plain(images).pred_label, output.pred_score > 0.5)
    with pytest.raises(InvalidInputError, match=r"FAPrompt has no false_alarm_rate to calibrate for"):
        plain.calibrate(sorted((target / "gamma" / "train" / "good").glob("*.png")))


@each_model
def test_an_export_labels_as_torch_does_at_the_calibrated_thresholds(model_class, target, tmp_path):
    import onnxruntime as ort
    import openvino as ov

    refused = trained_like(model_class, visualizer=False, false_alarm_rate=0.2)
    with pytest.raises(InvalidInputError, match=r"false_alarm_rate=0.2 and no calibrated thresholds to export with"):
        refused.to_onnx(tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    source = target / "delta" / "train" / "good"
    model = trained_like(model_class, visualizer=False, false_alarm_rate=0.2, calibration_source=str(source))
    onnx_file = model.to_onnx(tmp_path / "onnx")
    xml = model.to_openvino(tmp_path / "openvino")
    (row,) = csv_rows(tmp_path / "onnx" / "weights" / "onnx" / "calibration_thresholds.csv")
    assert (row["n"], row["k"]) == ("12", "11")
    image_threshold, pixel_threshold = float(row["image_threshold"]), float(row["pixel_threshold"])
    images = torch.stack([read_image(p, as_tensor=True) for p in sorted((target / "delta" / "test").glob("*/*.png"))])
    with torch.no_grad():
        expected = model(images)
    assert torch.equal(expected.pred_label, expected.pred_score > image_threshold)
    assert torch.equal(expected.pred_mask, expected.anomaly_map > pixel_threshold)
    assert not torch.equal(expected.pred_label, expected.pred_score > 0.5)  # calibrated labels, not those at 0.5
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    onnx = dict(zip(names, session.run(None, {session.get_inputs()[0].name: images.numpy()}), strict=True))
    compiled = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    vino = {key.get_any_name(): value for key, value in compiled(images.numpy()).items()}
    # Equal labels and masks, except where torch's value is within 1e-4 of the threshold (their outputs differ by
    # less than that): there are none among the scores here, and few pixels.
    near_score = (expected.pred_score - image_threshold).abs() < 1e-4
    near_pixel = (expected.anomaly_map - pixel_threshold).abs() < 1e-4
    assert not near_score.any()
    for result in (onnx, vino):
        assert torch.equal(torch.from_numpy(result["pred_label"]).bool(), expected.pred_label)
        same = torch.from_numpy(result["pred_mask"]).bool() == expected.pred_mask
        assert bool((same | near_pixel).all())
        assert int((~same).sum()) <= int(near_pixel.sum())


def test_the_guarantee_benchmark_prints_a_row_for_each_rate_and_number_of_images_that_can_give_it(tmp_path):
    script = REPO / "benchmarks" / "calibration_guarantee.py"
    command = [sys.executable, str(script), "--pool", "260", "--draws", "300", "--epochs", "1"]
    result = subprocess.run(
        command, capture_output=True, text=True, env=subprocess_env(), timeout=600, check=True, cwd=tmp_path
    )
    rows = [line.strip("|").split("|") for line in result.stdout.splitlines() if line.startswith("| 0")]
    cells = [[cell.strip() for cell in row] for row in rows]
    assert [(row[0], row[1]) for row in cells] == [
        ("0.01", "200"), ("0.05", "20"), ("0.05", "50"), ("0.05", "200"), ("0.1", "20"), ("0.1", "50"), ("0.1", "200")
    ]  # fmt: skip
    for (
        row
    ) in cells:  # the mean over 300 draws: within the theory's bounds, give or take 0.02 (about 5 standard errors)
        low, high = (float(value) for value in row[7].strip("[]").split(","))
        assert low - 0.02 <= float(row[3]) <= high + 0.02, row
        assert float(row[4]) <= float(row[3]) <= float(row[5]), row
