"""Groups of runs against the first one, as paper 002 Tables 5-7 show them (SPEC E3, E5).

Each group (a depth, a batch size, a model) has one Predictions table on the same kind of test set.
`compare_groups` tests each later group's proportion (3-way accuracy by default) against the first
group's with a two-sided Fisher's exact test and gives the papers' stars; `format_bootstrap_ci`
writes a bootstrap interval as the tables do: "0.9885* (0.9860, 0.9910)".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from covidlens.errors import CovidlensError
from covidlens.evaluate.metrics import (
    confusion_matrix,
    one_vs_rest_counts,
    predicted_indices,
    prediction_arrays,
)
from covidlens.evaluate.stats import fisher_exact_test, significance_stars

# Metrics that are a proportion "correct of total", so that Fisher's exact test applies.
# F1 is not such a proportion, so it has no Fisher test here.
COMPARABLE_METRICS: tuple[str, ...] = ("accuracy", "positive_accuracy", "precision", "recall")
_NEED_POSITIVE = frozenset({"positive_accuracy", "precision", "recall"})


def proportion_counts(
    predictions: pd.DataFrame, classes: Sequence[str], metric: str = "accuracy", positive: str | None = None
) -> tuple[int, int]:
    """(correct, total) behind a proportion metric of a Predictions table; see COMPARABLE_METRICS."""
    if metric not in COMPARABLE_METRICS:
        raise CovidlensError(f"no Fisher test for metric {metric!r}; use one of: {', '.join(COMPARABLE_METRICS)}")
    y_true, probs = prediction_arrays(predictions, classes)
    if y_true.size == 0:
        raise CovidlensError("predictions: no rows to compare")
    classes = [str(c) for c in classes]
    cm = confusion_matrix(y_true, predicted_indices(probs), len(classes))
    if metric == "accuracy":
        return int(np.trace(cm)), int(cm.sum())
    if positive is None or str(positive) not in classes:
        raise CovidlensError(
            f"metric {metric!r} needs a positive class, one of: {', '.join(classes)} (got {positive!r})"
        )
    counts = one_vs_rest_counts(cm, classes.index(str(positive)))
    tp, fn, tn, fp = counts["tp"], counts["fn"], counts["tn"], counts["fp"]
    if metric == "positive_accuracy":
        return tp + tn, tp + fn + tn + fp
    if metric == "precision":
        return tp, tp + fp
    return tp, tp + fn


def compare_groups(
    predictions_by_group: Mapping[str, pd.DataFrame],
    classes: Sequence[str],
    metrics: Sequence[str] = ("accuracy",),
    positive: str | None = None,
) -> list[dict]:
    """Fisher's exact test of every group after the first against the first, one row per group and metric.

    Rows (JSON-ready): group, reference, metric, correct, total, value, reference_correct,
    reference_total, reference_value, p_value, stars. A value with total 0 (e.g. precision of a
    model that never predicts the positive class) is nan and its test has p = 1.
    """
    if not predictions_by_group:
        raise CovidlensError("compare_groups: no groups to compare")
    if isinstance(metrics, str):
        metrics = (metrics,)
    unknown = [m for m in metrics if m not in COMPARABLE_METRICS]
    if unknown:
        raise CovidlensError(
            f"no Fisher test for metric(s) {', '.join(map(repr, unknown))}; use: {', '.join(COMPARABLE_METRICS)}"
        )
    if positive is None and any(m in _NEED_POSITIVE for m in metrics):
        raise CovidlensError(f"metrics {', '.join(m for m in metrics if m in _NEED_POSITIVE)} need a positive class")
    names = [str(name) for name in predictions_by_group]
    counts = {
        str(name): {m: proportion_counts(frame, classes, m, positive) for m in metrics}
        for name, frame in predictions_by_group.items()
    }
    reference = names[0]
    rows = []
    for name in names[1:]:
        for metric in metrics:
            correct, total = counts[name][metric]
            ref_correct, ref_total = counts[reference][metric]
            p_value = fisher_exact_test(correct, total, ref_correct, ref_total)
            rows.append(
                {
                    "group": name,
                    "reference": reference,
                    "metric": metric,
                    "correct": correct,
                    "total": total,
                    "value": _proportion(correct, total),
                    "reference_correct": ref_correct,
                    "reference_total": ref_total,
                    "reference_value": _proportion(ref_correct, ref_total),
                    "p_value": p_value,
                    "stars": significance_stars(p_value),
                }
            )
    return rows


def format_bootstrap_ci(
    ci: Mapping[str, float], digits: int = 4, stars: str = "", value: str = "estimate"
) -> str:
    """'0.9885* (0.9860, 0.9910)' from a BootstrapCI dict, as paper 002's tables; 'n/a' parts for nan.

    `value` picks the number before the interval: the full-data `estimate`, or the `bootstrap_mean`
    (the "average value generated by bootstrap" of paper 002's tables).
    """

    def number(x: float | None) -> str:
        return "n/a" if x is None or np.isnan(x) else f"{x:.{digits}f}"

    return f"{number(ci[value])}{stars} ({number(ci['low'])}, {number(ci['high'])})"


def _proportion(correct: int, total: int) -> float:
    return correct / total if total else float("nan")
