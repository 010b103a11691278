"""Run folders and ``predict`` of this package's models in anomalib 2.7's ``Engine``: nothing overwritten.

anomalib's ``Engine`` gives ``fit`` (and ``train``) a new version folder ``<root>/v<N>`` and points
``<root>/latest`` at it with an absolute link; ``test`` and ``predict`` on a fresh engine write into whatever
``latest`` points at. So ``anomalib test --ckpt_path <run>/weights/lightning/model.ckpt`` into the training's
root replaces that run's ``config.yaml`` and result tables, and in a copied results folder it writes into the
original. For the models registered here (:func:`patch_engine`), and only with the anomalib versions this was
written for (:data:`SUPPORTED_ANOMALIB`), the ``Engine`` instead

1. gives ``test`` and ``predict`` on a fresh engine a new version folder of their own, leaving ``latest``
   where it points (at the last training run, whose checkpoint ``latest/weights/lightning/model.ckpt`` names);
   a ``test`` after ``fit`` on the same engine (``anomalib train``) still writes into the training's folder;
2. makes ``latest`` a relative link (``latest -> v<N>``), so a copied results folder is self-contained;
3. runs no validation before ``test`` or ``predict`` of a model built with trained ``weights`` (a zero-shot
   model) when its post-processor normalises nothing: the validation would only collect statistics such a
   post-processor never uses, and ``predict`` on a folder of images has no validation data
   (anomalib: "`val_dataloader` must be implemented");
4. does not warn "ckpt_path is not provided. Model weights will not be loaded" for a model built with trained
   ``weights``: it says, in one line, which weights it predicts with.

Every other model runs exactly as in anomalib.
"""

from __future__ import annotations

import inspect
import logging
import os
import re
import sys
from functools import wraps
from pathlib import Path
from typing import Any

import anomalib
from anomalib.engine import Engine, engine
from anomalib.post_processing import PostProcessor

__all__ = ["SUPPORTED_ANOMALIB", "new_version_dir", "patch_engine", "relative_latest_link"]

logger = logging.getLogger(__name__)

SUPPORTED_ANOMALIB = ("2.7.",)
NO_CKPT_WARNING = "ckpt_path is not provided. Model weights will not be loaded."
_VERSION = re.compile(r"^v(\d+)$")

_own_models: list[type] = []


def _is_own(model: object) -> bool:
    return isinstance(model, tuple(_own_models))


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


def relative_latest_link(run_dir: Path) -> None:
    """Point ``run_dir.parent / "latest"`` at ``run_dir`` by a relative link, when it is a link to ``run_dir``."""
    latest = run_dir.parent / "latest"
    if sys.platform.startswith("win") or not latest.is_symlink() or latest.resolve() != run_dir.resolve():
        return
    temporary = latest.with_name(f".latest.{os.getpid()}")
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(run_dir.name, target_is_directory=True)
    temporary.replace(latest)


def _setup_workspace(original: Any) -> Any:  # noqa: ANN401
    @wraps(original)
    def setup_workspace(self: Engine, model: Any, *args: Any, versioned_dir: bool = False, **kwargs: Any) -> None:  # noqa: ANN401
        if not _is_own(model):
            original(self, model, *args, versioned_dir=versioned_dir, **kwargs)
            return
        if versioned_dir or self._trainer is not None:
            # fit or train: anomalib's new version folder; test or predict after fit: the same run folder
            original(self, model, *args, versioned_dir=versioned_dir, **kwargs)
            if versioned_dir:
                relative_latest_link(Path(self._cache.args["default_root_dir"]))
            return
        # test or predict on a fresh engine: anomalib's root for this model and data, then a new version folder
        resolve = engine.resolve_versioned_path
        engine.resolve_versioned_path = Path  # leaves <root>/latest as it is, unresolved
        try:
            original(self, model, *args, versioned_dir=False, **kwargs)
        finally:
            engine.resolve_versioned_path = resolve
        root = Path(self._cache.args["default_root_dir"]).parent.resolve()
        run_dir = new_version_dir(root)
        self._cache.args["default_root_dir"] = run_dir
        logger.info("Writing this run's results to %s (earlier runs in %s are left as they are).", run_dir, root)

    return setup_workspace


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


class _DropMessage(logging.Filter):
    """Drops the records of one exact message."""

    def __init__(self, message: str) -> None:
        super().__init__()
        self.message = message

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != self.message


def _predict(original: Any) -> Any:  # noqa: ANN401
    signature = inspect.signature(original)

    @wraps(original)
    def predict(self: Engine, model: Any = None, *args: Any, **kwargs: Any) -> Any:  # noqa: ANN401
        target = model if model is not None else (self._trainer.lightning_module if self._trainer else None)
        weights = target.hparams.get("weights") if _is_own(target) and target.zero_shot else None
        if weights is None or signature.bind(self, model, *args, **kwargs).arguments.get("ckpt_path"):
            return original(self, model, *args, **kwargs)
        logger.info("%s predicts with the weights it was built with: %s", target.name, weights)
        drop = _DropMessage(NO_CKPT_WARNING)
        engine.logger.addFilter(drop)
        try:
            return original(self, model, *args, **kwargs)
        finally:
            engine.logger.removeFilter(drop)

    return predict


def patch_engine(model_class: type) -> None:
    """Apply the fixes above to anomalib's ``Engine`` for ``model_class`` and its subclasses (idempotent).

    With an anomalib version other than :data:`SUPPORTED_ANOMALIB`, or an ``Engine`` without the methods
    patched, nothing changes.
    """
    if model_class in _own_models:
        return
    _own_models.append(model_class)
    if getattr(Engine, "_faprompt_patched", False):
        return
    methods = ("_setup_workspace", "_should_run_validation", "predict")
    supported = anomalib.__version__.startswith(SUPPORTED_ANOMALIB) and hasattr(engine, "resolve_versioned_path")
    if not supported or not all(hasattr(Engine, name) for name in methods):
        return
    Engine._setup_workspace = _setup_workspace(Engine._setup_workspace)  # noqa: SLF001
    Engine._should_run_validation = _should_run_validation(Engine._should_run_validation)  # noqa: SLF001
    Engine.predict = _predict(Engine.predict)
    Engine._faprompt_patched = True  # noqa: SLF001
