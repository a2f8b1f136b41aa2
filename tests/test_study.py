"""Paper 004's study as one command (covidlens study): experiments x dataset arrangements, Tables 3-5 and 7."""

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import torchvision
import yaml
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

from cli_helpers import assert_one_line_error, covidlens
from covidlens.config import load_recipe
from covidlens.data.synth import synthesize
from covidlens.models import MODELS
from covidlens.train.study import load_study, mixed_manifest, predictions_by_test_set, tag_source

FAST = [
    "--trials", 2, "--epochs", 1, "--images", 2, "--threads", "1", "--quiet",
    "--set", "data.image_size=64", "--set", "train.epochs=1", "--set", "train.offline_augment.factor=2",
    "--set", "train.threads=1",
]  # fmt: skip


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> tuple[Path, Path]:
    """A three-class first source (merged to COVID / NonCOVID by the recipe) and a COVID-only second site."""
    root = tmp_path_factory.mktemp("study_sources")
    synthesize("ct-slices", root / "first", patients=12, seed=0, difficulty=0.3, size=64, slices=(2, 3))
    synthesize("ct-slices", root / "second", patients=4, seed=0, size=64, slices=(2, 3), site=2, classes=["COVID"])
    return root / "first", root / "second"


def study_command(first: Path, second: Path, out: Path, *extra) -> list:
    return ["study", "polsinelli2020", "--data", first, "--second-source", second, "--second-format",
            "class-folders", "--out", out, *FAST, *extra]  # fmt: skip


def test_polsinelli2020_study_is_section_3_1():
    study = load_study("polsinelli2020")
    assert study.trials == 30 and load_recipe(study.recipe).train.epochs == 20  # 30 attempts of 20 epochs
    models = [load_recipe(study.recipe, e.set).model.name for e in study.experiments]
    assert models == ["SqueezeNet1.0", "SqueezeNet1.0-bypass", "SqueezeNet1.0-bypass", "LightCNN"]
    assert all(name in MODELS.names() for name in models)
    assert [e.transfer for e in study.experiments] == [False, False, True, False]
    first, mixed = study.arrangements
    assert (first.sources, mixed.sources) == ("separate", "mixed")
    # Table 1: Test-1 193 of 693 images, validation 118 of the other 500 (covidlens applies them to patients)
    cv = load_recipe(study.recipe, first.set).cv
    assert (round(cv.test_fraction * 693), round(cv.val_fraction * 500)) == (193, 118)
    # Table 2: Table 1's not-COVID rows again, and the Italian images 60 / 20 / 20
    assert mixed.first_split_of == "1"
    test, val = mixed.second_split
    assert (round(test * 100), round(val * (100 - round(test * 100)))) == (20, 20)


def test_studies_lists_the_built_in_studies():
    result = covidlens("studies")
    assert result.returncode == 0 and result.stdout.startswith("polsinelli2020  SqueezeNet without bypass")


def test_tagged_sources_never_share_a_patient():
    first = pd.DataFrame(
        {"sample_id": ["a.png"], "path": ["/1/a.png"], "label": ["COVID"], "patient_id": ["p1"], "scan_id": ["p1"],
         "source": ["multiclass-ct"], "split": ["train"]}
    )  # fmt: skip
    second = first.assign(path="/2/a.png")  # the same ids in another hospital's data
    mixed = mixed_manifest(tag_source(first, "source1"), tag_source(second, "source2"))
    assert mixed["patient_id"].tolist() == ["source1:p1", "source2:p1"]
    assert mixed["sample_id"].tolist() == ["source1/a.png", "source2/a.png"]
    assert mixed["source"].tolist() == ["source1", "source2"] and mixed["path"].tolist() == ["/1/a.png", "/2/a.png"]
    assert "split" not in mixed  # a layout's own lists mean nothing once sources mix
    roles = pd.Series(["val", "test"], index=["source1/a.png", "source2/a.png"])
    assert mixed_manifest(tag_source(first, "source1"), tag_source(second, "source2"), roles)["split"].tolist() == [
        "val", "test"
    ]


def test_test2_borrows_only_the_classes_the_second_source_lacks(tmp_path):
    def table(ids, labels):
        return pd.DataFrame({"sample_id": ids, "y_true": labels, "p_COVID": 0.6, "p_NonCOVID": 0.4})

    table(["t1", "t2", "t3"], ["COVID", "NonCOVID", "NonCOVID"]).to_csv(tmp_path / "predictions.csv", index=False)
    assert list(predictions_by_test_set(tmp_path, ["COVID", "NonCOVID"])) == ["Test-1"]
    table(["e1", "e2"], ["COVID", "COVID"]).to_csv(tmp_path / "external_predictions.csv", index=False)
    sets = predictions_by_test_set(tmp_path, ["COVID", "NonCOVID"])
    assert sets["Test-2"]["sample_id"].tolist() == ["e1", "e2", "t2", "t3"]  # Test-1's not-COVID images reused
    table(["e3"], ["NonCOVID"]).to_csv(tmp_path / "external_predictions.csv", index=False)
    assert predictions_by_test_set(tmp_path, ["COVID", "NonCOVID"])["Test-2"]["sample_id"].tolist() == ["e3", "t1"]


def _scores(predictions: pd.DataFrame) -> dict:
    truth = predictions["y_true"] == "COVID"
    said = predictions["p_COVID"] > predictions["p_NonCOVID"]
    return {
        "accuracy": accuracy_score(truth, said),
        "sensitivity": recall_score(truth, said, zero_division=0),
        "specificity": recall_score(~truth, ~said, zero_division=0),
        "precision": precision_score(truth, said, zero_division=0),
        "f1": f1_score(truth, said, zero_division=0),
    }


def test_study_tunes_trains_tests_reports_and_resumes(sources, tmp_path):
    first, second = sources
    out = tmp_path / "study"
    command = study_command(first, second, out, "--experiments", "3,4")
    result = covidlens(*command)
    assert result.returncode == 0, result.stderr

    tuning = pd.read_csv(out / "tuning.csv", dtype={"arrangement": str, "experiment": str})
    assert tuning[["arrangement", "experiment"]].values.tolist() == [["1", "3"], ["1", "4"], ["2", "3"], ["2", "4"]]
    skipped = tuning[tuning["experiment"] == "3"]
    assert skipped["observed_accuracy"].isna().all() and skipped["note"].str.contains("--weights FILE").all()
    tuned = tuning[tuning["experiment"] == "4"]
    assert (tuned["trials"] == 2).all() and tuned["observed_accuracy"].between(0, 1).all()

    performance = pd.read_csv(out / "performance.csv", dtype={"arrangement": str, "experiment": str})
    done = performance.dropna(subset=["accuracy"])
    assert done[["arrangement", "test_set"]].values.tolist() == [["1", "Test-1"], ["1", "Test-2"], ["2", "Test-1"]]
    roles = {}
    for arrangement in ("1", "2"):
        cell = out / f"arrangement-{arrangement}" / "experiment-4"
        best_trial = int(tuned[tuned["arrangement"] == arrangement]["best_trial"].iloc[0])
        run = cell / f"run-trial-{best_trial}"
        folds = pd.read_csv(run / "manifest.csv").merge(pd.read_csv(run / "folds.csv"))
        roles[arrangement] = folds.set_index("sample_id")["role"]
        best = json.loads((cell / "tune" / "best.json").read_text())
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert {k: config["train"]["optimizer"][k] for k in best["params"]} == best["params"]  # the tuned point
        assert config["data"]["classes"] == ["COVID", "NonCOVID"]
        test1 = pd.read_csv(run / "predictions.csv")
        assert set(test1["y_true"]) == {"COVID", "NonCOVID"}  # Healthy and Others merged by data.relabel
        expected = {"Test-1": test1}
        if arrangement == "1":
            external = pd.read_csv(run / "external_predictions.csv")
            assert set(external["y_true"]) == {"COVID"} and external["patient_id"].str.startswith("source2:s2_").all()
            expected["Test-2"] = pd.concat([external, test1[test1["y_true"] == "NonCOVID"]])
            assert folds["patient_id"].str.startswith("source1:").all()  # the second source is never trained on
        else:  # the first source split as in arrangement 1, the second one 60 / 20 / 20 by patient
            second_roles = folds[folds["source"] == "source2"].groupby("patient_id")["role"].first().value_counts()
            assert second_roles.to_dict() == {"train": 2, "val": 1, "test": 1}  # 4 patients: 1 tested, 1 of 3 validates
            kept_split = folds[folds["source"] == "source1"].set_index("sample_id")["role"]
            pd.testing.assert_series_equal(kept_split.sort_index(), roles["1"].sort_index())
        for test_set, predictions in expected.items():
            row = done[(done["arrangement"] == arrangement) & (done["test_set"] == test_set)].iloc[0]
            assert row["images"] == len(predictions)
            for metric, value in _scores(predictions).items():
                assert row[metric] == pytest.approx(value), (arrangement, test_set, metric)

    efficiency = pd.read_csv(out / "efficiency.csv", dtype={"arrangement": str, "experiment": str}).dropna(
        subset=["model"]
    )
    lightcnn = sum(p.numel() for p in MODELS.get("LightCNN").build(num_classes=2).parameters())
    assert efficiency["parameters_m"].tolist() == pytest.approx([lightcnn / 1e6] * 2)
    test1_sensitivity = done[done["test_set"] == "Test-1"]["sensitivity"].tolist()
    assert efficiency["sensitivity"].tolist() == pytest.approx(test1_sensitivity)
    assert (efficiency["ms_per_image_1_threads"] > 0).all()

    report = (out / "report.html").read_text()
    for needle in ("Obs. Acc.", "Est. Acc.", "L2-Reg.", "Test-1", "Test-2", "F1Score", "Sens. ÷ #Param.",
                   "CPU ms/image, 1 thread", "--weights FILE"):  # fmt: skip
        assert needle in report, needle
    assert (out / efficiency["run"].iloc[1] / "report.html").is_file()
    # each arrangement decodes its images once, for its searches and runs together (arrangement 1: + Test-2)
    assert len(list((out / "arrangement-1" / "cache").glob("images-*.npy"))) == 2
    assert len(list((out / "arrangement-2" / "cache").glob("images-*.npy"))) == 1
    assert not list(out.glob("arrangement-*/experiment-*/*/cache")) and not list(out.glob("**/run/cache"))

    trials_before = pd.read_csv(out / "arrangement-1" / "experiment-4" / "tune" / "trials.csv")
    again = covidlens(*command)
    assert again.returncode == 0, again.stderr
    assert "already has 2 complete trials" in again.stderr and "resuming" in again.stderr
    trials_after = pd.read_csv(out / "arrangement-1" / "experiment-4" / "tune" / "trials.csv")
    pd.testing.assert_frame_equal(trials_after, trials_before)
    resumed = pd.read_csv(out / "performance.csv", dtype={"arrangement": str, "experiment": str})
    pd.testing.assert_frame_equal(resumed, performance)

    other = covidlens(*command, "--set", "train.batch_size=8")
    assert_one_line_error(other, str(out), "overrides")

    part = covidlens(*study_command(first, second, out, "--experiments", "4", "--arrangements", "2"))
    assert part.returncode == 0, part.stderr
    kept = pd.read_csv(out / "tuning.csv", dtype={"arrangement": str, "experiment": str})
    pd.testing.assert_frame_equal(kept, tuning)  # the cells not selected this time stay in the tables


def test_transfer_experiment_starts_from_the_weights_file(sources, tmp_path):
    first, second = sources
    weights = tmp_path / "squeezenet1_0.pth"  # the layout of torchvision's ImageNet file
    torch.save(torchvision.models.squeezenet1_0().state_dict(), weights)
    out = tmp_path / "study"
    command = study_command(first, second, out, "--experiments", "3", "--arrangements", "2", "--weights", weights)
    result = covidlens(*command, "--trials", 1)
    assert result.returncode == 0, result.stderr
    assert "loaded 50 tensors; 2 shape-mismatched" in result.stderr  # all but the 1000-class head
    cell = out / "arrangement-2" / "experiment-3"
    config = yaml.safe_load((cell / "run-trial-0" / "config.yaml").read_text())
    assert config["model"]["name"] == "SqueezeNet1.0-bypass" and config["model"]["weights"] == str(weights)

    more = covidlens(*command)  # --trials 2: the search goes on; a new best point trains its own run
    assert more.returncode == 0, more.stderr
    tuning = pd.read_csv(out / "tuning.csv")
    assert len(tuning) == 1 and tuning["note"].isna().all() and tuning["trials"].tolist() == [2]
    best = json.loads((cell / "tune" / "best.json").read_text())
    final = yaml.safe_load((cell / f"run-trial-{best['best_trial']}" / "config.yaml").read_text())
    assert final["train"]["optimizer"]["lr"] == best["params"]["lr"]
    efficiency = pd.read_csv(out / "efficiency.csv")
    assert efficiency["run"].tolist() == [f"arrangement-2/experiment-3/run-trial-{best['best_trial']}"]


def test_study_input_errors_are_one_line(sources, tmp_path):
    first, second = sources
    out = tmp_path / "study"
    assert_one_line_error(covidlens(*study_command(first, second, out, "--experiments", "9")), "1, 2, 3, 4")
    missing = covidlens(*study_command(first, second, out, "--weights", tmp_path / "none.pth"))
    assert_one_line_error(missing, "none.pth", "not found")
    assert_one_line_error(covidlens(*study_command(first, tmp_path / "nowhere", out)), "nowhere")
    assert_one_line_error(covidlens("study", "nosuchstudy", "--data", first, "--second-source", second),
                          "unknown study", "polsinelli2020")  # fmt: skip
    not_sgd = covidlens(*study_command(first, second, out, "--set", "train.optimizer.name=adam"))
    assert_one_line_error(not_sgd, "sgd")  # found before anything is written, not after the first tuning
    image = next((first / "COVID").rglob("slice_000.png"))
    pd.DataFrame({"path": [image], "label": ["COVID"], "patient_id": ["x"]}).to_csv(tmp_path / "dup.csv", index=False)
    shared = covidlens(*study_command(first, tmp_path / "dup.csv", out), "--second-format", "csv")
    assert_one_line_error(shared, "is also in", "different images")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    assert_one_line_error(covidlens(*study_command(first, second, tmp_path / "busy")), "not a covidlens study")
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    assert not out.exists()  # nothing was written by the refused commands
