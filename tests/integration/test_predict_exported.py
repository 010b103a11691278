"""``anomalib-faprompt-predict`` on real exports writes what ``anomalib predict`` writes.

The session's tiny FAPrompt checkpoint is exported with ``Engine.export`` (OpenVINO and ONNX, as
tests/integration/test_export.py does); the command's ``predictions.csv`` and heat-map panels are compared with those
of ``Engine.predict`` on the same checkpoint and images (several sizes, subfolders, a camera's EXIF-tagged photo).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from anomalib.deploy import ExportType
from PIL import Image

pytest.importorskip("openvino")
pytest.importorskip("onnxscript")

from anomalib_faprompt import FAPrompt
from anomalib_faprompt.inference.cli import PROG, main
from tests.helpers.commands import predict_refusal, subprocess_env
from tests.helpers.data import IMAGE_SIZES, camera_photo, csv_rows
from tests.helpers.engine import cpu_engine
from tests.helpers.models import tiny_args

TOLERANCE = 1e-4  # f32: the exported graph against the torch module


@pytest.fixture(scope="module")
def exports(faprompt_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The checkpoint exported with ``Engine.export`` to OpenVINO and ONNX."""
    root = tmp_path_factory.mktemp("exports")
    return {
        export_type.value: cpu_engine(root / "engine").export(
            model=FAPrompt(**tiny_args()),
            export_type=export_type,
            export_root=root / export_type.value,
            ckpt_path=faprompt_checkpoint,
        )
        for export_type in (ExportType.OPENVINO, ExportType.ONNX)
    }


@pytest.fixture(scope="module")
def images(synthetic_target: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """gamma's test images in ``good/`` and ``defect/``, each at one of ``IMAGE_SIZES``, and a camera's turned photo."""
    folder = tmp_path_factory.mktemp("predict") / "images"
    files = sorted((synthetic_target / "gamma" / "test").glob("*/*.png"))
    for index, file in enumerate(files):
        target = folder / file.parent.name / file.name
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.open(file).resize(IMAGE_SIZES[index % len(IMAGE_SIZES)], Image.Resampling.BICUBIC).save(target)
    (folder / "photos").mkdir()
    upright = np.asarray(Image.open(files[-1]).convert("RGB").resize((80, 48), Image.Resampling.BICUBIC))
    camera_photo(folder / "photos", "turned", upright, 6)
    return folder


@pytest.fixture(scope="module")
def anomalib_predicted(images: Path, faprompt_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run folder of ``Engine.predict`` (what ``anomalib predict --data`` runs) on the images."""
    root = tmp_path_factory.mktemp("anomalib_predict")
    engine = cpu_engine(root)
    engine.predict(model=FAPrompt(**tiny_args()), ckpt_path=faprompt_checkpoint, data_path=images)
    return root / "FAPrompt" / "v0"


def panels(folder: Path) -> dict[str, np.ndarray]:
    return {
        path.relative_to(folder).as_posix(): np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def digests(folder: Path) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in folder.rglob("*") if path.is_file()}


@pytest.mark.parametrize("export_type", ["openvino", "onnx"])
def test_predictions_and_heat_maps_equal_anomalib_predicts(
    export_type, exports, images, anomalib_predicted, tmp_path, monkeypatch
):
    """The same rows (scores within 1e-4 at f32) and panels of the same names and pixels as ``anomalib predict``."""
    monkeypatch.chdir(tmp_path)
    output = tmp_path / "out"
    main([str(exports[export_type]), "--data", str(images), "--output", str(output)])

    expected, actual = csv_rows(anomalib_predicted / "predictions.csv"), csv_rows(output / "v0" / "predictions.csv")
    assert len(expected) == 2 * 6 + 2
    assert [row["file"] for row in actual] == [row["file"] for row in expected]
    for mine, theirs in zip(actual, expected, strict=True):
        assert abs(float(mine["score"]) - float(theirs["score"])) <= TOLERANCE, mine["file"]
        if abs(float(theirs["score"]) - 0.5) > TOLERANCE:
            assert mine["label"] == theirs["label"], mine["file"]
    drawn, expected_panels = panels(output / "v0" / "images"), panels(anomalib_predicted / "images")
    assert sorted(drawn) == sorted(expected_panels)
    assert "photos/turned.jpg" in drawn
    for name, panel in drawn.items():
        assert panel.shape == expected_panels[name].shape
        assert np.abs(panel - expected_panels[name]).mean() < 0.5, name  # maps within 1e-4: a few rounded pixels

    # A second run into the same folder writes v1 (a file and a folder given: the same names), and keeps v0.
    before = digests(output / "v0")
    main([str(exports[export_type]), "--data", str(images / "good"), str(images / "photos" / "turned.jpg"),
          "--output", str(output), "--no_heat_maps"])  # fmt: skip
    assert digests(output / "v0") == before
    second = csv_rows(output / "v1" / "predictions.csv")
    given = [row["file"] for row in actual if "/good/" in row["file"] or row["file"].endswith("turned.jpg")]
    assert [row["file"] for row in second] == given
    assert not (output / "v1" / "images").exists()


def test_a_missing_or_damaged_image_is_one_line(exports, images, tmp_path, capsys, monkeypatch):
    """A path that does not exist, then a damaged file: named; the rows of the images before it are kept."""
    monkeypatch.chdir(tmp_path)
    xml, output = exports["openvino"], tmp_path / "out"
    missing = tmp_path / "nothing"
    assert predict_refusal(capsys, xml, "--data", missing, "--output", output).startswith(
        f"MissingInputError: '{missing}' (the images to predict, `--data`) does not exist"
    )
    assert not output.exists()

    folder = tmp_path / "images"
    shutil.copytree(images / "good", folder)
    damaged = folder / "damaged.png"  # sorted after 000.png ... 005.png
    damaged.write_bytes((folder / "000.png").read_bytes()[:300])
    line = predict_refusal(capsys, xml, "--data", folder, "--output", output)
    assert line.startswith(f"UnreadableFileError: Cannot read '{damaged}' (OSError: ")
    assert line.endswith("Replace or remove the file, then predict again.")
    assert not (output / "v0" / "predictions.csv").exists()
    rows = csv_rows(output / "v0" / "predictions.incomplete.csv")
    assert [row["file"] for row in rows] == [str(file) for file in sorted(folder.glob("0*.png"))]


def test_an_image_of_another_size_than_a_fixed_size_export_takes_is_one_line(
    faprompt_checkpoint, images, tmp_path, capsys, monkeypatch
):
    """An export with ``input_size`` takes that size only: the first image of another size is named, in one line."""
    monkeypatch.chdir(tmp_path)
    onnx = cpu_engine(tmp_path / "engine").export(
        model=FAPrompt(**tiny_args()),
        export_type=ExportType.ONNX,
        export_root=tmp_path / "fixed",
        ckpt_path=faprompt_checkpoint,
        input_size=(64, 64),
    )
    good = images / "good"  # 000.png is 64 x 64, 001.png 150 x 97 (IMAGE_SIZES, in the fixture's order)
    line = predict_refusal(capsys, onnx, "--data", good, "--output", tmp_path / "out")
    assert line == (
        f"InvalidInputError: '{good / '001.png'}' is 150x97 pixels, but '{onnx}' was exported for images of 64x64 "
        "only (`--input_size`). Export without `input_size` to predict images of any size."
    )


def test_the_installed_command_predicts_as_anomalib_predict(exports, images, anomalib_predicted, tmp_path):
    """The console script pip installs (``[project.scripts]``), run as a user runs it: the same scores."""
    command = Path(sys.executable).parent / PROG
    process = subprocess.run(
        [command, str(exports["openvino"]), "--data", str(images / "good"), "--output", str(tmp_path / "out")],
        cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert process.returncode == 0, process.stderr[-3000:]
    expected = {row["file"]: float(row["score"]) for row in csv_rows(anomalib_predicted / "predictions.csv")}
    rows = csv_rows(tmp_path / "out" / "v0" / "predictions.csv")
    assert [row["file"] for row in rows] == [str(file) for file in sorted((images / "good").glob("*.png"))]
    for row in rows:
        assert abs(float(row["score"]) - expected[row["file"]]) <= TOLERANCE, row["file"]


def test_a_calibrated_export_writes_the_p_values_and_threshold_of_anomalib_predict(
    faprompt_checkpoint, synthetic_target, images, tmp_path, monkeypatch, capsys
):
    """The calibration the export made, listed beside model.xml, gives the same ``p_value`` and ``threshold``
    columns as ``anomalib predict`` of the same calibrated model (same source, same seed, same images), and refuses
    its own calibration images as ``anomalib predict`` does; the same through ``--ckpt_path``, ``--model.weights``
    and Python."""
    monkeypatch.chdir(tmp_path)
    source = synthetic_target / "delta" / "train" / "good"
    calibrated = tiny_args(false_alarm_rate=0.2, calibration_source=str(source))
    exports = {
        "ckpt_path": cpu_engine(tmp_path / "engine").export(
            model=FAPrompt(**calibrated),
            export_type=ExportType.OPENVINO,
            export_root=tmp_path / "ckpt_path",
            ckpt_path=faprompt_checkpoint,
        ),
        "weights": cpu_engine(tmp_path / "engine").export(
            model=FAPrompt(**calibrated, weights=str(faprompt_checkpoint)),
            export_type=ExportType.OPENVINO,
            export_root=tmp_path / "weights",
        ),
        "python": FAPrompt.load_from_checkpoint(faprompt_checkpoint, map_location="cpu", **calibrated).to_openvino(
            tmp_path / "python"
        ),
    }
    listed = {name: (xml.parent / "calibration_images.csv").read_bytes() for name, xml in exports.items()}
    assert listed["weights"] == listed["python"] == listed["ckpt_path"]
    line = predict_refusal(capsys, exports["ckpt_path"], "--data", source, "--output", tmp_path / "refused")
    assert line.startswith(
        f"InvalidInputError: 4 image(s) to be predicted are also calibration images of the exported model ('{source}"
    )
    assert line.endswith(
        "Predict other images, or export with normal images of another folder as `calibration_source`."
    )
    engine = cpu_engine(tmp_path / "anomalib")
    engine.predict(model=FAPrompt(**calibrated), ckpt_path=faprompt_checkpoint, data_path=images / "good")
    expected = csv_rows(tmp_path / "anomalib" / "FAPrompt" / "v0" / "predictions.csv")

    for name, xml in exports.items():
        output = tmp_path / "out" / name
        main([str(xml), "--data", str(images / "good"), "--output", str(output), "--no_heat_maps"])
        actual = csv_rows(output / "v0" / "predictions.csv")
        assert list(actual[0]) == list(expected[0]) == ["file", "score", "label", "p_value", "threshold"]
        assert [row["file"] for row in actual] == [row["file"] for row in expected]
        for mine, theirs in zip(actual, expected, strict=True):
            assert abs(float(mine["score"]) - float(theirs["score"])) <= TOLERANCE, (name, mine["file"])
            assert (mine["label"], mine["p_value"], mine["threshold"]) == (
                theirs["label"], theirs["p_value"], theirs["threshold"]
            ), (name, mine["file"])  # fmt: skip
