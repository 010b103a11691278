"""Split-conformal thresholds: a false-alarm rate turned into a threshold on the scores of normal images.

For ``n`` calibration scores (of normal images, never references nor test images) and a false-alarm rate ``a``
(``0 < a < 1``): the threshold is the ``k``-th smallest calibration score, ``k = ceil((n + 1)(1 - a))``; an image is
flagged when its score is above the threshold (a tie is not flagged). Its conformal p-value is
``(1 + #{calibration scores >= its score}) / (n + 1)``; flagged is the same as ``p <= a``, ties included. If the
calibration images and the normal images to be inspected are exchangeable (the same process), a normal image is
flagged with probability ``1 - k / (n + 1)``: at most ``a``, and at least ``a - 1 / (n + 1)`` when scores do not
tie. With fewer than ``ceil(1 / a) - 1`` images, ``k > n``: no threshold gives ``a``. The share of ``m`` further
normal images that one draw of calibration images flags follows the beta-binomial law ``(m, n + 1 - k, k)``
(scores without ties): :func:`realised_rate_quantiles`.

``(n + 1)(1 - a)`` is computed exactly, on the decimal number ``a`` is written as (``0.1`` is one tenth), so that
``n = 19, a = 0.05`` gives ``k = 19`` and not 20 from a rounding error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

import numpy as np

from anomalib_faprompt.errors import InvalidInputError

__all__ = [
    "check_enough",
    "conformal_threshold",
    "expected_false_alarm_rate",
    "images_needed",
    "p_values",
    "rank",
    "realised_false_alarm_rates",
    "realised_rate_quantiles",
]


def _exact(false_alarm_rate: float) -> Fraction:
    """``a`` as the exact fraction of the decimal it is written as."""
    return Fraction(repr(float(false_alarm_rate)))


def rank(n: int, false_alarm_rate: float) -> int:
    """``k = ceil((n + 1)(1 - a))``: the rank, from the smallest, of the calibration score that is the threshold."""
    return math.ceil((n + 1) * (1 - _exact(false_alarm_rate)))


def images_needed(false_alarm_rate: float) -> int:
    """The fewest calibration images that give ``a``: ``ceil(1 / a) - 1`` (the smallest ``n`` with ``k <= n``)."""
    return math.ceil(1 / _exact(false_alarm_rate)) - 1


def check_enough(n: int, false_alarm_rate: float, what: str = "") -> None:
    """Refuse, in one line, fewer calibration images than ``false_alarm_rate`` needs.

    Args:
        n: Number of calibration images.
        false_alarm_rate: ``a``.
        what: Where the images come from, ending the message (e.g. " of 'gamma' in '.../train/good'").

    Raises:
        InvalidInputError: ``n < ceil(1 / a) - 1``.
    """
    needed = images_needed(false_alarm_rate)
    if n < needed:
        larger = f" (with {n}: {_smallest_rate(n)} or more)" if n else ""
        msg = (
            f"false_alarm_rate={false_alarm_rate} needs at least {needed} normal calibration images, and there are "
            f"{n}{what}: add normal images, or ask for a larger false_alarm_rate{larger}."
        )
        raise InvalidInputError(msg)


def _smallest_rate(n: int) -> str:
    """The smallest rate ``n > 0`` images give, ``1 / (n + 1)``, rounded up to three significant digits."""
    rate = 1 / (n + 1)
    digits = 3 - math.ceil(math.log10(rate))
    return f"{math.ceil(rate * 10**digits) / 10**digits:g}"


def conformal_threshold(scores: Sequence[float] | np.ndarray, false_alarm_rate: float) -> float:
    """The ``k``-th smallest of the calibration scores (:func:`rank`).

    Raises:
        InvalidInputError: Too few scores for ``false_alarm_rate`` (:func:`check_enough`).
    """
    values = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    check_enough(len(values), false_alarm_rate)
    return float(values[rank(len(values), false_alarm_rate) - 1])


def p_values(calibration: Sequence[float] | np.ndarray, scores: Sequence[float] | np.ndarray) -> np.ndarray:
    """Conformal p-values ``(1 + #{s_i >= s}) / (n + 1)`` of ``scores`` against the calibration scores ``s_i``."""
    values = np.sort(np.asarray(calibration, dtype=np.float64).ravel())
    scores = np.asarray(scores, dtype=np.float64)
    at_least = len(values) - np.searchsorted(values, scores, side="left")
    return (1 + at_least) / (len(values) + 1)


def expected_false_alarm_rate(n: int, false_alarm_rate: float) -> float:
    """``1 - k / (n + 1)``: the chance that a normal image is flagged (scores without ties), in ``[a - 1/(n+1), a]``."""
    return float(Fraction(n + 1 - rank(n, false_alarm_rate), n + 1))


def realised_false_alarm_rates(
    scores: Sequence[float] | np.ndarray, n: int, false_alarm_rate: float, draws: int, seed: int = 0
) -> np.ndarray:
    """The false-alarm rate realised on held-out normal images, for random draws of ``n`` calibration images.

    Each draw splits the normal images' ``scores`` at random into ``n`` calibration images and the rest, sets the
    threshold on the first and returns the share of the rest above it.

    Args:
        scores: Scores of normal images (more than ``n``).
        n: Calibration images per draw.
        false_alarm_rate: ``a``.
        draws: Number of draws.
        seed: Seed of the draws.

    Returns:
        ``(draws,)`` realised rates.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if not n < len(scores):
        msg = f"n={n} calibration images leave none of the {len(scores)} scores held out: give more scores."
        raise ValueError(msg)
    generator = np.random.default_rng(seed)
    rates = np.empty(draws)
    for draw in range(draws):
        order = generator.permutation(len(scores))
        threshold = conformal_threshold(scores[order[:n]], false_alarm_rate)
        rates[draw] = np.mean(scores[order[n:]] > threshold)
    return rates


def realised_rate_quantiles(
    n: int, false_alarm_rate: float, held_out: int, quantiles: Sequence[float] = (0.05, 0.95)
) -> list[float]:
    """Quantiles of the false-alarm rate realised on ``held_out`` normal images by one draw of ``n`` calibration images.

    The number flagged follows the beta-binomial law of ``held_out`` trials with parameters ``n + 1 - k`` and ``k``
    (scores without ties); a quantile ``q`` is the smallest share ``x / held_out`` whose cumulative chance is ``q``
    or more.
    """
    alpha, beta = n + 1 - rank(n, false_alarm_rate), rank(n, false_alarm_rate)
    log_beta = math.lgamma(alpha) + math.lgamma(beta) - math.lgamma(alpha + beta)
    chances = [
        math.exp(
            math.lgamma(held_out + 1) - math.lgamma(x + 1) - math.lgamma(held_out - x + 1)
            + math.lgamma(x + alpha) + math.lgamma(held_out - x + beta) - math.lgamma(held_out + alpha + beta)
            - log_beta
        )
        for x in range(held_out + 1)
    ]  # fmt: skip
    cumulative = np.cumsum(chances)
    return [int(np.searchsorted(cumulative, q - 1e-12)) / held_out for q in quantiles]
