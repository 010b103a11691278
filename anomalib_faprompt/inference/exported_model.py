"""An exported model of this package, read and checked, compiled by OpenVINO for throughput on the CPU.

What ``anomalib export`` writes for FAPrompt and AnomalyCLIP: ``model.xml`` with ``model.bin`` beside it
(``--export_type openvino``), or ``model.onnx`` with ``model.onnx.data`` (``--export_type onnx``, read by OpenVINO's
ONNX reader). The graph takes one batch of RGB images at their own size, float in [0, 1], ``(N, 3, H, W)``; it
resizes and normalises them itself, and gives anomalib's outputs (``pred_score``, ``pred_label``, ``anomaly_map``,
``pred_mask``). Any other file is refused in one line naming it.
"""

from __future__ import annotations

import logging
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from anomalib.data import InferenceBatch

from anomalib_faprompt.deploy import cpu_instruction_sets, int8_speed_note, openvino_config
from anomalib_faprompt.errors import InvalidInputError, MissingInputError, MissingPackageError
from anomalib_faprompt.models.calibration import Calibration, read_calibrations
from anomalib_faprompt.models.compression import INSTALL

__all__ = ["MODEL_SUFFIXES", "OUTPUTS", "compile_for_throughput", "export_calibration", "read_exported_model"]

logger = logging.getLogger(__name__)

OUTPUTS = InferenceBatch._fields  # what anomalib's export of these models outputs, by name
MODEL_SUFFIXES = (".xml", ".onnx")
EXPORT_ADVICE = (
    "Pass the model.xml (or model.onnx) that `anomalib export --export_type openvino` (onnx) wrote for a FAPrompt or "
    "AnomalyCLIP model, e.g. <run>/weights/openvino/model.xml"
)
IR_START = 1024  # bytes of an OpenVINO IR within which its root element ``<net`` starts


def _openvino() -> Any:  # noqa: ANN401
    """The ``openvino`` module, or an error saying how to install it."""
    if find_spec("openvino") is None:
        msg = f"Running an exported model needs OpenVINO, which is not installed: {INSTALL}."
        raise MissingPackageError(msg)
    import openvino  # noqa: PLC0415

    return openvino


def _reason(error: BaseException) -> str:
    """OpenVINO's own words in one of its errors: its last line that is not a source location."""
    lines = [line.strip() for line in str(error).splitlines()]
    lines = [line for line in lines if line and not line.startswith(("Exception from", "Check '"))]
    return lines[-1] if lines else type(error).__name__


def _check_file(path: Path) -> None:
    """Refuse a missing file, a folder, a file of another kind, an IR without its weights or that is not an IR."""
    if not path.exists():
        msg = f"Model '{path}' does not exist. {EXPORT_ADVICE}."
        raise MissingInputError(msg)
    if path.suffix.lower() not in MODEL_SUFFIXES:
        what = "a folder" if path.is_dir() else f"a {path.suffix or 'suffix-less'} file"
        msg = f"Model '{path}' is {what}, not an exported model (.xml or .onnx). {EXPORT_ADVICE}."
        raise InvalidInputError(msg)
    if path.suffix.lower() != ".xml":
        return
    with path.open("rb") as file:
        start = file.read(IR_START)
    if b"<net" not in start:
        msg = f"Model '{path}' is not an OpenVINO IR (no <net> element). {EXPORT_ADVICE}."
        raise InvalidInputError(msg)
    weights = path.with_suffix(".bin")
    if not weights.is_file():
        msg = f"Model '{path}' has no weights file '{weights}' beside it: copy both files that `anomalib export` wrote."
        raise MissingInputError(msg)


def _check_signature(model: Any, path: Path) -> None:  # noqa: ANN401
    """Refuse a graph without one image input ``(N, 3, H, W)`` or without the outputs of this package's exports."""
    outputs = sorted(name for output in model.outputs for name in output.get_names())
    missing = [name for name in OUTPUTS if name not in outputs]
    if missing:
        msg = (
            f"Model '{path}' is not an export of FAPrompt or AnomalyCLIP: it has no output {', '.join(missing)} "
            f"(its outputs: {', '.join(outputs) or 'none'}). {EXPORT_ADVICE}."
        )
        raise InvalidInputError(msg)
    inputs = [(parameter.get_any_name(), parameter.partial_shape) for parameter in model.inputs]
    shape = inputs[0][1] if len(inputs) == 1 else None
    if shape is None or shape.rank.is_dynamic or len(shape) != 4 or (shape[1].is_static and shape[1].get_length() != 3):
        listed = ", ".join(f"{name} {shape}" for name, shape in inputs)
        msg = (
            f"Model '{path}' does not take one batch of RGB images (N, 3, H, W): its inputs are {listed}. "
            f"{EXPORT_ADVICE}."
        )
        raise InvalidInputError(msg)


def read_exported_model(path: str | Path) -> Any:  # noqa: ANN401
    """The ``openvino.Model`` of an export of this package's models, checked.

    Raises:
        MissingInputError: The file, or the ``.bin`` of an ``.xml``, does not exist.
        InvalidInputError: The file is no exported model (another kind of file, one OpenVINO cannot read, or a graph
            without the image input and the outputs of this package's exports); the message names it.
        MissingPackageError: OpenVINO is not installed.
    """
    path = Path(path)
    _check_file(path)
    openvino = _openvino()
    try:
        model = openvino.Core().read_model(str(path))
    except RuntimeError as error:
        msg = f"Model '{path}' cannot be read by OpenVINO ({_reason(error)}). {EXPORT_ADVICE}, with its weights file."
        raise InvalidInputError(msg) from error
    _check_signature(model, path)
    return model


def export_calibration(path: str | Path) -> Calibration | None:
    """The calibration listed beside the exported model ``path`` (an export with ``false_alarm_rate``), else ``None``.

    Its scores give each image's conformal p-value, its threshold is the one the graph labels with.

    Raises:
        InvalidInputError: The files list several calibrations (an export lists one) or contradict each other.
    """
    calibrations = read_calibrations(Path(path).parent)
    if not calibrations:
        return None
    if len(calibrations) > 1:
        msg = (
            f"'{Path(path).parent}' lists calibrations of {len(calibrations)} categories beside the model; an export "
            "lists one: export again into an empty folder."
        )
        raise InvalidInputError(msg)
    (calibration,) = calibrations
    logger.info(
        "p-values against the %d calibration images listed beside the model (false_alarm_rate=%s, threshold %s).",
        len(calibration.files),
        calibration.false_alarm_rate,
        calibration.image_threshold,
    )
    return calibration


def compile_for_throughput(model: Any, precision: str = "f32", threads: int | None = None) -> Any:  # noqa: ANN401
    """The model compiled for the CPU with OpenVINO's throughput hint (parallel requests over the CPU's cores).

    Args:
        model: An ``openvino.Model``, e.g. from :func:`read_exported_model`.
        precision: The inference precision (:func:`~anomalib_faprompt.deploy.openvino_config`, with its compile cache).
        threads: OpenVINO's ``INFERENCE_NUM_THREADS`` (``None``: every core).

    Returns:
        The ``openvino.CompiledModel``. A warning line says that bf16 and f16 can move the outputs away from the
        tested (f32) model's, or, where the CPU runs another precision than ``precision`` (bf16 or f16 without the
        instructions for it), which one it runs; another one for a quantised model on a CPU without int8 dot
        products.
    """
    openvino = _openvino()
    if any(operation.get_type_name() == "FakeQuantize" for operation in model.get_ops()):
        note = int8_speed_note(cpu_instruction_sets())
        if note:
            logger.warning(note)
    config = {**openvino_config(precision), "PERFORMANCE_HINT": "THROUGHPUT"}
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = str(threads)
    compiled = openvino.Core().compile_model(model, "CPU", config)
    running = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    if running != precision:
        logger.warning(
            "This CPU runs the model in %s: OpenVINO's CPU plugin has no %s here (the CPU lacks its instructions).",
            running,
            precision,
        )
    elif precision != "f32":
        logger.warning(
            "Precision %s: scores and maps can differ from the tested model's (f32) by up to 1e-1, where near-tied "
            "patches swap places in FAPrompt's top-k selection (docs/export.md, Precision). Use f32 for its numbers.",
            precision,
        )
    return compiled
