"""External test sets (SPEC D3): every fold model predicts a second source, scored apart from the CV."""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cli_helpers import assert_one_line_error, covidlens
from covidlens.config import load_recipe
from covidlens.data.synth import synthesize
from covidlens.errors import CovidlensError
from covidlens.evaluate.metrics import metrics_from_predictions
from covidlens.report.html import write_report
from covidlens.train.cv import run_cv

FAST = ["data.image_size=32", "train.epochs=1", "train.threads=1", "cv.folds=2", "cv.rounds=1"]


def fast_recipe(*extra: str):
    return load_recipe("demo", FAST + list(extra))


@pytest.fixture(scope="module")
def site2(tmp_path_factory) -> Path:
    """6 patients of a second synthetic site (s2_ patient ids, another scanner)."""
    out = tmp_path_factory.mktemp("external") / "site2"
    synthesize("ct-slices", out, patients=6, seed=0, difficulty=0.3, size=64, slices=(2, 3), site=2)
    return out


@pytest.fixture(scope="module")
def external_run(tiny_ct, site2, tmp_path_factory) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("runs") / "external"
    summary = run_cv(fast_recipe(), tiny_ct, run_dir, show_progress=False, external_test=site2)
    return run_dir, summary


def test_every_fold_model_predicts_the_whole_external_set(external_run, site2):
    run_dir, summary = external_run
    external_manifest = pd.read_csv(run_dir / "external_manifest.csv", dtype=str)
    assert len(external_manifest) == len(list(p for p in site2.rglob("*.png") if not p.name.endswith(".mask.png")))
    assert external_manifest["patient_id"].str.startswith("s2_").all()
    for fold in (0, 1):
        table = pd.read_csv(run_dir / "folds" / f"r00-f{fold}" / "external_predictions.csv", dtype={"sample_id": str})
        assert sorted(table["sample_id"]) == sorted(external_manifest["sample_id"])
        assert (table["fold"] == fold).all() and (table["round"] == 0).all()
        assert table.filter(like="p_").sum(axis=1).round(5).eq(1).all()
    gathered = pd.read_csv(run_dir / "external_predictions.csv", dtype={"sample_id": str})
    assert len(gathered) == 2 * len(external_manifest)
    info = json.loads((run_dir / "run.json").read_text())
    assert info["external_test"] == str(site2.resolve())
    external = json.loads((run_dir / "metrics.json").read_text())["external"]
    assert external["n_units"] == 2 and external["n_rows"] == len(gathered)
    assert external["n_samples"] == len(external_manifest) and external["n_patients"] == 6
    assert summary["external"]["data"] == str(site2.resolve())
    # the internal metrics are still those of the CV test folds alone
    assert summary["n_rows"] == len(pd.read_csv(run_dir / "predictions.csv"))


def test_external_metrics_equal_metrics_from_predictions(external_run):
    run_dir, _ = external_run
    external = json.loads((run_dir / "metrics.json").read_text())["external"]
    classes = external["classes"]
    gathered = pd.read_csv(run_dir / "external_predictions.csv", dtype={"sample_id": str})
    for unit in external["units"]:
        part = gathered[(gathered["round"] == unit["round"]) & (gathered["fold"] == unit["fold"])]
        expected = metrics_from_predictions(part, classes, undefined=math.nan)
        assert unit["n"] == expected["n"] == len(part)
        assert unit["accuracy"] == pytest.approx(expected["accuracy"])
        assert unit["confusion_matrix"] == expected["confusion_matrix"]
        for cls in classes:
            for metric, value in expected["per_class"][cls].items():
                got = unit["per_class"][cls][metric]
                assert (got is None and math.isnan(value)) or got == pytest.approx(value)
    pooled = metrics_from_predictions(gathered, classes)
    assert external["confusion_matrix"] == pooled["confusion_matrix"]
    accuracies = [u["accuracy"] for u in external["units"]]
    assert external["overall"]["accuracy"]["mean"] == pytest.approx(np.mean(accuracies))


def test_report_shows_the_external_set(external_run):
    run_dir, _ = external_run
    text = write_report(run_dir).read_text()
    section = text[text.index("<h2>External test set</h2>") :]
    assert "6 patients" in section and "Sensitivity" in section
    assert "confusion matrices of the external test set" in section


def test_resume_does_not_repredict_finished_folds(tiny_ct, site2, tmp_path):
    run_dir = tmp_path / "run"
    run_cv(fast_recipe(), tiny_ct, run_dir, show_progress=False, external_test=site2)
    first = run_dir / "folds" / "r00-f0" / "external_predictions.csv"
    second = run_dir / "folds" / "r00-f1" / "external_predictions.csv"
    before = first.stat().st_mtime_ns, second.stat().st_mtime_ns
    (run_dir / "folds" / "r00-f1" / "predictions.csv").unlink()  # fold 1 now unfinished, as if interrupted
    run_cv(fast_recipe(), tiny_ct, run_dir, show_progress=False, external_test=site2)
    assert first.stat().st_mtime_ns == before[0]  # finished fold: read, not predicted again
    assert second.stat().st_mtime_ns != before[1]  # the unfinished fold was trained and predicted
    assert (run_dir / "folds" / "r00-f1" / "predictions.csv").is_file()
    with pytest.raises(CovidlensError, match="external test set"):
        run_cv(fast_recipe(), tiny_ct, run_dir, show_progress=False)  # resuming without the external set
    with pytest.raises(CovidlensError, match="external test set"):
        run_cv(fast_recipe(), tiny_ct, run_dir, show_progress=False, external_test=tiny_ct)


def _external_csv(folder: Path, site2: Path, **change: str) -> Path:
    """A manifest CSV of site 2's images, with some cells of its first row changed."""
    rows = [
        {"path": str(p), "label": p.parent.parent.name, "patient_id": p.parent.name}
        for p in sorted(site2.rglob("*.png"))
        if not p.name.endswith(".mask.png")
    ]
    rows[0].update(change)
    folder.mkdir()
    path = folder / "external.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_a_class_the_run_lacks_is_refused_before_anything_is_written(tiny_ct, site2, tmp_path):
    external = _external_csv(tmp_path / "ext", site2, label="Tuberculosis", patient_id="s2_tb_p999")
    with pytest.raises(CovidlensError, match=r"labels \['Tuberculosis'\] are not classes of the run"):
        run_cv(fast_recipe(), tiny_ct, tmp_path / "run", show_progress=False, external_test=external)
    assert not (tmp_path / "run").exists()


def test_a_training_patient_in_the_external_set_is_refused(tiny_ct, site2, tmp_path):
    external = _external_csv(tmp_path / "ext", site2, label="COVID", patient_id="covid_p001")
    assert (tiny_ct / "COVID" / "covid_p001").is_dir()
    with pytest.raises(CovidlensError, match="patient 'covid_p001' is also in the training data"):
        run_cv(fast_recipe(), tiny_ct, tmp_path / "run", show_progress=False, external_test=external)
    assert not (tmp_path / "run").exists()


def test_cli_refuses_the_training_data_as_its_own_external_set(tiny_ct, tmp_path):
    result = covidlens(
        "cv", "demo", "--data", tiny_ct, "--external-test", tiny_ct, "--out", tmp_path / "run", "--quiet",
        *[arg for item in FAST for arg in ("--set", item)],
    )
    assert_one_line_error(result, "is also in the training data")
    assert not (tmp_path / "run").exists()
