"""The command line as a user meets it: one-line errors with exit code 2, nothing written is harmed."""

import shutil

import cv2
import numpy as np
import pandas as pd
import pytest

from cli_helpers import assert_one_line_error, covidlens


@pytest.fixture()
def copy_of_tiny(tiny_ct, tmp_path):
    target = tmp_path / "data"
    shutil.copytree(tiny_ct, target)
    return target


def test_missing_path_and_empty_folder(tmp_path):
    assert_one_line_error(covidlens("index", tmp_path / "nowhere", "-o", tmp_path / "m.csv"), "nowhere")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(covidlens("index", tmp_path / "empty", "-o", tmp_path / "m.csv"), "empty")
    assert not (tmp_path / "m.csv").exists()


def test_index_lists_skipped_files_and_counts(copy_of_tiny, tmp_path):
    patient = next((copy_of_tiny / "COVID").iterdir())
    (patient / "notes.png").write_text("radiologist notes, not an image")
    good = next(patient.glob("slice_000.png"))
    (patient / "truncated.png").write_bytes(good.read_bytes()[:200])
    result = covidlens("index", copy_of_tiny, "-o", tmp_path / "manifest.csv")
    assert result.returncode == 0, result.stderr
    assert "skipped 2 unreadable file(s)" in result.stderr
    assert "notes.png" in result.stderr and "truncated.png" in result.stderr
    assert "multiclass-ct" in result.stdout and "total" in result.stdout
    manifest = pd.read_csv(tmp_path / "manifest.csv")
    assert not manifest["path"].str.contains("notes|truncated").any()
    assert manifest.groupby("label")["patient_id"].nunique().to_dict() == {
        "COVID": 6,
        "Healthy": 3,
        "Others": 6,
    }


def test_flat_class_folders_need_patient_ids(tmp_path):
    for label in ("COVID", "non-COVID"):
        (tmp_path / "d" / label).mkdir(parents=True)
        for i in range(3):
            cv2.imwrite(str(tmp_path / "d" / label / f"{label} ({i}).png"), np.zeros((8, 8), np.uint8))
    assert_one_line_error(covidlens("index", tmp_path / "d", "-o", tmp_path / "m.csv"), "--no-patients")
    result = covidlens("index", tmp_path / "d", "-o", tmp_path / "m.csv", "--no-patients")
    assert result.returncode == 0 and "image-wise" in result.stderr


def test_cv_refuses_unknown_model_and_recipe_typo(tiny_ct, tmp_path):
    out = tmp_path / "run"
    assert_one_line_error(
        covidlens("cv", "demo", "--data", tiny_ct, "--out", out, "--set", "model.name=resnet_18"), "resnet_18"
    )
    assert_one_line_error(
        covidlens("cv", "demo", "--data", tiny_ct, "--out", out, "--set", "train.epoch=2"), "train.epoch"
    )
    assert_one_line_error(covidlens("cv", "nosuchrecipe", "--data", tiny_ct), "nosuchrecipe")


def test_failed_index_keeps_an_existing_manifest(tmp_path):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("precious\n")
    assert_one_line_error(covidlens("index", tmp_path / "nowhere", "-o", manifest))
    assert manifest.read_text() == "precious\n"


def test_synth_refuses_to_overwrite(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    assert_one_line_error(covidlens("synth", "ct-slices", tmp_path / "out", "--patients", 3), "not empty")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    assert_one_line_error(covidlens("synth", "ct-slices", tmp_path / "new", "--difficulty", 2), "difficulty")


def test_help_explains_each_command():
    result = covidlens("--help")
    assert result.returncode == 0
    for command in ("synth", "index", "cv", "predict", "report", "demo", "models", "recipes", "layouts"):
        assert command in result.stdout
    assert "--patient-regex" in covidlens("index", "--help").stdout


def test_operating_system_errors_are_one_line(tiny_ct, tmp_path):
    (tmp_path / "a_folder").mkdir()
    assert_one_line_error(covidlens("index", tiny_ct, "-o", tmp_path / "a_folder"), "a_folder")


def test_usage_errors_exit_2_without_a_traceback(tmp_path):
    result = covidlens("synth", "ct-volumes", tmp_path / "out", "--slices", "4")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "No such option: --slices" in result.stderr
    missing = covidlens("cv")
    assert missing.returncode == 2 and "Missing argument" in missing.stderr and "Traceback" not in missing.stderr
    assert not (tmp_path / "out").exists()
