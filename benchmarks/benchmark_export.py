"""Benchmark the OpenVINO export of FAPrompt (or AnomalyCLIP) against the torch model on this machine's CPU.

Builds the model on the real ``ViT-L-14-336`` architecture (or ``--backbone``) with random weights (no download)
at the working size 518, exports the whole anomalib module (pre-processor, model, post-processor) with
``to_openvino``, and prints a Markdown table: torch CPU images/s, OpenVINO CPU images/s (at OpenVINO's default,
which the exported IR sets to f32; fp16-compressed weights as ``--compression_type FP16`` writes them; and the
opt-in bf16 hint, which the CPU plugin's own default would be on CPUs with bf16 instructions), export time, peak
memory and the largest difference to the torch outputs.

Run: ``python benchmarks/benchmark_export.py`` (several minutes and several GB of memory for ViT-L);
``--tiny`` runs the same pipeline on the tiny test backbone in seconds.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import openvino as ov
import torch

from anomalib_faprompt import AnomalyCLIP, FAPrompt

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import TINY_MODEL_ARGS  # noqa: E402


def peak_rss_gib() -> float:
    """Peak resident memory of this process so far, in GiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def throughput(run: callable, batch_size: int, warmup: int, repeats: int) -> float:
    """Images per second of ``run()`` on one batch, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        run()
    start = time.perf_counter()
    for _ in range(repeats):
        run()
    return batch_size * repeats / (time.perf_counter() - start)


MODELS = {"FAPrompt": FAPrompt, "AnomalyCLIP": AnomalyCLIP}


def build_model(name: str, backbone: str | None, image_size: int | None) -> FAPrompt | AnomalyCLIP:
    """The model with random backbone weights: an open_clip architecture (default 518) or the tiny test backbone."""
    if backbone is None:
        args = dict(TINY_MODEL_ARGS)
        if image_size:
            args["image_size"] = image_size
        return MODELS[name](**args)
    return MODELS[name](backbone=backbone, pretrained=None, image_size=image_size or 518)


def bf16_label(core: ov.Core) -> str | None:
    """Row label of the bf16 hint, ``None`` where the CPU plugin does not honour it."""
    parameter = ov.opset13.parameter([1, 4], np.float32)
    probe = ov.Model([ov.opset13.relu(parameter)], [parameter])
    compiled = core.compile_model(probe, "CPU", {"INFERENCE_PRECISION_HINT": "bf16"})
    if compiled.get_property("INFERENCE_PRECISION_HINT") != ov.Type.bf16:
        return None
    native = "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return "OpenVINO (bf16 hint" + ("" if native else ", emulated: no native bf16") + ")"


def main() -> None:
    """Parse options, export, time, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="timed batches per runtime")
    parser.add_argument("--warmup", type=int, default=1, help="untimed batches per runtime")
    parser.add_argument("--model", choices=sorted(MODELS), default="FAPrompt")
    parser.add_argument("--backbone", default="ViT-L-14-336", help="open_clip architecture, random weights")
    parser.add_argument("--tiny", action="store_true", help="tiny test backbone instead of --backbone")
    parser.add_argument("--image-size", type=int, default=None, help="working size (default 518; tiny: 64)")
    parser.add_argument("--export-root", type=Path, default=None, help="keep the export here (default: temporary)")
    args = parser.parse_args()

    torch.manual_seed(0)
    start = time.perf_counter()
    model = build_model(args.model, None if args.tiny else args.backbone, args.image_size).eval()
    build_seconds = time.perf_counter() - start
    size = model.image_size
    rss_before_export = peak_rss_gib()

    with tempfile.TemporaryDirectory() as temporary:
        export_root = args.export_root or Path(temporary)
        start = time.perf_counter()
        xml = model.to_openvino(export_root)
        export_seconds = time.perf_counter() - start
        rss_after_export = peak_rss_gib()

        images = torch.rand(args.batch_size, 3, size, size)
        core = ov.Core()
        # What `--compression_type FP16` writes: the same IR saved with fp16 weights.
        fp16_xml = xml.with_name("model_fp16.xml")
        ov.save_model(core.read_model(str(xml)), fp16_xml, compress_to_fp16=True)
        # No precision hint: the IR's own request (f32), whatever the CPU plugin's default.
        default = core.compile_model(str(xml), "CPU")
        default_precision = default.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        compiled = {
            f"OpenVINO (default: {default_precision}, requested by the IR)": default,
            "OpenVINO (fp16 weights, f32 compute)": core.compile_model(str(fp16_xml), "CPU"),
        }
        label = bf16_label(core)
        if label:
            compiled[label] = core.compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "bf16"})

        with torch.inference_mode():
            expected = model(images)
            torch_ips = throughput(lambda: model(images), args.batch_size, args.warmup, args.repeats)
        rows = [("torch (fp32)", torch_ips, 0.0, 0.0)]
        for name, network in compiled.items():
            outputs = {key.get_any_name(): value for key, value in network(images.numpy()).items()}
            score_diff = float(np.abs(outputs["pred_score"] - expected.pred_score.numpy()).max())
            map_diff = float(np.abs(outputs["anomaly_map"] - expected.anomaly_map.numpy()).max())
            ips = throughput(
                lambda network=network: network(images.numpy()), args.batch_size, args.warmup, args.repeats
            )
            rows.append((name, ips, score_diff, map_diff))

    backbone = "tiny test ViT" if args.tiny else f"{args.backbone} (random weights)"
    print(f"\n{args.model} {backbone}, working size {size}, batch {args.batch_size}, {args.repeats} timed batches")
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), OpenVINO {ov.__version__}")
    print(f"CPU {core.get_property('CPU', 'FULL_DEVICE_NAME')}, {os.cpu_count()} logical cores, CPU plugin's own")
    print(f"default precision {core.get_property('CPU', 'INFERENCE_PRECISION_HINT').get_type_name()}\n")
    print("| runtime | images/s | speed-up vs torch | max diff score | max diff map |")
    print("|---|---|---|---|---|")
    for label, ips, score_diff, map_diff in rows:
        print(f"| {label} | {ips:.3f} | {ips / torch_ips:.2f}x | {score_diff:.2e} | {map_diff:.2e} |")
    print("\n| step | value |")
    print("|---|---|")
    print(f"| model build | {build_seconds:.1f} s |")
    print(f"| export (`to_openvino`: torch.export, ONNX, OpenVINO conversion) | {export_seconds:.1f} s |")
    print(f"| peak RSS before export (model built) | {rss_before_export:.2f} GiB |")
    print(f"| peak RSS after export | {rss_after_export:.2f} GiB |")


if __name__ == "__main__":
    main()
