"""Statistics over repeated evaluations (SPEC E2): the t-based confidence interval of a mean.

Bootstrap intervals and the Fisher / McNemar tests between models (SPEC E2, E3) belong here too;
they are added by a later issue.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import t as student_t

from covidlens.errors import CovidlensError


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
