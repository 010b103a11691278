"""One inspection of a weights file: loaded once, told what it is, checked against the model it is for.

A file reaches the prompt-learning models as ``weights`` (a checkpoint written by training the model, or a prompt
file of the authors' code), as ``ckpt_path`` of anomalib's ``test``/``predict``/``fit`` (read by
:class:`CheckedCheckpointIO` in the place of Lightning's reader) and ``export``, and as the ``weights`` of a benchmark
config (checked before any job's model is built). :func:`inspect_weights` is how each of them reads it: once (on the
CPU, weights only, see :mod:`anomalib_faprompt.components.weights_file`), refusing in one line naming the file one
that does not exist, is a TorchScript archive, cannot be read safely, or is neither an anomalib checkpoint nor an
authors' prompt file. The :class:`WeightsFile` it returns says which of the two the file is and holds its content,
which the checks and the model's loading then use without reading the file again: against a model class and its
hyperparameters before anything is built (:meth:`WeightsFile.check_against`); against a built model,
``PromptLearningModule.load_trained`` (:func:`.checkpoint.check_checkpoint`, :func:`.authors.load_authors_prompts`).

Within :func:`reading_once` (a benchmark run: its config check and every job's model), a file is read once in all:
a later inspection of the same file for the same model class reuses the first one's content. That content is
shared, so it is never edited: :meth:`WeightsFile.checkpoint` gives whoever edits a checkpoint (Lightning's hooks,
the threshold rule of ``load_trained``) a copy of its containers.
"""

from __future__ import annotations

import copy
import pickle
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from anomalib.utils.serialization import anomalib_safe_globals
from lightning.pytorch.plugins.io import TorchCheckpointIO

from anomalib_faprompt.components.weights_file import is_torchscript, load_torch_file, unreadable_reason
from anomalib_faprompt.errors import InvalidInputError, MissingInputError

from .authors import check_authors_model, is_authors_file, prompt_learner_state
from .checkpoint import check_model_name, check_structure

if TYPE_CHECKING:
    from anomalib.models.components import AnomalibModule

__all__ = ["CheckedCheckpointIO", "WeightsFile", "inspect_weights", "reading_once"]

ADVICE = (
    "Pass the checkpoint file written by training the model, or a prompt file of the authors' code as it was saved."
)

_T = TypeVar("_T")

# The content of each file inspected within `reading_once`, by resolved path and model class; None outside it.
_READ: ContextVar[dict[tuple[str, type], Mapping[str, Any]] | None] = ContextVar(
    "anomalib_faprompt_weights_read", default=None
)


@dataclass(frozen=True)
class WeightsFile:
    """A weights file as loaded once: where it came from, whether it is an authors' prompt file, what it holds.

    Attributes:
        path: The file, as the user gave it.
        source: How the user passed it, for messages (e.g. "argument `weights`", "`ckpt_path`").
        content: What the file holds: an anomalib checkpoint (``state_dict``, ...) or ``{"prompt_learner": ...}``.
            Shared with other inspections of the file: never edited.
        is_authors: Whether it is a prompt file of the authors' code (else an anomalib checkpoint).
    """

    path: str | Path
    source: str
    content: Mapping[str, Any]
    is_authors: bool

    @property
    def where(self) -> str:
        """The file and its source, as messages name it: ``'run/model.ckpt' (argument `weights`)``."""
        return f"'{self.path}' ({self.source})"

    def require_checkpoint(self) -> None:
        """Refuse an authors' prompt file where only an anomalib checkpoint is taken (``ckpt_path``).

        Raises:
            InvalidInputError: The file is an authors' prompt file, which only ``weights`` takes.
        """
        if self.is_authors:
            msg = (
                f"{self.where} is a prompt file of the authors' code, not an anomalib checkpoint: pass it as the "
                "model's `weights` (`--model.weights`)."
            )
            raise InvalidInputError(msg)

    def checkpoint(self) -> dict[str, Any]:
        """The anomalib checkpoint, its dicts and lists copied (the tensors shared), for a reader that edits it.

        Raises:
            InvalidInputError: The file is an authors' prompt file.
        """
        self.require_checkpoint()
        return _containers_copied(self.content)

    def check_against(self, model_class: type[AnomalibModule], hparams: Mapping[str, Any]) -> None:
        """Refuse, before the model is built, a file of the other model or trained with other structural settings.

        The sizes, prompt texts and CLIP weights are checked when the file is loaded into the built model.

        Args:
            model_class: The model the file is for.
            hparams: The model's hyperparameters (its constructor's arguments, defaults included).

        Raises:
            InvalidInputError: The file holds the other model, or (a checkpoint) was trained with other structural
                hyperparameters than ``hparams``.
        """
        if self.is_authors:
            check_authors_model(model_class.__name__, prompt_learner_state(self.content), self.where)
            return
        check_model_name(model_class.__name__, self.content, self.where)
        check_structure(model_class, hparams, self.content, self.where)


def _containers_copied(value: _T) -> _T:
    """``value`` with every dict (of its own class and attributes, e.g. a state dict's metadata) and list copied."""
    if isinstance(value, dict):
        copied = copy.copy(value)
        for key, item in value.items():
            copied[key] = _containers_copied(item)
        return copied
    if isinstance(value, list):
        return [_containers_copied(item) for item in value]
    return value


def _load(model_class: type[AnomalibModule], path: str | Path, where: str) -> Mapping[str, Any]:
    """Load the file (CPU, weights only); refuse, naming ``where``, what is no checkpoint nor authors' file."""
    name = model_class.__name__
    file = Path(path)
    if not file.is_file():
        what = "is a directory" if file.is_dir() else "does not exist"
        msg = (
            f"{name} checkpoint {where} {what}. Pass the checkpoint file of a trained {name}, e.g. the "
            f"`weights/lightning/model.ckpt` written by `anomalib train --model {name}`."
        )
        raise MissingInputError(msg)
    if is_torchscript(file):
        msg = (
            f"{where} is a TorchScript archive (a whole model, such as OpenAI's CLIP file), not a checkpoint: a CLIP "
            f"file is passed as `pretrained`. {ADVICE}"
        )
        raise InvalidInputError(msg)
    try:
        with anomalib_safe_globals(extra=model_class.checkpoint_safe_globals()):
            content = load_torch_file(file)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as error:
        msg = f"{where} {unreadable_reason(file, error, 'anomalib checkpoint')}. {ADVICE}"
        raise InvalidInputError(msg) from error
    if not (is_authors_file(content) or (isinstance(content, dict) and isinstance(content.get("state_dict"), dict))):
        msg = (
            f"{where} is not an anomalib checkpoint: it has no 'state_dict', nor is it a prompt file of the authors' "
            "code ({'prompt_learner': ...})."
        )
        raise InvalidInputError(msg)
    return content


def inspect_weights(model_class: type[AnomalibModule], path: str | Path, source: str) -> WeightsFile:
    """Load a weights file once and say what it is; within :func:`reading_once`, the first inspection's content.

    Args:
        model_class: The model class the file is for (its checkpoint's safe globals).
        path: The file.
        source: How the user passed it, for messages (e.g. "argument `weights`").

    Returns:
        The inspected file.

    Raises:
        MissingInputError: The file does not exist, or is a directory.
        InvalidInputError: The file is a TorchScript archive, holds Python objects other than weights, cannot be read
            by ``torch.load``, or is neither an anomalib checkpoint nor an authors' prompt file.
    """
    where = f"'{path}' ({source})"
    read = _READ.get()
    key = (str(Path(path).resolve()), model_class)
    if read is None:
        content = _load(model_class, path, where)
    elif key in read:
        content = read[key]
    else:
        content = read[key] = _load(model_class, path, where)
    return WeightsFile(path, source, content, is_authors_file(content))


@contextmanager
def reading_once() -> Iterator[None]:
    """Within it, :func:`inspect_weights` reads each file once (nested: the outermost one's reads count)."""
    if _READ.get() is not None:
        yield
        return
    token = _READ.set({})
    try:
        yield
    finally:
        _READ.reset(token)


class CheckedCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO, reading a ``ckpt_path`` once through :func:`inspect_weights`, for its clear errors.

    Lightning reads ``trainer.test(..., ckpt_path=...)`` files with the strategy's checkpoint IO before any hook
    of the model sees the path, so a damaged file would surface as a raw zip-reader error. The models give this
    plugin to their trainer (``trainer_arguments``); the file's content is then checked in ``on_load_checkpoint``.

    Args:
        model_class: The model class the checkpoints are for.
    """

    def __init__(self, model_class: type[AnomalibModule]) -> None:
        super().__init__()
        self.model_class = model_class

    def load_checkpoint(self, path: str | Path, *args: object, **kwargs: object) -> dict[str, Any]:  # noqa: ARG002
        """The checkpoint, read once on the CPU with ``weights_only=True``, or one line naming the file.

        Lightning's ``map_location`` and ``weights_only`` are not used: Lightning's own reader loads on the CPU too
        (its default ``map_location`` keeps each storage where it was deserialised), and a checkpoint of this
        package holds weights only.

        Raises:
            MissingInputError: The file does not exist.
            InvalidInputError: The file is no readable anomalib checkpoint (an authors' prompt file is named so).
        """
        return inspect_weights(self.model_class, path, "`ckpt_path`").checkpoint()

    def __eq__(self, other: object) -> bool:
        """Equal for one model class, so that anomalib's ``Engine`` keeps its trainer across calls."""
        return type(other) is type(self) and other.model_class is self.model_class

    def __hash__(self) -> int:
        return hash((type(self), self.model_class))
