"""Cross-validation summaries: metrics per fold or per round, then mean ± t-based CI (SPEC E1, E2).

Paper 000 reports, for 25 rounds of 5-fold cross-validation, the mean of each metric with its 95%
confidence interval. `summarize_cv` computes every metric on each unit's test predictions
(unit "fold": one (round, fold) test set; unit "round": all out-of-fold predictions of a round),
then the mean and t-based CI across units. The per-unit values are kept so a report can recompute.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from rich.table import Table

from covidlens.errors import CovidlensError
from covidlens.evaluate.metrics import (
    METRICS,
    metrics_from_predictions,
    normalize_confusion,
    prediction_arrays,
)
from covidlens.evaluate.stats import check_confidence, mean_ci

UNITS: tuple[str, ...] = ("fold", "round")
IMAGE_WISE_WARNING = (
    " IMAGE-WISE run: the data had no patient ids, so one patient's images may sit on both sides of a"
    " split and these metrics may be optimistic."
)
METRIC_HEADERS: dict[str, str] = {
    "accuracy": "Accuracy",
    "sensitivity": "Sensitivity",
    "specificity": "Specificity",
    "precision": "Precision",
    "f1": "F1",
}


def summarize_cv(
    predictions: pd.DataFrame, classes: Sequence[str], unit: str = "fold", confidence: float = 0.95
) -> dict:
    """Per-unit metrics and their mean ± t-based CI across units, plus the pooled confusion matrix."""
    if unit not in UNITS:
        raise CovidlensError(f"unknown CV unit {unit!r}; use one of: {', '.join(UNITS)}")
    check_confidence(confidence)
    classes = [str(c) for c in classes]
    prediction_arrays(predictions, classes)  # fail early, naming a missing column or unknown label
    model = _single_model(predictions)
    units = [_unit_record(key, frame, classes) for key, frame in split_units(predictions, unit)]
    if not units:
        raise CovidlensError("predictions: no rows to summarize")
    pooled = np.sum([np.asarray(u["confusion_matrix"]) for u in units], axis=0)
    n_units = len(units)
    return {
        "model": model,
        "classes": classes,
        "unit": unit,
        "n_units": n_units,
        "n_rounds": int(predictions["round"].nunique()),
        "n_rows": int(len(predictions)),
        "confidence": float(confidence),
        "ci_method": ci_description(unit, n_units, confidence),
        "overall": {
            name: _ci_dict([u[name] for u in units], confidence) for name in ("accuracy", "macro_auroc")
        },
        "per_class": {
            cls: {m: _ci_dict([u["per_class"][cls][m] for u in units], confidence) for m in METRICS}
            for cls in classes
        },
        "confusion_matrix": pooled.tolist(),
        "confusion_matrix_normalized": normalize_confusion(pooled).tolist(),
        "units": units,
    }


def split_units(predictions: pd.DataFrame, unit: str) -> list[tuple[dict, pd.DataFrame]]:
    """Split a Predictions table into CV units: (round, fold) test sets or whole rounds, sorted."""
    keys = ["round", "fold"] if unit == "fold" else ["round"]
    missing = [k for k in keys if k not in predictions.columns]
    if missing:
        raise CovidlensError(f"predictions lack column(s) {', '.join(missing)} needed for unit {unit!r}")
    for key in keys:
        if predictions[key].isna().any():
            raise CovidlensError(f"predictions: column {key!r} is empty in some rows")
    if unit == "round":
        _check_once_per_round(predictions)
    groups = predictions.groupby(keys, sort=True)
    return [(dict(zip(keys, map(_plain, group_key), strict=True)), frame) for group_key, frame in groups]


def ci_description(unit: str, n_units: int, confidence: float) -> str:
    """How the intervals were computed, e.g. 'mean ± t-based 95% CI half-width over 5 folds'."""
    noun = unit if n_units == 1 else f"{unit}s"
    return f"mean ± t-based {confidence * 100:g}% CI half-width over {n_units} {noun}"


def format_mean_ci(ci: dict, digits: int = 4) -> str:
    """'0.9759 ± 0.0048'; 'n/a' for an undefined mean, '± n/a' for an undefined interval."""
    mean, half_width = ci["mean"], ci["half_width"]
    if _is_nan(mean):
        return "n/a"
    if _is_nan(half_width):
        return f"{mean:.{digits}f} ± n/a"
    return f"{mean:.{digits}f} ± {half_width:.{digits}f}"


def summary_caption(summary: dict) -> str:
    """Overall accuracy and macro-AUROC with their CIs, and how the intervals were computed."""
    overall = summary["overall"]
    return (
        f"Overall accuracy {format_mean_ci(overall['accuracy'])}; "
        f"macro-AUROC {format_mean_ci(overall['macro_auroc'])}. "
        f"Values are {summary['ci_method']}."
        + (IMAGE_WISE_WARNING if summary.get("image_wise") else "")
    )


def summary_rows(summary: dict) -> list[list[str]]:
    """One row per class: the class name, then each metric as 'mean ± half-width'."""
    return [
        [cls, *(format_mean_ci(summary["per_class"][cls][m]) for m in METRICS)] for cls in summary["classes"]
    ]


def format_summary_table(summary: dict) -> Table:
    """A Rich table in paper 000's style: rows = classes, columns = metrics, caption = overall + CI method."""
    title = "Per-class metrics (one-vs-rest)"
    if summary.get("model"):
        title += f": {summary['model']}"
    table = Table(title=title, caption=summary_caption(summary))
    table.add_column("Class")
    for metric in METRICS:
        table.add_column(METRIC_HEADERS[metric], justify="right")
    for row in summary_rows(summary):
        table.add_row(*row)
    return table


def _unit_record(key: dict, frame: pd.DataFrame, classes: list[str]) -> dict:
    # An undefined metric (e.g. sensitivity of a class absent from this fold) is nan, so it is left out.
    result = metrics_from_predictions(frame, classes, undefined=math.nan)
    return {
        **key,
        "n": result["n"],
        "accuracy": result["accuracy"],
        "macro_auroc": result["macro_auroc"],
        "per_class": result["per_class"],
        "confusion_matrix": result["confusion_matrix"],
    }


def _ci_dict(values: list[float], confidence: float) -> dict[str, float | int]:
    fields = mean_ci(values, confidence).as_dict()
    del fields["confidence"]  # stated once for the whole summary
    return fields


def _single_model(predictions: pd.DataFrame) -> str | None:
    if "model" not in predictions.columns:
        return None
    models = sorted(predictions["model"].dropna().astype(str).unique())
    if len(models) > 1:
        raise CovidlensError(
            f"predictions hold several models ({', '.join(models)}); summarize one model at a time"
        )
    return models[0] if models else None


def _check_once_per_round(predictions: pd.DataFrame) -> None:
    # Pooling a round's out-of-fold predictions counts each sample once; a repeat means a split bug.
    if "sample_id" not in predictions.columns:
        return
    repeated = predictions.duplicated(["round", "sample_id"])
    if repeated.any():
        row = predictions.loc[repeated].iloc[0]
        raise CovidlensError(
            f"sample {row['sample_id']!r} is predicted more than once in round {_plain(row['round'])}; "
            "each sample must be tested once per round"
        )


def _plain(value: object) -> object:
    """A numpy/pandas scalar as the matching Python scalar, so the summary is JSON-serialisable."""
    return value.item() if isinstance(value, np.generic) else value


def _is_nan(value: float | None) -> bool:
    """True for nan, and for None (how metrics.json stores an undefined value)."""
    return value is None or (isinstance(value, float) and math.isnan(value))
