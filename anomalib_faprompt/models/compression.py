"""anomalib's OpenVINO compressions for the prompt-learning models: what each needs, checked before any work.

``FP16`` stores fp16 weights; ``INT8`` compresses the weights to int8 (NNCF's ``compress_weights``); ``INT8_PTQ``
quantises weights and activations (NNCF's ``quantize``) of the image encoder's MLP layers after its first block
(:func:`quantize`), calibrated on normal images: the model's calibration images (``calibration_source``, with
``false_alarm_rate``: those its exported thresholds are calibrated on), else the normal images of the datamodule's
validation split (for :class:`~anomalib_faprompt.data.AuxiliaryDataModule`, the held-out part of the auxiliary data:
``val_split_ratio`` above 0); ``INT8_ACQ`` does the same and also keeps in f32 what costs more than ``max_drop`` of
the metric on the datamodule's test images (:func:`quantize_with_accuracy_control`). anomalib hands NNCF one test
dataloader and cannot validate a batch of one image; the zero-shot protocol has one dataloader per target category:
:func:`compression_datamodule` joins them into one, in batches of at least two.

**What is quantised.** These models decide their scores after the encoders: the similarities go through a softmax
at temperature 0.07, which multiplies an error of the embeddings by about 14, and FAPrompt's DAP takes the top-k
of near-tied patches. NNCF's default (every matrix product, the text side, the prior network and the similarities
included) collapsed the toy model's scores. Only the MLP layers (``mlp.c_fc``, ``mlp.c_proj``) of the image
encoder's blocks after the first are quantised (:func:`quantised_operations`), with NNCF's transformer settings,
SmoothQuant off and 7-bit weights (:func:`_recipe`); the first block, the attention, the patch embedding and
projection, the text encoder, DAP, the similarities, the few-shot bank and the blur stay f32. docs/export.md gives
the measurements behind each choice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from importlib.util import find_spec
from typing import Any

import numpy as np
import torch
from anomalib.data import AnomalibDataModule, ImageBatch
from anomalib.deploy import CompressionType
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader

from anomalib_faprompt.data.images import read_image
from anomalib_faprompt.errors import InvalidInputError, MissingPackageError

__all__ = [
    "FIRST_QUANTISED_BLOCK",
    "as_compression",
    "compression_datamodule",
    "ENOUGH_QUANTISATION_IMAGES",
    "file_images",
    "image_batch",
    "normal_images",
    "products_of",
    "quantised_operations",
    "quantize",
    "quantize_with_accuracy_control",
    "report_quantisation_images",
]

NEEDS_NNCF = (CompressionType.INT8, CompressionType.INT8_PTQ, CompressionType.INT8_ACQ)
NEEDS_DATA = (CompressionType.INT8_PTQ, CompressionType.INT8_ACQ)
INSTALL = "pip install 'anomalib-faprompt[export]'"
logger = logging.getLogger(__name__)
FIRST_QUANTISED_BLOCK = 1
"""The image encoder's first block stays f32: its MLP errors reach every later block (measured: docs/export.md)."""
ENOUGH_QUANTISATION_IMAGES = 30
"""Fewer calibration images than this get a warning: on the toy checkpoint 30 normal images kept every score within
1.2e-3 of the f32 export, 10 moved some by up to 4.9e-2 (docs/export.md)."""


def _batches(size: int, batch_size: int) -> list[list[int]]:
    """Indices ``0..size-1`` in batches of ``batch_size``, none of a single image (the last one takes it in)."""
    batches = [list(range(start, min(start + batch_size, size))) for start in range(0, size, batch_size)]
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2] += batches.pop()
    return batches


class _OneTestLoader:
    """A datamodule whose ``test_dataloader`` gives all its test images as one loader, in batches of two or more.

    anomalib's ``INT8_ACQ`` validation squeezes the batch axis of the outputs, so a batch of one image stops it; and
    it reads one loader, where the zero-shot protocol has one per target category.
    """

    def __init__(self, datamodule: AnomalibDataModule) -> None:
        self._datamodule = datamodule

    def __getattr__(self, name: str) -> Any:  # noqa: ANN401
        return getattr(self._datamodule, name)

    def test_dataloader(self) -> DataLoader:
        """The test images of every test dataloader, in batches of ``max(2, eval_batch_size)``."""
        loaders = self._datamodule.test_dataloader()
        datasets = [loader.dataset for loader in (loaders if isinstance(loaders, list | tuple) else [loaders])]
        joined = ConcatDataset(datasets)
        batch_size = max(2, self._datamodule.eval_batch_size)
        return DataLoader(joined, batch_sampler=_batches(len(joined), batch_size), collate_fn=ImageBatch.collate)


def as_compression(compression_type: CompressionType | str | None) -> CompressionType | None:
    """The ``CompressionType`` of a value or a name (``"int8_ptq"``, ``"INT8_PTQ"``), or an error listing them."""
    if compression_type is None or isinstance(compression_type, CompressionType):
        return compression_type
    for compression in CompressionType:
        if str(compression_type).lower() == compression.value:
            return compression
    names = ", ".join(compression.name for compression in CompressionType)
    msg = f"compression_type={compression_type!r} is not one of anomalib's compressions: {names}."
    raise InvalidInputError(msg)


def compression_datamodule(
    compression_type: CompressionType | str | None,
    datamodule: AnomalibDataModule | None,
    own_images: bool,
) -> AnomalibDataModule | _OneTestLoader | None:
    """Check what ``compression_type`` needs, and give the datamodule to hand to anomalib's OpenVINO export.

    Args:
        compression_type: The compression (``None``: none).
        datamodule: The datamodule given with it (``--data``).
        own_images: Whether the model brings its own normal calibration images (``calibration_source``, with
            ``false_alarm_rate``): then ``INT8_PTQ`` needs no datamodule, and ``INT8_ACQ`` only its test images.

    Returns:
        ``datamodule``; for ``INT8_ACQ``, a view of it with one test dataloader (batches of two or more).

    Raises:
        MissingPackageError: ``openvino``, or NNCF for the int8 compressions, is not installed.
        InvalidInputError: ``INT8_PTQ``/``INT8_ACQ`` without calibration images (neither the model's nor a
            datamodule's validation images), or ``INT8_ACQ`` without a datamodule.
    """
    if find_spec("openvino") is None:
        msg = f"The OpenVINO export needs the `openvino` package: {INSTALL} (or pip install openvino)."
        raise MissingPackageError(msg)
    if compression_type is None:
        return datamodule
    compression = as_compression(compression_type)
    name = compression.name
    if compression in NEEDS_NNCF and find_spec("nncf") is None:
        msg = f"--compression_type {name} needs NNCF, which is not installed: {INSTALL} (or pip install nncf)."
        raise MissingPackageError(msg)
    if compression not in NEEDS_DATA or (own_images and compression == CompressionType.INT8_PTQ):
        return datamodule
    if datamodule is None:
        if compression == CompressionType.INT8_ACQ:
            needs = (
                "pass a datamodule (`--data` on the command line, `datamodule=` in Python), whose test images "
                "validate the quantisation"
            )
        else:
            needs = (
                "give the model normal images (`--model.calibration_source` with `--model.false_alarm_rate`), or pass "
                "a datamodule (`--data` on the command line, `datamodule=` in Python) whose validation images "
                "calibrate the quantisation"
            )
        msg = f"--compression_type {name} calibrates on images: {needs}."
        raise InvalidInputError(msg)
    datamodule.setup("fit")
    loader = datamodule.val_dataloader()
    if own_images or (not isinstance(loader, list | tuple) and len(getattr(loader, "dataset", ()))):
        return _OneTestLoader(datamodule) if compression == CompressionType.INT8_ACQ else datamodule
    msg = (
        f"--compression_type {name} calibrates on the datamodule's validation images, and "
        f"{type(datamodule).__name__} has none: hold some out (AuxiliaryDataModule: `val_split_ratio` above 0, "
        "e.g. 0.1), pass a datamodule with a validation split, or give the model normal images as "
        "`calibration_source` (with `false_alarm_rate`)."
    )
    raise InvalidInputError(msg)


def _signature(array: np.ndarray) -> tuple:
    """Shape and first row: enough to find a constant's candidates before comparing it whole."""
    return (array.shape, array[0, :16].tobytes())


def products_of(ov_model: Any, weights: Iterable[torch.Tensor]) -> list[str]:  # noqa: ANN401  (an ov.Model)
    """Names of the ``MatMul`` operations of ``ov_model`` whose constant weight is one of ``weights``.

    The exported graph's names say nothing of the module a product belongs to; its constant weights do (compared
    as stored, or transposed).
    """
    candidates: dict[tuple, np.ndarray] = {}
    for tensor in weights:
        weight = tensor.detach().float().cpu().numpy()
        for candidate in (weight, np.ascontiguousarray(weight.T)):
            candidates[_signature(candidate)] = candidate
    names = []
    for operation in ov_model.get_ops():
        if operation.get_type_name() != "MatMul":
            continue
        source = operation.input_value(1).get_node()
        if source.get_type_name() != "Constant":
            continue
        data = source.get_data()
        if data.ndim != 2 or data.dtype != np.float32:
            continue
        candidate = candidates.get(_signature(data))
        if candidate is not None and np.array_equal(candidate, data):
            names.append(operation.get_friendly_name())
    return names


def quantised_operations(ov_model: Any, clip: nn.Module) -> list[str]:  # noqa: ANN401  (an ov.Model)
    """Names of the ``MatMul`` operations of ``ov_model`` that the int8 compressions quantise.

    Those whose weight is an MLP weight (``mlp.c_fc``, ``mlp.c_proj``) of one of ``clip``'s image-encoder blocks
    from :data:`FIRST_QUANTISED_BLOCK` on.
    """
    blocks = clip.visual.transformer.resblocks[FIRST_QUANTISED_BLOCK:]
    return products_of(ov_model, [layer.weight for block in blocks for layer in (block.mlp.c_fc, block.mlp.c_proj)])


@contextmanager
def _quiet_nncf() -> Iterator[None]:
    """NNCF's warnings only: with the ignored scope its INFO log names each of the thousands of operations kept f32."""
    logger = logging.getLogger("nncf")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _recipe(ov_model: Any, clip: nn.Module) -> tuple[dict[str, Any], Any]:  # noqa: ANN401  (an ov.Model)
    """NNCF's arguments of the recipe, and its advanced parameters (which the two quantisations name differently).

    The products of :func:`quantised_operations` and nothing else; NNCF's transformer settings; SmoothQuant off (it
    raised the errors on these models); the overflow fix on every layer: weights in 7 bits, so that CPUs without
    VNNI (whose AVX2 int8 products add pairs in 16 bits and can saturate) compute what CPUs with VNNI or AMX compute.

    Raises:
        InvalidInputError: The graph has none of these products (a model this recipe does not know).
    """
    import nncf  # noqa: PLC0415  (optional: the export extra)
    from nncf.quantization.advanced_parameters import (  # noqa: PLC0415
        AdvancedQuantizationParameters,
        AdvancedSmoothQuantParameters,
        OverflowFix,
    )

    quantised = set(quantised_operations(ov_model, clip))
    if not quantised:
        msg = "INT8_PTQ/INT8_ACQ found no MLP layer of the image encoder in the exported graph: nothing to quantise."
        raise InvalidInputError(msg)
    others = [op.get_friendly_name() for op in ov_model.get_ops() if op.get_friendly_name() not in quantised]
    arguments = {
        "model_type": nncf.ModelType.TRANSFORMER,
        "ignored_scope": nncf.IgnoredScope(names=others, validate=False),
    }
    advanced = AdvancedQuantizationParameters(
        overflow_fix=OverflowFix.ENABLE, smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=-1)
    )
    return arguments, advanced


def quantize(ov_model: Any, clip: nn.Module, images: Sequence[np.ndarray]) -> Any:  # noqa: ANN401  (ov.Model)
    """``INT8_PTQ``: ``ov_model`` with :func:`quantised_operations` in int8, calibrated on ``images`` (all of them).

    Raises:
        InvalidInputError: The graph has none of these products.
    """
    import nncf  # noqa: PLC0415  (optional: the export extra)

    arguments, advanced = _recipe(ov_model, clip)
    with _quiet_nncf():
        return nncf.quantize(
            ov_model, nncf.Dataset(images), subset_size=len(images), advanced_parameters=advanced, **arguments
        )


def quantize_with_accuracy_control(
    ov_model: Any,  # noqa: ANN401  (an ov.Model)
    clip: nn.Module,
    images: Sequence[np.ndarray],
    validation: Sequence[ImageBatch],
    validate: Callable[[Any, Iterable[ImageBatch]], float],
    max_drop: float,
) -> Any:  # noqa: ANN401  (an ov.Model)
    """``INT8_ACQ``: :func:`quantize`'s recipe, then NNCF reverts to f32 what costs more than ``max_drop``.

    Args:
        ov_model: The exported graph.
        clip: The model's CLIP, whose weights name the products to quantise.
        images: The calibration images (all of them are used).
        validation: The batches ``validate`` scores.
        validate: The metric of a compiled model on ``validation``.
        max_drop: The largest drop of the metric kept.

    Raises:
        InvalidInputError: The graph has none of the products to quantise.
        KeyError: NNCF 3.4 registered one quantizer twice while reverting (NNCF issue 3118).
    """
    import nncf  # noqa: PLC0415  (optional: the export extra)

    arguments, advanced = _recipe(ov_model, clip)
    with _quiet_nncf():
        return nncf.quantize_with_accuracy_control(
            ov_model,
            nncf.Dataset(images),
            nncf.Dataset(validation),
            validate,
            max_drop=max_drop,
            subset_size=len(images),
            advanced_quantization_parameters=advanced,
            **arguments,
        )


def normal_images(datamodule: AnomalibDataModule) -> list[np.ndarray]:
    """The normal images of the datamodule's validation split, one batch each, as the exported model takes them.

    Raises:
        InvalidInputError: The validation split holds no normal image.
    """
    images = [
        image[None].numpy()
        for batch in datamodule.val_dataloader()
        for image, label in zip(batch.image, batch.gt_label, strict=True)
        if not int(label)
    ]
    if not images:
        msg = (
            f"INT8_PTQ/INT8_ACQ calibrate on normal images, and the validation split of {type(datamodule).__name__} "
            "holds none: hold out more of the data (`val_split_ratio`)."
        )
        raise InvalidInputError(msg)
    return images


def report_quantisation_images(count: int, where: str) -> None:
    """Say which images calibrate the int8 quantisation (``where``), with a warning when they are few."""
    if count >= ENOUGH_QUANTISATION_IMAGES:
        logger.info("The int8 quantisation is calibrated on %d %s.", count, where)
        return
    logger.warning(
        "The int8 quantisation is calibrated on %d %s only: with fewer than %d normal images its scores can move "
        "by several 1e-2 from the f32 export's (docs/export.md). Give more normal images: `calibration_source` "
        "(with `false_alarm_rate`), or a larger validation split.",
        count,
        where,
        ENOUGH_QUANTISATION_IMAGES,
    )


def file_images(files: Sequence[str]) -> list[np.ndarray]:
    """Image files, one batch each, as ``anomalib-faprompt-predict`` hands them to the exported model.

    Raises:
        UnreadableFileError: A file cannot be decoded; the message names it.
    """
    return [read_image(file)[None].numpy() for file in files]


def image_batch(batch: ImageBatch, outputs: dict[str, np.ndarray]) -> ImageBatch:
    """A test batch with the exported model's outputs (``outputs`` by output name), for anomalib's metrics."""
    fields = {name: torch.from_numpy(value) for name, value in outputs.items()}
    return ImageBatch(
        image=batch.image,
        gt_label=batch.gt_label,
        gt_mask=batch.gt_mask,
        pred_score=fields["pred_score"].reshape(-1),
        pred_label=fields["pred_label"].reshape(-1),
        anomaly_map=fields.get("anomaly_map"),
        pred_mask=fields.get("pred_mask"),
    )
