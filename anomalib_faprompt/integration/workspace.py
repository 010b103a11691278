"""Run folders and ``predict`` of this package's models in anomalib 2.7's ``Engine``: nothing overwritten.

anomalib's ``Engine`` gives ``fit`` (and ``train``) a new version folder ``<root>/v<N>`` and points
``<root>/latest`` at it with an absolute link; ``test`` and ``predict`` on a fresh engine write into whatever
``latest`` points at. So ``anomalib test --ckpt_path <run>/weights/lightning/model.ckpt`` into the training's
root replaces that run's ``config.yaml`` and result tables, and in a copied results folder it writes into the
original. For this package's models, and only with the anomalib versions this was written for (see
:mod:`.patching`), the ``Engine`` instead

1. gives ``test`` and ``predict`` on a fresh engine a new version folder of their own, leaving ``latest``
   where it points (at the last training run, whose checkpoint ``latest/weights/lightning/model.ckpt`` names);
   a ``test`` after ``fit`` on the same engine (``anomalib train``) still writes into the training's folder;
2. makes ``latest`` a relative link (``latest -> v<N>``), so a copied results folder is self-contained, and
   puts it back where it was when ``fit`` or ``train`` fails: ``latest`` names the last training run that ended
   (and ``fit`` or ``train`` of a model built with trained ``weights`` says that it trains nothing);
3. gives every process of a multi-process run (``--trainer.strategy ddp``, whose launcher starts the other ranks
   as copies of the command) the run folder of the process that launched them: one folder per run, not one per
   rank;
4. runs no validation before ``test`` or ``predict`` of a model built with trained ``weights`` (a zero-shot
   model) when its post-processor normalises nothing: the validation would only collect statistics such a
   post-processor never uses, and ``predict`` on a folder of images has no validation data
   (anomalib: "`val_dataloader` must be implemented");
5. does not warn "ckpt_path is not provided. Model weights will not be loaded" for a model built with trained
   ``weights``: it says, in one line, which weights it predicts with;
6. reads ``predict``'s ``data_path`` (an image or a folder) with
   :class:`~anomalib_faprompt.data.dataset.ImagePredictDataset`: a damaged image is named, not an anonymous
   ``OSError``;
7. exports, when no ``export_root`` is given, into the run folder of the checkpoint (``ckpt_path``, else the
   ``weights`` the model was built with): ``<run>/weights/openvino/model.xml`` beside
   ``<run>/weights/lightning/model.ckpt``, not into one ``results/weights`` shared by every model and run.
   (An export never replaces an earlier one: :mod:`anomalib_faprompt.models.export`.)

Every other model runs exactly as in anomalib.
"""

from __future__ import annotations

import inspect
import logging
import os
import re
import sys
from contextvars import ContextVar
from functools import wraps
from pathlib import Path
from typing import Any

from anomalib.post_processing import PostProcessor

from anomalib_faprompt.errors import InvalidInputError

from .patching import patching

__all__ = ["checkpoint_run_dir", "new_version_dir", "patch_engine", "run_root"]

logger = logging.getLogger(__name__)

NO_CKPT_WARNING = "ckpt_path is not provided. Model weights will not be loaded."
_VERSION = re.compile(r"^v(\d+)$")
# "<pid of the process that chose it><os.pathsep><run folder>": read by the processes that process launches.
RUN_DIR_VARIABLE = "ANOMALIB_FAPROMPT_RUN_DIR"
# Engine attribute: (latest link, this run's folder, the link's previous target or None) while fit/train runs.
_LATEST_BEFORE = "_anomalib_faprompt_latest_before"


def _is_own(model: object) -> bool:
    """Whether ``model`` is one of this package's models (by its class's module; nothing is imported)."""
    return type(model).__module__.startswith("anomalib_faprompt.")


def new_version_dir(root: Path) -> Path:
    """Create and return ``root/v<N>``, one past the highest version folder there; ``latest`` is not touched."""
    root.mkdir(parents=True, exist_ok=True)
    numbers = [int(match.group(1)) for child in root.iterdir() if (match := _VERSION.match(child.name))]
    number = max(numbers, default=-1) + 1
    while True:
        folder = root / f"v{number}"
        try:
            folder.mkdir()
        except FileExistsError:
            number += 1
        else:
            return folder


def checkpoint_run_dir(checkpoint: str | Path) -> Path:
    """The run folder of a checkpoint: ``<run>`` for ``<run>/weights/lightning/<file>``, else the file's folder."""
    folder = Path(checkpoint).resolve().parent
    if folder.name == "lightning" and folder.parent.name == "weights":
        return folder.parent.parent
    return folder


def _point_latest(latest: Path, target: str) -> None:
    """Make the link ``latest`` point at ``target`` (as written), replacing it in one step."""
    temporary = latest.with_name(f".latest.{os.getpid()}")
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(target, target_is_directory=True)
    temporary.replace(latest)


def _launcher_run_dir() -> Path | None:
    """The run folder chosen by the process that launched this one as another rank, or ``None``."""
    pid, _, folder = os.environ.get(RUN_DIR_VARIABLE, "").partition(os.pathsep)
    if int(os.environ.get("LOCAL_RANK", "0")) > 0 and pid == str(os.getppid()) and folder:
        return Path(folder)
    return None


def _share_run_dir(run_dir: Path) -> None:
    """Hand ``run_dir`` down to the ranks this process will launch (they inherit its environment)."""
    os.environ[RUN_DIR_VARIABLE] = f"{os.getpid()}{os.pathsep}{run_dir}"


def _restore_latest(record: tuple[Path, Path, str | None] | None) -> None:
    """Point ``latest`` back at its previous target (or remove it) if it still points at the failed run."""
    if record is None:
        return
    latest, run_dir, previous = record
    if not latest.is_symlink() or latest.resolve() != run_dir.resolve():
        return
    if previous is None:
        latest.unlink()
    else:
        _point_latest(latest, previous)


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
    def setup_workspace(  # noqa: PLR0913
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
        inherited = _launcher_run_dir() if _is_own(model) else None
        if inherited is not None and self._trainer is None:
            # another rank of a multi-process run: the launching process's folder, no folder or link of its own
            self._cache.args["default_root_dir"] = inherited
            return
        if not _is_own(model) or (not versioned_dir and self._trainer is not None) or sys.platform.startswith("win"):
            # anomalib's folder (test or predict after fit on the same engine: the training's run folder)
            original(self, model, *loaders, datamodule, dataset, versioned_dir=versioned_dir)
            return
        root = run_root(self, model, *loaders, datamodule=datamodule, dataset=dataset).resolve()
        run_dir = new_version_dir(root)
        if versioned_dir:
            # fit or train: `latest` points at the new folder by a relative link; its previous target is kept
            latest = root / "latest"
            previous = os.readlink(latest) if latest.is_symlink() else None
            setattr(self, _LATEST_BEFORE, (latest, run_dir, previous))
            _point_latest(latest, run_dir.name)
        else:
            logger.info("Writing this run's results to %s (earlier runs in %s are left as they are).", run_dir, root)
        self._cache.args["default_root_dir"] = run_dir
        _share_run_dir(run_dir)

    return setup_workspace


def _training_run(original: Any) -> Any:  # noqa: ANN401
    """``fit`` or ``train`` that puts ``latest`` back where it was when the run fails.

    It also says, in one line, when this package's model was built with trained ``weights``: anomalib's ``fit``
    only validates a zero-shot model, so nothing is trained. An engine whose ``expects_zero_shot`` is true (the
    benchmark's, which fits zero-shot models on purpose) is not told.
    """

    @wraps(original)
    def run(self: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: ANN401
        model = args[0] if args else kwargs.get("model")
        if _is_own(model) and model.zero_shot and not getattr(self, "expects_zero_shot", False):
            logger.warning(
                "%s was built with trained `weights` (%s), so it is a zero-shot model and `%s` trains nothing "
                "(anomalib only validates it). To train it, build it without `weights`.",
                model.name,
                model.hparams.get("weights"),
                original.__name__,
            )
        self.__dict__.pop(_LATEST_BEFORE, None)
        try:
            return original(self, *args, **kwargs)
        except BaseException:
            _restore_latest(self.__dict__.pop(_LATEST_BEFORE, None))
            raise

    return run


def _should_run_validation(original: Any) -> Any:  # noqa: ANN401
    @wraps(original)
    def should_run_validation(model: Any, ckpt_path: Any) -> bool:  # noqa: ANN401
        if (
            _is_own(model)
            and type(model.post_processor) is PostProcessor
            and not model.post_processor.enable_normalization
        ):
            return False
        return original(model, ckpt_path)

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


def _export(original: Any) -> Any:  # noqa: ANN401
    signature = inspect.signature(original)

    @wraps(original)
    def export(self: Any, model: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: ANN401
        if not _is_own(model):
            return original(self, model, *args, **kwargs)
        from anomalib_faprompt.models.checkpoint import check_model_name, read_checkpoint  # noqa: PLC0415

        bound = signature.bind(self, model, *args, **kwargs)
        arguments = bound.arguments
        checkpoint, root = arguments.get("ckpt_path"), arguments.get("export_root")
        if checkpoint:
            check_model_name(
                model.name, read_checkpoint(type(model), checkpoint, "`ckpt_path`"), f"'{checkpoint}' (`ckpt_path`)"
            )
        if root is not None and Path(root).exists() and not Path(root).is_dir():
            msg = f"`export_root` '{root}' is a file: pass a folder (the export goes to <export_root>/weights/<type>/)."
            raise InvalidInputError(msg)
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
    with patching("run folders of test/predict") as patch:
        if patch is None:
            return
        engine_class = module.Engine
        patch.set(engine_class, "_setup_workspace", _setup_workspace(engine_class._setup_workspace))  # noqa: SLF001
        patch.set(
            engine_class,
            "_should_run_validation",
            _should_run_validation(engine_class._should_run_validation),  # noqa: SLF001
        )
        patch.set(engine_class, "predict", _predict(engine_class.predict))
        patch.set(engine_class, "export", _export(engine_class.export))
        for name in ("fit", "train"):
            patch.set(engine_class, name, _training_run(getattr(engine_class, name)))
        module.logger.addFilter(_NoCheckpointWarning())
