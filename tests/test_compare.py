"""Groups of runs against the first (paper 002 Tables 5-7): Fisher's exact tests, stars, table cells."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn import metrics as skm

from covidlens.errors import CovidlensError
from covidlens.evaluate.compare import compare_groups, format_bootstrap_ci, proportion_counts
from covidlens.evaluate.metrics import metrics_from_predictions
from covidlens.evaluate.stats import bootstrap_metrics, significance_stars

CLASSES = ["NCP", "CP", "Normal"]


def group(n: int, hit_rate: float, seed: int) -> pd.DataFrame:
    """A Predictions table whose most probable class is the true one in about hit_rate of the rows."""
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 3, n)
    y_pred = np.where(rng.random(n) < hit_rate, y_true, (y_true + rng.integers(1, 3, n)) % 3)
    probs = np.full((n, 3), 0.1)
    probs[np.arange(n), y_pred] = 0.8
    frame = pd.DataFrame(probs, columns=[f"p_{c}" for c in CLASSES])
    frame.insert(0, "y_true", [CLASSES[i] for i in y_true])
    return frame


def fisher_scipy(correct_a: int, total_a: int, correct_b: int, total_b: int) -> float:
    return stats.fisher_exact([[correct_a, total_a - correct_a], [correct_b, total_b - correct_b]]).pvalue


def test_compare_groups_tests_each_later_group_against_the_first() -> None:
    groups = {"depth 2": group(400, 0.85, 0), "depth 4": group(400, 0.95, 1), "depth 8": group(400, 0.86, 2)}
    rows = compare_groups(groups, CLASSES)
    assert [row["group"] for row in rows] == ["depth 4", "depth 8"]
    reference = metrics_from_predictions(groups["depth 2"], CLASSES)
    for row in rows:
        plain = metrics_from_predictions(groups[row["group"]], CLASSES)
        assert (row["reference"], row["metric"]) == ("depth 2", "accuracy")
        assert row["total"] == 400 and row["reference_total"] == 400
        assert row["value"] == pytest.approx(plain["accuracy"])
        assert row["correct"] == round(plain["accuracy"] * 400)
        assert row["reference_value"] == pytest.approx(reference["accuracy"])
        expected = fisher_scipy(row["correct"], row["total"], row["reference_correct"], row["reference_total"])
        assert row["p_value"] == pytest.approx(expected, rel=1e-9)
        assert row["stars"] == significance_stars(expected)
    assert rows[0]["stars"] == "***"  # 0.95 vs 0.85 on 400 samples each
    assert rows[1]["stars"] == ""  # 0.86 vs 0.85
    json.loads(json.dumps(rows))


def test_compare_groups_of_binary_proportions_match_sklearn_counts() -> None:
    groups = {"ResNet-18": group(300, 0.9, 3), "ResNet-34": group(300, 0.8, 4)}
    rows = compare_groups(groups, CLASSES, metrics=("positive_accuracy", "precision", "recall"), positive="NCP")
    assert [row["metric"] for row in rows] == ["positive_accuracy", "precision", "recall"]
    frame = groups["ResNet-34"]
    y_true = (frame["y_true"] == "NCP").to_numpy()
    y_pred = frame[["p_NCP", "p_CP", "p_Normal"]].to_numpy().argmax(axis=1) == 0
    by_metric = {row["metric"]: row for row in rows}
    assert by_metric["positive_accuracy"]["value"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    assert by_metric["precision"]["value"] == pytest.approx(skm.precision_score(y_true, y_pred))
    assert by_metric["precision"]["total"] == int(y_pred.sum())
    assert by_metric["recall"]["value"] == pytest.approx(skm.recall_score(y_true, y_pred))
    assert by_metric["recall"]["total"] == int(y_true.sum())
    for row in rows:
        expected = fisher_scipy(row["correct"], row["total"], row["reference_correct"], row["reference_total"])
        assert row["p_value"] == pytest.approx(expected, rel=1e-9)


def test_precision_of_a_model_that_never_predicts_the_positive_class_is_nan_with_p_1() -> None:
    never = group(50, 0.0, 5)
    never[["p_NCP", "p_CP", "p_Normal"]] = [0.1, 0.8, 0.1]
    assert proportion_counts(never, CLASSES, "precision", "NCP") == (0, 0)
    (row,) = compare_groups({"a": group(50, 0.9, 6), "b": never}, CLASSES, metrics="precision", positive="NCP")
    assert math.isnan(row["value"]) and row["p_value"] == 1.0 and row["stars"] == ""


def test_compare_groups_of_one_group_has_no_rows() -> None:
    assert compare_groups({"only": group(20, 0.9, 0)}, CLASSES) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"metrics": ("f1",)}, "no Fisher test for metric"),
        ({"metrics": ("precision",)}, "need a positive class"),
        ({"metrics": ("recall",), "positive": "COVID"}, "needs a positive class"),
    ],
)
def test_compare_groups_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    groups = {"a": group(20, 0.9, 0), "b": group(20, 0.8, 1)}
    with pytest.raises(CovidlensError, match=message):
        compare_groups(groups, CLASSES, **kwargs)


def test_compare_groups_rejects_no_groups_and_empty_predictions() -> None:
    with pytest.raises(CovidlensError, match="no groups"):
        compare_groups({}, CLASSES)
    with pytest.raises(CovidlensError, match="no rows"):
        compare_groups({"a": group(20, 0.9, 0), "b": group(20, 0.9, 1).iloc[:0]}, CLASSES)


def test_format_bootstrap_ci_as_paper_002_tables() -> None:
    ci = {"estimate": 0.98851, "low": 0.98604, "high": 0.99096}
    assert format_bootstrap_ci(ci, stars="*") == "0.9885* (0.9860, 0.9910)"
    assert format_bootstrap_ci({"estimate": 0.5, "low": float("nan"), "high": float("nan")}, 2) == "0.50 (n/a, n/a)"
    result = bootstrap_metrics(group(100, 0.9, 7), CLASSES, "NCP", n_resamples=50)
    cell = format_bootstrap_ci(result["metrics"]["accuracy"])
    assert cell.startswith(f"{result['metrics']['accuracy']['estimate']:.4f} (")
