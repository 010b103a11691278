"""FAPrompt and AnomalyCLIP in anomalib 2.7's ``Engine``: run folders that replace nothing, zero-shot ``predict``.

anomalib's ``test`` and ``predict`` on a fresh engine write into whatever ``<root>/latest`` points at (replacing a
training run's ``config.yaml`` and tables). For this package's models only, runs get a folder of their own
(:class:`~anomalib_faprompt.runs.RunFolder`, undone, or marked incomplete, when the run stops before its end); a
zero-shot model is tested and predicts without a validation run whose statistics it never uses; ``predict`` names a
damaged image and the ``weights`` it predicts with; ``export`` loads a ``ckpt_path`` into the model as the user built
it (as ``test`` and ``predict`` do) and writes into the run folder of its checkpoint.
"""

from __future__ import annotations

import inspect
import logging
import sys
from contextvars import ContextVar
from functools import wraps
from pathlib import Path
from typing import Any

from anomalib.post_processing import PostProcessor

from anomalib_faprompt.errors import InvalidInputError, error_text
from anomalib_faprompt.runs import RunFolder, check_writable, checkpoint_run_dir, launcher_run_dir, share_run_dir

from .patching import patching

__all__ = ["patch_engine", "run_root"]

logger = logging.getLogger(__name__)

NO_CKPT_WARNING = "ckpt_path is not provided. Model weights will not be loaded."
_RUN = "_anomalib_faprompt_run"  # Engine attribute: the RunFolder of the run in progress


def _is_own(model: object) -> bool:
    """Whether ``model`` is one of this package's models (by its class's module; nothing is imported)."""
    return type(model).__module__.startswith("anomalib_faprompt.")


def run_root(engine: Any, model: Any, *loaders: Any, datamodule: Any = None, dataset: Any = None) -> Path:  # noqa: ANN401
    """``<default_root_dir>/<model>/<dataset>/<category>``: the folder of version folders, as anomalib names it."""
    source = datamodule if datamodule is not None else dataset
    name, category = (source.name, source.category) if source is not None else ("", None)
    if not name or category is None:
        loader = next((loader for loader in loaders if hasattr(loader, "train_data")), None)
        if loader is not None:
            name, category = getattr(loader.train_data, "name", ""), getattr(loader.train_data, "category", "")
    return Path(engine._cache.args["default_root_dir"]) / model.name / name / (category or "")  # noqa: SLF001


def _setup_workspace(original: Any) -> Any:  # noqa: ANN401
    @wraps(original)
    def setup_workspace(
        self: Any,  # noqa: ANN401
        model: Any,  # noqa: ANN401
        train_dataloaders: Any = None,  # noqa: ANN401
        val_dataloaders: Any = None,  # noqa: ANN401
        test_dataloaders: Any = None,  # noqa: ANN401
        datamodule: Any = None,  # noqa: ANN401
        dataset: Any = None,  # noqa: ANN401
        versioned_dir: bool = False,
    ) -> None:
        loaders = (train_dataloaders, val_dataloaders, test_dataloaders)
        inherited = launcher_run_dir() if _is_own(model) else None
        if inherited is not None and self._trainer is None:
            # another rank of a multi-process run: the launching process's folder, no folder or link of its own
            self._cache.args["default_root_dir"] = inherited
            return
        if not _is_own(model) or (not versioned_dir and self._trainer is not None) or sys.platform.startswith("win"):
            # anomalib's folder (test or predict after fit on the same engine: the training's run folder)
            original(self, model, *loaders, datamodule, dataset, versioned_dir=versioned_dir)
            return
        check_writable(self._cache.args["default_root_dir"], "`default_root_dir`")
        root = run_root(self, model, *loaders, datamodule=datamodule, dataset=dataset).resolve()
        run = RunFolder.create(root, move_latest=versioned_dir)
        setattr(self, _RUN, run)
        if not versioned_dir:
            logger.info("Writing this run's results to %s (earlier runs in %s are left as they are).", run.folder, root)
        self._cache.args["default_root_dir"] = run.folder
        share_run_dir(run.folder)

    return setup_workspace


def _undone_on_failure(original: Any) -> Any:  # noqa: ANN401
    """``fit``, ``train``, ``test``, ``predict`` or ``validate`` whose new run folder is undone when it stops.

    A run stopped by an error or by Ctrl-C puts ``latest`` back, and leaves its folder only if it wrote work there,
    marked by the file :data:`~anomalib_faprompt.runs.INCOMPLETE` (:meth:`RunFolder.undo`).

    ``fit``/``train`` of this package's model built with trained ``weights`` also say that they train nothing
    (anomalib's ``fit`` only validates a zero-shot model), unless the engine ``expects_zero_shot`` (the benchmark's).
    """

    @wraps(original)
    def run(self: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: ANN401
        model = args[0] if args else kwargs.get("model")
        training = original.__name__ in {"fit", "train"}
        if training and _is_own(model) and model.zero_shot and not getattr(self, "expects_zero_shot", False):
            logger.warning(
                "%s was built with trained `weights` (%s), so it is a zero-shot model and `%s` trains nothing "
                "(anomalib only validates it). To train it, build it without `weights`.",
                model.name,
                model.hparams.get("weights"),
                original.__name__,
            )
        self.__dict__.pop(_RUN, None)
        try:
            return original(self, *args, **kwargs)
        except BaseException as error:
            if (run_folder := self.__dict__.pop(_RUN, None)) is not None:
                run_folder.undo(f"`{original.__name__}` stopped by {_stopped_by(error)}")
            raise

    return run


def _stopped_by(error: BaseException) -> str:
    """What stopped a run: Ctrl-C (Lightning ends a run's ``KeyboardInterrupt`` with ``sys.exit(1)``), or an error."""
    if isinstance(error, KeyboardInterrupt) or isinstance(error.__context__, KeyboardInterrupt):
        return "Ctrl-C (KeyboardInterrupt)"
    return f"an error ({error_text(error)})"


def _should_run_validation(original: Any) -> Any:  # noqa: ANN401
    @wraps(original)
    def should_run_validation(model: Any, ckpt_path: Any) -> bool:  # noqa: ANN401
        processor = model.post_processor if _is_own(model) else None
        plain = (type(processor) is PostProcessor or _is_own(processor)) and not processor.enable_normalization
        return False if plain else original(model, ckpt_path)

    return staticmethod(should_run_validation)


_OWN_WEIGHTS: ContextVar[bool] = ContextVar("anomalib_faprompt_predicts_with_own_weights", default=False)


class _NoCheckpointWarning(logging.Filter):
    """Drops anomalib's "ckpt_path is not provided" while a model built with trained ``weights`` predicts."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (_OWN_WEIGHTS.get() and record.msg == NO_CKPT_WARNING)


def _predict(original: Any) -> Any:  # noqa: ANN401
    signature = inspect.signature(original)

    @wraps(original)
    def predict(self: Any, model: Any = None, *args: Any, **kwargs: Any) -> Any:  # noqa: ANN401
        target = model if model is not None else (self._trainer.lightning_module if self._trainer else None)
        if not _is_own(target):
            return original(self, model, *args, **kwargs)
        bound = signature.bind(self, model, *args, **kwargs)
        arguments = bound.arguments
        if arguments.get("data_path") is not None and arguments.get("dataset") is None:
            from anomalib_faprompt.data.dataset import ImagePredictDataset  # noqa: PLC0415 (anomalib.data is loaded)

            arguments["dataset"] = ImagePredictDataset(arguments.pop("data_path"))
        weights = target.hparams.get("weights") if target.zero_shot else None
        if weights is None or arguments.get("ckpt_path"):
            return original(*bound.args, **bound.kwargs)
        logger.info("%s predicts with the weights it was built with: %s", target.name, weights)
        token = _OWN_WEIGHTS.set(True)
        try:
            return original(*bound.args, **bound.kwargs)
        finally:
            _OWN_WEIGHTS.reset(token)

    return predict


def _refuse_ignored_compression(export_type: Any, compression_type: Any) -> None:  # noqa: ANN401
    """Refuse a compression with an export type that is not OpenVINO: anomalib would ignore it without a word."""
    if compression_type is None:
        return
    kind = getattr(export_type, "value", export_type)
    if str(kind).lower() != "openvino":
        name = getattr(compression_type, "name", compression_type)
        msg = (
            f"--compression_type {name} applies to `--export_type openvino` only; with `{kind}` the model would be "
            "exported uncompressed. Export to openvino, or leave out the compression."
        )
        raise InvalidInputError(msg)


def _export(original: Any) -> Any:  # noqa: ANN401
    signature = inspect.signature(original)

    @wraps(original)
    def export(self: Any, model: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: ANN401
        if not _is_own(model):
            return original(self, model, *args, **kwargs)
        from anomalib_faprompt.models.inspection import inspect_weights  # noqa: PLC0415

        bound = signature.bind(self, model, *args, **kwargs)
        arguments = bound.arguments
        checkpoint, root = arguments.get("ckpt_path"), arguments.get("export_root")
        if root is not None and Path(root).exists() and not Path(root).is_dir():
            msg = f"`export_root` '{root}' is a file: pass a folder (the export goes to <export_root>/weights/<type>/)."
            raise InvalidInputError(msg)
        _refuse_ignored_compression(arguments.get("export_type"), arguments.get("compression_type"))
        if checkpoint:
            # Into the model as the user built it (k_shot, few_shot_source, ...), as `test` and `predict` load a
            # ckpt_path; anomalib's `load_from_checkpoint` would rebuild it from the checkpoint's hyperparameters.
            file = inspect_weights(type(model), checkpoint, "`ckpt_path`")
            file.require_checkpoint()
            model.load_trained(file)
            arguments["ckpt_path"] = None
        source = checkpoint or (model.hparams.get("weights") if model.zero_shot else None)
        if root is None and source:
            arguments["export_root"] = checkpoint_run_dir(source)
            logger.info("Exporting %s into the run folder of %s: %s", model.name, source, arguments["export_root"])
        return original(*bound.args, **bound.kwargs)

    return export


def patch_engine(module: Any) -> None:  # noqa: ANN401
    """Apply the fixes above to ``Engine`` of anomalib's engine module (the integration hook's entry point).

    All or nothing, and only for the anomalib versions the patches were written for (see :mod:`.patching`).
    """
    with patching("the run folders of anomalib's Engine") as patch:
        if patch is None:
            return
        engine_class = module.Engine
        patch.set(engine_class, "_setup_workspace", _setup_workspace(engine_class._setup_workspace))  # noqa: SLF001
        patch.set(
            engine_class,
            "_should_run_validation",
            _should_run_validation(engine_class._should_run_validation),  # noqa: SLF001
        )
        patch.set(engine_class, "predict", _undone_on_failure(_predict(engine_class.predict)))
        patch.set(engine_class, "export", _export(engine_class.export))
        for name in ("fit", "train", "test", "validate"):
            patch.set(engine_class, name, _undone_on_failure(getattr(engine_class, name)))
        module.logger.addFilter(_NoCheckpointWarning())
