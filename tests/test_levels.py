"""Slice predictions aggregated to scan and patient level: mean, vote, ids, errors, summaries (SPEC E4)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from covidlens.data.index import index_dataset
from covidlens.data.synth import synthesize
from covidlens.errors import CovidlensError
from covidlens.evaluate.aggregate import summarize_cv
from covidlens.evaluate.levels import LEVELS, VOTE_TIE_EPSILON, aggregate_predictions, summarize_levels
from covidlens.evaluate.metrics import metrics_from_predictions, probability_columns

CLASSES = ["COVID", "Healthy", "Others"]
P_COLUMNS = probability_columns(CLASSES)


def table(rows: list[tuple], round_: int = 0, fold: int = 0) -> pd.DataFrame:
    """Predictions from (patient, scan, label, probs) tuples; sample ids number the rows."""
    return pd.DataFrame(
        [
            {
                "sample_id": f"{scan}/slice_{i}",
                "patient_id": patient,
                "scan_id": scan,
                "round": round_,
                "fold": fold,
                "model": "resnet18",
                "y_true": label,
                **dict(zip(P_COLUMNS, probs, strict=True)),
            }
            for i, (patient, scan, label, probs) in enumerate(rows)
        ]
    )


def accuracy(predictions: pd.DataFrame) -> float:
    return metrics_from_predictions(predictions, CLASSES)["accuracy"]


def probs_of(frame: pd.DataFrame, sample_id: str) -> np.ndarray:
    return frame.set_index("sample_id").loc[sample_id, P_COLUMNS].to_numpy(dtype=float)


def mean_beats_slices() -> pd.DataFrame:
    """Two scans, each with one right and one wrong slice; the mean is right for both."""
    return table(
        [
            ("p1", "s1", "COVID", [0.9, 0.05, 0.05]),
            ("p1", "s1", "COVID", [0.4, 0.5, 0.1]),
            ("p2", "s2", "Healthy", [0.1, 0.8, 0.1]),
            ("p2", "s2", "Healthy", [0.45, 0.35, 0.2]),
        ]
    )


def vote_beats_mean() -> pd.DataFrame:
    """One COVID scan: two weak COVID votes, two confident wrong slices (Healthy, Others)."""
    return table(
        [
            ("p1", "s1", "COVID", [0.4, 0.3, 0.3]),
            ("p1", "s1", "COVID", [0.4, 0.3, 0.3]),
            ("p1", "s1", "COVID", [0.05, 0.9, 0.05]),
            ("p1", "s1", "COVID", [0.05, 0.15, 0.8]),
        ]
    )


def test_scan_mean_is_right_where_half_the_slices_are_wrong():
    predictions = mean_beats_slices()
    scans = aggregate_predictions(predictions, CLASSES, "scan")
    assert accuracy(predictions) == 0.5
    assert accuracy(scans) == 1.0
    np.testing.assert_allclose(probs_of(scans, "s1"), [0.65, 0.275, 0.075])
    np.testing.assert_allclose(probs_of(scans, "s2"), [0.275, 0.575, 0.15])


def test_vote_and_mean_differ_as_computed_by_hand():
    predictions = vote_beats_mean()
    mean = aggregate_predictions(predictions, CLASSES, "scan", "mean")
    vote = aggregate_predictions(predictions, CLASSES, "scan", "vote")
    assert accuracy(predictions) == 0.5
    # mean: COVID (0.4+0.4+0.05+0.05)/4, Healthy (0.3+0.3+0.9+0.15)/4, Others (0.3+0.3+0.05+0.8)/4
    np.testing.assert_allclose(probs_of(mean, "s1"), [0.225, 0.4125, 0.3625])
    assert accuracy(mean) == 0.0
    # vote: COVID 2 of 4, Healthy 1, Others 1; no tie, so the shares are exact
    np.testing.assert_array_equal(probs_of(vote, "s1"), [0.5, 0.25, 0.25])
    assert accuracy(vote) == 1.0


def test_vote_tie_goes_to_higher_mean_probability_then_class_order():
    predictions = table(
        [
            ("p1", "tie_mean", "Healthy", [0.6, 0.4, 0.0]),
            ("p1", "tie_mean", "Healthy", [0.1, 0.9, 0.0]),
            ("p2", "tie_order", "COVID", [0.7, 0.3, 0.0]),
            ("p2", "tie_order", "COVID", [0.3, 0.7, 0.0]),
        ]
    )
    vote = aggregate_predictions(predictions, CLASSES, "scan", "vote")
    eps = VOTE_TIE_EPSILON
    # 1 vote each for COVID and Healthy; Healthy's mean probability 0.65 beats COVID's 0.35
    np.testing.assert_allclose(probs_of(vote, "tie_mean"), [0.5 - eps, 0.5 + eps, 0.0], rtol=0, atol=1e-15)
    # equal means (0.5 and 0.5): the earlier class, COVID, wins
    np.testing.assert_allclose(probs_of(vote, "tie_order"), [0.5 + eps, 0.5 - eps, 0.0], rtol=0, atol=1e-15)
    assert accuracy(vote) == 1.0
    np.testing.assert_allclose(vote[P_COLUMNS].sum(axis=1), 1.0)


def test_row_counts_ids_and_columns_per_level():
    rows = [("p1", "p1/scan_a", "COVID", [0.8, 0.1, 0.1])] * 3
    rows += [("p1", "p1/scan_b", "COVID", [0.2, 0.7, 0.1])] * 3
    rows += [("p2", "p2/scan_a", "Others", [0.1, 0.1, 0.8])] * 2
    predictions = table(rows)
    scans = aggregate_predictions(predictions, CLASSES, "scan")
    patients = aggregate_predictions(predictions, CLASSES, "patient")
    assert len(predictions) == 8 and len(scans) == 3 and len(patients) == 2
    assert scans["sample_id"].tolist() == ["p1/scan_a", "p1/scan_b", "p2/scan_a"]
    assert scans["scan_id"].tolist() == scans["sample_id"].tolist()
    assert scans["patient_id"].tolist() == ["p1", "p1", "p2"]
    assert scans["n_samples"].tolist() == [3, 3, 2]
    assert patients["sample_id"].tolist() == ["p1", "p2"]
    assert patients["patient_id"].tolist() == ["p1", "p2"]
    assert patients["y_true"].tolist() == ["COVID", "Others"]
    assert patients["n_samples"].tolist() == [6, 2]
    np.testing.assert_allclose(probs_of(patients, "p1"), [0.5, 0.4, 0.1])
    expected = ["sample_id", "patient_id", "scan_id", "round", "fold", "model", "y_true", *P_COLUMNS]
    for frame in (scans, patients):
        assert list(frame.columns[: len(expected)]) == expected
        assert frame["model"].eq("resnet18").all()


def test_sample_level_returns_the_table_unchanged():
    predictions = mean_beats_slices()
    same = aggregate_predictions(predictions, CLASSES, "sample", "vote")
    pd.testing.assert_frame_equal(same, predictions)
    assert same is not predictions


def test_rounds_and_folds_stay_separate():
    rows = [("p1", "s1", "COVID", [0.9, 0.05, 0.05]), ("p1", "s1", "COVID", [0.1, 0.8, 0.1])]
    predictions = pd.concat([table(rows, round_=0, fold=1), table(rows, round_=1, fold=0), table(rows, 1, 2)])
    scans = aggregate_predictions(predictions, CLASSES, "scan")
    assert len(scans) == 3
    assert list(zip(scans["round"], scans["fold"], strict=True)) == [(0, 1), (1, 0), (1, 2)]
    assert scans["n_samples"].tolist() == [2, 2, 2]
    np.testing.assert_allclose(scans["p_COVID"], [0.5, 0.5, 0.5])


def test_models_stay_separate():
    rows = [("p1", "s1", "COVID", [0.9, 0.05, 0.05]), ("p1", "s1", "COVID", [0.1, 0.8, 0.1])]
    other = table(rows).assign(model="squeezenet")
    scans = aggregate_predictions(pd.concat([table(rows), other]), CLASSES, "scan")
    assert sorted(scans["model"]) == ["resnet18", "squeezenet"]


def test_label_disagreement_in_a_group_is_an_error_naming_it():
    predictions = table(
        [("p1", "s1", "COVID", [0.9, 0.05, 0.05]), ("p1", "s1", "Healthy", [0.1, 0.8, 0.1])], round_=3, fold=2
    )
    with pytest.raises(CovidlensError, match=r"scan 's1', round 3, fold 2.*COVID, Healthy"):
        aggregate_predictions(predictions, CLASSES, "scan")
    with pytest.raises(CovidlensError, match=r"patient 'p1'"):
        aggregate_predictions(predictions, CLASSES, "patient", "vote")


def test_scan_of_two_patients_is_an_error():
    predictions = table([("p1", "s1", "COVID", [0.9, 0.05, 0.05]), ("p2", "s1", "COVID", [0.1, 0.8, 0.1])])
    with pytest.raises(CovidlensError, match=r"scan 's1'.*patients \(p1, p2\)"):
        aggregate_predictions(predictions, CLASSES, "scan")


@pytest.mark.parametrize(
    ("level", "method", "message"),
    [
        ("volume", "mean", "use one of: sample, scan, patient"),
        ("scan", "median", "use one of: mean, vote"),
    ],
)
def test_unknown_level_or_method_lists_the_choices(level, method, message):
    with pytest.raises(CovidlensError, match=message):
        aggregate_predictions(mean_beats_slices(), CLASSES, level, method)


def test_missing_or_empty_id_column_is_an_error():
    predictions = mean_beats_slices()
    with pytest.raises(CovidlensError, match="scan_id"):
        aggregate_predictions(predictions.drop(columns="scan_id"), CLASSES, "scan")
    predictions.loc[0, "patient_id"] = None
    with pytest.raises(CovidlensError, match="'patient_id' is empty"):
        aggregate_predictions(predictions, CLASSES, "patient")


def random_predictions(n_scans: int = 20, seed: int = 0) -> pd.DataFrame:
    """1-5 random slices for each of n_scans one-scan patients, spread over 4 folds of one round."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_scans):
        rows += [(f"p{s}", f"s{s}", CLASSES[s % 3], rng.dirichlet([1, 1, 1])) for _ in range(rng.integers(1, 6))]
    frame = table(rows)
    frame["fold"] = frame["scan_id"].str[1:].astype(int) % 4
    return frame


@pytest.mark.parametrize("method", ["mean", "vote"])
def test_aggregated_rows_sum_to_one(method):
    scans = aggregate_predictions(random_predictions(), CLASSES, "scan", method)
    assert len(scans) == 20
    np.testing.assert_allclose(scans[P_COLUMNS].sum(axis=1), 1.0, rtol=0, atol=1e-12)
    assert ((scans[P_COLUMNS] >= 0) & (scans[P_COLUMNS] <= 1)).all().all()


@pytest.mark.parametrize("unit", ["fold", "round"])
def test_summarize_levels_gives_one_summary_per_level(unit):
    predictions = random_predictions()
    summaries = summarize_levels(predictions, CLASSES, unit=unit, method="vote")
    assert list(summaries) == list(LEVELS)
    for level, summary in summaries.items():
        expected = aggregate_predictions(predictions, CLASSES, level, "vote")
        assert summary["n_rows"] == len(expected)
        assert summary["level"] == level
        assert summary["unit"] == unit
        assert summary["overall"]["accuracy"]["mean"] == pytest.approx(
            summarize_cv(expected, CLASSES, unit=unit)["overall"]["accuracy"]["mean"]
        )
    assert summaries["sample"]["n_rows"] == len(predictions) > summaries["scan"]["n_rows"] == 20
    assert summaries["sample"]["aggregation"] is None and summaries["scan"]["aggregation"] == "vote"


def test_patient_level_of_a_real_manifest(tmp_path):
    root = tmp_path / "ct"
    synthesize("ct-slices", root, 6, size=64, slices=(3, 4))
    manifest = index_dataset(root).manifest
    classes = sorted(manifest["label"].unique())
    patients = sorted(manifest["patient_id"].unique())
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(len(classes)), size=len(manifest))
    predictions = pd.DataFrame(
        {
            "sample_id": manifest["sample_id"],
            "patient_id": manifest["patient_id"],
            "scan_id": manifest["scan_id"],
            "round": 0,
            "fold": manifest["patient_id"].map({p: i % 2 for i, p in enumerate(patients)}),
            "model": "resnet18",
            "y_true": manifest["label"],
        }
    )
    for i, name in enumerate(classes):
        predictions[f"p_{name}"] = probs[:, i]
    # The same round trip as finish_run's predictions.csv.
    path = tmp_path / "predictions.csv"
    predictions.to_csv(path, index=False)
    predictions = pd.read_csv(path, dtype={"sample_id": str})

    by_patient = aggregate_predictions(predictions, classes, "patient")
    assert sorted(by_patient["sample_id"]) == patients
    labels = manifest.groupby("patient_id")["label"].first()
    assert (by_patient.set_index("patient_id")["y_true"] == labels.loc[by_patient["patient_id"]].to_numpy()).all()
    expected = predictions.groupby("patient_id")[[f"p_{c}" for c in classes]].mean()
    np.testing.assert_allclose(
        by_patient.set_index("patient_id")[expected.columns].loc[expected.index].to_numpy(), expected.to_numpy()
    )
    summaries = summarize_levels(predictions, classes, unit="round")
    assert [s["n_rows"] for s in summaries.values()] == [len(manifest), len(patients), len(patients)]
    assert np.asarray(summaries["patient"]["confusion_matrix"]).sum() == len(patients)
