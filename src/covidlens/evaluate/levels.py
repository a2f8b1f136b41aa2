"""Slice/volume predictions aggregated to scan and patient level, with metrics at each level (SPEC E4).

`aggregate_predictions` collapses a Predictions table to one row per scan or per patient within each
(round, fold, model), and returns a Predictions table again, so every metric, test and summary works on
it unchanged: `sample_id` becomes the scan (or patient) id, `y_true` is the group's label and each
p_<class> column is the group's probability. An extra `n_samples` column counts the rows merged.

Methods:
- "mean": p_<class> is the mean of the group's p_<class> values (rows that sum to 1 stay summing to 1).
- "vote": every sample votes for its most probable class (a sample's own tie goes to the first class,
  as in `metrics.predicted_indices`); p_<class> is the class's share of the group's votes. When several
  classes share the most votes, the one with the highest mean probability wins, then the earliest in
  class order; so that every metric's argmax sees that winner, VOTE_TIE_EPSILON of probability moves to it
  from each other tied class (the row still sums to 1). Shares are exact whenever there is no tie.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from covidlens.errors import CovidlensError
from covidlens.evaluate.aggregate import summarize_cv
from covidlens.evaluate.metrics import predicted_indices, prediction_arrays, probability_columns

LEVELS: tuple[str, ...] = ("sample", "scan", "patient")
METHODS: tuple[str, ...] = ("mean", "vote")
VOTE_TIE_EPSILON = 1e-6
# Columns that define one prediction set; a group never spans two of them.
SET_KEYS: tuple[str, ...] = ("round", "fold", "model")
_ID_COLUMN = {"scan": "scan_id", "patient": "patient_id"}


def aggregate_predictions(
    predictions: pd.DataFrame, classes: Sequence[str], level: str, method: str = "mean"
) -> pd.DataFrame:
    """Collapse a Predictions table to one row per scan or patient within each (round, fold, model)."""
    check_level(level)
    if method not in METHODS:
        raise CovidlensError(f"unknown aggregation method {method!r}; use one of: {', '.join(METHODS)}")
    classes = [str(c) for c in classes]
    _, probs = prediction_arrays(predictions, classes)
    if level == "sample":
        return predictions.copy()
    id_column = _ID_COLUMN[level]
    set_keys = [k for k in SET_KEYS if k in predictions.columns]
    keys = [*set_keys, id_column]
    _check_ids(predictions, keys)

    frame = predictions[keys].reset_index(drop=True)
    group_of = frame.groupby(keys, sort=True, dropna=False).ngroup().to_numpy()
    # ngroup numbers the groups 0..n-1, so unique's first indices are in group order.
    first_row = np.unique(group_of, return_index=True)[1]
    n_groups = len(first_row)

    labels = predictions["y_true"].astype(str).to_numpy()
    _check_one_value(frame, group_of, labels, "label", level, id_column, set_keys)
    counts = np.bincount(group_of, minlength=n_groups)
    mean_probs = _group_sums(group_of, probs, n_groups) / counts[:, None]
    if method == "mean":
        out_probs = mean_probs
    else:
        votes = _group_sums(group_of, np.eye(len(classes))[predicted_indices(probs)], n_groups)
        out_probs = _vote_shares(votes, mean_probs)

    ids = frame[id_column].to_numpy()[first_row]
    table = pd.DataFrame({"sample_id": ids})
    if level == "scan":
        patients = predictions["patient_id"].to_numpy() if "patient_id" in predictions.columns else None
        if patients is not None:
            _check_one_value(frame, group_of, patients.astype(str), "patient", level, id_column, set_keys)
            table["patient_id"] = patients[first_row]
        table["scan_id"] = ids
    else:
        table["patient_id"] = ids
        # The manifest's rule: a scan id equal to the patient id means "the patient as a whole".
        table["scan_id"] = ids
    for key in set_keys:
        table[key] = frame[key].to_numpy()[first_row]
    table["y_true"] = labels[first_row]
    for column, values in zip(probability_columns(classes), out_probs.T, strict=True):
        table[column] = values
    table["n_samples"] = counts
    return table


def summarize_levels(
    predictions: pd.DataFrame,
    classes: Sequence[str],
    unit: str = "fold",
    confidence: float = 0.95,
    method: str = "mean",
) -> dict[str, dict]:
    """`summarize_cv` of the sample-, scan- and patient-level tables, keyed by level."""
    summaries: dict[str, dict] = {}
    for level in LEVELS:
        table = aggregate_predictions(predictions, classes, level, method)
        summary = summarize_cv(table, classes, unit=unit, confidence=confidence)
        summary["level"] = level
        summary["aggregation"] = None if level == "sample" else method
        summaries[level] = summary
    return summaries


def check_level(level: str) -> str:
    """Return `level` if it is one of LEVELS, else raise a CovidlensError listing them."""
    if level not in LEVELS:
        raise CovidlensError(f"unknown prediction level {level!r}; use one of: {', '.join(LEVELS)}")
    return level


def _vote_shares(votes: np.ndarray, mean_probs: np.ndarray) -> np.ndarray:
    totals = votes.sum(axis=1, keepdims=True)
    shares = votes / totals
    tied = votes == votes.max(axis=1, keepdims=True)
    # argmax returns the first maximum, which is the class-order tie-break after the mean probability.
    winner = np.argmax(np.where(tied, mean_probs, -np.inf), axis=1)
    n_tied = tied.sum(axis=1)
    rows = np.flatnonzero(n_tied > 1)
    shares[rows] -= VOTE_TIE_EPSILON * tied[rows]
    shares[rows, winner[rows]] += VOTE_TIE_EPSILON * n_tied[rows]
    return shares


def _group_sums(group_of: np.ndarray, values: np.ndarray, n_groups: int) -> np.ndarray:
    sums = np.zeros((n_groups, values.shape[1]), dtype=float)
    np.add.at(sums, group_of, values)
    return sums


def _check_ids(predictions: pd.DataFrame, keys: list[str]) -> None:
    missing = [k for k in keys if k not in predictions.columns]
    if missing:
        raise CovidlensError(f"predictions lack column(s) {', '.join(missing)} needed to aggregate")
    id_column = keys[-1]
    ids = predictions[id_column]
    if ids.isna().any() or (ids.astype(str).str.strip() == "").any():
        raise CovidlensError(f"predictions: column {id_column!r} is empty in some rows")


def _check_one_value(
    frame: pd.DataFrame,
    group_of: np.ndarray,
    values: np.ndarray,
    what: str,
    level: str,
    id_column: str,
    set_keys: list[str],
) -> None:
    distinct = pd.DataFrame({"g": group_of, "v": values}).groupby("g")["v"].nunique()
    bad = distinct.index[distinct.to_numpy() > 1]
    if len(bad) == 0:
        return
    rows = np.flatnonzero(group_of == bad[0])
    first = frame.iloc[rows[0]]
    where = "".join(f", {k} {_plain(first[k])}" for k in set_keys)
    found = ", ".join(sorted(set(values[rows])))
    raise CovidlensError(
        f"{level} {first[id_column]!r}{where} has samples with different {what}s ({found}); "
        f"every sample of a {level} must share its {what}"
    )


def _plain(value: object) -> object:
    return value.item() if isinstance(value, np.generic) else value
