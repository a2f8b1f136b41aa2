import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from covidlens.config import load_recipe
from covidlens.errors import CovidlensError
from covidlens.report.html import write_report
from covidlens.train.cv import run_cv

FAST = [
    "data.image_size=32",
    "train.epochs=3",
    "train.threads=1",
    "cv.folds=3",
    "cv.rounds=1",
]


def fast_recipe(*extra):
    return load_recipe("demo", FAST + list(extra))


@pytest.fixture(scope="module")
def finished_run(tiny_ct, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "whole"
    summary = run_cv(fast_recipe(), tiny_ct, run_dir, show_progress=False)
    return run_dir, summary


def test_run_directory_holds_every_table(finished_run):
    run_dir, summary = finished_run
    for name in (
        "config.yaml",
        "run.json",
        "manifest.csv",
        "folds.csv",
        "history.csv",
        "predictions.csv",
        "metrics.json",
    ):
        assert (run_dir / name).is_file(), name
    assert len(list((run_dir / "checkpoints").glob("*.pt"))) == 3
    manifest = pd.read_csv(run_dir / "manifest.csv")
    predictions = pd.read_csv(run_dir / "predictions.csv")
    # each sample is predicted exactly once in a round of k-fold
    assert sorted(predictions["sample_id"]) == sorted(manifest["sample_id"])
    assert {"p_COVID", "p_Healthy", "p_Others"} <= set(predictions.columns)
    assert predictions.filter(like="p_").sum(axis=1).round(5).eq(1).all()
    history = pd.read_csv(run_dir / "history.csv")
    assert len(history) == 3 * 3 and {"train_loss", "val_accuracy", "lr"} <= set(history.columns)
    assert summary["n_units"] == 3
    assert json.loads((run_dir / "metrics.json").read_text())["classes"] == ["COVID", "Healthy", "Others"]


def test_test_patients_never_trained_on(finished_run):
    run_dir, _ = finished_run
    folds = pd.read_csv(run_dir / "folds.csv").merge(pd.read_csv(run_dir / "manifest.csv"), on="sample_id")
    assert folds.groupby(["round", "fold", "patient_id"])["role"].nunique().max() == 1


def test_report_has_the_sections(finished_run):
    run_dir, _ = finished_run
    text = write_report(run_dir).read_text()
    for needle in (
        "Images and patients per class",
        "Sensitivity",
        "Confusion matrix",
        "Training curves",
        "data:image/png;base64",
        "± ",
    ):
        assert needle in text
    assert "IMAGE-WISE" not in text


def test_rerun_with_other_recipe_is_refused(finished_run, tiny_ct):
    run_dir, _ = finished_run
    with pytest.raises(CovidlensError, match="different recipe"):
        run_cv(fast_recipe("train.epochs=4"), tiny_ct, run_dir, show_progress=False)


def test_killed_run_resumes_to_the_same_metrics(finished_run, tiny_ct, tmp_path):
    """Kill `covidlens cv` after its first fold, rerun it, and get the uninterrupted run's numbers."""
    reference, _ = finished_run
    run_dir = tmp_path / "killed"
    command = [
        sys.executable,
        "-m",
        "covidlens.cli",
        "cv",
        "demo",
        "--data",
        str(tiny_ct),
        "--out",
        str(run_dir),
        "--quiet",
    ] + [arg for item in FAST for arg in ("--set", item)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first_fold = run_dir / "folds" / "r00-f0" / "predictions.csv"
    deadline = time.time() + 240
    while not first_fold.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert first_fold.exists()
    assert not (run_dir / "metrics.json").exists(), "the run finished before it could be killed"
    done_before = first_fold.stat().st_mtime_ns
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert first_fold.stat().st_mtime_ns == done_before  # the finished fold was read, not retrained
    a = json.loads((reference / "metrics.json").read_text())
    b = json.loads((run_dir / "metrics.json").read_text())
    assert a["overall"] == b["overall"] and a["per_class"] == b["per_class"]
    pd.testing.assert_frame_equal(
        pd.read_csv(reference / "predictions.csv"),
        pd.read_csv(run_dir / "predictions.csv"),
        check_exact=False,
    )


def test_fixed_split_lists_give_one_fold(tiny_ct, tmp_path):
    from covidlens.data.index import index_dataset

    manifest = index_dataset(tiny_ct).manifest
    patients = sorted(manifest["patient_id"].unique())
    role = {p: ("test", "train", "train", "val", "train")[i % 5] for i, p in enumerate(patients)}
    manifest["split"] = manifest["patient_id"].map(role)
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    recipe = fast_recipe("cv.split=fixed", "train.epochs=1")
    summary = run_cv(recipe, tmp_path / "manifest.csv", tmp_path / "run", show_progress=False)
    folds = pd.read_csv(tmp_path / "run" / "folds.csv")
    merged = folds.merge(manifest[["sample_id", "split"]], on="sample_id")
    assert (merged["role"] == merged["split"]).all()
    assert summary["n_units"] == 1
    assert "fixed train / validation / test lists" in write_report(tmp_path / "run").read_text()


def test_image_wise_run_is_flagged_in_the_report(tiny_ct, tmp_path):
    from covidlens.data.adapters.base import IndexOptions

    recipe = fast_recipe("train.epochs=1")
    image_wise = IndexOptions(no_patients=True)
    summary = run_cv(recipe, tiny_ct, tmp_path / "run", options=image_wise, show_progress=False)
    assert summary["image_wise"] is True
    assert "IMAGE-WISE" in write_report(tmp_path / "run").read_text()


def test_a_failed_start_leaves_nothing_that_blocks_the_corrected_command(tiny_ct, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(CovidlensError, match="no such file"):
        run_cv(fast_recipe(), tmp_path / "nowhere", out, show_progress=False)
    with pytest.raises(CovidlensError, match="fewer patients than folds"):
        run_cv(fast_recipe("cv.folds=7"), tiny_ct, out, show_progress=False)
    assert not (out / "config.yaml").exists()
    summary = run_cv(fast_recipe("train.epochs=1"), tiny_ct, out, show_progress=False)
    assert summary["n_units"] == 3


def test_a_model_that_cannot_take_the_input_size_fails_before_any_file(tiny_ct, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(CovidlensError, match="vit_tiny_patch16_224.*224 px"):
        run_cv(fast_recipe("model.name=vit_tiny_patch16_224"), tiny_ct, out, show_progress=False)
    assert not out.exists() or not any(out.iterdir())


def test_resuming_after_an_image_vanished_is_a_clear_error(tiny_ct, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_ct, data)
    out = tmp_path / "run"
    run_cv(fast_recipe("train.epochs=1"), data, out, show_progress=False)
    shutil.rmtree(out / "folds" / "r00-f2")  # as if the run had stopped before its last fold
    next(data.rglob("slice_000.png")).unlink()
    with pytest.raises(CovidlensError, match="slice_000.png.*re-index"):
        run_cv(fast_recipe("train.epochs=1"), data, out, show_progress=False)


def test_cv_trains_a_paper_network_by_its_paper_name(tiny_ct, tmp_path):
    summary = run_cv(fast_recipe("model.name=EfficientNetB0", "train.epochs=1"), tiny_ct, tmp_path / "run",
                     show_progress=False)
    assert summary["model"] == "EfficientNetB0" and summary["n_units"] == 3
    assert len(list((tmp_path / "run" / "checkpoints").glob("*.pt"))) == 3


def test_a_volume_model_is_refused_by_the_slice_pipeline_with_a_clear_message(tiny_ct, tmp_path):
    with pytest.raises(CovidlensError, match="takes CT volumes"):
        run_cv(fast_recipe("model.name=ResNet3D-18"), tiny_ct, tmp_path / "run", show_progress=False)
    assert not (tmp_path / "run" / "config.yaml").exists()


@pytest.mark.parametrize(
    ("model", "size", "channels"),
    [("LinearSVM", 88, 1), ("MLP", 88, 1), ("SqueezeNet1.0-bypass", 64, 3), ("LightCNN", 64, 3), ("CORONet", 200, 1)],
)
def test_cv_trains_the_papers_other_models_through_model_name(tiny_ct, tmp_path, model, size, channels):
    recipe = fast_recipe(f"model.name={model}", f"data.image_size={size}", f"data.channels={channels}",
                         "train.epochs=1", "cv.folds=2")
    summary = run_cv(recipe, tiny_ct, tmp_path / "run", show_progress=False)
    predictions = pd.read_csv(tmp_path / "run" / "predictions.csv")
    assert summary["model"] == model and summary["n_units"] == 2
    assert predictions.filter(like="p_").sum(axis=1).round(5).eq(1).all()
