from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from covidlens.config import load_recipe
from covidlens.deploy.predict import checkpoints_of, collect_inputs, predict_files, submission_table
from covidlens.errors import CovidlensError
from covidlens.train.checkpoint import load_checkpoint
from covidlens.train.cv import run_cv


@pytest.fixture(scope="module")
def run_dir(tiny_ct, tmp_path_factory):
    out = tmp_path_factory.mktemp("predict") / "run"
    recipe = load_recipe("demo", ["data.image_size=32", "train.epochs=1", "cv.folds=3", "train.threads=1"])
    run_cv(recipe, tiny_ct, out, show_progress=False)
    return out


def test_checkpoint_reproduces_its_fold_predictions(run_dir):
    fold = pd.read_csv(run_dir / "folds" / "r00-f1" / "predictions.csv")
    manifest = pd.read_csv(run_dir / "manifest.csv").set_index("sample_id")
    files = [manifest.loc[s, "path"] for s in fold["sample_id"]]
    table = predict_files(run_dir / "checkpoints" / "r00-f1.pt", files, device="cpu")
    probability_columns = ["p_COVID", "p_Healthy", "p_Others"]
    np.testing.assert_allclose(
        table[probability_columns].to_numpy(), fold[probability_columns].to_numpy(), atol=1e-5
    )
    assert (table["predicted"] == table[probability_columns].idxmax(axis=1).str[2:]).all()


def test_run_directory_averages_its_fold_models(run_dir, tiny_ct):
    files, skipped = collect_inputs([tiny_ct / "Healthy"])
    assert files and not skipped
    assert not any(str(f).endswith(".mask.png") for f in files)
    table = predict_files(run_dir, files, device="cpu")
    singles = [predict_files(c, files, device="cpu") for c in checkpoints_of(run_dir)]
    assert len(singles) == 3
    columns = ["p_COVID", "p_Healthy", "p_Others"]
    expected = np.mean([s[columns].to_numpy() for s in singles], axis=0)
    np.testing.assert_allclose(table[columns].to_numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(table[columns].sum(axis=1), 1.0, atol=1e-5)
    chunked = predict_files(run_dir, files, device="cpu", chunk=4)  # decoded a few files at a time
    np.testing.assert_allclose(chunked[columns].to_numpy(), table[columns].to_numpy(), atol=1e-6)


def test_checkpoint_carries_recipe_and_classes(run_dir):
    model, recipe, classes = load_checkpoint(run_dir / "checkpoints" / "r00-f0.pt")
    assert classes == ["COVID", "Healthy", "Others"] and recipe.data.image_size == 32
    assert not model.training


def test_bad_inputs(run_dir, tmp_path):
    with pytest.raises(CovidlensError, match="no such file or folder"):
        collect_inputs([tmp_path / "missing.png"])
    text = tmp_path / "a.png"
    text.write_text("x")
    with pytest.raises(CovidlensError, match="no readable image"):
        collect_inputs([text])
    with pytest.raises(CovidlensError, match="no checkpoints"):
        checkpoints_of(tmp_path)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"junk")
    with pytest.raises(CovidlensError, match="not a readable covidlens checkpoint"):
        load_checkpoint(junk)


@pytest.fixture(scope="module")
def competition(tmp_path_factory):
    """Paper 003's competition layout: 26 training images and 11 unlabelled test images, Ids 0-10."""
    from covidlens.data.synth import synthesize

    out = tmp_path_factory.mktemp("competition") / "cxr"
    synthesize("cxr", out, patients=26, seed=1, size=64)
    return out


def test_submission_has_one_row_per_test_image_sorted_by_id(run_dir, competition, tmp_path):
    from cli_helpers import covidlens
    from covidlens.data.adapters.cxr_competition import competition_test_images, competition_test_labels

    test_images = competition_test_images(competition)
    assert {p.suffix for p in test_images} == {".png", ".jpeg"}  # Id is the name without either extension
    out = tmp_path / "submission.csv"
    result = covidlens("predict", run_dir, competition / "test", "--format", "submission", "-o", out, "--device", "cpu")
    assert result.returncode == 0, result.stderr
    submission = pd.read_csv(out, dtype=str)
    assert list(submission.columns) == ["Id", "label"]
    assert list(submission["Id"]) == [str(i) for i in range(11)]  # natural order: 2 before 10
    assert set(submission["Id"]) == set(competition_test_labels(competition)["Id"].astype(str))
    table = predict_files(run_dir, test_images, device="cpu")
    classes = ["COVID", "Healthy", "Others"]
    argmax = table[[f"p_{name}" for name in classes]].to_numpy().argmax(1)
    expected = {Path(path).stem: classes[i] for path, i in zip(table["path"], argmax, strict=True)}
    assert set(submission["label"]) <= set(classes)
    assert dict(zip(submission["Id"], submission["label"], strict=True)) == expected


def test_submission_refuses_two_images_with_one_id_and_an_unknown_format(run_dir, tmp_path):
    from cli_helpers import assert_one_line_error, covidlens

    table = pd.DataFrame({"path": ["a/7.png", "b/7.jpeg", "a/1.png"], "predicted": ["x", "y", "x"]})
    with pytest.raises(CovidlensError, match="Id '7' names more than one image"):
        submission_table(table)
    assert submission_table(table.iloc[[0, 2]]).to_dict("list") == {"Id": ["1", "7"], "label": ["x", "x"]}
    result = covidlens("predict", run_dir, tmp_path, "--format", "kaggle", "-o", tmp_path / "s.csv")
    assert_one_line_error(result, "--format 'kaggle'", "table or submission")
