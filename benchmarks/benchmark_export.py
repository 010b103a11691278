"""Benchmark the OpenVINO export of FAPrompt (or AnomalyCLIP) against the torch model on this machine's CPU.

Builds the model on the real ``ViT-L-14-336`` architecture (or ``--backbone``) with random weights (no download)
at the working size 518, exports the whole anomalib module (pre-processor, model, post-processor) with
``to_openvino``, and prints a Markdown table: torch CPU images/s and OpenVINO CPU images/s (with an f32 hint; fp16
weights as ``--compression_type FP16`` writes them; at the CPU plugin's default precision, which is bf16 on CPUs with
bf16 instructions, for the exported IR, whose operations are marked to stay in f32, and for the same IR without the
marks; where the default is f32, also under a bf16 hint), export time, peak memory and the largest difference to
the torch outputs.

Run: ``python benchmarks/benchmark_export.py`` (several minutes and several GB of memory for ViT-L);
``--tiny`` runs the same pipeline on the tiny test backbone in seconds.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import openvino as ov
import torch

from anomalib_faprompt import AnomalyCLIP, FAPrompt
from anomalib_faprompt.deploy import remove_f32_marks

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


def runs_bf16(core: ov.Core) -> bool:
    """Whether the CPU plugin honours a bf16 hint (natively, or emulated on AVX-512 CPUs without bf16)."""
    parameter = ov.opset13.parameter([1, 4], np.float32)
    probe = ov.Model([ov.opset13.relu(parameter)], [parameter])
    compiled = core.compile_model(probe, "CPU", {"INFERENCE_PRECISION_HINT": "bf16"})
    return compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.bf16


def without_f32_marks(xml: Path) -> Path:
    """A copy of the IR without ``keep_f32``'s marks (what anomalib's own export writes), sharing its weights."""
    unmarked = xml.with_name(f"{xml.stem}_unmarked.xml")
    shutil.copy(xml, unmarked)
    unmarked.with_suffix(".bin").symlink_to(xml.with_suffix(".bin").resolve())
    return remove_f32_marks(unmarked)


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
        unmarked_xml = without_f32_marks(xml)
        f32 = {"INFERENCE_PRECISION_HINT": "f32"}
        compiled = {
            "OpenVINO (f32 hint)": core.compile_model(str(xml), "CPU", f32),
            "OpenVINO (fp16 weights, f32 hint)": core.compile_model(str(fp16_xml), "CPU", f32),
        }
        # The CPU plugin's default precision; where that is f32, also the bf16 hint (emulated without native bf16).
        default_precision = core.get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name()
        low = {f"CPU default: {default_precision}": {}}
        if default_precision != "bf16" and runs_bf16(core):
            native = "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
            low["bf16 hint" + ("" if native else ", emulated")] = {"INFERENCE_PRECISION_HINT": "bf16"}
        for precision, config in low.items():
            compiled[f"OpenVINO ({precision}, ops kept in f32)"] = core.compile_model(str(xml), "CPU", config)
            compiled[f"OpenVINO ({precision}, without the f32 marks)"] = core.compile_model(
                str(unmarked_xml), "CPU", config
            )

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
    print(f"CPU {core.get_property('CPU', 'FULL_DEVICE_NAME')}, {os.cpu_count()} logical cores\n")
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
