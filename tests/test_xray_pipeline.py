"""Paper 003's preprocessing inside a run: threshold from the training images, methods A-D, CLAHE."""

import json
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from covidlens.config import load_recipe
from covidlens.data.adapters.common import mask_path_for
from covidlens.data.index import index_dataset
from covidlens.data.preprocess import Preprocessing, stored_size, to_model_input
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


def test_predict_and_explain_read_the_threshold_from_the_checkpoint(tiny_cxr, tmp_path):
    from covidlens.deploy.predict import predict_files, submission_table
    from covidlens.explain.pipeline import explain_paths

    recipe = load_recipe("demo", FAST + ["data.resize=D", "data.threshold=min"])
    run_cv(recipe, tiny_cxr, tmp_path / "run", show_progress=False)
    test_images = sorted((tiny_cxr / "test").iterdir())
    table = predict_files(tmp_path / "run", test_images)
    assert len(table) == len(test_images) and table.filter(like="p_").sum(axis=1).round(5).eq(1).all()
    submission = submission_table(table)
    assert list(submission.columns) == ["Id", "label"] and len(submission) == len(test_images)
    stored = Threshold.from_dict(json.loads((tmp_path / "run" / "preprocessing.json").read_text())["threshold"])
    result = explain_paths(tmp_path / "run", test_images[:1], tmp_path / "explain", show_progress=False)
    name = result.explanations["output"].item()
    assert np.load(tmp_path / "explain" / f"{name}.npy").shape == (stored.size, stored.size)


@pytest.fixture(scope="module")
def method_b_run(tiny_cxr, tmp_path_factory):
    """A 1-epoch run with CLAHE and method B at the smallest training image: a 48 x 93 input, not square."""
    run = tmp_path_factory.mktemp("method_b") / "run"
    run_cv(load_recipe("demo", FAST + ["data.resize=B", "data.threshold=min"]), tiny_cxr, run, show_progress=False)
    return run


def lesioned_images(tiny_cxr, count):
    images = sorted(p for p in (tiny_cxr / "train").rglob("*.png") if not p.name.endswith(".mask.png"))
    return [p for p in images if mask_path_for(p).is_file()][:count]


def test_explain_feeds_the_checkpoints_preprocessing_and_writes_non_square_maps(
    method_b_run, tiny_cxr, tmp_path, monkeypatch
):
    from covidlens.explain import pipeline
    from covidlens.train.checkpoint import read_checkpoint

    prep = read_checkpoint(method_b_run / "checkpoints" / "r00-f0.pt").prep
    assert prep.shape == (48, 93) and prep.clahe_clip == 2.0
    fed = []

    def record(batch, channels):
        fed.extend(batch.copy())
        return to_model_input(batch, channels)

    monkeypatch.setattr(pipeline, "to_model_input", record)
    images = lesioned_images(tiny_cxr, 3)
    out = tmp_path / "out"
    result = pipeline.explain_paths(method_b_run, images, out, evaluate=True, show_progress=False)
    without_clahe = replace(prep, clahe_clip=None)
    for path, pixels in zip(result.explanations["path"], fed[: len(images)], strict=True):
        np.testing.assert_array_equal(pixels, prep.load(path))  # method B at the run's threshold, then CLAHE
        assert not np.array_equal(pixels, without_clahe.load(path))
    for name in result.explanations["output"]:
        assert np.load(out / f"{name}.npy").shape == (48, 93)
        with Image.open(out / f"{name}.png") as png:
            assert png.format == "PNG"
    assert len(result.evaluation) == 2 * len(images)  # every lesion mask lines up with its 48 x 93 map
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["pointing_tolerance_px"] == pytest.approx(15 * 93 / 224)


def test_gallery_and_activations_take_a_method_b_run(method_b_run, tiny_cxr, tmp_path):
    from covidlens.explain.activations import write_activation_maps
    from covidlens.explain.gallery import run_gallery
    from covidlens.train.checkpoint import read_checkpoint, save_checkpoint

    result = run_gallery([method_b_run], [tiny_cxr], "viral", tmp_path / "g", per_class=1, show_progress=False)
    assert result.grid == (2, 2) and (tmp_path / "g" / "gallery.png").is_file()
    assert json.loads((tmp_path / "g" / "gallery.json").read_text())["models"][0]["input_shape"] == [48, 93]
    written = write_activation_maps(method_b_run, lesioned_images(tiny_cxr, 1)[0], tmp_path / "maps", filters=4)
    assert written[-1].name.endswith("_overview.png") and all(p.is_file() for p in written)

    loaded = read_checkpoint(method_b_run / "checkpoints" / "r00-f0.pt")
    padded = load_recipe("demo", FAST + ["data.resize=A", "data.threshold=max"])
    stored = {"threshold": Threshold("max", width=95, height=78, size=95).as_dict()}
    save_checkpoint(tmp_path / "a.pt", loaded.model, padded, loaded.classes, preprocessing=stored)
    with pytest.raises(CovidlensError, match=r"a.pt: input 95x95 \(method A\), but the base model's is 48x93"):
        run_gallery([method_b_run, tmp_path / "a.pt"], [tiny_cxr], "viral", tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
