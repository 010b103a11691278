"""Images/s of ``anomalib-faprompt-predict`` (the exported model, OpenVINO) against ``anomalib predict`` (torch).

On the toy checkpoint (the README's main job: tiny random-CLIP FAPrompt trained on the synthetic source dataset,
``configs/faprompt_synthetic_tiny.yaml``'s settings) and the toy images (the synthetic target's 36 test images), or
on ``--checkpoint`` (a tiny FAPrompt of those settings) and ``--data``. Both run in this process at the same
number of threads (``--threads``; torch's intra-op threads, OpenVINO's ``INFERENCE_NUM_THREADS``), each writing its
``predictions.csv``, with the heat-map panels and without (the model's ``visualizer`` off, ``--no_heat_maps``).
A run is timed from building (``Engine.predict`` with ``ckpt_path``) or reading and compiling the model to the last
file written, the fastest of ``--repeats`` runs, the predicts taken in turn; Python's start-up and imports are not
counted. The exports: OpenVINO f32 and ``INT8_PTQ`` (calibrated on the source's held-out images), both run as the
command runs them by default (``--precision f32``: what is not int8 runs in f32). Prints the CPU, its instruction
sets and a Markdown table: images/s, the speed-up against ``anomalib predict`` and the largest score difference
to it.

Run: ``python benchmarks/benchmark_predict.py`` (a few minutes on two cores).
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bars in the timed runs

import openvino as ov
import torch
from anomalib.deploy import CompressionType, ExportType
from anomalib.engine import Engine
from lightning.pytorch import seed_everything

from anomalib_faprompt import FAPrompt
from anomalib_faprompt.data import AuxiliaryDataModule, make_synthetic_dataset
from anomalib_faprompt.deploy import INSTRUCTION_SETS, cpu_instruction_sets
from anomalib_faprompt.inference.exported_model import compile_for_throughput, read_exported_model
from anomalib_faprompt.inference.predict import list_images, predict_images

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, for its tests' tiny model
from tests.helpers.models import TINY_MODEL_ARGS

QUIET = {"logger": False, "enable_progress_bar": False, "enable_model_summary": False}
TORCH = "`anomalib predict` (torch, f32)"
EXPORTED = {
    "f32": "`anomalib-faprompt-predict`, f32 export",
    "INT8_PTQ": "`anomalib-faprompt-predict`, INT8_PTQ export",
}


def cpu_description() -> str:
    """The CPU's name, its logical cores and which of the instruction sets that OpenVINO's speed depends on it has."""
    name = ov.Core().get_property("CPU", "FULL_DEVICE_NAME")
    present = cpu_instruction_sets()
    if present is None:
        return f"{name}, {os.cpu_count()} logical cores; instruction sets unknown"
    listed = ", ".join(f"{flag} {'yes' if flag in present else 'no'}" for flag in INSTRUCTION_SETS)
    return f"{name}, {os.cpu_count()} logical cores; {listed}"


def toy_data(root: Path) -> tuple[AuxiliaryDataModule, Path]:
    """The README's two synthetic datasets: the protocol's datamodule and the target's test images."""
    source = make_synthetic_dataset(root / "synthetic_source", categories=("alpha", "beta"))
    target = make_synthetic_dataset(root / "synthetic_target", categories=("gamma", "delta", "epsilon"), seed=1)
    datamodule = AuxiliaryDataModule(
        root=source, val_split_ratio=0.25, target_dataset="MVTecAD", target_root=target, num_workers=0,
        train_batch_size=4, eval_batch_size=8, seed=111,
    )  # fmt: skip
    images = root / "images"
    for file in sorted(target.glob("*/test/*/*.png")):
        copy = images / file.relative_to(target)
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_bytes(file.read_bytes())
    return datamodule, images


def train_toy(datamodule: AuxiliaryDataModule, root: Path, epochs: int) -> Path:
    """The README's main job (``configs/faprompt_synthetic_tiny.yaml``'s settings): the best checkpoint."""
    seed_everything(111)
    engine = Engine(accelerator="cpu", devices=1, max_epochs=epochs, default_root_dir=root, **QUIET)
    engine.fit(FAPrompt(**TINY_MODEL_ARGS, visualizer=False), datamodule=datamodule)
    return Path(engine.best_model_path)


def export(checkpoint: Path, root: Path, datamodule: AuxiliaryDataModule, compression: str | None) -> Path:
    """The checkpoint exported to OpenVINO through ``Engine.export`` (``compression``: anomalib's type, or none)."""
    engine = Engine(accelerator="cpu", devices=1, default_root_dir=root / "engine", **QUIET)
    return engine.export(
        model=FAPrompt(**TINY_MODEL_ARGS),
        export_type=ExportType.OPENVINO,
        export_root=root / (compression or "f32"),
        ckpt_path=checkpoint,
        compression_type=CompressionType[compression] if compression else None,
        datamodule=datamodule if compression else None,
    )


def anomalib_predict(checkpoint: Path, images: Path, output: Path, heat_maps: bool) -> Path:
    """``anomalib predict --ckpt_path <checkpoint> --data <images>``, in this process: its ``predictions.csv``."""
    engine = Engine(accelerator="cpu", devices=1, default_root_dir=output, **QUIET)
    engine.predict(model=FAPrompt(**TINY_MODEL_ARGS, visualizer=heat_maps), ckpt_path=checkpoint, data_path=images)
    return Path(engine.trainer.default_root_dir) / "predictions.csv"


def exported_predict(xml: Path, threads: int, images: Path, output: Path, heat_maps: bool) -> Path:
    """``anomalib-faprompt-predict <xml> --data <images> --threads <threads>`` without Python's start-up: its CSV."""
    compiled = compile_for_throughput(read_exported_model(xml), "f32", threads)
    return predict_images(compiled, xml, list_images([images]), output, heat_maps=heat_maps) / "predictions.csv"


def fastest(runs: dict[str, Callable[[], Path]], repeats: int) -> dict[str, tuple[float, Path]]:
    """Seconds of each run's fastest of ``repeats`` (after one untimed), taken in turn; and its last CSV.

    In turn (each repeat runs every one once) and the fastest: on a CPU shared with other work, the load of the
    moment weighs on every run alike, and the fastest run is the one least disturbed.
    """
    seconds, paths = {name: [] for name in runs}, {}
    for repeat in range(repeats + 1):
        for name, run in runs.items():
            start = time.perf_counter()
            paths[name] = run()
            if repeat:
                seconds[name].append(time.perf_counter() - start)
    return {name: (min(seconds[name]), paths[name]) for name in runs}


def scores(path: Path) -> dict[str, float]:
    with path.open(newline="") as file:
        return {row["file"]: float(row["score"]) for row in csv.DictReader(file)}


def main() -> None:
    """Train or take the checkpoint, export, time each predict with and without heat-maps, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads of torch and of OpenVINO")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each predict, after one untimed")
    parser.add_argument("--epochs", type=int, default=2, help="training of the toy checkpoint (the README's: 2)")
    parser.add_argument("--checkpoint", type=Path, help="a tiny FAPrompt's checkpoint (default: train the toy one)")
    parser.add_argument("--data", type=Path, help="images to predict (default: the toy target's test images)")
    parser.add_argument("--no-int8", action="store_true", help="leave out the INT8_PTQ export")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as temporary:
        root = Path(temporary)
        datamodule, toy_images = toy_data(root)
        images = args.data or toy_images
        count = len(list_images([images]))
        checkpoint = args.checkpoint or train_toy(datamodule, root / "train", args.epochs)
        exports = {"f32": export(checkpoint, root / "exports", datamodule, None)}
        if not args.no_int8:
            exports["INT8_PTQ"] = export(checkpoint, root / "exports", datamodule, "INT8_PTQ")
        runs = {TORCH: partial(anomalib_predict, checkpoint, images)}
        for compression, xml in exports.items():
            runs[EXPORTED[compression]] = partial(exported_predict, xml, args.threads, images)
        timings = [
            fastest(
                {name: partial(run, root / f"run{index}", heat_maps) for index, (name, run) in enumerate(runs.items())},
                args.repeats,
            )
            for heat_maps in (True, False)
        ]
        reference = scores(timings[1][TORCH][1])
        differences = {
            name: max(abs(score - reference[file]) for file, score in scores(path).items())
            for name, (_, path) in timings[1].items()
        }

    print(f"\nCPU: {cpu_description()}")
    print(
        f"torch {torch.__version__}, OpenVINO {ov.__version__.split('-')[0]}; {args.threads} threads; {count} images; "
        f"the fastest of {args.repeats} runs after one untimed, the predicts in turn\n"
    )
    print(
        "| predict | images/s, heat-maps and CSV | speed-up | images/s, CSV only | speed-up | max score diff to torch |"
    )
    print("|---|---|---|---|---|---|")
    (torch_panels, _), (torch_csv_only, _) = timings[0][TORCH], timings[1][TORCH]
    for name in runs:
        (panels, _), (csv_only, _) = timings[0][name], timings[1][name]
        print(
            f"| {name} | {count / panels:.1f} | {torch_panels / panels:.2f}x | {count / csv_only:.1f} | "
            f"{torch_csv_only / csv_only:.2f}x | {differences[name]:.1e} |"
        )


if __name__ == "__main__":
    main()
