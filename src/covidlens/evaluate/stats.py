"""Statistics of evaluations (SPEC E2, E3): confidence intervals and significance tests.

- `mean_ci`: the t-based interval of a mean over repeated evaluations (CV folds or rounds, paper 000).
- `bootstrap_ci` / `bootstrap_metrics`: nonparametric, unstratified percentile bootstrap intervals over
  the rows of one test set (paper 002: 95% CIs from 1000 resamples).
- `fisher_exact_test` / `significance_stars`: two-sided Fisher's exact test of two proportions with the
  papers' stars (* p<0.05, ** p<0.01, *** p<0.001).
- `mcnemar_test`: two models' paired predictions on the same samples.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy.stats import binom, chi2, hypergeom
from scipy.stats import t as student_t

from covidlens.errors import CovidlensError
from covidlens.evaluate.metrics import (
    binary_metrics,
    confusion_matrix,
    macro_auroc,
    one_vs_rest_counts,
    predicted_indices,
    prediction_arrays,
)


@dataclass(frozen=True)
class MeanCI:
    """A mean with the symmetric confidence interval mean ± half_width = [low, high] over n values."""

    mean: float
    half_width: float
    low: float
    high: float
    n: int
    confidence: float = 0.95

    def as_dict(self) -> dict[str, float | int]:
        """Plain JSON-ready dict of the fields."""
        return asdict(self)


def mean_ci(values: Iterable[float], confidence: float = 0.95) -> MeanCI:
    """Mean ± t_{(1+c)/2, n-1} · s/√n with s the sample SD (ddof=1); NaNs are dropped.

    With one value the interval is undefined: half_width, low and high are nan.
    With no values (or only NaNs) the mean is nan too.
    """
    check_confidence(confidence)
    data = np.asarray(list(values), dtype=float).ravel()
    data = data[~np.isnan(data)]
    n = int(data.size)
    nan = float("nan")
    if n == 0:
        return MeanCI(nan, nan, nan, nan, 0, confidence)
    mean = float(data.mean())
    if n == 1:
        return MeanCI(mean, nan, nan, nan, 1, confidence)
    sd = float(data.std(ddof=1))
    half_width = float(student_t.ppf((1.0 + confidence) / 2.0, n - 1)) * sd / math.sqrt(n)
    return MeanCI(mean, half_width, mean - half_width, mean + half_width, n, confidence)


def check_confidence(confidence: float) -> None:
    """Raise CovidlensError unless 0 < confidence < 1."""
    if not 0.0 < float(confidence) < 1.0:
        raise CovidlensError(f"confidence must be between 0 and 1 (e.g. 0.95), got {confidence}")


# Metrics of paper 002 (Tables 4-7) that bootstrap_metrics reports: 3-way accuracy and macro-AUROC of the
# whole prediction set, then accuracy, precision, recall and F1 of the positive class against the rest.
BOOTSTRAP_METRICS: tuple[str, ...] = ("accuracy", "macro_auroc", "positive_accuracy", "precision", "recall", "f1")
# Relative tolerance under which two tables count as equally likely in Fisher's test (scipy uses the same),
# so that floating-point noise does not decide whether a tied table enters the p-value.
_FISHER_RTOL = 1e-7


@dataclass(frozen=True)
class BootstrapCI:
    """A statistic on the full data (estimate) with its percentile bootstrap interval [low, high].

    n is the number of rows resampled; n_resamples the resamples drawn, of which n_dropped gave a nan
    statistic (e.g. a class missing from the resample) and were left out of the interval and
    bootstrap_mean (the mean of the kept resamples' statistics).
    """

    estimate: float
    low: float
    high: float
    n: int
    n_resamples: int
    n_dropped: int
    bootstrap_mean: float
    confidence: float = 0.95

    def as_dict(self) -> dict[str, float | int]:
        """Plain JSON-ready dict of the fields."""
        return asdict(self)


def bootstrap_ci(
    statistic: Callable[..., float],
    *arrays: np.ndarray,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int | np.random.Generator = 0,
) -> BootstrapCI:
    """Percentile bootstrap CI of statistic(*arrays), resampling rows with the same indices for every array."""
    check_confidence(confidence)
    n_resamples = _check_n_resamples(n_resamples)
    arrays_, n = _checked_arrays(arrays)
    estimate = _scalar(statistic(*arrays_))
    values = _bootstrap_values(lambda *a: _scalar(statistic(*a)), arrays_, n, n_resamples, seed, width=1)
    return _bootstrap_result(estimate, values[:, 0], n, confidence)


def bootstrap_metrics(
    predictions: pd.DataFrame,
    classes: Sequence[str],
    positive: str,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    undefined: float = 0.0,
) -> dict:
    """Paper 002's metrics of a Predictions table with percentile bootstrap CIs (same resamples for all).

    Metrics (BOOTSTRAP_METRICS): 3-way accuracy, macro-AUROC, and the positive class against the rest:
    accuracy, precision, recall, F1. Point estimates equal metrics_from_predictions'; `undefined` is what a
    zero-denominator precision/recall/F1 counts as (0.0 as there; nan drops such resamples instead).
    """
    check_confidence(confidence)
    n_resamples = _check_n_resamples(n_resamples)
    y_true, probs = prediction_arrays(predictions, classes)
    classes = [str(c) for c in classes]
    if str(positive) not in classes:
        raise CovidlensError(f"positive class {positive!r} is not one of the classes: {', '.join(classes)}")
    if y_true.size == 0:
        raise CovidlensError("predictions: no rows to evaluate")
    index = classes.index(str(positive))
    n_classes = len(classes)

    def statistic(truth: np.ndarray, predicted: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
        cm = confusion_matrix(truth, predicted, n_classes)
        binary = binary_metrics(**one_vs_rest_counts(cm, index), undefined=undefined)
        return np.array(
            [
                np.trace(cm) / cm.sum(),
                macro_auroc(truth, probabilities, n_classes),
                binary["accuracy"],
                binary["precision"],
                binary["sensitivity"],
                binary["f1"],
            ],
            dtype=float,
        )

    arrays = (y_true, predicted_indices(probs), probs)
    n = int(y_true.size)
    estimates = statistic(*arrays)
    values = _bootstrap_values(statistic, arrays, n, n_resamples, seed, width=len(BOOTSTRAP_METRICS))
    metrics = {
        name: _bootstrap_result(float(estimates[j]), values[:, j], n, confidence).as_dict()
        for j, name in enumerate(BOOTSTRAP_METRICS)
    }
    return {
        "n": n,
        "classes": classes,
        "positive": str(positive),
        "method": "percentile bootstrap (nonparametric, unstratified)",
        "n_resamples": n_resamples,
        "confidence": float(confidence),
        "seed": int(seed),
        "metrics": metrics,
    }


def fisher_exact_test(correct_a: int, total_a: int, correct_b: int, total_b: int) -> float:
    """Two-sided Fisher's exact p-value of the table [[correct_a, wrong_a], [correct_b, wrong_b]]."""
    a = _count(correct_a, "correct_a")
    n_a = _count(total_a, "total_a")
    c = _count(correct_b, "correct_b")
    n_b = _count(total_b, "total_b")
    if a > n_a or c > n_b:
        raise CovidlensError(
            f"fisher_exact_test: correct exceeds total ({a} of {n_a}, {c} of {n_b}); need correct <= total"
        )
    # With all margins fixed, correct_a follows a hypergeometric law: population n_a + n_b, a + c "correct"
    # items, n_a draws. The p-value sums the probabilities of all tables no more likely than the observed one.
    population, successes = n_a + n_b, a + c
    support = np.arange(max(0, n_a - (population - successes)), min(successes, n_a) + 1)
    if support.size <= 1:
        return 1.0
    log_pmf = hypergeom.logpmf(support, population, successes, n_a)
    observed = hypergeom.logpmf(a, population, successes, n_a)
    p_value = np.exp(log_pmf[log_pmf <= observed + math.log1p(_FISHER_RTOL)]).sum()
    return float(min(1.0, p_value))


def significance_stars(p_value: float | None) -> str:
    """'***' for p<0.001, '**' for p<0.01, '*' for p<0.05, else '' (also for a missing or nan p)."""
    if p_value is None or math.isnan(float(p_value)):
        return ""
    p = float(p_value)
    if p < 0.001:
        return "***"
    if p < 0.01:
        return "**"
    if p < 0.05:
        return "*"
    return ""


def mcnemar_test(correct_a: np.ndarray, correct_b: np.ndarray, exact: bool = True) -> tuple[float, float]:
    """McNemar's test of two models on the same samples: (statistic, two-sided p) from the discordant pairs.

    b counts samples only model A gets right, c those only model B gets right. exact=True: statistic
    min(b, c) and the exact binomial p of min(b, c) under Binomial(b + c, 1/2); exact=False: the
    continuity-corrected chi-square (|b - c| - 1)^2 / (b + c) with 1 degree of freedom. With no
    discordant pairs the models cannot be told apart: (0.0, 1.0).
    """
    a = _bool_vector(correct_a, "correct_a")
    b_ = _bool_vector(correct_b, "correct_b")
    if a.size != b_.size:
        raise CovidlensError(f"mcnemar_test: correct_a has {a.size} samples but correct_b has {b_.size}")
    if a.size == 0:
        raise CovidlensError("mcnemar_test: no samples to compare")
    b = int(np.sum(a & ~b_))
    c = int(np.sum(~a & b_))
    discordant = b + c
    if discordant == 0:
        return 0.0, 1.0
    if exact:
        k = min(b, c)
        return float(k), float(min(1.0, 2.0 * binom.cdf(k, discordant, 0.5)))
    statistic = (abs(b - c) - 1) ** 2 / discordant
    return float(statistic), float(chi2.sf(statistic, 1))


def _bootstrap_values(
    statistic: Callable[..., object],
    arrays: Sequence[np.ndarray],
    n: int,
    n_resamples: int,
    seed: int | np.random.Generator,
    width: int,
) -> np.ndarray:
    """Statistic of each resample as rows of an (n_resamples, width) array, in draw order."""
    rng = np.random.default_rng(seed)
    values = np.empty((n_resamples, width), dtype=float)
    for b in range(n_resamples):
        # One draw of n indices per resample: the same stream as one (n_resamples, n) draw (which
        # scipy.stats.bootstrap makes), without holding all indices in memory at once.
        rows = rng.integers(0, n, size=n)
        values[b] = np.asarray(statistic(*(array[rows] for array in arrays)), dtype=float).reshape(width)
    return values


def _bootstrap_result(estimate: float, values: np.ndarray, n: int, confidence: float) -> BootstrapCI:
    kept = values[~np.isnan(values)]
    dropped = int(values.size - kept.size)
    nan = float("nan")
    if kept.size == 0:
        return BootstrapCI(float(estimate), nan, nan, n, int(values.size), dropped, nan, float(confidence))
    alpha = (1.0 - confidence) / 2.0
    # Linear interpolation between order statistics, as numpy's and scipy.stats.bootstrap's default.
    low, high = np.quantile(kept, [alpha, 1.0 - alpha])
    return BootstrapCI(
        float(estimate), float(low), float(high), n, int(values.size), dropped, float(kept.mean()), float(confidence)
    )


def _checked_arrays(arrays: Sequence[object]) -> tuple[list[np.ndarray], int]:
    if not arrays:
        raise CovidlensError("bootstrap_ci needs at least one array to resample")
    checked = [np.asarray(a) for a in arrays]
    if any(a.ndim == 0 for a in checked):
        raise CovidlensError("bootstrap_ci: every input must be an array with one row per sample, not a scalar")
    lengths = [len(a) for a in checked]
    if len(set(lengths)) > 1:
        raise CovidlensError(
            f"bootstrap_ci: arrays differ in length ({', '.join(map(str, lengths))}); each needs one row per sample"
        )
    if lengths[0] == 0:
        raise CovidlensError("bootstrap_ci: the arrays are empty; need at least one sample")
    return checked, lengths[0]


def _check_n_resamples(n_resamples: int) -> int:
    if isinstance(n_resamples, bool) or int(n_resamples) != n_resamples or n_resamples < 1:
        raise CovidlensError(f"n_resamples must be a positive integer (e.g. 1000), got {n_resamples}")
    return int(n_resamples)


def _scalar(value: object) -> float:
    array = np.asarray(value, dtype=float)
    if array.size != 1:
        raise CovidlensError(f"bootstrap_ci: the statistic must return one number, got shape {array.shape}")
    return float(array.reshape(()))


def _count(value: int, name: str) -> int:
    if isinstance(value, bool) or not float(value).is_integer() or value < 0:
        raise CovidlensError(f"fisher_exact_test: {name} must be a non-negative whole number, got {value}")
    return int(value)


def _bool_vector(values: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values).ravel()
    if array.dtype == bool:
        return array
    if array.size and not np.isin(array, (0, 1)).all():
        raise CovidlensError(
            f"mcnemar_test: {name} must hold booleans (or 0/1) saying whether each prediction is right"
        )
    return array.astype(bool)
