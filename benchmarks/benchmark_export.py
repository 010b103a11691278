"""Benchmark every OpenVINO export of FAPrompt (or AnomalyCLIP) against the torch model, at equal threads.

Builds the model on the real ``ViT-L-14-336`` architecture (or ``--backbone``) with random weights (no download)
at the working size 518, exports the whole anomalib module with ``to_openvino`` in f32 and with each of anomalib's
compressions (``FP16``, ``INT8``, ``INT8_PTQ``, ``INT8_ACQ``; the last two calibrated on synthetic images at the
working size, the datamodule's validation part), and prints the CPU's instruction sets and a Markdown table:
images/s (the fastest of ``--repeats`` batches, the runtimes timed in turn: every compiled model is held at
once), speed-up against torch, the largest score and map difference to the
f32 export (run with the f32 hint), the memory the compiled model holds, for the quantised exports how many of the
operations the CPU plugin runs in int8, and the seconds the fastest batch spent in matrix products (OpenVINO's
per-operation profile). torch and OpenVINO use the same number of threads (``--threads``, default: every core), both
printed.

Run: ``python benchmarks/benchmark_export.py`` (tens of minutes and several GB of memory for ViT-L on two cores);
``--tiny`` runs the same pipeline on the tiny test backbone in a minute. With random weights the differences are not
those of a trained model: ``--checkpoint <model.ckpt> --data <dataset root> --calibration-data <dataset root>``
measures them on a trained model, as it is deployed: the model gets ``false_alarm_rate`` (``--false-alarm-rate``)
and, as ``calibration_source``, every normal image of ``--calibration-data`` (its ``*/*/good`` folders), on which
each export calibrates its thresholds and the int8 quantisation; every test image of ``--data`` (``*/test/*/*``, the
MVTec AD layout) then runs alone through the f32 export and each compressed one, both with the f32 hint, and a second
table gives per compression the largest and median score difference, the largest map difference, the number of
distinct scores and the share of images whose label (at the calibrated threshold, inside the graphs) equals f32's.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import openvino as ov
import torch

from anomalib_faprompt import AnomalyCLIP, FAPrompt
from anomalib_faprompt.data import AuxiliaryDataModule, make_synthetic_dataset
from anomalib_faprompt.data.images import read_image
from anomalib_faprompt.data.sources import IMAGE_SUFFIXES
from anomalib_faprompt.deploy import INSTRUCTION_SETS, cpu_instruction_sets, remove_f32_marks
from anomalib_faprompt.models import compression

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, for its tests' tiny model
from tests.helpers.models import TINY_MODEL_ARGS, as_if_trained

MODELS = {"FAPrompt": FAPrompt, "AnomalyCLIP": AnomalyCLIP}
COMPRESSIONS = ("FP16", "INT8", "INT8_PTQ", "INT8_ACQ")


def peak_rss_gib() -> float:
    """Peak resident memory of this process so far, in GiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def rss_gib() -> float:
    """Resident memory of this process now, in GiB."""
    with open("/proc/self/statm") as file:
        return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


Call = Callable[[], tuple[float, float]]  # one timed batch: its seconds, and its seconds in matrix products


def torch_call(model: torch.nn.Module, images: torch.Tensor) -> Call:
    """One batch through the torch model (no profile: NaN)."""

    def call() -> tuple[float, float]:
        start = time.perf_counter()
        with torch.inference_mode():
            model(images)
        return time.perf_counter() - start, float("nan")

    return call


def openvino_call(compiled: ov.CompiledModel, batch: np.ndarray) -> Call:
    """One batch through ``compiled`` (compiled with ``PERF_COUNT``), with the seconds of its matrix products.

    Those come from OpenVINO's per-operation profile (its fully connected and matrix-product operations): they say
    where a compression gains or loses.
    """
    request = compiled.create_infer_request()

    def call() -> tuple[float, float]:
        start = time.perf_counter()
        request.infer(batch)
        seconds = time.perf_counter() - start
        profile = request.get_profiling_info()
        kinds = [info for info in profile if info.node_type.startswith("FullyConnected") or info.node_type == "MatMul"]
        return seconds, sum(info.real_time.total_seconds() for info in kinds)

    return call


def fastest_in_turn(calls: dict[str, Call], warmup: int, repeats: int) -> dict[str, tuple[float, float]]:
    """Each call's fastest of ``repeats`` rounds, after ``warmup`` untimed ones; a round calls each once, in turn.

    In turn, so that a change of the machine's load during the run hits every runtime alike; the fastest, since
    other processes only ever slow a call down.
    """
    measured: dict[str, list[tuple[float, float]]] = {name: [] for name in calls}
    for round_index in range(warmup + repeats):
        for name, call in calls.items():
            result = call()
            if round_index >= warmup:
                measured[name].append(result)
    return {name: min(results) for name, results in measured.items()}


def build_model(name: str, backbone: str | None, image_size: int | None) -> FAPrompt | AnomalyCLIP:
    """The model with random weights (prompts as if trained): an open_clip architecture or the tiny test backbone."""
    if backbone is None:
        args = dict(TINY_MODEL_ARGS)
        if image_size:
            args["image_size"] = image_size
        model = MODELS[name](**args)
    else:
        model = MODELS[name](backbone=backbone, pretrained=None, image_size=image_size or 518)
    return as_if_trained(model)


def int8_share(compiled: ov.CompiledModel) -> str:
    """The share of the compiled model's compute operations the plugin runs in int8, and the precisions of the rest."""
    precisions = Counter()
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        layer = info["layerType"].astype(str) if "layerType" in info else op.get_type_name()
        if layer in {"Input", "Output", "Const", "Reorder", "Reshape"}:
            continue
        precisions[info["runtimePrecision"].astype(str).lower() if "runtimePrecision" in info else "?"] += 1
    total = sum(precisions.values())
    int8 = precisions["i8"] + precisions["u8"]
    rest = ", ".join(f"{name} {count}" for name, count in precisions.most_common() if name not in {"i8", "u8"})
    return f"{int8}/{total} int8 ({rest})"


def calibration_data(root: Path, size: int, images: int, data: Path | None) -> AuxiliaryDataModule:
    """The datamodule handed to each export.

    ``data`` (with ``--checkpoint``): its test images validate ``INT8_ACQ``; the model's ``calibration_source``
    calibrates. Else synthetic images at the working size, half of them held out to calibrate.
    """
    if data is not None:
        return AuxiliaryDataModule(root=data, val_split_ratio=0.25, num_workers=0, eval_batch_size=2)
    data = make_synthetic_dataset(root, categories=("alpha",), image_size=size, n_good=images, n_defect=images)
    return AuxiliaryDataModule(root=data, val_split_ratio=0.5, num_workers=0, eval_batch_size=2)


def dataset_files(root: Path, pattern: str) -> list[Path]:
    """The image files of ``root`` matching ``pattern`` (e.g. ``*/test/*/*``), sorted."""
    return sorted(path for path in root.glob(pattern) if path.suffix.lower() in IMAGE_SUFFIXES)


def calibration_folder(data: Path, folder: Path) -> Path:
    """One folder (a ``calibration_source``) holding a copy of every normal image of ``data`` (``*/*/good/*``)."""
    folder.mkdir(parents=True)
    for file in dataset_files(data, "*/*/good/*"):
        (folder / "_".join(file.relative_to(data).parts)).write_bytes(file.read_bytes())
    return folder


def load_calibrated(name: str, checkpoint: Path, false_alarm_rate: float, source: Path) -> FAPrompt | AnomalyCLIP:
    """The checkpoint's model with ``false_alarm_rate`` and ``calibration_source``: its exports are calibrated."""
    model = MODELS[name].load_from_checkpoint(
        checkpoint, map_location="cpu", false_alarm_rate=false_alarm_rate, calibration_source=str(source)
    )
    return model.eval()


def outputs_per_image(xml: Path, files: list[Path], threads: dict, noise: float = 0.0) -> dict[str, np.ndarray]:
    """Every file run alone through the export with the f32 hint: scores, labels and maps, stacked.

    ``noise``: the standard deviation of a Gaussian noise added to each image (seeded), to see how much the model
    itself moves on images that differ by less than one grey level.
    """
    compiled = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32", **threads})
    rng = np.random.default_rng(0)
    images = compression.file_images(files)
    runs = [compiled((image + rng.normal(0.0, noise, image.shape)).clip(0, 1).astype(np.float32)) for image in images]
    return {name: np.concatenate([run[name] for run in runs]) for name in ("pred_score", "pred_label", "anomaly_map")}


def first_images(files: list[Path], batch_size: int, size: int) -> torch.Tensor:
    """The first ``batch_size`` files, in [0, 1] at the working size (the speed table's batch)."""
    images = [read_image(file)[None] for file in files[:batch_size]]
    resized = [
        torch.nn.functional.interpolate(image, size=(size, size), mode="bilinear", antialias=True) for image in images
    ]
    return torch.cat(resized)


def compared(outputs: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> tuple[np.ndarray, float, int, float]:
    """``outputs`` against the f32 export's: each image's score difference, the largest map difference, the distinct
    scores (to 1e-6) and the share of labels equal to the f32 export's."""
    score = np.abs(outputs["pred_score"] - reference["pred_score"]).reshape(-1)
    anomaly_map = float(np.abs(outputs["anomaly_map"] - reference["anomaly_map"]).max())
    labels = float((outputs["pred_label"].reshape(-1) == reference["pred_label"].reshape(-1)).mean())
    return score, anomaly_map, len(np.unique(outputs["pred_score"].round(6))), labels


def held_out_rows(exports: dict[str | None, Path], files: list[Path], threads: dict) -> list[str]:
    """The per-image comparison of each compressed export with the f32 export, as Markdown rows.

    A first row compares the f32 export on the images plus a noise of 1/255 (under one grey level): how much the
    model moves on its own.
    """
    reference = outputs_per_image(exports[None], files, threads)
    distinct = len(np.unique(reference["pred_score"].round(6)))
    rows = [f"| f32 | 0 | 0 | 0 | {distinct} | 100.0% |"]
    runs = {"f32, images + noise of 1/255": (exports[None], 1 / 255)}
    runs |= {name: (xml, 0.0) for name, xml in exports.items() if name is not None}
    for name, (xml, noise) in runs.items():
        score, anomaly_map, distinct, labels = compared(outputs_per_image(xml, files, threads, noise), reference)
        rows.append(
            f"| {name} | {score.max():.2e} | {np.median(score):.1e} | {anomaly_map:.2e} | {distinct} | "
            f"{100 * labels:.1f}% |"
        )
    return rows


def main() -> None:
    """Parse options, export, time, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="timed batches per runtime")
    parser.add_argument("--warmup", type=int, default=1, help="untimed batches per runtime")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads of torch and of OpenVINO")
    parser.add_argument("--model", choices=sorted(MODELS), default="FAPrompt")
    parser.add_argument("--backbone", default="ViT-L-14-336", help="open_clip architecture, random weights")
    parser.add_argument("--tiny", action="store_true", help="tiny test backbone instead of --backbone")
    parser.add_argument("--image-size", type=int, default=None, help="working size (default 518; tiny: 64)")
    parser.add_argument("--calibration-images", type=int, default=4, help="INT8_PTQ/INT8_ACQ: images per label")
    parser.add_argument("--max-drop", type=float, default=1.0, help="INT8_ACQ's max_drop (random weights: 1)")
    parser.add_argument("--compressions", nargs="*", default=list(COMPRESSIONS), choices=COMPRESSIONS)
    parser.add_argument("--checkpoint", type=Path, default=None, help="a trained model's checkpoint (--model's)")
    parser.add_argument("--data", type=Path, default=None, help="with --checkpoint: dataset root whose test images run")
    parser.add_argument(
        "--calibration-data", type=Path, default=None, help="with --checkpoint: root whose normal images calibrate"
    )
    parser.add_argument("--false-alarm-rate", type=float, default=0.05, help="with --checkpoint: the model's rate")
    args = parser.parse_args()
    if args.checkpoint is not None and (args.data is None or args.calibration_data is None):
        parser.error("--checkpoint needs --data (the images to measure) and --calibration-data (normal images)")

    torch.set_num_threads(args.threads)
    threads = {"INFERENCE_NUM_THREADS": args.threads}
    torch.manual_seed(0)
    calibration_root = Path(tempfile.mkdtemp())
    start = time.perf_counter()
    if args.checkpoint is not None:
        source = calibration_folder(args.calibration_data, calibration_root / "normal")
        model = load_calibrated(args.model, args.checkpoint, args.false_alarm_rate, source)
    else:
        model = build_model(args.model, None if args.tiny else args.backbone, args.image_size)
    build_seconds = time.perf_counter() - start
    size = model.image_size
    datamodule = calibration_data(calibration_root / "calibration", size, args.calibration_images, args.data)
    held_out = dataset_files(args.data, "*/test/*/*") if args.checkpoint is not None else []
    images = first_images(held_out, args.batch_size, size) if held_out else torch.rand(args.batch_size, 3, size, size)
    batch = images.numpy()
    with torch.inference_mode():
        model(images)
    rss_model = peak_rss_gib()
    core = ov.Core()

    with tempfile.TemporaryDirectory() as temporary:
        root = Path(temporary)
        exports, seconds = {}, {}
        for name in (None, *args.compressions):
            start = time.perf_counter()
            exports[name] = model.to_openvino(
                root / str(name), compression_type=name, datamodule=datamodule, max_drop=args.max_drop
            )
            seconds[name] = time.perf_counter() - start
        unmarked = exports[None].with_name("model_unmarked.xml")
        shutil.copy(exports[None], unmarked)
        unmarked.with_suffix(".bin").symlink_to(exports[None].with_suffix(".bin"))
        remove_f32_marks(unmarked)
        runs = [("f32 hint", exports[None], {"INFERENCE_PRECISION_HINT": "f32"})]
        default = core.get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name()
        runs.append((f"CPU default ({default}), no compression", exports[None], {}))
        runs.append((f"CPU default ({default}), no compression, without the f32 marks", unmarked, {}))
        runs += [(f"CPU default ({default}), {name}", exports[name], {}) for name in args.compressions]
        reference = None
        rows, calls, compiled_models = [], {"torch": torch_call(model, images)}, []
        for label, xml, config in runs:
            before = rss_gib()
            compiled = core.compile_model(str(xml), "CPU", {**config, **threads, "PERF_COUNT": True})
            outputs = {key.get_any_name(): value for key, value in compiled(batch).items()}
            reference = reference or outputs
            score = float(np.abs(outputs["pred_score"] - reference["pred_score"]).max())
            anomaly_map = float(np.abs(outputs["anomaly_map"] - reference["anomaly_map"]).max())
            held = rss_gib() - before
            quantised = int8_share(compiled) if "INT8" in label else "-"
            rows.append((label, score, anomaly_map, held, quantised))
            calls[label] = openvino_call(compiled, batch)
            compiled_models.append(compiled)
        timings = fastest_in_turn(calls, args.warmup, args.repeats)
        del calls, compiled_models
        gc.collect()
        compared = held_out_rows(exports, held_out, threads) if held_out else []

    backbone = "tiny test ViT" if args.tiny else f"{args.backbone} (random weights)"
    if args.checkpoint is not None:
        backbone = f"checkpoint {args.checkpoint}"
    timing = f"batch {args.batch_size}, the fastest of {args.repeats} timed batches, every runtime in turn"
    print(f"\n{args.model} {backbone}, working size {size}, {timing}")
    print(f"torch {torch.__version__}: {torch.get_num_threads()} threads")
    print(f"OpenVINO {ov.__version__}: {args.threads} threads (INFERENCE_NUM_THREADS)")
    print(f"CPU {core.get_property('CPU', 'FULL_DEVICE_NAME')}, {os.cpu_count()} logical cores")
    present = cpu_instruction_sets()
    flags = [f"{flag} {'yes' if flag in present else 'no'}" for flag in INSTRUCTION_SETS] if present is not None else []
    print(f"instruction sets: {', '.join(flags) or 'unknown'}")
    if args.checkpoint is not None:
        count = len(dataset_files(calibration_root / "normal", "*"))
        print(
            f"calibration (thresholds, INT8_PTQ, INT8_ACQ): false_alarm_rate {args.false_alarm_rate}, the {count} "
            f"normal images of {args.calibration_data}; INT8_ACQ max_drop {args.max_drop}\n"
        )
    else:
        calibration = f"{args.calibration_images} images; INT8_ACQ max_drop {args.max_drop}"
        print(f"calibration (INT8_PTQ, INT8_ACQ): {calibration}\n")
    print(
        "| runtime | images/s | speed-up vs torch | max diff score | max diff map | memory held (GiB) | int8 ops "
        "| s in matrix products (profile) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    torch_ips = args.batch_size / timings["torch"][0]
    print(f"| torch (fp32) | {torch_ips:.3f} | 1.00x | - | - | - | - | - |")
    for label, score, anomaly_map, held, quantised in rows:
        batch_seconds, products = timings[label]
        ips = args.batch_size / batch_seconds
        print(
            f"| OpenVINO, {label} | {ips:.3f} | {ips / torch_ips:.2f}x | {score:.2e} | {anomaly_map:.2e} | "
            f"{held:.2f} | {quantised} | {products:.3g} |"
        )
    batch_kind = f"the first {args.batch_size} test image(s) of {args.data}" if held_out else "one random batch"
    print(f"\nDifferences are to the f32 export run with the f32 hint (first row), on {batch_kind}.\n")
    if compared:
        print(
            f"Each of the {len(held_out)} test images of {args.data} alone, every export with the f32 hint; labels at "
            "the calibrated threshold, decided inside each graph:\n"
        )
        print("| export | max diff score | median diff score | max diff map | distinct scores | labels equal to f32 |")
        print("|---|---|---|---|---|---|")
        print("\n".join(compared) + "\n")
    print("| step | value |")
    print("|---|---|")
    print(f"| model build | {build_seconds:.1f} s |")
    for name, value in seconds.items():
        print(f"| export {name or 'f32'} (`to_openvino`) | {value:.1f} s |")
    print(f"| peak RSS with the model built and run in torch | {rss_model:.2f} GiB |")
    print(f"| peak RSS of the whole run | {peak_rss_gib():.2f} GiB |")
    shutil.rmtree(calibration_root, ignore_errors=True)


if __name__ == "__main__":
    main()
