"""Statistics: the t-based CI of a mean, bootstrap CIs, Fisher's exact and McNemar's tests, stars."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn import metrics as skm

from covidlens.errors import CovidlensError
from covidlens.evaluate.metrics import binary_auroc, macro_auroc, metrics_from_predictions, prediction_arrays
from covidlens.evaluate.stats import (
    BOOTSTRAP_METRICS,
    MeanCI,
    bootstrap_ci,
    bootstrap_metrics,
    fisher_exact_test,
    mcnemar_test,
    mean_ci,
    significance_stars,
)


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
    assert mean_ci(values, 0.99).half_width > mean_ci(values, 0.95).half_width > mean_ci(values, 0.8).half_width


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


# ---- bootstrap intervals, Fisher's exact test, stars, McNemar (paper 002) ----

CLASSES = ["NCP", "CP", "Normal"]


def labelled(n: int, seed: int, hit_rate: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """Three-class true labels and predictions that are right about hit_rate of the time."""
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 3, n)
    y_pred = np.where(rng.random(n) < hit_rate, y_true, rng.integers(0, 3, n))
    return y_true, y_pred


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean(y_true == y_pred))


def predictions_table(n: int, seed: int, classes: list[str] = CLASSES) -> pd.DataFrame:
    """A Predictions table (y_true, p_<class>) with loosely informative probabilities."""
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, len(classes), n)
    logits = rng.normal(size=(n, len(classes)))
    logits[np.arange(n), y_true] += 1.5
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    frame = pd.DataFrame(probs, columns=[f"p_{c}" for c in classes])
    frame.insert(0, "y_true", [classes[i] for i in y_true])
    return frame


def test_bootstrap_ci_equals_scipy_on_the_same_resamples() -> None:
    y_true, y_pred = labelled(300, seed=1)
    ours = bootstrap_ci(accuracy, y_true, y_pred, n_resamples=1000, seed=7)
    theirs = stats.bootstrap(
        (y_true, y_pred),
        accuracy,
        paired=True,
        vectorized=False,
        method="percentile",
        n_resamples=1000,
        rng=np.random.default_rng(7),
    )
    assert ours.low == pytest.approx(theirs.confidence_interval.low, abs=1e-12)
    assert ours.high == pytest.approx(theirs.confidence_interval.high, abs=1e-12)
    assert ours.bootstrap_mean == pytest.approx(theirs.bootstrap_distribution.mean(), abs=1e-12)


@pytest.mark.parametrize("confidence", [0.90, 0.95])
def test_bootstrap_ci_agrees_with_scipy_within_0_005_with_other_seeds(confidence: float) -> None:
    y_true, y_pred = labelled(2000, seed=2)
    ours = bootstrap_ci(accuracy, y_true, y_pred, n_resamples=1000, confidence=confidence, seed=0)
    theirs = stats.bootstrap(
        (y_true, y_pred),
        accuracy,
        paired=True,
        vectorized=False,
        method="percentile",
        n_resamples=1000,
        confidence_level=confidence,
        rng=np.random.default_rng(12345),
    ).confidence_interval
    assert ours.estimate == accuracy(y_true, y_pred)
    assert abs(ours.low - theirs.low) < 0.005
    assert abs(ours.high - theirs.high) < 0.005
    assert ours.low < ours.estimate < ours.high
    assert (ours.n, ours.n_resamples, ours.n_dropped, ours.confidence) == (2000, 1000, 0, confidence)


def test_bootstrap_ci_reproduces_a_hand_loop_with_the_same_generator() -> None:
    y_true, y_pred = labelled(150, seed=3)
    rng = np.random.default_rng(42)
    values = []
    for _ in range(500):
        rows = rng.integers(0, 150, size=150)
        values.append(accuracy(y_true[rows], y_pred[rows]))
    low, high = np.percentile(values, [2.5, 97.5])
    ci = bootstrap_ci(accuracy, y_true, y_pred, n_resamples=500, seed=42)
    assert [ci.low, ci.high] == pytest.approx([low, high], abs=1e-12)
    assert ci.bootstrap_mean == pytest.approx(np.mean(values))
    # A Generator may be passed instead of a seed.
    assert bootstrap_ci(accuracy, y_true, y_pred, n_resamples=500, seed=np.random.default_rng(42)) == ci


def test_bootstrap_ci_resamples_rows_jointly() -> None:
    # y_pred == y_true row by row: any joint resample keeps accuracy 1, an independent one would not.
    y_true = np.arange(50) % 3
    ci = bootstrap_ci(accuracy, y_true, y_true.copy(), n_resamples=200)
    assert (ci.estimate, ci.low, ci.high) == (1.0, 1.0, 1.0)


def test_bootstrap_ci_is_deterministic_by_seed() -> None:
    y_true, y_pred = labelled(200, seed=4)
    first = bootstrap_ci(accuracy, y_true, y_pred, n_resamples=300, seed=5)
    assert bootstrap_ci(accuracy, y_true, y_pred, n_resamples=300, seed=5) == first
    other = bootstrap_ci(accuracy, y_true, y_pred, n_resamples=300, seed=6)
    assert other.estimate == first.estimate
    assert (other.low, other.high, other.bootstrap_mean) != (first.low, first.high, first.bootstrap_mean)


def test_bootstrap_ci_drops_and_counts_nan_resamples() -> None:
    # Two positives among 12 rows: about (10/12)^12 = 11% of resamples hold no positive, so AUROC is nan there.
    positive = np.zeros(12, dtype=bool)
    positive[[3, 8]] = True
    scores = np.linspace(0.0, 1.0, 12)

    def auroc(mask: np.ndarray, s: np.ndarray) -> float:
        return binary_auroc(mask, s)

    rng = np.random.default_rng(0)
    values = np.array([auroc(positive[r], scores[r]) for r in (rng.integers(0, 12, 12) for _ in range(400))])
    kept = values[~np.isnan(values)]
    ci = bootstrap_ci(auroc, positive, scores, n_resamples=400, seed=0)
    assert 0 < ci.n_dropped == int(np.isnan(values).sum()) < 400
    assert [ci.low, ci.high] == pytest.approx(np.percentile(kept, [2.5, 97.5]), abs=1e-12)
    assert ci.bootstrap_mean == pytest.approx(kept.mean())
    assert not math.isnan(ci.low) and not math.isnan(ci.high)


def test_bootstrap_ci_with_every_resample_nan_has_no_interval() -> None:
    ci = bootstrap_ci(lambda x: float("nan"), np.arange(5), n_resamples=20)
    assert ci.n_dropped == 20
    assert math.isnan(ci.low) and math.isnan(ci.high) and math.isnan(ci.bootstrap_mean)


def test_bootstrap_ci_of_macro_auroc_uses_probability_rows() -> None:
    frame = predictions_table(240, seed=0)
    y_true, probs = prediction_arrays(frame, CLASSES)
    ci = bootstrap_ci(lambda t, p: macro_auroc(t, p, 3), y_true, probs, n_resamples=200)
    expected = skm.roc_auc_score(y_true, probs, multi_class="ovr", average="macro")
    assert ci.estimate == pytest.approx(expected)
    assert ci.low < expected < ci.high


@pytest.mark.parametrize(
    ("arrays", "kwargs", "message"),
    [
        ((np.arange(5), np.arange(4)), {}, "differ in length"),
        ((np.array([]), np.array([])), {}, "empty"),
        ((), {}, "at least one array"),
        ((np.float64(3.0),), {}, "scalar"),
        ((np.arange(5),), {"n_resamples": 0}, "n_resamples"),
        ((np.arange(5),), {"n_resamples": 2.5}, "n_resamples"),
        ((np.arange(5),), {"confidence": 95}, "confidence"),
    ],
)
def test_bootstrap_ci_rejects_bad_input(arrays: tuple, kwargs: dict, message: str) -> None:
    with pytest.raises(CovidlensError, match=message) as info:
        bootstrap_ci(lambda *a: 0.0, *arrays, **kwargs)
    assert "\n" not in str(info.value)


def test_bootstrap_ci_rejects_a_statistic_of_several_numbers() -> None:
    with pytest.raises(CovidlensError, match="one number"):
        bootstrap_ci(lambda x: x[:2], np.arange(5), n_resamples=3)


def test_bootstrap_metrics_point_estimates_equal_metrics_from_predictions() -> None:
    frame = predictions_table(300, seed=5)
    result = bootstrap_metrics(frame, CLASSES, "NCP", n_resamples=200, seed=3)
    plain = metrics_from_predictions(frame, CLASSES)
    ncp = plain["per_class"]["NCP"]
    metrics = result["metrics"]
    assert tuple(metrics) == BOOTSTRAP_METRICS
    assert metrics["accuracy"]["estimate"] == pytest.approx(plain["accuracy"])
    assert metrics["macro_auroc"]["estimate"] == pytest.approx(plain["macro_auroc"])
    assert metrics["positive_accuracy"]["estimate"] == pytest.approx(ncp["accuracy"])
    assert metrics["precision"]["estimate"] == pytest.approx(ncp["precision"])
    assert metrics["recall"]["estimate"] == pytest.approx(ncp["sensitivity"])
    assert metrics["f1"]["estimate"] == pytest.approx(ncp["f1"])
    # Cross-checks against scikit-learn with COVID (NCP) as the positive class.
    y_true = (frame["y_true"] == "NCP").to_numpy()
    y_pred = frame[["p_NCP", "p_CP", "p_Normal"]].to_numpy().argmax(axis=1) == 0
    assert metrics["precision"]["estimate"] == pytest.approx(skm.precision_score(y_true, y_pred))
    assert metrics["recall"]["estimate"] == pytest.approx(skm.recall_score(y_true, y_pred))
    assert metrics["f1"]["estimate"] == pytest.approx(skm.f1_score(y_true, y_pred))
    for ci in metrics.values():
        assert ci["n_resamples"] == 200 and ci["n_dropped"] == 0 and ci["n"] == 300
        assert ci["low"] <= ci["bootstrap_mean"] <= ci["high"]
        assert ci["low"] < ci["high"]
    assert (result["n"], result["positive"], result["n_resamples"], result["seed"]) == (300, "NCP", 200, 3)
    json.loads(json.dumps(result))
    assert all(type(v) in (float, int) for ci in metrics.values() for v in ci.values())


def test_bootstrap_metrics_accuracy_uses_the_same_resamples_as_bootstrap_ci() -> None:
    frame = predictions_table(150, seed=6)
    y_true, probs = prediction_arrays(frame, CLASSES)
    result = bootstrap_metrics(frame, CLASSES, "CP", n_resamples=300, seed=9, confidence=0.9)
    alone = bootstrap_ci(accuracy, y_true, probs.argmax(axis=1), n_resamples=300, seed=9, confidence=0.9)
    assert result["metrics"]["accuracy"] == alone.as_dict()
    assert bootstrap_metrics(frame, CLASSES, "CP", n_resamples=300, seed=9, confidence=0.9) == result


def test_bootstrap_metrics_rejects_bad_input() -> None:
    frame = predictions_table(30, seed=0)
    with pytest.raises(CovidlensError, match="positive class 'COVID'"):
        bootstrap_metrics(frame, CLASSES, "COVID", n_resamples=10)
    with pytest.raises(CovidlensError, match="no rows"):
        bootstrap_metrics(frame.iloc[:0], CLASSES, "NCP", n_resamples=10)
    with pytest.raises(CovidlensError, match="p_Normal"):
        bootstrap_metrics(frame.drop(columns="p_Normal"), CLASSES, "NCP", n_resamples=10)


@pytest.mark.parametrize(
    "table",
    [
        (8, 10, 2, 10),
        (0, 5, 5, 5),
        (3, 3, 3, 3),
        (1, 1, 0, 9),
        (990, 1000, 970, 1000),
        (2663, 2683, 2631, 2683),  # close to Table 7: 0.9924 vs 0.9885 on ~2683 volumes
        (26634, 26836, 26300, 26836),
        (12, 40, 30, 31),
        (0, 0, 3, 7),
        (5, 20, 0, 0),
    ],
)
def test_fisher_exact_test_equals_scipy(table: tuple[int, int, int, int]) -> None:
    correct_a, total_a, correct_b, total_b = table
    expected = stats.fisher_exact([[correct_a, total_a - correct_a], [correct_b, total_b - correct_b]]).pvalue
    assert fisher_exact_test(*table) == pytest.approx(expected, rel=1e-9, abs=1e-300)
    # Swapping the groups does not change a two-sided p.
    assert fisher_exact_test(correct_b, total_b, correct_a, total_a) == pytest.approx(expected, rel=1e-9, abs=1e-300)


def test_fisher_exact_test_by_hand() -> None:
    # [[3, 0], [0, 3]]: the two extreme tables each have probability 1/20, so p = 0.1.
    assert fisher_exact_test(3, 3, 0, 3) == pytest.approx(0.1)
    assert fisher_exact_test(5, 10, 5, 10) == 1.0


@pytest.mark.parametrize(
    ("table", "message"),
    [((11, 10, 2, 10), "correct exceeds total"), ((-1, 10, 2, 10), "correct_a"), ((1, 10, 2.5, 10), "correct_b")],
)
def test_fisher_exact_test_rejects_bad_counts(table: tuple, message: str) -> None:
    with pytest.raises(CovidlensError, match=message):
        fisher_exact_test(*table)


@pytest.mark.parametrize(
    ("p", "stars"),
    [
        (0.0, "***"),
        (0.000999, "***"),
        (0.001, "**"),
        (0.00999, "**"),
        (0.01, "*"),
        (0.0499, "*"),
        (0.05, ""),
        (0.5, ""),
        (1.0, ""),
        (float("nan"), ""),
        (None, ""),
    ],
)
def test_significance_stars_thresholds(p: float | None, stars: str) -> None:
    assert significance_stars(p) == stars


def paired_correct(seed: int, n: int, rate_a: float, rate_b: float) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random(n) < rate_a, rng.random(n) < rate_b


@pytest.mark.parametrize(("seed", "n", "rate_a", "rate_b"), [(0, 40, 0.8, 0.6), (1, 200, 0.9, 0.85), (2, 15, 0.5, 0.5)])
def test_mcnemar_matches_scipy(seed: int, n: int, rate_a: float, rate_b: float) -> None:
    a, b = paired_correct(seed, n, rate_a, rate_b)
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    assert only_a + only_b > 0
    statistic, p_value = mcnemar_test(a, b)
    assert statistic == min(only_a, only_b)
    assert p_value == pytest.approx(stats.binomtest(min(only_a, only_b), only_a + only_b, 0.5).pvalue, rel=1e-9)
    chi_square, chi_p = mcnemar_test(a, b, exact=False)
    expected = (abs(only_a - only_b) - 1) ** 2 / (only_a + only_b)
    assert chi_square == pytest.approx(expected)
    assert chi_p == pytest.approx(stats.chi2.sf(expected, 1))
    # The test is symmetric in the two models.
    assert mcnemar_test(b, a) == (statistic, p_value)


def test_mcnemar_by_hand_and_degenerate_cases() -> None:
    # b = 6 samples only A gets right, c = 0: exact p = 2 * 0.5**6 = 0.03125.
    a = np.array([1] * 6 + [1, 0] * 5, dtype=int)
    b = np.array([0] * 6 + [1, 0] * 5, dtype=int)
    assert mcnemar_test(a, b) == (0.0, pytest.approx(0.03125))
    assert mcnemar_test(a, b, exact=False)[0] == pytest.approx(25 / 6)
    same = np.array([True, False, True])
    assert mcnemar_test(same, same) == (0.0, 1.0)
    assert mcnemar_test(same, same, exact=False) == (0.0, 1.0)


@pytest.mark.parametrize(
    ("a", "b", "message"),
    [
        ([True, False], [True], "2 samples but correct_b has 1"),
        ([], [], "no samples"),
        ([0, 2], [1, 1], "booleans"),
    ],
)
def test_mcnemar_rejects_bad_input(a: list, b: list, message: str) -> None:
    with pytest.raises(CovidlensError, match=message):
        mcnemar_test(np.array(a), np.array(b))
