"""The hyperparameter contract of the models: what the package knows of each hyperparameter beyond its default.

A model's hyperparameters are the arguments of its ``__init__``, with their defaults: the signature is the one place
defaults are written (anomalib's command line reads it, Lightning saves the values in ``self.hparams``). Every model
repeats the arguments of :data:`SHARED_HYPERPARAMETERS` in its own signature, because jsonargparse reads each class's
own signature; that repetition is the only one. This module declares the facts of those shared arguments once; each
model declares those of its own in its class attribute ``HYPERPARAMETERS`` (in its folder), and the weight of each
loss term (``<term>_weight``) follows from its ``LOSS_TERMS``. When a model class is defined,
:func:`declared_hyperparameters` checks that its signature takes exactly the declared arguments (besides anomalib's
four components), so that a missing, misspelt or undeclared one is a ``TypeError`` naming it.

What reads the facts: :class:`~.base.PromptLearningModule` checks every value (``check``, and the values of a
``Literal`` annotation) before CLIP is loaded, and resolves ``none_means``; :mod:`.checkpoint` refuses a checkpoint
trained with another value of a ``structural`` one; a model started from an authors' prompt file warns about each
``unrecorded`` one set otherwise than in the authors' test.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from functools import partial
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

from anomalib_faprompt.components.options import check_choice, check_count, check_positive

__all__ = ["SHARED_HYPERPARAMETERS", "Hyperparameter", "check_values", "declared_hyperparameters"]


@dataclass(frozen=True)
class Hyperparameter:
    """What the package knows of one hyperparameter besides its default (which only the signature holds).

    Attributes:
        structural: It changes the model's parameters, scores or maps: a checkpoint trained with another value is
            refused (only the learned prompts are saved, so the model is not rebuilt from the checkpoint).
        unrecorded: It changes scores and maps, but an authors' prompt file does not record it: a model started
            from such a file warns when it is set otherwise than in the authors' test (their value: the default,
            or the second of ``none_means``).
        none_means: For a ``None`` default: the value ``None`` stands for, ``(without, with)`` an authors' prompt
            file as ``weights`` (their released code differs from the paper there).
        check: ``check(name, value)`` raises a ``ValueError`` naming the argument for a bad value; called for
            values other than ``None``, before CLIP is loaded. Checks across arguments are in :mod:`.base`.
    """

    structural: bool
    unrecorded: bool = False
    none_means: tuple[Any, Any] | None = None
    check: Callable[[str, Any], None] | None = None


def _check_betas(name: str, value: object) -> None:
    betas = tuple(value)
    if len(betas) != 2 or not all(0 <= beta < 1 for beta in betas):
        msg = f"{name}={list(betas)} must be two numbers in [0, 1) (Adam's betas)."
        raise ValueError(msg)


def _check_blocks(name: str, value: object) -> None:
    if not value:
        msg = f"{name}=[] names no block: give block numbers (from 1), or None for the default."
        raise ValueError(msg)
    for block in value:
        check_count(name, block)


def _check_rate(name: str, value: object) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and 0 < value < 1):
        msg = f"{name}={value!r} must be a number between 0 and 1 (0.05: 5% of normal images flagged)."
        raise ValueError(msg)


def _check_weight(name: str, value: object) -> None:
    if not value >= 0:
        msg = f"{name}={value!r} must be a number of at least 0."
        raise ValueError(msg)


_STRUCTURAL_COUNT = Hyperparameter(structural=True, check=check_count)

SHARED_HYPERPARAMETERS: dict[str, Hyperparameter] = {
    "backbone": Hyperparameter(structural=True),
    "pretrained": Hyperparameter(structural=False),  # the CLIP weights are checked by their fingerprint instead
    "backbone_config": Hyperparameter(structural=True),
    "image_size": Hyperparameter(structural=True, unrecorded=True, check=check_count),
    "vv_layers": Hyperparameter(structural=True, unrecorded=True, check=check_count),
    "n_ctx": _STRUCTURAL_COUNT,
    "prompt_depth": _STRUCTURAL_COUNT,
    "prompt_length": _STRUCTURAL_COUNT,
    "abnormal_word": Hyperparameter(structural=True),
    "temperature": Hyperparameter(structural=True, unrecorded=True, check=check_positive),
    "sigma": Hyperparameter(structural=True, unrecorded=True),  # checked against image_size
    "learning_rate": Hyperparameter(structural=False, check=check_positive),
    "betas": Hyperparameter(structural=False, check=_check_betas),
    "pixel_losses": Hyperparameter(structural=False),
    "weights": Hyperparameter(structural=False),  # checked as a file
    "k_shot": Hyperparameter(structural=False, check=partial(check_count, minimum=0)),
    "few_shot_layers": Hyperparameter(structural=False, check=_check_blocks),
    "few_shot_source": Hyperparameter(structural=False),  # checked with k_shot
    "false_alarm_rate": Hyperparameter(structural=False, check=_check_rate),
    "calibration_source": Hyperparameter(structural=False),  # checked with false_alarm_rate
}
"""The hyperparameters every model takes (and :mod:`.base` and its mixins read), with their facts."""


def _loss_weights(loss_terms: Collection[str]) -> dict[str, Hyperparameter]:
    """The facts of the hyperparameters ``<term>_weight`` of the loss terms: not structural, at least 0."""
    return {f"{term}_weight": Hyperparameter(structural=False, check=_check_weight) for term in loss_terms}


def declared_hyperparameters(
    model_class: type, own: Mapping[str, Hyperparameter], loss_terms: Collection[str], components: Collection[str]
) -> dict[str, Hyperparameter]:
    """The facts of every hyperparameter of ``model_class``, in the order of its signature, checked against it.

    Args:
        model_class: The model class; its ``__init__`` takes the hyperparameters.
        own: The facts of its own hyperparameters (its ``HYPERPARAMETERS``).
        loss_terms: Its loss terms, each weighted by a hyperparameter ``<term>_weight``.
        components: The other arguments its ``__init__`` may take (anomalib's pre-processor, ...).

    Returns:
        ``{name: facts}`` of :data:`SHARED_HYPERPARAMETERS`, ``own`` and the loss weights.

    Raises:
        TypeError: The signature lacks a declared argument or takes an undeclared one, ``own`` declares a shared
            argument again, or gives ``none_means`` to an argument whose default is not ``None``.
    """
    name = model_class.__name__
    again = sorted(own.keys() & SHARED_HYPERPARAMETERS.keys())
    if again:
        msg = f"{name}.HYPERPARAMETERS declares {again} again: SHARED_HYPERPARAMETERS declares them for every model."
        raise TypeError(msg)
    declared = {**SHARED_HYPERPARAMETERS, **own, **_loss_weights(loss_terms)}
    parameters = {
        key: parameter
        for key, parameter in list(inspect.signature(model_class.__init__).parameters.items())[1:]
        if parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
    }
    problems = []
    for table, facts in (
        ("SHARED_HYPERPARAMETERS (anomalib_faprompt.models.hyperparameters)", SHARED_HYPERPARAMETERS),
        (f"{name}.HYPERPARAMETERS", own),
    ):
        missing = [key for key in facts if key not in parameters]
        if missing:
            problems.append(f"lacks {missing}, declared by {table}")
    undeclared = [key for key in parameters if key not in declared and key not in components]
    if undeclared:
        problems.append(f"takes {undeclared}, which no table declares (add their facts to {name}.HYPERPARAMETERS)")
    if problems:
        msg = f"{name}.__init__ {'; '.join(problems)}."
        raise TypeError(msg)
    for key, facts in own.items():
        default = parameters[key].default
        if facts.none_means is not None and default is not None:
            msg = f"{name}.HYPERPARAMETERS gives `{key}` a none_means, but its default is {default!r}, not None."
            raise TypeError(msg)
    return {key: declared[key] for key in parameters if key in declared}


def _literal(annotation: object) -> object:
    """The ``Literal`` of an annotation (also of ``Literal[...] | None``), or ``None``."""
    if get_origin(annotation) is Literal:
        return annotation
    if get_origin(annotation) in (Union, UnionType):
        return next((literal for literal in map(_literal, get_args(annotation)) if literal is not None), None)
    return None


def check_values(model_class: type, facts: Mapping[str, Hyperparameter], hparams: Mapping[str, Any]) -> None:
    """Check each value other than ``None`` on its own: its ``check``, and the values its ``Literal`` annotation allows.

    Raises:
        ValueError: A value is out of range; the message names the argument.
    """
    annotations = inspect.signature(model_class.__init__, eval_str=True).parameters
    for name, fact in facts.items():
        value = hparams[name]
        if value is None:
            continue
        literal = _literal(annotations[name].annotation)
        if literal is not None:
            check_choice(name, value, literal)
        if fact.check is not None:
            fact.check(name, value)
