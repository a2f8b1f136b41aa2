"""The t-based confidence interval of a mean over CV units."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from scipy import stats

from covidlens.errors import CovidlensError
from covidlens.evaluate.stats import MeanCI, mean_ci


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n", [2, 5, 25, 125])
@pytest.mark.parametrize("confidence", [0.90, 0.95, 0.99])
def test_mean_ci_matches_scipy_t_interval(seed: int, n: int, confidence: float) -> None:
    values = np.random.default_rng(seed).normal(0.9, 0.03, n)
    ci = mean_ci(values, confidence)
    low, high = stats.t.interval(confidence, n - 1, loc=values.mean(), scale=stats.sem(values))
    assert ci.n == n
    assert ci.mean == pytest.approx(values.mean())
    assert ci.low == pytest.approx(low)
    assert ci.high == pytest.approx(high)
    assert ci.half_width == pytest.approx((high - low) / 2)


def test_mean_ci_by_hand() -> None:
    # Four fold accuracies: mean 0.85, s = sqrt(0.05 / 3), t_{0.975, 3} = 3.182446305284263.
    ci = mean_ci([0.9, 0.8, 1.0, 0.7])
    half_width = 3.182446305284263 * math.sqrt(0.05 / 3) / 2
    assert ci.mean == pytest.approx(0.85)
    assert ci.half_width == pytest.approx(half_width)
    assert ci.half_width == pytest.approx(0.2054260, abs=1e-7)
    assert (ci.low, ci.high) == (pytest.approx(0.85 - half_width), pytest.approx(0.85 + half_width))


def test_mean_ci_uses_the_sample_sd_not_the_population_sd() -> None:
    ci = mean_ci([1.0, 3.0])
    # s = sqrt(2) (ddof=1), t_{0.975, 1} = 12.706204736174698, sqrt(n) = sqrt(2) -> 12.7062...
    assert ci.half_width == pytest.approx(12.706204736174698)


def test_mean_ci_of_one_value_has_no_interval() -> None:
    ci = mean_ci([0.93])
    assert ci.mean == 0.93
    assert ci.n == 1
    assert math.isnan(ci.half_width) and math.isnan(ci.low) and math.isnan(ci.high)


def test_mean_ci_drops_nans() -> None:
    with_nans = mean_ci([0.9, float("nan"), 0.8, 1.0, float("nan"), 0.7])
    assert with_nans == mean_ci([0.9, 0.8, 1.0, 0.7])
    assert with_nans.n == 4


def test_mean_ci_of_nothing_is_nan() -> None:
    for values in ([], [float("nan")]):
        ci = mean_ci(values)
        assert ci.n == 0
        assert math.isnan(ci.mean) and math.isnan(ci.half_width)


def test_mean_ci_of_identical_values_has_zero_width() -> None:
    ci = mean_ci([0.5] * 5)
    assert (ci.mean, ci.half_width, ci.low, ci.high) == (0.5, 0.0, 0.5, 0.5)


def test_mean_ci_wider_at_higher_confidence() -> None:
    values = [0.91, 0.95, 0.93, 0.97, 0.92]
    assert (
        mean_ci(values, 0.99).half_width > mean_ci(values, 0.95).half_width > mean_ci(values, 0.8).half_width
    )


@pytest.mark.parametrize("confidence", [0.0, 1.0, 95, -0.5])
def test_mean_ci_rejects_a_confidence_outside_0_1(confidence: float) -> None:
    with pytest.raises(CovidlensError, match="confidence"):
        mean_ci([0.1, 0.2], confidence)


def test_mean_ci_is_frozen_and_serialises_to_plain_values() -> None:
    ci = mean_ci([0.9, 0.8], 0.9)
    assert isinstance(ci, MeanCI)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ci.mean = 0.0  # type: ignore[misc]
    as_dict = ci.as_dict()
    assert as_dict["confidence"] == 0.9 and as_dict["n"] == 2
    assert set(as_dict) == {"mean", "half_width", "low", "high", "n", "confidence"}
    assert all(isinstance(v, (float, int)) for v in as_dict.values())
