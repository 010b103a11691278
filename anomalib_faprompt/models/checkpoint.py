"""Checkpoints of the prompt-learning models: reading, checking, and leaving the frozen CLIP out.

One set of checks serves every way a checkpoint reaches a model: ``weights=`` at construction,
``--ckpt_path`` of anomalib's ``test``/``predict``/``fit`` (read by :class:`CheckedCheckpointIO` before
Lightning loads it) and ``load_from_checkpoint``. A checkpoint is refused, with a message naming it, when it is
not a readable anomalib checkpoint, holds another model, was trained with other structural hyperparameters or
other sizes, or (when it holds only the prompts) was trained on other CLIP weights.

A model built from pretrained CLIP weights saves only what it learned (the prompts and FAPrompt's prior
network, a few MB) and a fingerprint of the CLIP weights; on load, CLIP comes from ``pretrained`` and must
match the fingerprint. A randomly initialised CLIP is saved whole, since it could not be re-created.
The functions take the models of :mod:`.base`, typed as anomalib's ``AnomalibModule`` so that this module does
not import them.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from anomalib.utils.serialization import anomalib_safe_globals
from lightning.pytorch.plugins.io import TorchCheckpointIO

from anomalib_faprompt.components import plain_config
from anomalib_faprompt.components.weights_file import is_torchscript, load_torch_file, unreadable_reason
from anomalib_faprompt.errors import InvalidInputError, MissingInputError

from .authors import is_authors_file

if TYPE_CHECKING:
    from anomalib.models.components import AnomalibModule

__all__ = [
    "CheckedCheckpointIO",
    "check_checkpoint",
    "check_checkpoint_file",
    "check_is_checkpoint",
    "check_model_name",
    "check_structure",
    "keep_post_processor",
    "load_file",
    "read_checkpoint",
    "restore_frozen",
    "strip_frozen",
]

MODEL_KEY = "anomalib_faprompt_model"
FINGERPRINT_KEY = "backbone_fingerprint"
ZERO_SHOT_KEY = "anomalib_faprompt_zero_shot"


def _frozen_prefix(module: AnomalibModule) -> str:
    """State-dict prefix of the frozen CLIP weights inside the anomalib module."""
    return f"model.{module.model.frozen_prefix}"


def check_checkpoint_file(path: str | Path, source: str, model_name: str) -> None:
    """Raise a ``FileNotFoundError`` naming ``path`` and ``source`` when it is not a file (cheap, reads nothing)."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        msg = (
            f"{model_name} checkpoint '{path}' ({source}) {what}. Pass the checkpoint file of a trained "
            f"{model_name}, e.g. the `weights/lightning/model.ckpt` written by `anomalib train --model {model_name}`."
        )
        raise MissingInputError(msg)


def load_file(model_class: type[AnomalibModule], path: str | Path, source: str) -> object:
    """Load a ``.pth``/``.ckpt`` file (CPU, weights only), or raise an error that names it.

    Args:
        model_class: The model class the file is for.
        path: The file.
        source: How the user passed it, for messages (e.g. "argument `weights`").

    Returns:
        What the file holds.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: The file is a TorchScript archive, holds Python objects other than weights, or cannot be read by
            ``torch.load``.
    """
    path = Path(path)
    check_checkpoint_file(path, source, model_class.__name__)
    advice = (
        "Pass the checkpoint file written by training the model, or a prompt file of the authors' code as it was saved."
    )
    if is_torchscript(path):
        msg = (
            f"'{path}' ({source}) is a TorchScript archive (a whole model, such as OpenAI's CLIP file), not a "
            f"checkpoint: a CLIP file is passed as `pretrained`. {advice}"
        )
        raise InvalidInputError(msg)
    try:
        with anomalib_safe_globals(extra=model_class.checkpoint_safe_globals()):
            return load_torch_file(path)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as error:
        msg = f"'{path}' ({source}) {unreadable_reason(path, error, 'anomalib checkpoint')}. {advice}"
        raise InvalidInputError(msg) from error


def check_is_checkpoint(content: object, where: str) -> None:
    """Refuse a loaded file that is no anomalib checkpoint (no ``state_dict``); name an authors' prompt file as such."""
    if isinstance(content, dict) and isinstance(content.get("state_dict"), dict):
        return
    if is_authors_file(content):
        msg = (
            f"{where} is a prompt file of the authors' code, not an anomalib checkpoint: pass it as the model's "
            "`weights` (`--model.weights`)."
        )
    else:
        msg = (
            f"{where} is not an anomalib checkpoint: it has no 'state_dict', nor is it a prompt file of the authors' "
            "code ({'prompt_learner': ...})."
        )
    raise InvalidInputError(msg)


def read_checkpoint(model_class: type[AnomalibModule], path: str | Path, source: str) -> dict[str, Any]:
    """Read an anomalib checkpoint file, or raise an error that names it (see :func:`load_file`).

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: The file is no readable anomalib checkpoint.
    """
    checkpoint = load_file(model_class, path, source)
    check_is_checkpoint(checkpoint, f"'{path}' ({source})")
    return checkpoint


class CheckedCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO, reading a ``ckpt_path`` through :func:`read_checkpoint` first, for its clear errors.

    Lightning reads ``trainer.test(..., ckpt_path=...)`` files with the strategy's checkpoint IO before any hook
    of the model sees the path, so a damaged file would surface as a raw zip-reader error. The models give this
    plugin to their trainer (``trainer_arguments``); the file's content is then checked in ``on_load_checkpoint``.

    Args:
        model_class: The model class the checkpoints are for.
    """

    def __init__(self, model_class: type[AnomalibModule]) -> None:
        super().__init__()
        self.model_class = model_class

    def load_checkpoint(self, path: str | Path, *args: Any, **kwargs: Any) -> dict[str, Any]:  # noqa: ANN401
        """Check the file (one line naming it), then load it as Lightning does."""
        read_checkpoint(self.model_class, path, "`ckpt_path`")
        return super().load_checkpoint(path, *args, **kwargs)

    def __eq__(self, other: object) -> bool:
        """Equal for one model class, so that anomalib's ``Engine`` keeps its trainer across calls."""
        return type(other) is type(self) and other.model_class is self.model_class

    def __hash__(self) -> int:
        return hash((type(self), self.model_class))


def check_structure(
    model_class: type[AnomalibModule], hparams: Mapping[str, Any], checkpoint: dict[str, Any], where: str
) -> None:
    """Refuse a checkpoint trained with other structural hyperparameters than ``hparams`` (no model is built).

    Args:
        model_class: The model the checkpoint is for.
        hparams: The model's hyperparameters (its constructor's arguments, defaults included).
        checkpoint: The checkpoint dict.
        where: The checkpoint's description for messages.

    Raises:
        ValueError: A structural hyperparameter differs; the message lists each, the checkpoint's value first.
    """
    saved = checkpoint.get("hyper_parameters") or {}
    differences = []
    for name, fact in model_class.hyperparameter_facts().items():
        if not fact.structural or name not in saved:
            continue
        theirs, ours = plain_config(saved[name]), plain_config(hparams.get(name))
        if isinstance(theirs, list | tuple) and isinstance(ours, list | tuple):
            theirs, ours = list(theirs), list(ours)
        if theirs != ours:
            differences.append(f"{name}={theirs!r} (here: {ours!r})")
    if differences:
        msg = (
            f"{where} was trained with other hyperparameters: {', '.join(differences)}. Build the "
            f"{model_class.__name__} with the checkpoint's values (e.g. the `--config` it was trained with)."
        )
        raise InvalidInputError(msg)


def check_model_name(model_name: str, checkpoint: dict[str, Any], where: str) -> None:
    """Refuse a checkpoint that says it holds another of this package's models than ``model_name``."""
    saved_model = checkpoint.get(MODEL_KEY)
    if isinstance(saved_model, str) and saved_model != model_name:
        msg = (
            f"{where} is a checkpoint of {saved_model}, not of {model_name}: use it with {saved_model} "
            f"(`--model {saved_model}`)."
        )
        raise InvalidInputError(msg)


def check_checkpoint(module: AnomalibModule, checkpoint: dict[str, Any], where: str) -> None:
    """Refuse a checkpoint of another model, structure, size or CLIP; the message names ``where`` it came from.

    Args:
        module: The model the checkpoint is for.
        checkpoint: The checkpoint dict.
        where: The checkpoint's description for messages, e.g. "'run/model.ckpt' (argument `weights`)".

    Raises:
        ValueError: The checkpoint does not fit the model.
    """
    check_model_name(module.name, checkpoint, where)
    state = checkpoint["state_dict"]
    saved = {key.removeprefix("model."): value for key, value in state.items() if key.startswith("model.")}
    ours = module.model.state_dict()
    unexpected = sorted(set(saved) - set(ours))
    missing = [name for name, value in module.model.named_parameters() if value.requires_grad and name not in saved]
    if unexpected or missing:
        found = f"lacks {missing[:5]}" if missing else f"has {unexpected[:5]}, unknown to {module.name}"
        msg = f"{where} is not a checkpoint of {module.name}: it {found}. Pass a checkpoint written by training it."
        raise InvalidInputError(msg)
    check_structure(type(module), module.hparams, checkpoint, where)
    resized = [
        f"{name} is {tuple(value.shape)} there, {tuple(ours[name].shape)} here"
        for name, value in saved.items()
        if value.shape != ours[name].shape
    ]
    if resized:
        msg = (
            f"{where} was trained with other sizes ({'; '.join(resized[:3])}). Build the {module.name} with the "
            "hyperparameters it was trained with (backbone, backbone_config, image_size, n_ctx, prompt_length, ...)."
        )
        raise InvalidInputError(msg)
    prefix = _frozen_prefix(module)
    if not any(key.startswith(prefix) for key in state):
        _check_fingerprint(module, checkpoint, where)


def _fingerprint(module: AnomalibModule) -> float:
    """A float that changes with the frozen CLIP weights (sum of all their values)."""
    with torch.no_grad():
        return float(sum(parameter.double().sum() for parameter in module.model.backbone.clip.parameters()))


def _check_fingerprint(module: AnomalibModule, checkpoint: dict[str, Any], where: str) -> None:
    """Refuse a checkpoint without CLIP weights whose prompts were trained on other CLIP weights."""
    expected = checkpoint.get(FINGERPRINT_KEY)
    if expected is not None and abs(_fingerprint(module) - expected) > 1e-6 * max(1.0, abs(expected)):
        msg = (
            f"The prompts of {where} were trained on other CLIP weights than this {module.name} loaded "
            f"(backbone={module.hparams.get('backbone')!r}, pretrained={module.hparams.get('pretrained')!r}). "
            "Build the model with the backbone and pretrained weights it was trained with."
        )
        raise InvalidInputError(msg)


def strip_frozen(module: AnomalibModule, checkpoint: dict[str, Any]) -> None:
    """Make a checkpoint stand on its own, and leave pretrained CLIP weights out of it.

    The ``weights`` file a model was started from is not needed to load the checkpoint (its prompts are in
    it), so the hyperparameter is cleared and the zero-shot flag stored instead. With pretrained CLIP
    weights, only the learned parameters and a fingerprint of CLIP are kept.
    """
    hparams = checkpoint.get("hyper_parameters")
    if hparams is not None and "weights" in hparams:
        hparams["weights"] = None
    checkpoint[MODEL_KEY] = module.name
    checkpoint[ZERO_SHOT_KEY] = module.zero_shot
    if module.hparams.get("pretrained") is None:
        return
    prefix = _frozen_prefix(module)
    state = checkpoint["state_dict"]
    for key in [key for key in state if key.startswith(prefix)]:
        del state[key]
    checkpoint[FINGERPRINT_KEY] = _fingerprint(module)


def keep_post_processor(module: AnomalibModule, checkpoint: dict[str, Any]) -> None:
    """Leave the module's post-processor as it was built: none of the checkpoint's settings or state for it.

    anomalib restores a post-processor's settings (``image_sensitivity``, ...), its enabled flag and its buffers
    (thresholds and statistics of the training's validation images) from a checkpoint, over what the user gave.
    """
    checkpoint.pop("anomalib_post_processor_config", None)
    (checkpoint.get("anomalib_components_enabled") or {}).pop("post_processor", None)
    state = checkpoint["state_dict"]
    for key in [key for key in state if key.startswith("post_processor.")]:
        del state[key]
    state.update({key: value for key, value in module.state_dict().items() if key.startswith("post_processor.")})


def restore_frozen(module: AnomalibModule, checkpoint: dict[str, Any]) -> None:
    """Fill in the CLIP weights a checkpoint left out (after the checks), and take over its zero-shot flag."""
    prefix = _frozen_prefix(module)
    state = checkpoint["state_dict"]
    if not any(key.startswith(prefix) for key in state):
        state.update({key: value for key, value in module.state_dict().items() if key.startswith(prefix)})
    module.zero_shot = module.zero_shot or bool(checkpoint.get(ZERO_SHOT_KEY, False))
