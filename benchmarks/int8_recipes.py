"""Which products of a trained FAPrompt (or AnomalyCLIP) int8 can take and keep the verdict: one row per recipe.

Exports the checkpoint in f32 as ``benchmark_export.py --checkpoint`` does (with ``false_alarm_rate`` and, as
``calibration_source``, the normal images of ``--calibration-data``: the export's thresholds and the quantisation's
calibration images), quantises that graph with each recipe below, and runs every test image of ``--data`` alone
through each with the f32 hint. Per recipe: the largest and median score difference to the f32 export, how many
images differ by more than 2e-2, the largest map difference, the distinct scores, and the labels equal to the f32
export's (at the calibrated threshold, decided inside the graphs). A first row runs the f32 export on the images
plus a noise of 1/255 (under one grey level): how much the model moves on its own.

Run: ``python benchmarks/int8_recipes.py --checkpoint <model.ckpt> --data <root> --calibration-data <root>``
(two minutes for the README's toy checkpoint on two cores; the roots as for ``benchmark_export.py``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import nncf
import numpy as np
import openvino as ov
import torch
from nncf.quantization.advanced_parameters import (
    AdvancedQuantizationParameters,
    AdvancedSmoothQuantParameters,
    OverflowFix,
)

from anomalib_faprompt.deploy import remove_f32_marks
from anomalib_faprompt.models import compression
from anomalib_faprompt.models.few_shot import run_seed

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_export import (
    MODELS,
    calibration_folder,
    compared,
    dataset_files,
    load_calibrated,
    outputs_per_image,
)

Quantise = Callable[[ov.Model, list[np.ndarray]], ov.Model]


def quantise_products(
    products: list[str],
    overflow_fix: OverflowFix = OverflowFix.ENABLE,
    smooth_quant: float = -1,
    fast_bias_correction: bool = True,
) -> Quantise:
    """A recipe that quantises ``products`` only, with NNCF's transformer settings (SmoothQuant -1: off)."""

    def quantise(model: ov.Model, images: list[np.ndarray]) -> ov.Model:
        kept = [op.get_friendly_name() for op in model.get_ops() if op.get_friendly_name() not in set(products)]
        advanced = AdvancedQuantizationParameters(
            overflow_fix=overflow_fix, smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=smooth_quant)
        )
        return nncf.quantize(
            model,
            nncf.Dataset(images),
            subset_size=len(images),
            model_type=nncf.ModelType.TRANSFORMER,
            ignored_scope=nncf.IgnoredScope(names=kept, validate=False),
            fast_bias_correction=fast_bias_correction,
            advanced_parameters=advanced,
        )

    return quantise


def on_third(quantise: Quantise, index: int) -> Quantise:
    """``quantise`` calibrated on the ``index``-th third of the calibration images only."""

    def calibrate(model: ov.Model, images: list[np.ndarray]) -> ov.Model:
        size = len(images) // 3
        return quantise(model, images[index * size : (index + 1) * size])

    return calibrate


def recipes(model: ov.Model, clip: torch.nn.Module) -> dict[str, Quantise]:
    """The recipes compared, by name; the package's own is ``compression.quantize``."""
    blocks = clip.visual.transformer.resblocks

    def products(layers: Callable[[torch.nn.Module], list[torch.Tensor]], chosen: range) -> list[str]:
        return compression.products_of(model, [weight for index in chosen for weight in layers(blocks[index])])

    def mlp(block: torch.nn.Module) -> list[torch.Tensor]:
        return [block.mlp.c_fc.weight, block.mlp.c_proj.weight]

    def packages(m: ov.Model, images: list[np.ndarray]) -> ov.Model:
        return compression.quantize(m, clip, images)

    every, later = range(len(blocks)), range(1, len(blocks))
    package = products(mlp, later)
    thirds = {
        f"the package's, calibrated on the {ordinal} third of the images": on_third(packages, index)
        for index, ordinal in enumerate(("first", "second", "last"))
    }
    return {
        "anomalib's INT8_PTQ (`nncf.quantize(model, data)`: every product)": lambda m, images: nncf.quantize(
            m, nncf.Dataset(images), subset_size=len(images)
        ),
        "MLP of every block, overflow fix on the first layer only (the earlier recipe)": quantise_products(
            products(mlp, every), overflow_fix=OverflowFix.FIRST_LAYER
        ),
        "MLP of every block, 7-bit weights": quantise_products(products(mlp, every)),
        "**the package's: MLP of the blocks after the first, 7-bit weights**": packages,
        "the same, overflow fix on the first layer only": quantise_products(package, OverflowFix.FIRST_LAYER),
        "the first block's `c_fc` alone": quantise_products(products(lambda b: [b.mlp.c_fc.weight], range(1))),
        "the first block's `c_proj` alone": quantise_products(products(lambda b: [b.mlp.c_proj.weight], range(1))),
        "the package's + attention `in_proj` of the same blocks": quantise_products(
            package + products(lambda b: [b.attn.in_proj_weight], later)
        ),
        "the package's + attention `out_proj` of the same blocks": quantise_products(
            package + products(lambda b: [b.attn.out_proj.weight], later)
        ),
        "the package's, SmoothQuant alpha 0.5": quantise_products(package, smooth_quant=0.5),
        "the package's, `fast_bias_correction=False`": quantise_products(package, fast_bias_correction=False),
        **thirds,
    }


def row(name: str, outputs: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> str:
    """One Markdown row comparing ``outputs`` with the f32 export's."""
    score, anomaly_map, distinct, labels = compared(outputs, reference)
    return (
        f"| {name} | {score.max():.2e} | {np.median(score):.1e} | {int((score > 2e-2).sum())} | {anomaly_map:.2e} | "
        f"{distinct} | {100 * labels:.1f}% |"
    )


def main() -> None:
    """Parse options, export, quantise with each recipe, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="a trained model's checkpoint (--model's)")
    parser.add_argument("--data", type=Path, required=True, help="dataset root whose test images (*/test/*/*) run")
    parser.add_argument("--calibration-data", type=Path, required=True, help="root whose */*/good images calibrate")
    parser.add_argument("--model", choices=sorted(MODELS), default="FAPrompt")
    parser.add_argument("--false-alarm-rate", type=float, default=0.05, help="the model's rate")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="OpenVINO's threads")
    args = parser.parse_args()
    logging.getLogger("nncf").setLevel(logging.WARNING)
    threads = {"INFERENCE_NUM_THREADS": args.threads}

    with tempfile.TemporaryDirectory() as temporary:
        root = Path(temporary)
        source = calibration_folder(args.calibration_data, root / "normal")
        model = load_calibrated(args.model, args.checkpoint, args.false_alarm_rate, source)
        f32 = model.to_openvino(root / "f32")
        remove_f32_marks(f32)  # the graph as anomalib hands it to the quantisation
        images = compression.file_images(model.calibration_source_files(run_seed()))
        files = dataset_files(args.data, "*/test/*/*")
        reference = outputs_per_image(f32, files, threads)
        rows = [row("f32 export, images + noise of 1/255", outputs_per_image(f32, files, threads, 1 / 255), reference)]
        chosen = recipes(ov.Core().read_model(str(f32)), model.model.backbone.clip)
        for index, (name, quantise) in enumerate(chosen.items()):
            xml = root / f"recipe{index}.xml"
            ov.save_model(quantise(ov.Core().read_model(str(f32)), images), str(xml), compress_to_fp16=False)
            rows.append(row(name, outputs_per_image(xml, files, threads), reference))

    print(f"\n{args.model} checkpoint {args.checkpoint}: {len(files)} test images of {args.data}, each alone, f32 hint")
    print(
        f"calibration: the {len(images)} normal images of {args.calibration_data}; OpenVINO {ov.__version__}, ", end=""
    )
    print(f"NNCF {nncf.__version__}, {args.threads} threads\n")
    print(
        "| recipe | max diff score | median | images over 2e-2 | max diff map | distinct scores | labels equal to f32 |"
    )
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
