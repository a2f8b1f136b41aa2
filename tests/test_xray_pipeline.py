"""Paper 003's preprocessing inside a run: threshold from the training images, methods A-D, CLAHE."""

import json

import numpy as np
import pytest

from covidlens.config import load_recipe
from covidlens.data.index import index_dataset
from covidlens.data.preprocess import Preprocessing, stored_size
from covidlens.data.synth import synthesize
from covidlens.data.xray_prep import Threshold, compute_threshold
from covidlens.errors import CovidlensError
from covidlens.train.cv import run_cv

# the synthetic set has an unlabelled test folder, which indexing reports
pytestmark = pytest.mark.filterwarnings("ignore::covidlens.data.adapters.common.IndexWarning")

FAST = ["data.channels=1", "train.epochs=1", "train.threads=1", "cv.folds=2", "data.clahe_clip=2.0"]


@pytest.fixture(scope="module")
def tiny_cxr(tmp_path_factory):
    out = tmp_path_factory.mktemp("cxr") / "data"
    synthesize("cxr", out, patients=40, seed=0, size=96)  # 12 / 12 / 12 / 4 (paper 003's imbalance)
    return out


def test_threshold_comes_from_the_training_images_and_is_stored(tiny_cxr, tmp_path):
    recipe = load_recipe("demo", FAST + ["data.resize=A", "data.threshold=max"])
    run_cv(recipe, tiny_cxr, tmp_path / "run", show_progress=False)
    manifest = index_dataset(tiny_cxr).manifest
    expected = compute_threshold([stored_size(p) for p in manifest["path"]], "max")
    stored = json.loads((tmp_path / "run" / "preprocessing.json").read_text())
    assert Threshold.from_dict(stored["threshold"]) == expected
    assert stored["resize"] == "A" and stored["clahe_clip"] == 2.0
    test_sizes = [stored_size(p) for p in (tiny_cxr / "test").iterdir()]
    assert expected.size == max(max(size) for size in (stored_size(p) for p in manifest["path"]))
    assert test_sizes  # the unlabelled test images exist but are not indexed, so they cannot set the size
    cache = next((tmp_path / "run" / "cache").glob("*.npy"))
    array = np.load(cache, mmap_mode="r")
    assert array.shape == (len(manifest), expected.size, expected.size)
    prep = Preprocessing(96, resize="A", threshold=expected, clahe_clip=2.0)
    np.testing.assert_array_equal(array[0], prep.load(manifest["path"].iloc[0]))


def test_method_b_feeds_the_threshold_images_dimensions_and_resumes_with_them(tiny_cxr, tmp_path):
    recipe = load_recipe("demo", FAST + ["data.resize=B", "data.threshold=min"])
    run_cv(recipe, tiny_cxr, tmp_path / "run", show_progress=False)
    stored = Threshold.from_dict(json.loads((tmp_path / "run" / "preprocessing.json").read_text())["threshold"])
    array = np.load(next((tmp_path / "run" / "cache").glob("*.npy")), mmap_mode="r")
    assert array.shape[1:] == (stored.height, stored.width) and stored.kind == "min"
    again = run_cv(recipe, tiny_cxr, tmp_path / "run", show_progress=False)  # resumes: nothing to train
    assert again["n_units"] == 2


def test_flattening_models_take_the_data_derived_size_and_coronet_refuses_it(tiny_cxr, tmp_path):
    recipe = load_recipe("demo", FAST + ["data.resize=C", "data.threshold=max", "model.name=MLP"])
    summary = run_cv(recipe, tiny_cxr, tmp_path / "mlp", show_progress=False)
    stored = Threshold.from_dict(json.loads((tmp_path / "mlp" / "preprocessing.json").read_text())["threshold"])
    from covidlens.train.checkpoint import read_checkpoint

    checkpoint = read_checkpoint(tmp_path / "mlp" / "checkpoints" / "r00-f0.pt")
    assert summary["model"] == "MLP" and checkpoint.prep.shape == (stored.height, stored.width)
    assert checkpoint.model.hidden1[0].in_features == stored.height * stored.width  # sized by the run's input
    coronet = load_recipe("demo", FAST + ["data.resize=A", "data.threshold=max", "model.name=CORONet"])
    with pytest.raises(CovidlensError, match="CORONet.*cannot take"):
        run_cv(coronet, tiny_cxr, tmp_path / "coronet", show_progress=False)
    assert not (tmp_path / "coronet").exists()


def test_predict_reads_the_threshold_from_the_checkpoint_and_explain_refuses_resized_models(tiny_cxr, tmp_path):
    from covidlens.deploy.predict import predict_files, submission_table
    from covidlens.explain.pipeline import explain_paths

    recipe = load_recipe("demo", FAST + ["data.resize=D", "data.threshold=min"])
    run_cv(recipe, tiny_cxr, tmp_path / "run", show_progress=False)
    test_images = sorted((tiny_cxr / "test").iterdir())
    table = predict_files(tmp_path / "run", test_images)
    assert len(table) == len(test_images) and table.filter(like="p_").sum(axis=1).round(5).eq(1).all()
    submission = submission_table(table)
    assert list(submission.columns) == ["Id", "label"] and len(submission) == len(test_images)
    with pytest.raises(CovidlensError, match="resizing method D"):
        explain_paths(tmp_path / "run", test_images[:1], tmp_path / "explain")
