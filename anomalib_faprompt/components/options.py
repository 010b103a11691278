"""Option types of the models (the fixed sets of strings they take) and argument checks."""

from __future__ import annotations

from typing import Any, Literal, get_args

__all__ = [
    "GlobalLossInput",
    "LocalScore",
    "PatchSelection",
    "check_choice",
    "check_count",
    "check_positive",
    "check_sigma",
]

PatchSelection = Literal["topk", "first_k"]
LocalScore = Literal["paper", "released"]
GlobalLossInput = Literal["probability", "logits"]


def check_choice(name: str, value: str, options: Any) -> None:  # noqa: ANN401  (a Literal type)
    """Raise a ``ValueError`` naming the argument when ``value`` is not one of the ``Literal`` ``options``."""
    allowed = get_args(options)
    if value not in allowed:
        msg = f"{name}={value!r} must be one of {', '.join(repr(option) for option in allowed)}."
        raise ValueError(msg)


def check_count(name: str, value: int, minimum: int = 1, maximum: int | None = None, why: str = "") -> None:
    """Raise a ``ValueError`` naming the argument when the integer ``value`` is outside ``[minimum, maximum]``."""
    too_large = maximum is not None and isinstance(value, int) and value > maximum
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or too_large:
        bound = f"between {minimum} and {maximum}" if maximum is not None else f"an integer of at least {minimum}"
        msg = f"{name}={value!r} must be {bound}{f' ({why})' if why else ''}."
        raise ValueError(msg)


def check_positive(name: str, value: float) -> None:
    """Raise a ``ValueError`` naming the argument when ``value`` is not a positive number."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        msg = f"{name}={value!r} must be a positive number."
        raise ValueError(msg)


def check_sigma(sigma: float, image_size: int) -> None:
    """Raise a ``ValueError`` unless the map blur's ``sigma`` is positive and at most the image side."""
    check_positive("sigma", sigma)
    if sigma > image_size:
        msg = (
            f"sigma={sigma} is larger than image_size={image_size}: a blur that wide flattens the map. Use a sigma "
            "in pixels of the working image (the papers: 4 for AnomalyCLIP, 10 for FAPrompt at 518)."
        )
        raise ValueError(msg)
