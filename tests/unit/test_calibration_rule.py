"""The split-conformal rule: thresholds as order statistics, p-values, the refusal, the guarantee over many draws."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from anomalib_faprompt.components.calibration import (
    check_enough,
    conformal_threshold,
    expected_false_alarm_rate,
    images_needed,
    p_values,
    rank,
    realised_false_alarm_rates,
    realised_rate_quantiles,
)
from anomalib_faprompt.errors import InvalidInputError

# Ten calibration scores with a tie group of four at 0.2; sorted: 0.1, 0.2, 0.2, 0.2, 0.2, 0.3, 0.4, 0.5, 0.6, 0.9.
TIED = [0.5, 0.2, 0.2, 0.2, 0.9, 0.1, 0.2, 0.3, 0.4, 0.6]


def test_the_rank_and_the_images_needed_by_hand():
    assert rank(19, 0.05) == 19  # ceil(20 * 0.95): the largest of 19 scores
    assert rank(200, 0.1) == 181  # ceil(201 * 0.9) = ceil(180.9)
    assert rank(10, 0.5) == 6  # ceil(5.5)
    assert rank(10, 0.6) == 5  # ceil(4.4)
    assert rank(9, 0.7) == 3  # ceil(10 * 0.3) = 3 exactly; in floats 10 * (1 - 0.7) = 3.0000000000000004
    assert [images_needed(a) for a in (0.1, 0.05, 0.01, 0.07, 0.5)] == [9, 19, 99, 14, 1]
    for a in (0.1, 0.05, 0.01, 0.07, 0.3, 0.7):  # the fewest images: k <= n there, k > n one image fewer
        assert rank(images_needed(a), a) <= images_needed(a)
        assert rank(images_needed(a) - 1, a) > images_needed(a) - 1


def test_the_threshold_is_the_k_th_smallest_score_ties_included():
    assert conformal_threshold(TIED, 0.5) == 0.3  # k = 6
    assert conformal_threshold(TIED, 0.6) == 0.2  # k = 5: the last of the tie group
    assert conformal_threshold(TIED, 0.9) == 0.2  # k = ceil(1.1) = 2: the first of the tie group
    assert conformal_threshold(TIED, 0.1) == 0.9  # k = ceil(9.9) = 10: the largest
    assert conformal_threshold(np.arange(200)[::-1], 0.1) == 180  # n = 200, k = 181: the 181st smallest of 0..199
    nineteen = [0.07 * i % 1 for i in range(1, 20)]
    assert conformal_threshold(nineteen, 0.05) == max(nineteen)


def test_p_values_by_hand_and_the_same_verdict_as_the_threshold():
    new = [0.05, 0.1, 0.2, 0.25, 0.3, 0.9, 0.95]
    # 1 + the number of calibration scores at least as large, over n + 1 = 11.
    expected = [Fraction(11, 11), Fraction(11, 11), Fraction(10, 11), Fraction(6, 11), Fraction(6, 11)]
    expected += [Fraction(2, 11), Fraction(1, 11)]
    assert p_values(TIED, new).tolist() == pytest.approx([float(value) for value in expected])
    for a in (0.05, 0.1, 0.2, 0.3, 0.5, 0.6, 0.9):  # flagged (score > t) exactly when p <= a, ties with t included
        threshold = conformal_threshold(TIED, a) if len(TIED) >= images_needed(a) else None
        if threshold is None:
            continue
        candidates = np.array([*TIED, *new])
        assert np.array_equal(candidates > threshold, p_values(TIED, candidates) <= a), a


def test_too_few_images_are_refused_in_one_line_saying_how_many_are_needed():
    check_enough(19, 0.05)
    with pytest.raises(InvalidInputError) as refused:
        check_enough(18, 0.05, " in 'parts/good'")
    message = str(refused.value)
    assert message == (
        "false_alarm_rate=0.05 needs at least 19 normal calibration images, and there are 18 in 'parts/good': add "
        "normal images, or ask for a larger false_alarm_rate (with 18: 0.0527 or more)."
    )
    assert "\n" not in message
    with pytest.raises(InvalidInputError, match=r"needs at least 99 normal calibration images, and there are 0"):
        conformal_threshold([], 0.01)
    with pytest.raises(InvalidInputError, match=r"at least 9 .* there are 8"):
        conformal_threshold(np.arange(8), 0.1)


@pytest.mark.parametrize(("n", "a"), [(19, 0.05), (20, 0.05), (50, 0.1), (99, 0.01)])
def test_the_mean_realised_false_alarm_rate_over_many_draws_is_within_the_theorys_bounds(n, a):
    """The chance of a false alarm is 1 - k / (n + 1), in [a - 1/(n + 1), a]; 4,000 draws of n calibration images
    from 1,000 normal scores estimate it. Tolerance: 0.005, more than four standard errors of the mean (each draw's
    rate has a standard deviation of at most about 0.05 here)."""
    scores = np.random.default_rng(7).normal(size=1000)
    rates = realised_false_alarm_rates(scores, n, a, draws=4000, seed=n)
    expected = expected_false_alarm_rate(n, a)
    assert a - 1 / (n + 1) <= expected <= a
    assert a - 1 / (n + 1) - 0.005 <= rates.mean() <= a + 0.005
    assert abs(rates.mean() - expected) <= 0.005
    assert rates.std() / np.sqrt(len(rates)) < 0.005 / 4


def test_the_spread_of_one_draw_follows_the_beta_binomial_law():
    """One held-out image: flagged with chance 1 - k / (n + 1); many: the draws' percentiles match the law's."""
    assert realised_rate_quantiles(19, 0.05, 1, [0.94, 0.96]) == [0.0, 1.0]  # P(flagged) = 1/20: the 95% point
    scores = np.random.default_rng(3).normal(size=700)
    for n, a in ((20, 0.1), (50, 0.05)):
        rates = realised_false_alarm_rates(scores, n, a, draws=4000, seed=1)
        low, high = realised_rate_quantiles(n, a, 700 - n)
        assert np.quantile(rates, 0.05) == pytest.approx(low, abs=0.01)
        assert np.quantile(rates, 0.95) == pytest.approx(high, abs=0.01)
        assert low < expected_false_alarm_rate(n, a) < high


def test_the_listed_calibration_reads_back_as_written(tmp_path):
    """What an export lists beside its model (write_calibrations) is what the predict command reads back."""
    from anomalib_faprompt.models.calibration import Calibration, read_calibrations, write_calibrations

    assert read_calibrations(tmp_path) == []
    written = Calibration("calibration_source", ("a.png", "b.png", "c.png", "d.png"), (0.25, 0.1 + 0.2, 0.5, 0.125),
                          (0.5, 0.75, 0.875, 0.3), 0.2)  # fmt: skip
    write_calibrations(tmp_path, [written])
    (read,) = read_calibrations(tmp_path)
    assert read == written
    assert read.image_threshold == 0.5  # n = 4, a = 0.2: k = 4
    np.testing.assert_array_equal(read.p_values([0.3, 0.6]), [3 / 5, 1 / 5])
