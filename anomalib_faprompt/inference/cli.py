"""``anomalib-faprompt-predict``: run a model exported by ``anomalib export`` over images, with OpenVINO on the CPU.

Usage::

    anomalib-faprompt-predict <run>/weights/openvino/model.xml --data images/ more/001.png [--output results/openvino]
        [--precision f32|bf16|f16] [--threads N] [--no_heat_maps]

writes ``<output>/v<N>/predictions.csv`` and ``<output>/v<N>/images/`` as ``anomalib predict --data`` writes them
for this package's models. anomalib 2.7 runs an exported model only through its Python ``OpenVINOInferencer``, one
image at a time; this command runs OpenVINO's parallel requests over the CPU's cores. A wrong model file, image or
folder ends the command with one line naming it, and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from anomalib_faprompt.deploy import PRECISIONS
from anomalib_faprompt.errors import InputError, exit_with

__all__ = ["main"]

PROG = "anomalib-faprompt-predict"
DEFAULT_OUTPUT = Path("results") / "openvino"


def _threads(value: str) -> int:
    number = int(value)
    if number < 1:
        msg = f"{value} threads: pass 1 or more"
        raise argparse.ArgumentTypeError(msg)
    return number


def parser() -> argparse.ArgumentParser:
    """The command's arguments."""
    arguments = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    arguments.add_argument("model", type=Path, help="model.xml (OpenVINO IR, with its .bin) or model.onnx")
    arguments.add_argument("--data", nargs="+", required=True, help="images and folders of images")
    arguments.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        help=f"folder of the run folders v<N> (default: {DEFAULT_OUTPUT})",
    )
    arguments.add_argument(
        "--precision", choices=PRECISIONS, default="f32", help="inference precision (default f32: the torch numbers)"
    )
    arguments.add_argument("--threads", type=_threads, help="OpenVINO's inference threads (default: every core)")
    arguments.add_argument("--no_heat_maps", action="store_true", help="write predictions.csv only")
    return arguments


def main(argv: Sequence[str] | None = None) -> None:
    """Run the command; a wrong input ends it with one line and exit status 2."""
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from anomalib_faprompt.inference.exported_model import (  # noqa: PLC0415  (anomalib's import after argument errors)
        compile_for_throughput,
        export_calibration,
        read_exported_model,
    )
    from anomalib_faprompt.inference.predict import (  # noqa: PLC0415
        check_not_calibration,
        list_images,
        predict_images,
    )

    try:
        model = read_exported_model(args.model)
        calibration = export_calibration(args.model)
        images = list_images(args.data)
        if calibration is not None:
            check_not_calibration(images, calibration)
        compiled = compile_for_throughput(model, args.precision, args.threads)
        predict_images(
            compiled, args.model, images, args.output, heat_maps=not args.no_heat_maps, calibration=calibration
        )
    except InputError as error:
        exit_with(error, PROG)
