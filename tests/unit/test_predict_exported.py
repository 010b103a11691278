"""``anomalib-faprompt-predict``: an exported model over images writes what ``anomalib predict`` writes.

These tests run a stand-in graph with the exported models' signature whose score is the mean pixel value, which the
test computes by hand; tests/integration/test_predict_exported.py runs the command on real exports.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ov = pytest.importorskip("openvino")
pytest.importorskip("onnxscript")


from anomalib_faprompt.data.images import read_image  # noqa: E402
from anomalib_faprompt.inference.cli import PROG, main  # noqa: E402
from anomalib_faprompt.inference.exported_model import compile_for_throughput, read_exported_model  # noqa: E402
from tests.helpers.commands import REPO, predict_refusal  # noqa: E402
from tests.helpers.data import csv_rows  # noqa: E402

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

TOLERANCE = 1e-4  # f32: the exported graph against the torch module


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

    rows = csv_rows(tmp_path / "out" / "v0" / "predictions.csv")
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
    """A warning line at bf16 (and f16), or, where the CPU cannot run it, one that says it runs f32; none at f32."""
    monkeypatch.chdir(tmp_path)
    model = read_exported_model(stand_in_model(tmp_path))
    with caplog.at_level("WARNING"):
        compile_for_throughput(model, "f32")
    assert not caplog.records
    with caplog.at_level("WARNING"):
        compiled = compile_for_throughput(model, "bf16")
    runs_bf16 = compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.bf16
    moves = "Precision bf16: scores and maps can differ from the tested model's (f32) by up to 1e-1"
    runs_f32 = "This CPU runs the model in f32: OpenVINO's CPU plugin has no bf16 here"
    assert [moves in record.getMessage() or runs_f32 in record.getMessage() for record in caplog.records] == [True]
    assert (moves in caplog.text) == runs_bf16


def test_a_wrong_model_file_is_one_line(tmp_path, capsys):
    """Missing, a folder, a checkpoint, an XML that is no IR, an IR without its .bin, damaged weights: one line each."""
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (8, 8)).save(images / "000.png")
    missing = tmp_path / "nothing" / "model.xml"
    assert predict_refusal(capsys, missing, "--data", images).startswith(
        f"MissingInputError: Model '{missing}' does not exist."
    )
    assert predict_refusal(capsys, tmp_path, "--data", images).startswith(
        f"InvalidInputError: Model '{tmp_path}' is a folder, not an exported model (.xml or .onnx)."
    )
    checkpoint = tmp_path / "model.ckpt"
    checkpoint.write_bytes(b"PK")
    assert predict_refusal(capsys, checkpoint, "--data", images).startswith(
        f"InvalidInputError: Model '{checkpoint}' is a .ckpt file, not an exported model (.xml or .onnx)."
    )
    text = tmp_path / "text" / "model.xml"
    text.parent.mkdir()
    text.write_text("hello\n")
    assert predict_refusal(capsys, text, "--data", images).startswith(
        f"InvalidInputError: Model '{text}' is not an OpenVINO IR (no <net> element)."
    )
    (tmp_path / "ir").mkdir()
    xml = stand_in_model(tmp_path / "ir")
    weights = xml.with_suffix(".bin")
    kept = weights.read_bytes()
    weights.unlink()
    assert predict_refusal(capsys, xml, "--data", images) == (
        f"MissingInputError: Model '{xml}' has no weights file '{weights}' beside it: copy both files that "
        "`anomalib export` wrote."
    )
    weights.write_bytes(kept[:4])
    line = predict_refusal(capsys, xml, "--data", images)
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
    line = predict_refusal(capsys, xml, "--data", tmp_path / "000.png")
    assert line.startswith(f"InvalidInputError: Model '{xml}' ")
    assert expected in line


# --- the tiny FAPrompt checkpoint, exported, against `anomalib predict` ----------------------------------------------
