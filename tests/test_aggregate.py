"""Cross-validation summaries: per-unit metrics, mean ± t CI, pooled confusion matrix, tables."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pandas as pd
import pytest
from rich.console import Console
from sklearn import metrics as skm

from covidlens.errors import CovidlensError
from covidlens.evaluate.aggregate import (
    METRIC_HEADERS,
    format_mean_ci,
    format_summary_table,
    summarize_cv,
    summary_caption,
    summary_rows,
)
from covidlens.evaluate.stats import mean_ci

CLASSES = ["COVID", "Healthy", "Others"]


def fold_rows(round_: int, fold: int, n: int, n_correct: int, start: int = 0) -> list[dict]:
    """n rows whose labels cycle over CLASSES; the first n_correct are predicted right, the rest wrong."""
    rows = []
    for i in range(n):
        true = i % len(CLASSES)
        predicted = true if i < n_correct else (true + 1) % len(CLASSES)
        probs = [0.1] * len(CLASSES)
        probs[predicted] = 0.8
        rows.append(
            {
                "sample_id": f"s{start + i}",
                "patient_id": f"p{(start + i) // 2}",
                "scan_id": f"p{(start + i) // 2}",
                "round": round_,
                "fold": fold,
                "model": "resnet50",
                "y_true": CLASSES[true],
                **{f"p_{c}": p for c, p in zip(CLASSES, probs, strict=True)},
            }
        )
    return rows


def known_accuracy_table() -> pd.DataFrame:
    """One round of four 10-row folds with accuracies 0.9, 0.8, 1.0, 0.7."""
    rows = []
    for fold, n_correct in enumerate([9, 8, 10, 7]):
        rows += fold_rows(0, fold, 10, n_correct, start=10 * fold)
    return pd.DataFrame(rows)


def random_cv_table(n_rounds: int, n_folds: int, n_samples: int = 60, seed: int = 0) -> pd.DataFrame:
    """Each round tests every sample once, in a random fold, with random informative probabilities."""
    rng = np.random.default_rng(seed)
    labels = np.resize(np.arange(len(CLASSES)), n_samples)
    frames = []
    for round_ in range(n_rounds):
        logits = rng.normal(size=(n_samples, len(CLASSES)))
        logits[np.arange(n_samples), labels] += 1.5
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        frame = pd.DataFrame(
            {
                "sample_id": [f"s{i}" for i in range(n_samples)],
                "patient_id": [f"p{i // 3}" for i in range(n_samples)],
                "scan_id": [f"p{i // 3}" for i in range(n_samples)],
                "round": round_,
                "fold": rng.permutation(np.resize(np.arange(n_folds), n_samples)),
                "model": "densenet121",
                "y_true": [CLASSES[i] for i in labels],
            }
        )
        for i, name in enumerate(CLASSES):
            frame[f"p_{name}"] = probs[:, i]
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def test_known_fold_accuracies_give_the_expected_mean_and_ci() -> None:
    summary = summarize_cv(known_accuracy_table(), CLASSES, unit="fold")
    accuracy = summary["overall"]["accuracy"]
    assert [u["accuracy"] for u in summary["units"]] == pytest.approx([0.9, 0.8, 1.0, 0.7])
    # Hand computation: mean 0.85, s = sqrt(0.05 / 3), t_{0.975, 3} = 3.182446305284263, n = 4.
    half_width = 3.182446305284263 * math.sqrt(0.05 / 3) / 2
    assert accuracy["mean"] == pytest.approx(0.85)
    assert accuracy["half_width"] == pytest.approx(half_width)
    assert accuracy["low"] == pytest.approx(0.85 - half_width)
    assert accuracy["high"] == pytest.approx(0.85 + half_width)
    assert accuracy["n"] == 4
    assert summary["n_units"] == 4


@pytest.mark.parametrize(("n_rounds", "n_folds"), [(3, 5), (2, 4), (1, 5)])
def test_number_of_units_is_rounds_times_folds_or_rounds(n_rounds: int, n_folds: int) -> None:
    table = random_cv_table(n_rounds, n_folds)
    by_fold = summarize_cv(table, CLASSES, unit="fold")
    by_round = summarize_cv(table, CLASSES, unit="round")
    assert by_fold["n_units"] == len(by_fold["units"]) == n_rounds * n_folds
    assert by_round["n_units"] == len(by_round["units"]) == n_rounds
    assert [(u["round"], u["fold"]) for u in by_fold["units"]] == [
        (r, f) for r in range(n_rounds) for f in range(n_folds)
    ]
    assert [u["round"] for u in by_round["units"]] == list(range(n_rounds))
    assert all("fold" not in u for u in by_round["units"])
    assert by_fold["overall"]["accuracy"]["n"] == n_rounds * n_folds


def test_per_unit_metrics_and_their_means_match_sklearn_per_fold() -> None:
    table = random_cv_table(2, 5, seed=3)
    summary = summarize_cv(table, CLASSES, unit="fold")
    per_fold = {
        name: [] for name in ("accuracy", "auroc", "covid_recall", "others_precision", "healthy_spec")
    }
    for (_, _), frame in table.groupby(["round", "fold"]):
        y_true = frame["y_true"].map(CLASSES.index).to_numpy()
        probs = frame[[f"p_{c}" for c in CLASSES]].to_numpy()
        y_pred = probs.argmax(axis=1)
        per_fold["accuracy"].append(skm.accuracy_score(y_true, y_pred))
        per_fold["auroc"].append(skm.roc_auc_score(y_true, probs, multi_class="ovr", labels=[0, 1, 2]))
        per_fold["covid_recall"].append(skm.recall_score(y_true == 0, y_pred == 0, zero_division=0))
        per_fold["others_precision"].append(skm.precision_score(y_true == 2, y_pred == 2, zero_division=0))
        per_fold["healthy_spec"].append(skm.recall_score(y_true == 1, y_pred == 1, pos_label=False))
    assert [u["accuracy"] for u in summary["units"]] == pytest.approx(per_fold["accuracy"])
    assert [u["macro_auroc"] for u in summary["units"]] == pytest.approx(per_fold["auroc"])
    checks = [
        (summary["overall"]["accuracy"], "accuracy"),
        (summary["overall"]["macro_auroc"], "auroc"),
        (summary["per_class"]["COVID"]["sensitivity"], "covid_recall"),
        (summary["per_class"]["Others"]["precision"], "others_precision"),
        (summary["per_class"]["Healthy"]["specificity"], "healthy_spec"),
    ]
    for ci, name in checks:
        expected = mean_ci(per_fold[name])
        assert ci["mean"] == pytest.approx(expected.mean), name
        assert ci["half_width"] == pytest.approx(expected.half_width), name


def test_unit_round_pools_the_folds_of_a_round() -> None:
    # Folds of 2 rows (all right) and 8 rows (4 right): pooled 6/10 = 0.6, not the fold mean 0.75.
    rows = []
    for round_ in (0, 1):
        rows += fold_rows(round_, 0, 2, 2, start=0) + fold_rows(round_, 1, 8, 4, start=2)
    table = pd.DataFrame(rows)
    by_round = summarize_cv(table, CLASSES, unit="round")
    assert [u["accuracy"] for u in by_round["units"]] == pytest.approx([0.6, 0.6])
    assert [u["n"] for u in by_round["units"]] == [10, 10]
    assert by_round["overall"]["accuracy"]["mean"] == pytest.approx(0.6)
    assert by_round["overall"]["accuracy"]["half_width"] == pytest.approx(0.0)
    by_fold = summarize_cv(table, CLASSES, unit="fold")
    assert by_fold["overall"]["accuracy"]["mean"] == pytest.approx(0.75)


def test_pooled_confusion_matrix_counts_every_row() -> None:
    table = random_cv_table(3, 5, seed=7)
    for unit in ("fold", "round"):
        summary = summarize_cv(table, CLASSES, unit=unit)
        cm = np.array(summary["confusion_matrix"])
        assert cm.sum() == len(table)
        y_true = table["y_true"].map(CLASSES.index).to_numpy()
        y_pred = table[[f"p_{c}" for c in CLASSES]].to_numpy().argmax(axis=1)
        np.testing.assert_array_equal(cm, skm.confusion_matrix(y_true, y_pred, labels=[0, 1, 2]))
        np.testing.assert_allclose(np.array(summary["confusion_matrix_normalized"]).sum(axis=1), 1.0)


def test_summary_is_json_serialisable_with_plain_values() -> None:
    summary = summarize_cv(random_cv_table(2, 3), CLASSES, unit="fold", confidence=0.9)
    decoded = json.loads(json.dumps(summary))
    assert decoded["unit"] == "fold" and decoded["confidence"] == 0.9
    assert decoded["classes"] == CLASSES
    assert decoded["model"] == "densenet121"
    assert decoded["units"][0]["round"] == 0 and isinstance(summary["units"][0]["round"], int)
    assert set(decoded["per_class"]["COVID"]) == {"accuracy", "sensitivity", "specificity", "precision", "f1"}
    assert set(decoded["overall"]["accuracy"]) == {"mean", "half_width", "low", "high", "n"}
    assert decoded["ci_method"] == "mean ± t-based 90% CI half-width over 6 folds"


def test_a_single_unit_has_a_mean_but_no_interval() -> None:
    summary = summarize_cv(random_cv_table(1, 5), CLASSES, unit="round")
    assert summary["n_units"] == 1
    assert not math.isnan(summary["overall"]["accuracy"]["mean"])
    assert math.isnan(summary["overall"]["accuracy"]["half_width"])
    assert summary["ci_method"] == "mean ± t-based 95% CI half-width over 1 round"


def test_missing_probability_column_is_named() -> None:
    table = random_cv_table(1, 5).drop(columns="p_Healthy")
    with pytest.raises(CovidlensError, match="p_Healthy"):
        summarize_cv(table, CLASSES)


def test_unknown_label_is_named() -> None:
    table = random_cv_table(1, 5)
    table.loc[3, "y_true"] = "Influenza"
    with pytest.raises(CovidlensError, match="Influenza"):
        summarize_cv(table, CLASSES)


def test_bad_unit_confidence_and_columns_are_rejected() -> None:
    table = random_cv_table(1, 5)
    with pytest.raises(CovidlensError, match="unknown CV unit 'patient'"):
        summarize_cv(table, CLASSES, unit="patient")
    with pytest.raises(CovidlensError, match="confidence"):
        summarize_cv(table, CLASSES, confidence=95)
    with pytest.raises(CovidlensError, match="fold"):
        summarize_cv(table.drop(columns="fold"), CLASSES, unit="fold")
    blank = table.copy()
    blank["round"] = blank["round"].astype(float)
    blank.loc[0, "round"] = np.nan
    with pytest.raises(CovidlensError, match="'round' is empty"):
        summarize_cv(blank, CLASSES)


def test_several_models_are_refused() -> None:
    table = random_cv_table(1, 5)
    table.loc[:10, "model"] = "vgg16"
    with pytest.raises(CovidlensError, match="several models"):
        summarize_cv(table, CLASSES)


def test_a_sample_tested_twice_in_a_round_is_refused_when_pooling_rounds() -> None:
    table = random_cv_table(1, 5)
    doubled = pd.concat([table, table.iloc[[0]]], ignore_index=True)
    with pytest.raises(CovidlensError, match="'s0'.*round 0"):
        summarize_cv(doubled, CLASSES, unit="round")


def handmade_summary() -> dict:
    ci = {"mean": 0.97591, "half_width": 0.00481, "low": 0.9711, "high": 0.98072, "n": 5}
    no_ci = {"mean": 0.5, "half_width": float("nan"), "low": float("nan"), "high": float("nan"), "n": 1}
    metrics = ["accuracy", "sensitivity", "specificity", "precision", "f1"]
    return {
        "model": "EfficientNetB5",
        "classes": ["COVID", "Healthy"],
        "ci_method": "mean ± t-based 95% CI half-width over 5 folds",
        "overall": {"accuracy": ci, "macro_auroc": {**ci, "mean": 0.99123, "half_width": 0.00234}},
        "per_class": {
            "COVID": {m: ci for m in metrics},
            "Healthy": {**{m: ci for m in metrics}, "f1": no_ci},
        },
    }


def test_format_mean_ci_uses_four_decimals() -> None:
    assert format_mean_ci({"mean": 0.97591, "half_width": 0.00481}) == "0.9759 ± 0.0048"
    assert format_mean_ci({"mean": 0.5, "half_width": float("nan")}) == "0.5000 ± n/a"
    assert format_mean_ci({"mean": float("nan"), "half_width": float("nan")}) == "n/a"


def test_summary_rows_have_one_row_per_class_in_metric_order() -> None:
    summary = handmade_summary()
    rows = summary_rows(summary)
    assert list(METRIC_HEADERS.values()) == ["Accuracy", "Sensitivity", "Specificity", "Precision", "F1"]
    assert rows[0] == ["COVID"] + ["0.9759 ± 0.0048"] * 5
    assert rows[1][0] == "Healthy" and rows[1][-1] == "0.5000 ± n/a"
    assert summary_caption(summary) == (
        "Overall accuracy 0.9759 ± 0.0048; macro-AUROC 0.9912 ± 0.0023. "
        "Values are mean ± t-based 95% CI half-width over 5 folds."
    )


def test_rich_table_renders_classes_metrics_and_the_ci_method() -> None:
    summary = summarize_cv(known_accuracy_table(), CLASSES, unit="fold")
    table = format_summary_table(summary)
    assert [c.header for c in table.columns] == [
        "Class",
        "Accuracy",
        "Sensitivity",
        "Specificity",
        "Precision",
        "F1",
    ]
    assert table.row_count == len(CLASSES)
    console = Console(file=io.StringIO(), width=250, color_system=None)
    console.print(table)
    text = console.file.getvalue()
    flat = " ".join(text.split())  # the caption wraps to the table's width
    assert "resnet50" in text
    assert "Overall accuracy 0.8500 ± 0.2054" in flat
    assert "mean ± t-based 95% CI half-width over 4 folds" in flat
    for cls in CLASSES:
        sensitivity = format_mean_ci(summary["per_class"][cls]["sensitivity"])
        row = next(line for line in text.splitlines() if cls in line)
        assert sensitivity in row


def test_a_fold_without_a_class_leaves_that_class_out_instead_of_counting_zero():
    rows = [
        ("s1", 0, "a", 0.9),  # fold 0: both classes, all right
        ("s2", 0, "b", 0.1),
        ("s3", 1, "a", 0.8),  # fold 1: only class a, so sensitivity of b is undefined there
        ("s4", 1, "a", 0.7),
    ]
    table = pd.DataFrame(rows, columns=["sample_id", "fold", "y_true", "p_a"]).assign(round=0, model="m")
    table["p_b"] = 1 - table["p_a"]
    summary = summarize_cv(table, ["a", "b"], unit="fold")
    sensitivity_b = summary["per_class"]["b"]["sensitivity"]
    assert sensitivity_b["mean"] == 1.0 and sensitivity_b["n"] == 1
    assert summary["per_class"]["a"]["sensitivity"]["n"] == 2
    assert math.isnan(summary["units"][1]["per_class"]["b"]["sensitivity"])


def test_undefined_values_are_written_as_null(tmp_path):
    from covidlens import atomic

    path = atomic.write_json(tmp_path / "m.json", {"x": float("nan"), "y": [1.0, float("inf")]})
    assert json.loads(path.read_text()) == {"x": None, "y": [1.0, None]}
