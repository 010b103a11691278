"""OpenVINO deployment: exported models that compute in f32 unless asked otherwise, and a compile cache per precision.

**Precision.** OpenVINO's CPU plugin computes in bf16 by default on CPUs with bf16 instructions. FAPrompt does not
survive that: bf16 errors of a few 1e-3 in the image encoder flip the top-k selection of near-tied patches, which
feeds other patches to the prior network, so the data-dependent prompts, scores and maps move by up to 1e-1. The
exported IR therefore asks for f32 itself (:func:`request_precision`, applied by the modules' ``to_openvino``), in
its runtime options: a compile without an ``INFERENCE_PRECISION_HINT`` runs in f32 on every CPU, and an explicit
hint (``config={"INFERENCE_PRECISION_HINT": "bf16"}``) still selects bf16 for speed.

**Compile cache.** anomalib's ``OpenVINOInferencer`` caches compiled models in ``./openvino_cache``. OpenVINO
2026.4's CPU plugin names the cached blob after the model and the CPU only, not the precision, and a blob compiled in
f32 and loaded with a bf16 hint gives NaN scores and maps, or a segmentation fault. :func:`openvino_config` gives
each precision a cache folder of its own.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DEFAULT_PRECISION", "PRECISIONS", "PRECISION_KEY", "openvino_config", "request_precision"]

PRECISIONS = ("f32", "bf16", "f16")
DEFAULT_PRECISION = "f32"
PRECISION_KEY = ["runtime_options", "INFERENCE_PRECISION_HINT"]


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        msg = f"precision='{precision}' is not an OpenVINO inference precision: use one of {PRECISIONS}."
        raise ValueError(msg)


def request_precision(xml_path: Path | str, precision: str = DEFAULT_PRECISION) -> Path:
    """Make the OpenVINO IR at ``xml_path`` ask for ``precision`` when compiled without an explicit precision hint.

    The request is the model's ``runtime_options/INFERENCE_PRECISION_HINT`` runtime information, which OpenVINO
    applies when the compile options hold no ``INFERENCE_PRECISION_HINT``. The IR is rewritten in place; its
    weights are kept as they are (fp16-compressed or quantised weights stay so).

    Args:
        xml_path: The IR's ``.xml`` file (its ``.bin`` lies beside it).
        precision: ``"f32"``, ``"bf16"`` or ``"f16"``.

    Returns:
        ``xml_path``.
    """
    import openvino as ov

    _check_precision(precision)
    xml_path = Path(xml_path)
    model = ov.Core().read_model(xml_path)
    model.set_rt_info(precision, PRECISION_KEY)
    temporary = xml_path.with_name(f".{xml_path.stem}.rewrite.xml")
    ov.save_model(model, temporary, compress_to_fp16=False)
    del model  # release the memory-mapped weights before the files are replaced
    os.replace(temporary.with_suffix(".bin"), xml_path.with_suffix(".bin"))
    os.replace(temporary, xml_path)
    return xml_path


def openvino_config(precision: str = DEFAULT_PRECISION, cache_root: Path | str = "openvino_cache") -> dict[str, str]:
    """OpenVINO compile options for ``precision`` with a compile cache of its own (``cache_root/precision``).

    Pass them to anomalib's inferencer, ``OpenVINOInferencer(xml, device="CPU", config=openvino_config("bf16"))``,
    or to ``ov.Core().compile_model``. Without them the inferencer caches every precision in ``./openvino_cache``,
    where a blob compiled in one precision is loaded for another (see the module's description).

    Args:
        precision: ``"f32"`` (what the exported models request by default), ``"bf16"`` or ``"f16"``.
        cache_root: Folder holding one cache folder per precision.

    Returns:
        ``{"INFERENCE_PRECISION_HINT": precision, "CACHE_DIR": "<cache_root>/<precision>"}``.
    """
    _check_precision(precision)
    return {"INFERENCE_PRECISION_HINT": precision, "CACHE_DIR": str(Path(cache_root) / precision)}
