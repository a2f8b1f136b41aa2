"""CT volumes through the cross-validation runner: paper 002's recipe on tiny synthetic scans."""

import json

import pandas as pd
import pytest

from covidlens.config import load_recipe
from covidlens.errors import CovidlensError
from covidlens.evaluate.metrics import metrics_from_predictions
from covidlens.report.html import write_report
from covidlens.train.cv import run_cv

FAST = ["data.image_size=32", "train.epochs=2", "train.batch_size=4", "train.threads=1",
        "evaluate.bootstrap_resamples=200"]


@pytest.fixture(scope="module")
def volume_run(tiny_volumes, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "li2021"
    summary = run_cv(load_recipe("li2021", FAST + ["data.depth=2"]), tiny_volumes, run_dir, show_progress=False)
    return run_dir, summary


def test_volumes_are_the_samples_split_trained_and_predicted(volume_run):
    run_dir, summary = volume_run
    manifest = pd.read_csv(run_dir / "manifest.csv")
    volumes = pd.read_csv(run_dir / "volumes.csv")
    folds = pd.read_csv(run_dir / "folds.csv")
    predictions = pd.read_csv(run_dir / "predictions.csv")
    slices_per_scan = manifest.groupby("scan_id").size()
    assert len(volumes) == int((slices_per_scan // 2).sum())  # non-overlapping pairs, remainders dropped
    assert set(folds["sample_id"]) == set(volumes["sample_id"])
    assert set(folds["role"]) == {"train", "val", "test"} and set(folds["fold"]) == {0}
    merged = folds.merge(volumes, on="sample_id")
    assert merged.groupby("patient_id")["role"].nunique().max() == 1  # patient-wise
    test = merged.loc[merged["role"] == "test", "sample_id"]
    assert sorted(predictions["sample_id"]) == sorted(test)
    assert summary["model"] == "ResNet3D-18" and summary["classes"] == ["NCP", "CP", "Normal"]


def test_metrics_hold_bootstrap_cis_and_scan_and_patient_levels(volume_run):
    run_dir, _ = volume_run
    summary = json.loads((run_dir / "metrics.json").read_text())
    predictions = pd.read_csv(run_dir / "predictions.csv", dtype={"sample_id": str})
    direct = metrics_from_predictions(predictions, ["NCP", "CP", "Normal"])
    boot = summary["bootstrap"]
    assert boot["n_resamples"] == 200 and boot["positive"] == "NCP" and boot["n"] == len(predictions)
    assert boot["metrics"]["accuracy"]["estimate"] == pytest.approx(direct["accuracy"])
    assert boot["metrics"]["recall"]["estimate"] == pytest.approx(direct["per_class"]["NCP"]["sensitivity"])
    low, high = boot["metrics"]["accuracy"]["low"], boot["metrics"]["accuracy"]["high"]
    assert low <= direct["accuracy"] <= high
    levels = summary["levels"]
    assert levels["scan"]["n_rows"] == predictions["scan_id"].nunique()
    assert levels["patient"]["n_rows"] == predictions["patient_id"].nunique()
    assert levels["patient"]["aggregation"] == "mean"


def test_volume_report_shows_depth_volumes_bootstrap_and_levels(volume_run):
    run_dir, _ = volume_run
    report = write_report(run_dir).read_text()
    assert "volumes of 2 adjacent slices" in report
    assert "Bootstrap confidence intervals" in report and "Recall (NCP)" in report
    assert "Scan and patient level" in report
    assert "holdout" in report


def test_volume_run_resumes_without_training(volume_run, tiny_volumes):
    run_dir, summary = volume_run
    checkpoint = run_dir / "checkpoints" / "r00-f0.pt"
    stamp = checkpoint.stat().st_mtime_ns
    again = run_cv(load_recipe("li2021", FAST + ["data.depth=2"]), tiny_volumes, run_dir, show_progress=False)
    assert checkpoint.stat().st_mtime_ns == stamp
    assert again["bootstrap"] == summary["bootstrap"]


def test_model_and_depth_must_agree(tiny_volumes, tmp_path):
    with pytest.raises(CovidlensError, match="takes 2D images.*data.depth=2"):
        run_cv(load_recipe("li2021", FAST + ["data.depth=2", "model.name=resnet18"]), tiny_volumes, tmp_path / "a",
               show_progress=False)
    with pytest.raises(CovidlensError, match="set data.depth"):
        run_cv(load_recipe("li2021", FAST + ["data.depth=null"]), tiny_volumes, tmp_path / "b", show_progress=False)
    with pytest.raises(CovidlensError, match="positive_class 'COVID'"):
        run_cv(load_recipe("li2021", FAST + ["evaluate.positive_class=COVID"]), tiny_volumes, tmp_path / "c",
               show_progress=False)
    assert not any((tmp_path / name).exists() for name in "abc")


def test_predicting_single_files_with_a_volume_model_is_refused(volume_run, tiny_volumes):
    from covidlens.deploy.predict import predict_files

    run_dir, _ = volume_run
    some_slice = next(tiny_volumes.rglob("0000.png"))
    with pytest.raises(CovidlensError, match="volume model"):
        predict_files(run_dir, [some_slice])


def test_the_same_recipe_field_trains_a_2plus1d_network(tiny_volumes, tmp_path):
    recipe = load_recipe("li2021", FAST + ["data.depth=4", "model.name=R(2+1)D-18", "train.epochs=1"])
    summary = run_cv(recipe, tiny_volumes, tmp_path / "r2p1", show_progress=False)
    assert summary["model"] == "R(2+1)D-18"
    predictions = pd.read_csv(tmp_path / "r2p1" / "predictions.csv")
    assert predictions["sample_id"].str.endswith(("@0000", "@0004")).all()  # depth-4 volumes
