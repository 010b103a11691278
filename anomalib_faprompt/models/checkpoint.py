"""Checkpoints of the prompt-learning models: checking them against a model, and leaving the frozen CLIP out.

One set of checks serves every way a checkpoint reaches a model: ``weights=`` at construction, ``--ckpt_path`` of
anomalib's ``test``/``predict``/``fit``/``export`` and ``load_from_checkpoint`` (the file itself is read once, by
:mod:`.inspection`). A checkpoint is refused, with a message naming it, when it holds another model, was trained
with other structural hyperparameters or other sizes, or (when it holds only the prompts) was trained on other CLIP
weights.

A model built from pretrained CLIP weights saves only what it learned (the prompts and FAPrompt's prior
network, a few MB) and a fingerprint of the CLIP weights; on load, CLIP comes from ``pretrained`` and must
match the fingerprint. A randomly initialised CLIP is saved whole, since it could not be re-created.
The functions take the models of :mod:`.base`, typed as anomalib's ``AnomalibModule`` so that this module does
not import them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from anomalib_faprompt.components import plain_config
from anomalib_faprompt.errors import InvalidInputError

if TYPE_CHECKING:
    from anomalib.models.components import AnomalibModule

__all__ = [
    "check_checkpoint",
    "check_model_name",
    "check_structure",
    "keep_post_processor",
    "restore_frozen",
    "strip_frozen",
]

MODEL_KEY = "anomalib_faprompt_model"
FINGERPRINT_KEY = "backbone_fingerprint"
ZERO_SHOT_KEY = "anomalib_faprompt_zero_shot"


def _frozen_prefix(module: AnomalibModule) -> str:
    """State-dict prefix of the frozen CLIP weights inside the anomalib module."""
    return f"model.{module.model.frozen_prefix}"


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
