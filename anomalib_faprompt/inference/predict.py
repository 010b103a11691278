"""Run an exported model over image files: ``predictions.csv`` and heat-map panels, as ``anomalib predict`` writes them.

The images are listed and read by :class:`~anomalib_faprompt.data.dataset.ImagePredictDataset`, as ``anomalib
predict --data`` lists and reads them for this package's models (upright by their EXIF orientation, 16-bit files
scaled, a damaged file named). Each image goes to OpenVINO at its own size (the graph resizes and normalises it),
one inference request per image, as many requests at once as OpenVINO's throughput hint runs in parallel
(``AsyncInferQueue``). The results are written in the files' order by the code ``anomalib predict`` writes with:
:class:`~anomalib_faprompt.models.predictions.PredictionsFile` and
:class:`~anomalib_faprompt.models.visualizer.CategoryImageVisualizer`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import torch
from anomalib.data import ImageBatch, ImageItem
from tqdm import tqdm

from anomalib_faprompt.data.dataset import ImagePredictDataset
from anomalib_faprompt.data.references import check_not_scored
from anomalib_faprompt.errors import InvalidInputError
from anomalib_faprompt.models.calibration import Calibration
from anomalib_faprompt.models.predictions import CALIBRATED_COLUMNS, PREDICTIONS_COLUMNS, PredictionsFile
from anomalib_faprompt.models.visualizer import CategoryImageVisualizer, image_root, panel_path
from anomalib_faprompt.runs import check_writable, new_version_dir

__all__ = ["check_not_calibration", "list_images", "predict_images"]

logger = logging.getLogger(__name__)

BATCH_FIELDS = {field.name for field in dataclasses.fields(ImageBatch)}


def list_images(paths: Sequence[str | Path]) -> list[tuple[ImagePredictDataset, int]]:
    """Every image of the given files and folders, as ``(dataset, index)`` in ``anomalib predict``'s order.

    A file listed twice (a folder and an image in it) is scored once, with one warning line.

    Raises:
        MissingInputError: A path does not exist; the message names it.
        InvalidInputError: A path is no image or a folder without images; the message names it.
    """
    images, seen = [], set()
    for path in paths:
        dataset = ImagePredictDataset(path)
        for index, file in enumerate(dataset.image_filenames):
            key = Path(file).resolve()
            if key in seen:
                logger.warning("'%s' is given more than once; it is scored once.", file)
                continue
            seen.add(key)
            images.append((dataset, index))
    return images


def _check_size(image: torch.Tensor, path: str, model_path: Path, shape: Any) -> None:  # noqa: ANN401
    """Refuse an image of another size than a graph exported for one size only takes."""
    height, width = shape[2], shape[3]
    if (height.is_static and height.get_length() != image.shape[-2]) or (
        width.is_static and width.get_length() != image.shape[-1]
    ):
        msg = (
            f"'{path}' is {image.shape[-1]}x{image.shape[-2]} pixels, but '{model_path}' was exported for images of "
            f"{width}x{height} only (`--input_size`). Export without `input_size` to predict images of any size."
        )
        raise InvalidInputError(msg)


def _results(compiled: Any, items: Iterator[ImageItem], model_path: Path) -> Iterator[ImageBatch]:  # noqa: ANN401
    """The results of each item, in the items' order, inferred asynchronously on OpenVINO's parallel requests.

    A finished request's outputs are read here, in this thread, when the queue hands the request out again (and at
    the end), not in a callback: OpenVINO runs callbacks on its worker threads, and a worker still waiting for the
    GIL when the compiled model is released (by this thread, holding the GIL) stops the process (a deadlock, or
    "Resource deadlock avoided").
    """
    import openvino  # noqa: PLC0415  (an optional dependency: checked by the caller)

    outputs = [(output, output.get_any_name()) for output in compiled.outputs if output.get_any_name() in BATCH_FIELDS]
    shape = compiled.inputs[0].partial_shape
    queue = openvino.AsyncInferQueue(compiled, compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    started: dict[int, ImageItem] = {}  # the items inferred or being inferred, outputs not read yet
    done: dict[int, ImageBatch] = {}

    def read(handle: int) -> None:
        """Read the outputs of the item the finished request ``handle`` last inferred (if not read yet)."""
        index = queue.userdata[handle]
        if index in started:
            tensors = {name: torch.from_numpy(queue[handle].get_tensor(output).data.copy()) for output, name in outputs}
            done[index] = _batch(started.pop(index), tensors)

    written, stopped = 0, None
    try:
        for index, item in enumerate(items):
            _check_size(item.image, item.image_path, model_path, shape)
            read(queue.get_idle_request_id())  # the request that start_async takes next
            started[index] = item
            queue.start_async({0: item.image[None].numpy()}, index)
            while written in done:
                yield done.pop(written)
                written += 1
    except Exception as error:  # noqa: BLE001  (an image that cannot be used: the images before it are written first)
        stopped = error
    finally:
        queue.wait_all()  # no request left running, also when the run stops
    for handle in range(len(queue)):
        read(handle)
    while written in done:
        yield done.pop(written)
        written += 1
    if stopped is not None:
        raise stopped


def _batch(item: ImageItem, outputs: dict[str, torch.Tensor]) -> ImageBatch:
    """A batch of one image with the graph's outputs for it, as ``anomalib predict`` hands its results on."""
    return ImageBatch(image=item.image[None], image_path=[item.image_path], **outputs)


def check_not_calibration(images: Sequence[tuple[ImagePredictDataset, int]], calibration: Calibration) -> None:
    """Refuse images the export's thresholds were calibrated on, as ``anomalib predict`` refuses them.

    Raises:
        InvalidInputError: Some of ``images`` are calibration images; the message names them.
    """
    scored = {str(Path(dataset.image_filenames[index]).resolve()) for dataset, index in images}
    check_not_scored(
        scored,
        calibration.files,
        "calibration images of the exported model",
        "the false-alarm rate holds for images the thresholds were not set on.",
        "predict",
        "export with normal images of another folder as `calibration_source`",
    )


def _calibrated_cells(batch: ImageBatch, calibration: Calibration) -> list[tuple[str, str]]:
    """Each image's p-value and the threshold, the cells ``anomalib predict`` adds for a calibrated model."""
    values = calibration.p_values(batch.pred_score.flatten().tolist()).tolist()
    return [(repr(value), repr(calibration.image_threshold)) for value in values]


def predict_images(
    compiled: Any,  # noqa: ANN401
    model_path: Path,
    images: Sequence[tuple[ImagePredictDataset, int]],
    output: Path,
    heat_maps: bool = True,
    calibration: Calibration | None = None,
) -> Path:
    """Score the images with a compiled exported model; write ``predictions.csv`` and the heat-maps into a run folder.

    The run folder is a new ``<output>/v<N>``: no earlier run's files are replaced. Its ``predictions.csv`` and
    ``images/`` are those of ``anomalib predict`` on the same files; a run that stops keeps its rows in
    ``predictions.incomplete.csv``.

    Args:
        compiled: The ``openvino.CompiledModel`` (:func:`~.exported_model.compile_for_throughput`).
        model_path: The model's file, named in errors.
        images: The images, from :func:`list_images`.
        output: The folder of the run folders.
        heat_maps: Whether to draw the panels (anomalib's visualiser).
        calibration: The export's calibration (:func:`~.exported_model.export_calibration`): each row then also
            holds the image's p-value and the threshold, as ``anomalib predict`` writes them for a calibrated model.

    Returns:
        The run folder.

    Raises:
        UnreadableFileError: An image cannot be decoded; the message names it.
        InvalidInputError: The output folder cannot be written, or an image has another size than a model exported
            for one size takes.
    """
    check_writable(output, "--output")
    folder = new_version_dir(Path(output).resolve())
    logger.info("Writing this run's results to %s (earlier runs in %s are left as they are).", folder, output)
    scores = PredictionsFile(folder, columns=PREDICTIONS_COLUMNS if calibration is None else CALIBRATED_COLUMNS)
    visualizer = CategoryImageVisualizer(output_dir=folder / "images") if heat_maps else None
    root = image_root(dataset.image_filenames[index] for dataset, index in images)
    items = (dataset[index] for dataset, index in images)
    try:
        with (
            closing(_results(compiled, items, model_path)) as results,
            tqdm(total=len(images), desc="predict", unit="image", dynamic_ncols=True) as progress,
        ):
            for batch in results:
                scores.append(batch, None if calibration is None else _calibrated_cells(batch, calibration))
                if visualizer is not None:
                    for item in batch:
                        visualizer.save_panel(item, panel_path(visualizer.output_dir, item.image_path, root))
                progress.update(len(batch))
    except BaseException as error:
        scores.stop(type(error).__name__)
        raise
    scores.finish()
    if visualizer is not None:
        visualizer.say_where(visualizer.output_dir)
    return folder
