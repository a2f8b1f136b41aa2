import numpy as np
import pandas as pd
import pytest

from covidlens.data.splits import (
    assert_patient_disjoint,
    folds_from_split_column,
    patient_wise_folds,
    patient_wise_holdout,
)
from covidlens.errors import CovidlensError


def tempting_manifest(seed: int = 0) -> pd.DataFrame:
    """Many slices per patient and classes unbalanced across patients: image-wise splits would leak."""
    rng = np.random.default_rng(seed)
    rows = []
    for label, n_patients in (("COVID", 17), ("Healthy", 6), ("Others", 11)):
        for p in range(n_patients):
            patient = f"{label}-{p}"
            for s in range(int(rng.integers(5, 40))):
                rows.append({"sample_id": f"{patient}/{s}", "label": label, "patient_id": patient})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_patient_in_two_roles_of_any_fold(seed):
    manifest = tempting_manifest(seed)
    folds = patient_wise_folds(manifest, folds=5, rounds=3, seed=seed, val_fraction=0.15)
    merged = folds.merge(manifest, on="sample_id")
    roles = merged.groupby(["round", "fold", "patient_id"])["role"].nunique()
    assert roles.max() == 1
    # every sample is tested exactly once per round, and every role is used
    tested = merged[merged.role == "test"].groupby(["round", "sample_id"]).size()
    assert len(tested) == 3 * len(manifest) and tested.max() == 1
    assert set(folds["role"]) == {"train", "val", "test"}


def test_every_class_in_every_test_fold_and_validation_share():
    manifest = tempting_manifest()
    folds = patient_wise_folds(manifest, folds=5, rounds=1, seed=0, val_fraction=0.15)
    merged = folds.merge(manifest, on="sample_id")
    for _, fold in merged.groupby("fold"):
        assert set(fold.loc[fold.role == "test", "label"]) == {"COVID", "Healthy", "Others"}
        train_patients = fold.loc[fold.role != "test", "patient_id"].nunique()
        val_patients = fold.loc[fold.role == "val", "patient_id"].nunique()
        assert val_patients == round(0.15 * train_patients)


def test_rounds_differ_and_seed_is_deterministic():
    manifest = tempting_manifest()
    a = patient_wise_folds(manifest, folds=5, rounds=2, seed=3, val_fraction=0.15)
    b = patient_wise_folds(manifest, folds=5, rounds=2, seed=3, val_fraction=0.15)
    pd.testing.assert_frame_equal(a, b)
    first, second = (a[a["round"] == r].set_index(["fold", "sample_id"])["role"] for r in (0, 1))
    assert not first.reset_index(drop=True).equals(second.reset_index(drop=True))


def test_too_few_patients_for_folds():
    manifest = tempting_manifest()
    with pytest.raises(CovidlensError, match="fewer patients than folds"):
        patient_wise_folds(manifest, folds=7, rounds=1, seed=0, val_fraction=0.15)


def test_leak_is_detected():
    manifest = tempting_manifest()
    folds = patient_wise_folds(manifest, folds=5, rounds=1, seed=0, val_fraction=0.15)
    leaked = folds.copy()
    first = manifest["sample_id"].iloc[0]
    row = (leaked.sample_id == first) & (leaked.fold == 0)
    leaked.loc[row, "role"] = "test" if leaked.loc[row, "role"].iloc[0] != "test" else "train"
    with pytest.raises(CovidlensError, match="split leaks"):
        assert_patient_disjoint(leaked, manifest)


def test_fixed_split_lists():
    manifest = pd.DataFrame(
        {
            "sample_id": ["a", "b", "c", "d"],
            "label": ["x", "x", "y", "y"],
            "patient_id": ["p1", "p1", "p2", "p3"],
            "split": ["train", "train", "test", "val"],
        }
    )
    folds = folds_from_split_column(manifest)
    assert folds.set_index("sample_id")["role"].to_dict() == {
        "a": "train",
        "b": "train",
        "c": "test",
        "d": "val",
    }
    manifest.loc[1, "split"] = "test"
    with pytest.raises(CovidlensError, match="split leaks"):
        folds_from_split_column(manifest)


def test_a_class_with_one_training_patient_keeps_it_for_training():
    rows = [{"sample_id": f"{p}/{s}", "label": "A", "patient_id": p} for p in "abcdefgh" for s in range(3)]
    rows += [{"sample_id": f"{p}/{s}", "label": "B", "patient_id": p} for p in "xy" for s in range(3)]
    manifest = pd.DataFrame(rows)
    for seed in range(5):
        folds = patient_wise_folds(manifest, folds=2, rounds=1, seed=seed, val_fraction=0.3).merge(manifest)
        for _, fold in folds.groupby("fold"):
            assert set(fold.loc[fold.role == "train", "label"]) == {"A", "B"}
            assert (fold.role == "val").any()


def test_fixed_split_needs_every_role():
    manifest = pd.DataFrame(
        {"sample_id": ["a", "b"], "label": ["x", "y"], "patient_id": ["p1", "p2"], "split": ["train", "test"]}
    )
    with pytest.raises(CovidlensError, match="no val images"):
        folds_from_split_column(manifest)


def test_nearby_seeds_share_no_round():
    manifest = tempting_manifest()
    a = patient_wise_folds(manifest, folds=5, rounds=2, seed=0, val_fraction=0.15)
    b = patient_wise_folds(manifest, folds=5, rounds=2, seed=1, val_fraction=0.15)
    tests_a = a[(a["round"] == 1) & (a.role == "test")].sort_values("sample_id")["fold"].to_numpy()
    tests_b = b[(b["round"] == 0) & (b.role == "test")].sort_values("sample_id")["fold"].to_numpy()
    assert not np.array_equal(tests_a, tests_b)


def table1_manifest() -> pd.DataFrame:
    """Paper 002 Table 1's 246 / 201 / 244 patients (NCP / CP / Normal), 1-3 scans' worth of rows each."""
    rng = np.random.default_rng(1)
    rows = []
    for label, n in (("NCP", 246), ("CP", 201), ("Normal", 244)):
        for i in range(n):
            for k in range(int(rng.integers(1, 4))):
                rows.append({"sample_id": f"{label}{i}_{k}", "label": label, "patient_id": f"{label}{i}"})
    return pd.DataFrame(rows)


def test_holdout_reproduces_table_1_patient_counts_without_leaks():
    manifest = table1_manifest()
    folds = patient_wise_holdout(manifest, test_fraction=0.2, val_fraction=0.275, rounds=2, seed=0)
    merged = folds.merge(manifest, on="sample_id")
    for round_index in (0, 1):
        part = merged[merged["round"] == round_index]
        patients = part.groupby("role")["patient_id"].nunique()
        # Table 1: 401 train, 152 validation and 138 test patients of 691
        assert patients.to_dict() == {"test": 138, "train": 401, "val": 152}
        assert part.groupby("patient_id")["role"].nunique().max() == 1
        assert len(part) == len(manifest) and set(part["fold"]) == {0}
        test_share = part[part["role"] == "test"].groupby("label")["patient_id"].nunique() / manifest.groupby(
            "label"
        )["patient_id"].nunique()
        assert test_share.between(0.18, 0.22).all()  # stratified by class
    first = merged[merged["round"] == 0].set_index("sample_id")["role"]
    second = merged[merged["round"] == 1].set_index("sample_id")["role"]
    assert (first != second).any()
    again = patient_wise_holdout(manifest, 0.2, 0.275, rounds=2, seed=0)
    pd.testing.assert_frame_equal(folds, again)


def test_holdout_of_mixed_sources_gives_each_split_its_share_of_each_source():
    # paper 004's arrangement 2: a COVID / not-COVID source mixed with a COVID-only one (60 / 20 / 20 of 100)
    rows = [
        {"sample_id": f"{source}-{label}{i}", "label": label, "patient_id": f"{source}-{label}{i}", "source": source}
        for source, counts in (("zhao", {"COVID": 216, "NonCOVID": 198}), ("italy", {"COVID": 100}))
        for label, n in counts.items()
        for i in range(n)
    ]
    manifest = pd.DataFrame(rows)
    folds = patient_wise_holdout(manifest, test_fraction=0.2, val_fraction=0.25, rounds=3, seed=0).merge(manifest)
    for _, part in folds.groupby("round"):
        italian = part[part["source"] == "italy"]["role"].value_counts().to_dict()
        assert italian == {"train": 60, "val": 20, "test": 20}
        assert part.groupby("patient_id")["role"].nunique().max() == 1
    one_source = manifest.assign(source="zhao")  # one source: stratified by class alone, as before
    pd.testing.assert_frame_equal(
        patient_wise_holdout(one_source, 0.2, 0.25, 1, 0),
        patient_wise_holdout(one_source.drop(columns="source"), 0.2, 0.25, 1, 0),
    )
