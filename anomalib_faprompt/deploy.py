"""OpenVINO deployment: exported models kept in f32 at the CPU's bf16 default, and a compile cache per precision.

**Precision.** OpenVINO's CPU plugin computes in bf16 by default on CPUs with bf16 instructions. FAPrompt does not
survive that: bf16 errors of a few 1e-3 in the image encoder flip the top-k selection of near-tied patches, the
prior network then sees other patches, and the data-dependent prompts, scores and maps move by up to 1e-1. The
CPU plugin ignores an ``INFERENCE_PRECISION_HINT`` stored in the model, so the exported IR marks every operation to
stay in f32 instead (:func:`keep_f32`, applied by the modules' ``to_openvino``): at the bf16 default, only nodes the
plugin creates itself (parts of the attention) still run in bf16. That keeps the outputs within a few 1e-3 of torch
unless those nodes' errors still reorder near-tied patches: the marks shrink the error that flips the top-k, they
do not rule flips out. Exact f32, and FAPrompt's paper numbers, need the hint at compile time:
``config=openvino_config("f32")``.

**Compile cache.** anomalib's ``OpenVINOInferencer`` caches compiled models in ``./openvino_cache``. OpenVINO
2026.4's CPU plugin names the cached blob after the model and the CPU only, not the precision: a run at another
precision loads the blob compiled for the first (for an unmarked model, an f32 blob loaded in bf16 gave NaN or a
segmentation fault). :func:`openvino_config` gives each precision a cache folder of its own.
"""

from __future__ import annotations

from pathlib import Path
from xml.etree import ElementTree

__all__ = [
    "INT8_INSTRUCTIONS",
    "PRECISE",
    "PRECISIONS",
    "cpu_instruction_sets",
    "int8_speed_note",
    "keep_f32",
    "openvino_config",
    "remove_f32_marks",
]

PRECISIONS = ("f32", "bf16", "f16")
# OpenVINO's IR name of the runtime attribute that keeps an operation in its original (f32) precision.
PRECISE = "precise"
UNMARKED_LAYERS = {"Parameter", "Result", "Const"}
# The x86 instruction sets that decide OpenVINO's CPU speed at each precision, as Linux names them in /proc/cpuinfo.
INSTRUCTION_SETS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
INT8_INSTRUCTIONS = ("avx512_vnni", "avx_vnni", "amx_int8")  # int8 dot products: what makes int8 faster than f32


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        msg = f"precision='{precision}' is not an OpenVINO inference precision: use one of {PRECISIONS}."
        raise ValueError(msg)


def keep_f32(xml_path: Path | str) -> Path:
    """Mark every operation of the OpenVINO IR at ``xml_path`` to compute in f32, whatever the inference precision.

    The mark is OpenVINO's ``precise`` runtime attribute (``DisablePrecisionConversion``), written into the IR's
    XML; the CPU plugin keeps marked operations in f32 at its bf16 default and under a bf16 hint. Nodes that the
    plugin's own graph transformations create (parts of the attention, some fully connected layers) lose the mark
    and may still run in bf16 there. OpenVINO does not write the mark back out: an IR read and saved again with
    ``ov.save_model`` loses it.

    Args:
        xml_path: The IR's ``.xml`` file; rewritten in place, its ``.bin`` is untouched.

    Returns:
        ``xml_path``.
    """
    xml_path = Path(xml_path)
    tree = ElementTree.parse(xml_path)  # noqa: S314  (an IR that the export wrote)
    for layer in tree.getroot().iter("layer"):
        if layer.get("type") in UNMARKED_LAYERS:
            continue
        rt_info = layer.find("rt_info")
        if rt_info is None:
            rt_info = ElementTree.Element("rt_info")
            layer.insert(int(layer.find("data") is not None), rt_info)
        if all(attribute.get("name") != PRECISE for attribute in rt_info.iter("attribute")):
            ElementTree.SubElement(rt_info, "attribute", {"name": PRECISE, "version": "0"})
    tree.write(xml_path, encoding="utf-8", xml_declaration=True)
    return xml_path


def remove_f32_marks(xml_path: Path | str) -> Path:
    """Remove :func:`keep_f32`'s marks from the IR at ``xml_path`` (in place): the CPU plugin's bf16 default, at speed.

    On a 16-core CPU with AMX, FAPrompt on ViT-L-14-336 at 518 ran 2.5x faster without the marks (2.49 against
    0.98 images/s), at the price of top-k flips that can move FAPrompt's outputs by up to 1e-1.

    Args:
        xml_path: The IR's ``.xml`` file; its ``.bin`` is untouched.

    Returns:
        ``xml_path``.
    """
    xml_path = Path(xml_path)
    tree = ElementTree.parse(xml_path)  # noqa: S314  (an IR that the export wrote)
    for rt_info in tree.getroot().iter("rt_info"):
        for attribute in rt_info.findall("attribute"):
            if attribute.get("name") == PRECISE:
                rt_info.remove(attribute)
    tree.write(xml_path, encoding="utf-8", xml_declaration=True)
    return xml_path


def openvino_config(precision: str = "f32", cache_root: Path | str = "openvino_cache") -> dict[str, str]:
    """OpenVINO compile options for ``precision`` with a compile cache of its own (``cache_root/precision``).

    Pass them to anomalib's inferencer, ``OpenVINOInferencer(xml, device="CPU", config=openvino_config())``, or to
    ``ov.Core().compile_model``. Without them the inferencer caches every precision in ``./openvino_cache``, where
    a blob compiled in one precision is loaded for another (see the module's description).

    Args:
        precision: ``"f32"`` (the torch numbers), ``"bf16"`` or ``"f16"``.
        cache_root: Folder holding one cache folder per precision.

    Returns:
        ``{"INFERENCE_PRECISION_HINT": precision, "CACHE_DIR": "<cache_root>/<precision>"}``.
    """
    _check_precision(precision)
    return {"INFERENCE_PRECISION_HINT": precision, "CACHE_DIR": str(Path(cache_root) / precision)}


def cpu_instruction_sets(cpuinfo: Path | str = "/proc/cpuinfo") -> tuple[str, ...] | None:
    """The instruction sets of :data:`INSTRUCTION_SETS` this CPU has; ``None`` where ``cpuinfo`` cannot be read."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return tuple(name for name in INSTRUCTION_SETS if name in flags)


def int8_speed_note(instruction_sets: tuple[str, ...] | None) -> str | None:
    """One line for a quantised (``INT8_PTQ``/``INT8_ACQ``) model on a CPU without int8 dot products, else ``None``.

    Without VNNI or AMX, OpenVINO computes int8 products with AVX2 instructions that are no faster than f32.
    """
    if instruction_sets is None or any(name in instruction_sets for name in INT8_INSTRUCTIONS):
        return None
    return (
        "This CPU has no int8 dot-product instructions (AVX-512 VNNI, AVX-VNNI or AMX): the quantised model runs no "
        "faster than its f32 export here; export without --compression_type INT8_PTQ/INT8_ACQ, or deploy on a CPU "
        "with them."
    )
