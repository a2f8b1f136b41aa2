"""Per-class metrics, confusion matrices and AUROC, cross-checked against scikit-learn."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from covidlens.errors import CovidlensError
from covidlens.evaluate.metrics import (
    METRICS,
    binary_auroc,
    binary_metrics,
    canonical_metric,
    confusion_matrix,
    macro_auroc,
    metrics_from_predictions,
    normalize_confusion,
    per_class_metrics,
    predicted_indices,
    prediction_arrays,
)

CASES = [(seed, k) for seed in (0, 1, 2) for k in (2, 3, 4)]


def random_labels(seed: int, n_classes: int, n: int = 80) -> tuple[np.ndarray, np.ndarray]:
    """True labels covering every class, and noisy predictions that are right about half the time."""
    rng = np.random.default_rng(seed)
    y_true = rng.permutation(np.resize(np.arange(n_classes), n))
    noise = rng.integers(0, n_classes, n)
    y_pred = np.where(rng.random(n) < 0.5, y_true, noise)
    return y_true, y_pred


def random_probs(seed: int, y_true: np.ndarray, n_classes: int) -> np.ndarray:
    """Row-stochastic probabilities loosely informative of y_true."""
    rng = np.random.default_rng(seed + 100)
    logits = rng.normal(size=(y_true.size, n_classes))
    logits[np.arange(y_true.size), y_true] += 1.0
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)


def tied_probs(seed: int, y_true: np.ndarray, n_classes: int) -> np.ndarray:
    """Probabilities drawn from only three distinct rows, so every column is full of ties."""
    rng = np.random.default_rng(seed + 200)
    prototypes = rng.dirichlet(np.ones(n_classes), size=3)
    return prototypes[rng.integers(0, 3, y_true.size)]


@pytest.mark.parametrize(("seed", "n_classes"), CASES)
def test_confusion_matrix_matches_sklearn(seed: int, n_classes: int) -> None:
    y_true, y_pred = random_labels(seed, n_classes)
    expected = skm.confusion_matrix(y_true, y_pred, labels=list(range(n_classes)))
    np.testing.assert_array_equal(confusion_matrix(y_true, y_pred, n_classes), expected)


@pytest.mark.parametrize(("seed", "n_classes"), CASES)
def test_normalized_confusion_matches_sklearn(seed: int, n_classes: int) -> None:
    y_true, y_pred = random_labels(seed, n_classes)
    cm = confusion_matrix(y_true, y_pred, n_classes)
    expected = skm.confusion_matrix(y_true, y_pred, labels=list(range(n_classes)), normalize="true")
    np.testing.assert_allclose(normalize_confusion(cm), expected)
    np.testing.assert_allclose(normalize_confusion(cm).sum(axis=1), 1.0)


def test_normalize_confusion_keeps_an_empty_row_at_zero() -> None:
    cm = np.array([[3, 1, 0], [0, 0, 0], [1, 1, 2]])
    normalized = normalize_confusion(cm)
    np.testing.assert_array_equal(normalized[1], [0.0, 0.0, 0.0])
    np.testing.assert_allclose(normalized[0], [0.75, 0.25, 0.0])
    np.testing.assert_allclose(normalized[2], [0.25, 0.25, 0.5])


def test_confusion_matrix_counts_a_class_never_seen() -> None:
    cm = confusion_matrix(np.array([0, 0, 1]), np.array([0, 1, 1]), 3)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 1, 0], [0, 0, 0]])


def test_confusion_matrix_rejects_out_of_range_and_mismatched_labels() -> None:
    with pytest.raises(CovidlensError, match="outside 0..2"):
        confusion_matrix(np.array([0, 3]), np.array([0, 1]), 3)
    with pytest.raises(CovidlensError, match="outside"):
        confusion_matrix(np.array([0, -1]), np.array([0, 1]), 3)
    with pytest.raises(CovidlensError, match="2 labels but y_pred has 3"):
        confusion_matrix(np.array([0, 1]), np.array([0, 1, 1]), 2)
    with pytest.raises(CovidlensError, match="integer"):
        confusion_matrix(np.array([0.5, 1.0]), np.array([0, 1]), 2)


@pytest.mark.parametrize(("seed", "n_classes"), CASES)
def test_per_class_metrics_match_sklearn(seed: int, n_classes: int) -> None:
    y_true, y_pred = random_labels(seed, n_classes)
    classes = [f"c{i}" for i in range(n_classes)]
    result = per_class_metrics(confusion_matrix(y_true, y_pred, n_classes), classes)
    precision, recall, f1, _ = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=list(range(n_classes)), zero_division=0
    )
    for i, name in enumerate(classes):
        positive_true = (y_true == i).astype(int)
        positive_pred = (y_pred == i).astype(int)
        assert result[name]["precision"] == pytest.approx(precision[i])
        assert result[name]["sensitivity"] == pytest.approx(recall[i])
        assert result[name]["f1"] == pytest.approx(f1[i])
        specificity = skm.recall_score(positive_true, positive_pred, pos_label=0, zero_division=0)
        assert result[name]["specificity"] == pytest.approx(specificity)
        assert result[name]["accuracy"] == pytest.approx(skm.accuracy_score(positive_true, positive_pred))


def test_per_class_metrics_zero_division_gives_zero_like_sklearn() -> None:
    # Class 2 is never predicted and never true: its precision, sensitivity and F1 have 0 denominators.
    y_true = np.array([0, 0, 1, 1])
    y_pred = np.array([0, 1, 1, 1])
    result = per_class_metrics(confusion_matrix(y_true, y_pred, 3), ["a", "b", "c"])
    precision, recall, f1, _ = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=[0, 1, 2], zero_division=0
    )
    assert (result["c"]["precision"], result["c"]["sensitivity"], result["c"]["f1"]) == (0.0, 0.0, 0.0)
    assert result["c"]["specificity"] == 1.0
    assert result["c"]["accuracy"] == 1.0
    np.testing.assert_allclose([result[c]["precision"] for c in "abc"], precision)
    np.testing.assert_allclose([result[c]["sensitivity"] for c in "abc"], recall)
    np.testing.assert_allclose([result[c]["f1"] for c in "abc"], f1)


def test_binary_metrics_all_zero_counts_are_zero() -> None:
    assert binary_metrics(0, 0, 0, 0) == {m: 0.0 for m in METRICS}


def test_binary_metrics_paper_004_cnn2() -> None:
    # Paper 004, Table 5, CNN-2: 100 COVID and 100 non-COVID test images.
    result = binary_metrics(tp=85, fn=15, tn=81, fp=19)
    expected = {
        "accuracy": 0.8300,
        "sensitivity": 0.8500,
        "specificity": 0.8100,
        "precision": 0.8173,
        "f1": 0.8333,
    }
    assert {k: round(v, 4) for k, v in result.items()} == expected


def test_binary_metrics_paper_004_cnn1_from_derived_counts() -> None:
    # Paper 004, Table 5, CNN-1 with 100 positives and 100 negatives:
    # sensitivity 0.79 -> TP 79, FN 21; specificity 0.85 -> TN 85, FP 15.
    tp, fn = 79, 21
    tn, fp = 85, 15
    assert tp + fn == 100 and tn + fp == 100
    result = binary_metrics(tp=tp, fn=fn, tn=tn, fp=fp)
    expected = {
        "accuracy": 0.8200,
        "sensitivity": 0.7900,
        "specificity": 0.8500,
        "precision": 0.8404,
        "f1": 0.8144,
    }
    assert {k: round(v, 4) for k, v in result.items()} == expected


def test_binary_metrics_f1_equals_harmonic_mean_of_precision_and_recall() -> None:
    result = binary_metrics(tp=7, fn=5, tn=11, fp=2)
    p, r = 7 / 9, 7 / 12
    assert result["f1"] == pytest.approx(2 * p * r / (p + r))


def test_per_class_metrics_rejects_a_shape_mismatch() -> None:
    with pytest.raises(CovidlensError, match="does not match 3 classes"):
        per_class_metrics(np.eye(2, dtype=int), ["a", "b", "c"])


@pytest.mark.parametrize(("seed", "n_classes"), CASES)
def test_macro_auroc_matches_sklearn(seed: int, n_classes: int) -> None:
    y_true, _ = random_labels(seed, n_classes)
    probs = random_probs(seed, y_true, n_classes)
    assert macro_auroc(y_true, probs, n_classes) == pytest.approx(sklearn_auroc(y_true, probs, n_classes))


@pytest.mark.parametrize(("seed", "n_classes"), CASES)
def test_macro_auroc_with_tied_probabilities_matches_sklearn(seed: int, n_classes: int) -> None:
    y_true, _ = random_labels(seed, n_classes)
    probs = tied_probs(seed, y_true, n_classes)
    assert len(np.unique(probs[:, 0])) <= 3
    assert macro_auroc(y_true, probs, n_classes) == pytest.approx(sklearn_auroc(y_true, probs, n_classes))


def sklearn_auroc(y_true: np.ndarray, probs: np.ndarray, n_classes: int) -> float:
    if n_classes == 2:
        return skm.roc_auc_score(y_true, probs[:, 1])
    return skm.roc_auc_score(y_true, probs, multi_class="ovr", average="macro", labels=list(range(n_classes)))


def test_binary_macro_auroc_is_the_auroc_of_class_1_even_for_unnormalized_scores() -> None:
    rng = np.random.default_rng(5)
    y_true = np.resize([0, 1], 50)
    scores = rng.random((50, 2))  # rows do not sum to 1: class 0's column must be ignored
    assert macro_auroc(y_true, scores, 2) == pytest.approx(skm.roc_auc_score(y_true, scores[:, 1]))


def test_auroc_known_values() -> None:
    assert binary_auroc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert binary_auroc(np.array([0, 0, 1, 1]), np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    assert binary_auroc(np.array([0, 1]), np.array([0.5, 0.5])) == 0.5
    # One positive ranked above 2 of 3 negatives, with one tie counted as half.
    assert binary_auroc(np.array([1, 0, 0, 0]), np.array([0.5, 0.5, 0.2, 0.9])) == pytest.approx(1.5 / 3)


def test_macro_auroc_skips_a_class_without_positives_and_is_nan_when_none_is_defined() -> None:
    y_true = np.array([0, 0, 1, 1, 0, 1])
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.ones(3), size=6)
    expected = np.mean([skm.roc_auc_score(y_true == c, probs[:, c]) for c in (0, 1)])
    assert macro_auroc(y_true, probs, 3) == pytest.approx(expected)
    assert np.isnan(macro_auroc(np.zeros(6, dtype=int), probs, 3))
    assert np.isnan(macro_auroc(np.ones(6, dtype=int), probs[:, :2], 2))


def test_macro_auroc_rejects_wrong_probability_shape() -> None:
    with pytest.raises(CovidlensError, match="shape"):
        macro_auroc(np.array([0, 1, 2]), np.ones((3, 2)), 3)


def test_predicted_indices_break_ties_towards_the_first_class() -> None:
    probs = np.array([[0.4, 0.4, 0.2], [0.2, 0.4, 0.4], [1 / 3, 1 / 3, 1 / 3], [0.1, 0.2, 0.7]])
    np.testing.assert_array_equal(predicted_indices(probs), [0, 1, 0, 2])


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [
        ("recall", "sensitivity"),
        ("TPR", "sensitivity"),
        ("tnr", "specificity"),
        ("ppv", "precision"),
        ("f1_score", "f1"),
        ("F1-score", "f1"),
        ("acc", "accuracy"),
        ("Specificity", "specificity"),
        ("auc", "macro_auroc"),
        ("macro-AUROC", "macro_auroc"),
    ],
)
def test_canonical_metric_resolves_aliases(alias: str, canonical: str) -> None:
    assert canonical_metric(alias) == canonical


def test_canonical_metric_rejects_an_unknown_name() -> None:
    with pytest.raises(CovidlensError, match="unknown metric 'kappa'"):
        canonical_metric("kappa")


def predictions_table(y_true: np.ndarray, probs: np.ndarray, classes: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame({"sample_id": [f"s{i}" for i in range(y_true.size)]})
    frame["y_true"] = [classes[i] for i in y_true]
    for i, name in enumerate(classes):
        frame[f"p_{name}"] = probs[:, i]
    return frame


@pytest.mark.parametrize(("seed", "n_classes"), CASES)
def test_metrics_from_predictions_match_sklearn(seed: int, n_classes: int) -> None:
    classes = ["COVID", "Healthy", "Others", "Extra"][:n_classes]
    y_true, _ = random_labels(seed, n_classes)
    probs = random_probs(seed, y_true, n_classes)
    # Shuffle columns: the class list, not the column order, fixes which column is which class.
    frame = predictions_table(y_true, probs, classes).sample(frac=1.0, axis=1, random_state=seed)
    result = metrics_from_predictions(frame, classes)
    y_pred = probs.argmax(axis=1)
    assert result["n"] == y_true.size
    assert result["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    assert result["macro_auroc"] == pytest.approx(sklearn_auroc(y_true, probs, n_classes))
    assert result["confusion_matrix"] == skm.confusion_matrix(y_true, y_pred).tolist()
    np.testing.assert_allclose(
        result["confusion_matrix_normalized"], skm.confusion_matrix(y_true, y_pred, normalize="true")
    )
    f1 = skm.f1_score(y_true, y_pred, average=None, labels=list(range(n_classes)), zero_division=0)
    assert [result["per_class"][c]["f1"] for c in classes] == pytest.approx(list(f1))
    assert list(result["per_class"]) == classes


def test_prediction_arrays_returns_indices_in_class_order() -> None:
    frame = pd.DataFrame({"y_true": ["b", "a", "b"], "p_b": [0.9, 0.2, 0.6], "p_a": [0.1, 0.8, 0.4]})
    y_true, probs = prediction_arrays(frame, ["a", "b"])
    np.testing.assert_array_equal(y_true, [1, 0, 1])
    np.testing.assert_allclose(probs, [[0.1, 0.9], [0.8, 0.2], [0.4, 0.6]])


def test_prediction_arrays_names_a_missing_probability_column() -> None:
    frame = pd.DataFrame({"y_true": ["a", "b"], "p_a": [0.5, 0.5]})
    with pytest.raises(CovidlensError, match="p_b"):
        prediction_arrays(frame, ["a", "b"])


def test_prediction_arrays_names_an_unknown_label() -> None:
    frame = pd.DataFrame({"y_true": ["a", "zebra"], "p_a": [0.5, 0.5], "p_b": [0.5, 0.5]})
    with pytest.raises(CovidlensError, match="'zebra'"):
        prediction_arrays(frame, ["a", "b"])


def test_prediction_arrays_rejects_missing_probabilities_and_bad_class_lists() -> None:
    frame = pd.DataFrame({"y_true": ["a", "b"], "p_a": [0.5, np.nan], "p_b": [0.5, 0.5]})
    with pytest.raises(CovidlensError, match="not finite"):
        prediction_arrays(frame, ["a", "b"])
    with pytest.raises(CovidlensError, match="repeat"):
        prediction_arrays(frame, ["a", "a"])
    with pytest.raises(CovidlensError, match="at least 2"):
        prediction_arrays(frame, ["a"])
    with pytest.raises(CovidlensError, match="y_true"):
        prediction_arrays(frame.drop(columns="y_true"), ["a", "b"])


def test_metrics_from_predictions_rejects_an_empty_table() -> None:
    frame = pd.DataFrame({"y_true": pd.Series([], dtype=str), "p_a": [], "p_b": []})
    with pytest.raises(CovidlensError, match="no rows"):
        metrics_from_predictions(frame, ["a", "b"])
