"""anomalib's OpenVINO compressions for the prompt-learning models: what each needs, checked before any work.

``FP16`` stores fp16 weights; ``INT8`` compresses the weights to int8 (NNCF's ``compress_weights``); ``INT8_PTQ``
quantises weights and activations (NNCF's ``quantize``), calibrated on the datamodule's validation images (for
:class:`~anomalib_faprompt.data.AuxiliaryDataModule`, the held-out part of the auxiliary data: ``val_split_ratio``
above 0); ``INT8_ACQ`` does the same and also keeps in f32 what costs more than ``max_drop`` of the metric on the
datamodule's test images. anomalib hands NNCF one test dataloader and cannot validate a batch of one image; the
zero-shot protocol has one dataloader per target category: :func:`compression_datamodule` joins them into one,
in batches of at least two.
"""

from __future__ import annotations

from importlib.util import find_spec
from typing import Any

from anomalib.data import AnomalibDataModule, ImageBatch
from anomalib.deploy import CompressionType
from torch.utils.data import ConcatDataset, DataLoader

from anomalib_faprompt.errors import InvalidInputError, MissingPackageError

__all__ = ["as_compression", "compression_datamodule"]

NEEDS_NNCF = (CompressionType.INT8, CompressionType.INT8_PTQ, CompressionType.INT8_ACQ)
NEEDS_DATA = (CompressionType.INT8_PTQ, CompressionType.INT8_ACQ)
INSTALL = "pip install 'anomalib-faprompt[export]'"


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
    compression_type: CompressionType | str | None, datamodule: AnomalibDataModule | None
) -> AnomalibDataModule | _OneTestLoader | None:
    """Check what ``compression_type`` needs, and give the datamodule to hand to anomalib's OpenVINO export.

    Args:
        compression_type: The compression (``None``: none).
        datamodule: The datamodule given with it (``--data``).

    Returns:
        ``datamodule``; for ``INT8_ACQ``, a view of it with one test dataloader (batches of two or more).

    Raises:
        MissingPackageError: ``openvino``, or NNCF for the int8 compressions, is not installed.
        InvalidInputError: ``INT8_PTQ``/``INT8_ACQ`` without a datamodule, or with one that has no validation
            images to calibrate on.
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
    if compression not in NEEDS_DATA:
        return datamodule
    if datamodule is None:
        msg = (
            f"--compression_type {name} calibrates on images: pass a datamodule (`--data` on the command line, "
            "`datamodule=` in Python), whose validation images calibrate the quantisation."
        )
        raise InvalidInputError(msg)
    datamodule.setup("fit")
    loader = datamodule.val_dataloader()
    if not isinstance(loader, list | tuple) and len(getattr(loader, "dataset", ())):
        return _OneTestLoader(datamodule) if compression == CompressionType.INT8_ACQ else datamodule
    msg = (
        f"--compression_type {name} calibrates on the datamodule's validation images, and "
        f"{type(datamodule).__name__} has none: hold some out (AuxiliaryDataModule: `val_split_ratio` above 0, "
        "e.g. 0.1), or pass a datamodule with a validation split."
    )
    raise InvalidInputError(msg)
