"""Classification metrics computed from a Predictions table (SPEC E1, paper 000 Eq. 1-5).

Every per-class metric is one-vs-rest: for class c, a sample is positive when its true class is c,
and predicted positive when the argmax of its probabilities is c. Only numpy and scipy are used,
so the numbers do not depend on a particular scikit-learn version; the tests cross-check them
against scikit-learn.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from covidlens.errors import CovidlensError

# Per-class one-vs-rest metrics, in the order tables show them.
METRICS: tuple[str, ...] = ("accuracy", "sensitivity", "specificity", "precision", "f1")
# Metrics of a whole prediction set (accuracy here is the multi-class fraction correct).
OVERALL_METRICS: tuple[str, ...] = ("accuracy", "macro_auroc")

METRIC_ALIASES: dict[str, str] = {
    "acc": "accuracy",
    "recall": "sensitivity",
    "sens": "sensitivity",
    "tpr": "sensitivity",
    "true_positive_rate": "sensitivity",
    "hit_rate": "sensitivity",
    "spec": "specificity",
    "tnr": "specificity",
    "true_negative_rate": "specificity",
    "selectivity": "specificity",
    "prec": "precision",
    "ppv": "precision",
    "positive_predictive_value": "precision",
    "f1_score": "f1",
    "f1score": "f1",
    "f_score": "f1",
    "fscore": "f1",
    "f_measure": "f1",
    "auroc": "macro_auroc",
    "auc": "macro_auroc",
    "roc_auc": "macro_auroc",
    "macro_auc": "macro_auroc",
}

PROBABILITY_PREFIX = "p_"


def canonical_metric(name: str) -> str:
    """Return the canonical metric name for a name or alias (case, spaces and dashes ignored)."""
    key = str(name).strip().lower().replace("-", "_").replace(" ", "_")
    if key in METRICS or key in OVERALL_METRICS:
        return key
    if key in METRIC_ALIASES:
        return METRIC_ALIASES[key]
    known = sorted(set(METRICS) | set(OVERALL_METRICS) | set(METRIC_ALIASES))
    raise CovidlensError(f"unknown metric {name!r}; use one of: {', '.join(known)}")


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Count matrix of shape (n_classes, n_classes): rows are true classes, columns predicted."""
    y_true = _class_indices(y_true, n_classes, "y_true")
    y_pred = _class_indices(y_pred, n_classes, "y_pred")
    if y_true.shape != y_pred.shape:
        raise CovidlensError(f"y_true has {y_true.size} labels but y_pred has {y_pred.size}")
    counts = np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes)
    return counts.reshape(n_classes, n_classes).astype(np.int64)


def normalize_confusion(cm: np.ndarray) -> np.ndarray:
    """Divide each row by its sum so rows sum to 1; a row with no samples stays all zeros."""
    cm = np.asarray(cm, dtype=float)
    totals = cm.sum(axis=1, keepdims=True)
    return np.divide(cm, totals, out=np.zeros_like(cm), where=totals > 0)


def binary_metrics(tp: float, fn: float, tn: float, fp: float, undefined: float = 0.0) -> dict[str, float]:
    """Accuracy, sensitivity, specificity, precision and F1 from binary counts (Eq. 1-5).

    A metric whose denominator is zero is reported as `undefined`: 0.0 by default, as scikit-learn
    does with zero_division=0 (e.g. precision of a class that is never predicted); cross-validation
    summaries pass nan so that such a fold is left out of the mean instead of counting as 0.
    """
    return {
        "accuracy": _ratio(tp + tn, tp + tn + fp + fn, undefined),
        "sensitivity": _ratio(tp, tp + fn, undefined),
        "specificity": _ratio(tn, tn + fp, undefined),
        "precision": _ratio(tp, tp + fp, undefined),
        # 2PR/(P+R) written as 2TP/(2TP+FP+FN): equal whenever P+R > 0, and defined when TP = 0.
        "f1": _ratio(2 * tp, 2 * tp + fp + fn, undefined),
    }


def one_vs_rest_counts(cm: np.ndarray, index: int) -> dict[str, int]:
    """TP, FN, TN, FP of class `index` against all other classes, from a confusion matrix."""
    cm = np.asarray(cm)
    tp = int(cm[index, index])
    fn = int(cm[index, :].sum()) - tp
    fp = int(cm[:, index].sum()) - tp
    tn = int(cm.sum()) - tp - fn - fp
    return {"tp": tp, "fn": fn, "tn": tn, "fp": fp}


def per_class_metrics(cm: np.ndarray, classes: Sequence[str], undefined: float = 0.0) -> dict[str, dict[str, float]]:
    """One-vs-rest binary metrics for every class, keyed by class name."""
    cm = np.asarray(cm)
    if cm.shape != (len(classes), len(classes)):
        raise CovidlensError(f"confusion matrix shape {cm.shape} does not match {len(classes)} classes")
    return {
        str(name): binary_metrics(**one_vs_rest_counts(cm, i), undefined=undefined) for i, name in enumerate(classes)
    }


def binary_auroc(positive: np.ndarray, scores: np.ndarray) -> float:
    """AUROC of scores for a boolean positive mask (Mann-Whitney U, ties averaged); nan if one-sided."""
    positive = np.asarray(positive, dtype=bool)
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(np.asarray(scores, dtype=float))
    u_statistic = ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u_statistic / (n_pos * n_neg))


def macro_auroc(y_true: np.ndarray, probs: np.ndarray, n_classes: int) -> float:
    """Macro mean of one-vs-rest AUROCs over classes with positives and negatives (nan if none).

    With two classes this is the binary AUROC of class 1, as scikit-learn reports it.
    """
    y_true = _class_indices(y_true, n_classes, "y_true")
    probs = np.asarray(probs, dtype=float)
    if probs.ndim != 2 or probs.shape != (y_true.size, n_classes):
        raise CovidlensError(f"probabilities have shape {probs.shape}, expected ({y_true.size}, {n_classes})")
    if n_classes == 2:
        return binary_auroc(y_true == 1, probs[:, 1])
    aurocs = [binary_auroc(y_true == c, probs[:, c]) for c in range(n_classes)]
    defined = [a for a in aurocs if not np.isnan(a)]
    return float(np.mean(defined)) if defined else float("nan")


def predicted_indices(probs: np.ndarray) -> np.ndarray:
    """Index of the most probable class per row; ties go to the first class."""
    return np.argmax(np.asarray(probs, dtype=float), axis=1)


def probability_columns(classes: Sequence[str]) -> list[str]:
    """The p_<class> column names of a Predictions table, in class order."""
    return [f"{PROBABILITY_PREFIX}{name}" for name in classes]


def prediction_arrays(predictions: pd.DataFrame, classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Check a Predictions table and return (true class indices, probabilities in class order)."""
    classes = _checked_classes(classes)
    columns = ["y_true", *probability_columns(classes)]
    missing = [c for c in columns if c not in predictions.columns]
    if missing:
        raise CovidlensError(
            f"predictions lack column(s) {', '.join(missing)}; expected y_true and one p_<class> per class"
        )
    labels = predictions["y_true"]
    if labels.isna().any():
        raise CovidlensError("predictions: y_true is empty in some rows")
    index_of = {name: i for i, name in enumerate(classes)}
    names = labels.astype(str).to_numpy()
    unknown = sorted(set(names) - set(index_of))
    if unknown:
        raise CovidlensError(
            f"predictions: unknown label(s) {', '.join(map(repr, unknown))} in y_true; "
            f"classes are {', '.join(classes)}"
        )
    probs = predictions[columns[1:]].to_numpy(dtype=float)
    if not np.isfinite(probs).all():
        raise CovidlensError("predictions: some p_<class> values are missing or not finite")
    y_true = np.fromiter((index_of[n] for n in names), dtype=np.int64, count=len(names))
    return y_true, probs


def metrics_from_predictions(predictions: pd.DataFrame, classes: Sequence[str], undefined: float = 0.0) -> dict:
    """All metrics of one prediction set: n, accuracy, macro-AUROC, per-class, confusion matrices."""
    y_true, probs = prediction_arrays(predictions, classes)
    if y_true.size == 0:
        raise CovidlensError("predictions: no rows to evaluate")
    classes = [str(c) for c in classes]
    cm = confusion_matrix(y_true, predicted_indices(probs), len(classes))
    return {
        "n": int(y_true.size),
        "accuracy": float(np.trace(cm) / cm.sum()),
        "macro_auroc": macro_auroc(y_true, probs, len(classes)),
        "per_class": per_class_metrics(cm, classes, undefined),
        "confusion_matrix": cm.tolist(),
        "confusion_matrix_normalized": normalize_confusion(cm).tolist(),
    }


def _ratio(numerator: float, denominator: float, undefined: float = 0.0) -> float:
    return float(numerator / denominator) if denominator else undefined


def _class_indices(values: np.ndarray, n_classes: int, name: str) -> np.ndarray:
    values = np.asarray(values).ravel()
    if values.size and not np.issubdtype(values.dtype, np.integer):
        raise CovidlensError(f"{name} must hold integer class indices, got dtype {values.dtype}")
    values = values.astype(np.int64)
    if values.size and (values.min() < 0 or values.max() >= n_classes):
        raise CovidlensError(f"{name} holds class indices outside 0..{n_classes - 1}")
    return values


def _checked_classes(classes: Sequence[str]) -> list[str]:
    names = [str(c) for c in classes]
    if len(names) < 2:
        raise CovidlensError(f"need at least 2 classes, got {names}")
    if len(set(names)) != len(names):
        raise CovidlensError(f"class names repeat: {names}")
    return names
