"""Export of the prompt-learning models through anomalib's ONNX and OpenVINO path.

anomalib exports the whole module (pre-processor, model, post-processor) with the dynamo exporter. The
text embeddings that do not depend on the image are eval-mode buffers and enter the graph as constants;
everything that depends on the image (for FAPrompt the prior network and the DAP text-encoder pass) is
traced, with a dynamic batch size.

An export never replaces an earlier one: when the file it would write exists, it is refused before any work. A
calibration made for the export is listed beside the model file (``calibration_images.csv``,
``calibration_thresholds.csv``), where ``anomalib-faprompt-predict`` reads it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from anomalib import TaskType
from anomalib.data import AnomalibDataModule, ImageBatch
from anomalib.deploy.export import CompressionType, ExportType
from anomalib.models.components.base.export_mixin import ExportMixin
from torchmetrics import Metric

from anomalib_faprompt.deploy import keep_f32
from anomalib_faprompt.errors import ExistingOutputError, InvalidInputError

from .compression import (
    NEEDS_DATA,
    as_compression,
    compression_datamodule,
    file_images,
    image_batch,
    normal_images,
    quantize,
    quantize_with_accuracy_control,
    report_quantisation_images,
)
from .few_shot import run_seed

if TYPE_CHECKING:
    from lightning.pytorch.utilities.parsing import AttributeDict

    from anomalib_faprompt.components import PromptedCLIPModel

__all__ = ["PromptExportMixin"]


def export_folder(export_root: Path | str, export_type: ExportType) -> Path:
    """``<export_root>/weights/<type>``: where anomalib's export writes the model file."""
    return Path(export_root) / "weights" / export_type.value


def refuse_existing(export_root: Path | str, export_type: ExportType, file_name: str) -> None:
    """Raise an error naming the file when it exists in :func:`export_folder`."""
    path = export_folder(export_root, export_type) / file_name
    if path.exists():
        msg = (
            f"'{path}' holds an earlier export, which is kept. Pass another `export_root` (`--export_root` on the "
            "command line), or remove that file to export here again."
        )
        raise ExistingOutputError(msg)


class PromptExportMixin(ExportMixin):
    """anomalib's export, at ONNX opset 18, with an OpenVINO IR that stays in f32 on bf16 CPUs, never overwriting.

    Requires, of the class it is mixed into (``PromptLearningModule``, an ``AnomalibModule``): ``prepare_export``
    (the model made ready for an export: its references and thresholds, a warning when its prompts were never
    learned), ``calibration_source_files`` (:class:`~.calibration.CalibrationMixin`'s, the images ``INT8_PTQ``
    calibrates on), ``hparams`` (``calibration_source``), ``model`` (the torch model, whose CLIP's MLP layers
    ``INT8_PTQ`` quantises) and ``name``; anomalib's ``ExportMixin`` does the export itself.
    """

    hparams: AttributeDict
    model: PromptedCLIPModel
    name: str
    prepare_export: Callable[[Path | str], None]
    calibration_source_files: Callable[[int], list[str]]
    _prepared_for_openvino = False  # within to_openvino: its ONNX step (into a temporary folder) prepares nothing

    def _start_export(self, export_root: Path | str, export_type: ExportType, file_name: str) -> None:
        """Refuse to replace an earlier export, then make the model ready for it (``prepare_export``)."""
        refuse_existing(export_root, export_type, file_name)
        if not self._prepared_for_openvino:
            self.prepare_export(export_folder(export_root, export_type))

    def to_torch(self, export_root: Path | str, model_file_name: str = "model") -> Path:
        """Export the whole module as anomalib does (``torch.save``), unless the file exists."""
        self._start_export(export_root, ExportType.TORCH, f"{model_file_name}.pt")
        return super().to_torch(export_root, model_file_name)

    def to_onnx(
        self,
        export_root: Path | str,
        model_file_name: str = "model",
        input_size: tuple[int, int] | None = None,
        **kwargs: Any,  # noqa: ANN401
    ) -> Path:
        """Export to ONNX as anomalib does (whole module, dynamo exporter), at opset 18 unless asked otherwise.

        The dynamo exporter implements nothing below opset 18: with anomalib's default of 14 it attempts a
        down-conversion that fails on this graph and keeps opset 18 anyway, after logging a traceback.
        Text embeddings that do not depend on the image are eval-mode buffers and enter the graph as constants;
        everything that depends on the image (for FAPrompt the prior network and the DAP text-encoder pass) is
        traced, with a dynamic batch size.
        """
        self._start_export(export_root, ExportType.ONNX, f"{model_file_name}.onnx")
        kwargs.setdefault("opset_version", 18)
        return super().to_onnx(export_root, model_file_name, input_size, **kwargs)

    def to_openvino(
        self,
        export_root: Path | str,
        model_file_name: str = "model",
        input_size: tuple[int, int] | None = None,
        compression_type: CompressionType | None = None,
        datamodule: AnomalibDataModule | None = None,
        **kwargs: Any,  # noqa: ANN401
    ) -> Path:
        """Export to OpenVINO as anomalib does, with every operation of the IR marked to stay in f32.

        See :mod:`anomalib_faprompt.deploy`: at the CPU plugin's bf16 default, FAPrompt's outputs move by up to 1e-1.
        What a compression needs (NNCF, calibration images) is checked first (:mod:`.compression`); then the model
        is made ready for ``<export_root>/weights/openvino`` (a calibration is listed there, beside ``model.xml``),
        not for the temporary folder of anomalib's ONNX step. ``kwargs`` are anomalib's (``metric``, ``task``,
        ``max_drop``, ``ov_kwargs``, ``onnx_kwargs``).
        """
        refuse_existing(export_root, ExportType.OPENVINO, f"{model_file_name}.xml")
        compression_type = as_compression(compression_type)
        own_images = compression_type in NEEDS_DATA and bool(self.hparams.calibration_source)
        datamodule = compression_datamodule(compression_type, datamodule, own_images=own_images)
        self.prepare_export(export_folder(export_root, ExportType.OPENVINO))
        self._prepared_for_openvino = True
        try:
            xml = super().to_openvino(
                export_root,
                model_file_name,
                input_size,
                compression_type=compression_type,
                datamodule=datamodule,
                **kwargs,
            )
        finally:
            self._prepared_for_openvino = False
        return keep_f32(xml)

    def _quantisation_images(self, datamodule: AnomalibDataModule | None) -> list[np.ndarray]:
        """The normal images ``INT8_PTQ``/``INT8_ACQ`` calibrate on, as the exported model takes them.

        Those of ``calibration_source`` (the very images the export's thresholds are, or would be, calibrated on:
        drawn with the run's seed after the few-shot references are set), else the normal images of the
        datamodule's validation split.
        """
        files = self.calibration_source_files(run_seed())
        if files:
            images = file_images(files)
            source = self.hparams.calibration_source
            where = f"images of `calibration_source` '{source}' (calibration_images.csv lists them)"
        else:
            datamodule.setup("fit")
            images = normal_images(datamodule)
            where = f"normal images of the validation split of {type(datamodule).__name__}"
        report_quantisation_images(len(images), where)
        return images

    def _post_training_quantization_ov(self, model: Any, datamodule: AnomalibDataModule | None = None) -> Any:  # noqa: ANN401
        """``INT8_PTQ``: the recipe of :func:`.compression.quantize`, calibrated on :meth:`_quantisation_images`."""
        return quantize(model, self.model.backbone.clip, self._quantisation_images(datamodule))

    def _accuracy_control_quantization_ov(
        self,
        model: Any,  # noqa: ANN401  (an ov.Model)
        datamodule: AnomalibDataModule | None = None,
        metric: Metric | None = None,
        task: TaskType | None = None,
        max_drop: float = 0.01,
    ) -> Any:  # noqa: ANN401
        """``INT8_ACQ``: ``INT8_PTQ``'s quantisation, reverted to f32 where it costs over ``max_drop`` of ``metric``.

        The metric (anomalib's default: image F1 of ``pred_label``) is computed on the datamodule's test images. On
        these graphs NNCF 3.4's accuracy control can register one quantizer twice while reverting and stop with a
        ``KeyError`` (NNCF issue 3118): told in one line.
        """
        from anomalib.metrics import F1Score  # noqa: PLC0415

        del task  # the metric's fields say what it reads
        images = self._quantisation_images(datamodule)
        datamodule.setup("fit")
        metric = metric if metric is not None else F1Score(fields=["pred_label", "gt_label"])

        def validate(compiled: Any, batches: Iterable[ImageBatch]) -> float:  # noqa: ANN401
            metric.reset()
            for batch in batches:
                outputs = {port.get_any_name(): value for port, value in compiled(batch.image.numpy()).items()}
                metric.update(image_batch(batch, outputs))
            return float(metric.compute())

        try:
            return quantize_with_accuracy_control(
                model, self.model.backbone.clip, images, list(datamodule.test_dataloader()), validate, max_drop
            )
        except KeyError as error:
            msg = (
                f"--compression_type INT8_ACQ: NNCF's accuracy control stopped while reverting {self.name}'s "
                f"quantizers to f32 (KeyError {error}; NNCF issue 3118), after INT8_PTQ's quantisation dropped the "
                "metric by more than `max_drop`. Export INT8_PTQ (the same quantisation without accuracy control), "
                "or pass a larger `--max_drop`."
            )
            raise InvalidInputError(msg) from error
