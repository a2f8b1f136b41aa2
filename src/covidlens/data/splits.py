"""Patient-wise splits: repeated stratified group k-fold with an inner validation split, holdout, fixed lists."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, train_test_split

from covidlens.errors import CovidlensError

FOLD_COLUMNS = ["sample_id", "round", "fold", "role"]
ROLES = ("train", "val", "test")


def patient_table(manifest: pd.DataFrame) -> pd.DataFrame:
    """One row per patient with its class (a patient has one class; the manifest checks that) and its stratum:
    the class, or class and source where the data mixes sources (paper 004's arrangement 2), so that every
    split gets its share of each source."""
    patients = manifest.groupby("patient_id", sort=True)["label"].first().reset_index()
    patients["stratum"] = patients["label"].astype(str)
    if "source" in manifest and manifest["source"].nunique() > 1:
        source = manifest.groupby("patient_id", sort=True)["source"].first().to_numpy()
        patients["stratum"] = patients["stratum"] + " / " + source.astype(str)
    return patients


def _check_enough_patients(patients: pd.DataFrame, folds: int) -> None:
    counts = patients["label"].value_counts()
    if (counts < folds).any():
        small = ", ".join(f"{label} ({n})" for label, n in counts[counts < folds].items())
        advice = f"use --folds {int(counts.min())} or more data" if counts.min() >= 2 else "add patients"
        raise CovidlensError(f"classes with fewer patients than folds: {small}; {advice}")


def _validation_patients(patients: pd.DataFrame, fraction: float, seed: int) -> set[str]:
    """Pick a class-stratified share of patients for validation, leaving every class a training patient.

    A class with a single training patient keeps it for training; stratification is dropped when a
    class is too small for it.
    """
    n_val = max(1, int(round(fraction * len(patients))))
    counts = patients["label"].value_counts()
    pool = patients[patients["label"].map(counts) >= 2]
    n_val = min(n_val, len(pool) - pool["label"].nunique())
    if n_val < 1:
        raise CovidlensError(f"only {len(patients)} training patients: too few for a validation split; add patients")
    stratify = None
    for column in ("stratum", "label"):  # the finest stratification the pool is large enough for
        counts = pool[column].value_counts()
        if len(counts) <= n_val <= len(pool) - len(counts) and counts.min() >= 2:
            stratify = pool[column]
            break
    _, val = train_test_split(pool, test_size=n_val, random_state=seed, stratify=stratify)
    return set(val["patient_id"])


def _seed(*parts: int) -> int:
    """An independent 32-bit seed for each tuple of integers (runs with nearby seeds share no rounds)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def patient_wise_folds(
    manifest: pd.DataFrame, folds: int, rounds: int, seed: int, val_fraction: float
) -> pd.DataFrame:
    """Repeated stratified group k-fold on patients, each training part split again by patient.

    Each round shuffles with its own seed drawn from (seed, round). Every sample is in the test
    role exactly once per round, and the train / val / test roles of one fold never share a patient.
    """
    patients = patient_table(manifest)
    _check_enough_patients(patients, folds)
    label_of_sample = manifest["label"].to_numpy()
    groups = manifest["patient_id"].to_numpy()
    rows = []
    for round_index in range(rounds):
        splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=_seed(seed, round_index))
        for fold, (train_idx, test_idx) in enumerate(
            splitter.split(np.zeros(len(manifest)), label_of_sample, groups)
        ):
            train_patients = patients[patients["patient_id"].isin(set(groups[train_idx]))]
            val_patients = _validation_patients(train_patients, val_fraction, _seed(seed, round_index, fold))
            role = np.full(len(manifest), "", dtype=object)
            role[train_idx] = "train"
            role[test_idx] = "test"
            role[np.isin(groups, list(val_patients)) & (role == "train")] = "val"
            rows.append(
                pd.DataFrame(
                    {"sample_id": manifest["sample_id"], "round": round_index, "fold": fold, "role": role}
                )
            )
    table = pd.concat(rows, ignore_index=True)
    assert_patient_disjoint(table, manifest)
    return table


def patient_wise_holdout(
    manifest: pd.DataFrame, test_fraction: float, val_fraction: float, rounds: int, seed: int
) -> pd.DataFrame:
    """One class-stratified patient-wise train / val / test split per round (fold 0 of each round).

    `test_fraction` of all patients are tested, then `val_fraction` of the rest validate (paper 002
    Table 1: 20% and 27.5% of 691 patients give its 401 / 152 / 138 patients).
    """
    patients = patient_table(manifest)
    groups = manifest["patient_id"].to_numpy()
    rows = []
    for round_index in range(rounds):
        test = _validation_patients(patients, test_fraction, _seed(seed, round_index))
        rest = patients[~patients["patient_id"].isin(test)]
        val = _validation_patients(rest, val_fraction, _seed(seed, round_index, 0))
        role = np.where(np.isin(groups, list(test)), "test", np.where(np.isin(groups, list(val)), "val", "train"))
        rows.append(pd.DataFrame({"sample_id": manifest["sample_id"], "round": round_index, "fold": 0, "role": role}))
    table = pd.concat(rows, ignore_index=True)
    assert_patient_disjoint(table, manifest)
    return table


def folds_from_split_column(manifest: pd.DataFrame) -> pd.DataFrame:
    """One fold from a dataset's fixed train / val / test lists (the manifest's `split` column)."""
    if "split" not in manifest or manifest["split"].fillna("").eq("").all():
        raise CovidlensError("this data has no fixed split lists; use cross-validation folds instead")
    split = manifest["split"].fillna("").astype(str)
    unknown = sorted(set(split) - set(ROLES) - {""})
    if unknown:
        raise CovidlensError(f"unknown split name(s) {unknown}; expected train, val or test")
    absent = [role for role in ROLES if not (split == role).any()]
    if absent:
        raise CovidlensError(
            f"the fixed split lists have no {' or '.join(absent)} images; a fixed split needs train, val and test"
        )
    kept = split != ""
    table = pd.DataFrame(
        {"sample_id": manifest.loc[kept, "sample_id"], "round": 0, "fold": 0, "role": split[kept]}
    ).reset_index(drop=True)
    assert_patient_disjoint(table, manifest)
    return table


def assert_patient_disjoint(folds: pd.DataFrame, manifest: pd.DataFrame) -> None:
    """Raise CovidlensError if any patient has samples in two roles of the same fold."""
    merged = folds.merge(manifest[["sample_id", "patient_id"]], on="sample_id", how="left")
    roles_per_patient = merged.groupby(["round", "fold", "patient_id"])["role"].nunique()
    leaks = roles_per_patient[roles_per_patient > 1]
    if len(leaks):
        (round_index, fold, patient) = leaks.index[0]
        raise CovidlensError(
            f"split leaks: patient {patient!r} is in more than one role in round {round_index} fold {fold} "
            f"({len(leaks)} such patient-folds); fix the patient ids or the split lists"
        )


def check_folds(folds: pd.DataFrame, manifest: pd.DataFrame) -> None:
    """Check a folds table read from disk against its manifest."""
    missing = [c for c in FOLD_COLUMNS if c not in folds]
    if missing:
        raise CovidlensError(f"folds table lacks column(s) {', '.join(missing)}")
    unknown = set(folds["sample_id"]) - set(manifest["sample_id"])
    if unknown:
        raise CovidlensError(
            f"folds name {len(unknown)} sample(s) not in the manifest, e.g. {sorted(unknown)[0]!r}"
        )
    assert_patient_disjoint(folds, manifest)
