"""``anomalib-faprompt-predict``: an exported model over images writes what ``anomalib predict`` writes.

The slow tests export the session's tiny FAPrompt checkpoint with ``Engine.export`` (OpenVINO and ONNX, as
``tests/test_export.py`` does) and compare the command's ``predictions.csv`` and heat-map panels with those of
``Engine.predict`` on the same checkpoint and images (several sizes, subfolders, a camera's EXIF-tagged photo). The
fast tests run a stand-in graph with the exported models' signature whose score is the mean pixel value, which the
test computes by hand.
"""

from __future__ import annotations

import csv
import hashlib
import importlib
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ov = pytest.importorskip("openvino")
pytest.importorskip("onnxscript")

from anomalib.deploy import ExportType  # noqa: E402
from anomalib.engine import Engine  # noqa: E402

from anomalib_faprompt import FAPrompt  # noqa: E402
from anomalib_faprompt.data.images import read_image  # noqa: E402
from anomalib_faprompt.inference.cli import PROG, main  # noqa: E402
from anomalib_faprompt.inference.exported_model import compile_for_throughput, read_exported_model  # noqa: E402
from tests.helpers.commands import REPO  # noqa: E402
from tests.helpers.data import camera_photo  # noqa: E402
from tests.helpers.models import tiny_args  # noqa: E402

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

TOLERANCE = 1e-4  # f32: the exported graph against the torch module
SIZES = ((64, 64), (150, 97), (41, 53), (300, 280), (64, 90), (33, 33))  # (width, height), as tests/test_export.py
QUIET = {"logger": False, "enable_progress_bar": False, "enable_model_summary": False}


# --- a stand-in for an exported model: the exported graphs' input and outputs, with a score computed by hand -------


def stand_in_model(folder: Path, outputs: tuple[str, ...] = ("pred_score", "pred_label", "anomaly_map", "pred_mask"),
                   channels: int = 3) -> Path:  # fmt: skip
    """An OpenVINO IR taking ``(N, channels, H, W)`` images: score = mean pixel value, map = mean over channels.

    Built with OpenVINO's Python opset and written with ``openvino.save_model``, as anomalib's ``to_openvino`` writes
    the real exports (``ov.save_model(model, xml, compress_to_fp16=False)`` in its export mixin); the outputs are
    named as anomalib's ``InferenceBatch`` fields (the names its export gives the graph's outputs), or ``outputs``.
    """
    opset = ov.opset13
    image = opset.parameter([-1, channels, -1, -1], np.float32, name="input")
    score = opset.reduce_mean(image, np.array([1, 2, 3]), keep_dims=False)
    anomaly_map = opset.reduce_mean(image, np.array([1]), keep_dims=True)
    half = np.float32(0.5)
    values = {
        "pred_score": score,
        "pred_label": opset.greater(score, half),
        "anomaly_map": anomaly_map,
        "pred_mask": opset.greater(anomaly_map, half),
    }
    nodes = [values.get(name, score) for name in outputs]
    model = ov.Model([opset.result(node) for node in nodes], [image], "stand_in")
    for output, name in zip(model.outputs, outputs, strict=True):
        output.get_tensor().set_names({name})
    xml = folder / "model.xml"
    ov.save_model(model, xml, compress_to_fp16=False)
    return xml


def failure(capsys: pytest.CaptureFixture, *args: str | Path) -> str:
    """Run the command, which must end with exit status 2 and one line (after the command's name): that line."""
    with pytest.raises(SystemExit) as exited:
        main([str(arg) for arg in args])
    assert exited.value.code == 2
    *_, what, line = capsys.readouterr().err.rstrip().splitlines()
    assert what == f"{PROG}:"
    return line


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def test_the_command_is_installed_with_the_package():
    """``[project.scripts]`` names the command's ``main``."""
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, function = scripts[PROG].partition(":")
    assert getattr(importlib.import_module(module), function) is main


def test_rows_are_each_images_score_in_the_files_order(tmp_path, monkeypatch):
    """Large and small images in turn through parallel requests (a small one finishes before the large one started
    before it): each row holds its own image's mean, in the files' order."""
    monkeypatch.chdir(tmp_path)  # OpenVINO's compile cache goes to ./openvino_cache
    xml = stand_in_model(tmp_path)
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index in range(20):
        size = tuple(int(side) for side in rng.integers(8, 16, 2) * (40 if index % 2 == 0 else 1))
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{index:03d}.png")
    main([str(xml), "--data", str(folder), "--output", str(tmp_path / "out"), "--threads", "2", "--no_heat_maps"])

    rows = read_rows(tmp_path / "out" / "v0" / "predictions.csv")
    files = sorted(folder.glob("*.png"))
    assert [row["file"] for row in rows] == [str(file) for file in files]
    for row, file in zip(rows, files, strict=True):
        mean = float(read_image(file).double().mean())
        assert float(row["score"]) == pytest.approx(mean, abs=1e-6)
        assert row["label"] == str(int(mean > 0.5))


def test_compiled_for_throughput_at_the_asked_precision_and_threads(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    compiled = compile_for_throughput(read_exported_model(stand_in_model(tmp_path)), "f32", threads=1)
    assert str(compiled.get_property("PERFORMANCE_HINT")) == "THROUGHPUT"
    assert compiled.get_property("INFERENCE_NUM_THREADS") == 1
    assert compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32
    assert (tmp_path / "openvino_cache" / "f32").is_dir()


def test_bf16_and_f16_say_that_they_move_the_outputs(tmp_path, monkeypatch, caplog):
    """A warning line at bf16 (and f16); another where the CPU cannot run it and runs f32; none at f32."""
    monkeypatch.chdir(tmp_path)
    model = read_exported_model(stand_in_model(tmp_path))
    with caplog.at_level("WARNING"):
        compile_for_throughput(model, "f32")
    assert not caplog.records
    with caplog.at_level("WARNING"):
        compiled = compile_for_throughput(model, "bf16")
    assert "Precision bf16: scores and maps can differ from the tested model's (f32) by up to 1e-1" in caplog.text
    runs_bf16 = compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.bf16
    assert ("This CPU runs the model in f32: OpenVINO's CPU plugin has no bf16 here" in caplog.text) != runs_bf16


def test_a_wrong_model_file_is_one_line(tmp_path, capsys):
    """Missing, a folder, a checkpoint, an XML that is no IR, an IR without its .bin, damaged weights: one line each."""
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (8, 8)).save(images / "000.png")
    missing = tmp_path / "nothing" / "model.xml"
    assert failure(capsys, missing, "--data", images).startswith(
        f"MissingInputError: Model '{missing}' does not exist."
    )
    assert failure(capsys, tmp_path, "--data", images).startswith(
        f"InvalidInputError: Model '{tmp_path}' is a folder, not an exported model (.xml or .onnx)."
    )
    checkpoint = tmp_path / "model.ckpt"
    checkpoint.write_bytes(b"PK")
    assert failure(capsys, checkpoint, "--data", images).startswith(
        f"InvalidInputError: Model '{checkpoint}' is a .ckpt file, not an exported model (.xml or .onnx)."
    )
    text = tmp_path / "text" / "model.xml"
    text.parent.mkdir()
    text.write_text("hello\n")
    assert failure(capsys, text, "--data", images).startswith(
        f"InvalidInputError: Model '{text}' is not an OpenVINO IR (no <net> element)."
    )
    (tmp_path / "ir").mkdir()
    xml = stand_in_model(tmp_path / "ir")
    weights = xml.with_suffix(".bin")
    kept = weights.read_bytes()
    weights.unlink()
    assert failure(capsys, xml, "--data", images) == (
        f"MissingInputError: Model '{xml}' has no weights file '{weights}' beside it: copy both files that "
        "`anomalib export` wrote."
    )
    weights.write_bytes(kept[:4])
    line = failure(capsys, xml, "--data", images)
    assert line.startswith(f"InvalidInputError: Model '{xml}' cannot be read by OpenVINO (")
    assert "Exception from" not in line


@pytest.mark.parametrize(
    ("outputs", "channels", "expected"),
    [
        (("features",), 3, "it has no output pred_score, pred_label, anomaly_map, pred_mask (its outputs: features)"),
        (("pred_score", "anomaly_map"), 3, "it has no output pred_label, pred_mask"),
        (("pred_score", "pred_label", "anomaly_map", "pred_mask"), 1, "does not take one batch of RGB images"),
    ],
)
def test_a_model_that_is_not_this_packages_export_is_one_line(tmp_path, capsys, outputs, channels, expected):
    xml = stand_in_model(tmp_path, outputs, channels)
    Image.new("RGB", (8, 8)).save(tmp_path / "000.png")
    line = failure(capsys, xml, "--data", tmp_path / "000.png")
    assert line.startswith(f"InvalidInputError: Model '{xml}' ")
    assert expected in line


# --- the tiny FAPrompt checkpoint, exported, against `anomalib predict` ----------------------------------------------


@pytest.fixture(scope="module")
def exports(faprompt_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The checkpoint exported with ``Engine.export`` to OpenVINO and ONNX."""
    root = tmp_path_factory.mktemp("exports")
    return {
        export_type.value: Engine(accelerator="cpu", devices=1, default_root_dir=root / "engine", **QUIET).export(
            model=FAPrompt(**tiny_args()),
            export_type=export_type,
            export_root=root / export_type.value,
            ckpt_path=faprompt_checkpoint,
        )
        for export_type in (ExportType.OPENVINO, ExportType.ONNX)
    }


@pytest.fixture(scope="module")
def images(synthetic_target: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """gamma's test images in ``good/`` and ``defect/``, each at one of ``SIZES``, and a camera's turned photo."""
    folder = tmp_path_factory.mktemp("predict") / "images"
    files = sorted((synthetic_target / "gamma" / "test").glob("*/*.png"))
    for index, file in enumerate(files):
        target = folder / file.parent.name / file.name
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.open(file).resize(SIZES[index % len(SIZES)], Image.Resampling.BICUBIC).save(target)
    (folder / "photos").mkdir()
    upright = np.asarray(Image.open(files[-1]).convert("RGB").resize((80, 48), Image.Resampling.BICUBIC))
    camera_photo(folder / "photos", "turned", upright, 6)
    return folder


@pytest.fixture(scope="module")
def anomalib_predicted(images: Path, faprompt_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run folder of ``Engine.predict`` (what ``anomalib predict --data`` runs) on the images."""
    root = tmp_path_factory.mktemp("anomalib_predict")
    engine = Engine(accelerator="cpu", devices=1, default_root_dir=root, **QUIET)
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


@pytest.mark.slow
@pytest.mark.parametrize("export_type", ["openvino", "onnx"])
def test_predictions_and_heat_maps_equal_anomalib_predicts(
    export_type, exports, images, anomalib_predicted, tmp_path, monkeypatch
):
    """The same rows (scores within 1e-4 at f32) and panels of the same names and pixels as ``anomalib predict``."""
    monkeypatch.chdir(tmp_path)
    output = tmp_path / "out"
    main([str(exports[export_type]), "--data", str(images), "--output", str(output)])

    expected, actual = read_rows(anomalib_predicted / "predictions.csv"), read_rows(output / "v0" / "predictions.csv")
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
    second = read_rows(output / "v1" / "predictions.csv")
    given = [row["file"] for row in actual if "/good/" in row["file"] or row["file"].endswith("turned.jpg")]
    assert [row["file"] for row in second] == given
    assert not (output / "v1" / "images").exists()


@pytest.mark.slow
def test_a_missing_or_damaged_image_is_one_line(exports, images, tmp_path, capsys, monkeypatch):
    """A path that does not exist, then a damaged file: named; the rows of the images before it are kept."""
    monkeypatch.chdir(tmp_path)
    xml, output = exports["openvino"], tmp_path / "out"
    missing = tmp_path / "nothing"
    assert failure(capsys, xml, "--data", missing, "--output", output).startswith(
        f"MissingInputError: '{missing}' (the images to predict, `--data`) does not exist"
    )
    assert not output.exists()

    folder = tmp_path / "images"
    shutil.copytree(images / "good", folder)
    damaged = folder / "damaged.png"  # sorted after 000.png ... 005.png
    damaged.write_bytes((folder / "000.png").read_bytes()[:300])
    line = failure(capsys, xml, "--data", folder, "--output", output)
    assert line.startswith(f"UnreadableFileError: Cannot read '{damaged}' (OSError: ")
    assert line.endswith("Replace or remove the file, then predict again.")
    assert not (output / "v0" / "predictions.csv").exists()
    rows = read_rows(output / "v0" / "predictions.incomplete.csv")
    assert [row["file"] for row in rows] == [str(file) for file in sorted(folder.glob("0*.png"))]
