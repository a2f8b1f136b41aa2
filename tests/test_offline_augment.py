"""Offline augmentation (paper 004's "x4"): copies of each fold's training images only, made once per fold."""

import numpy as np
import pandas as pd
import pytest

import covidlens.train.cv as cv
from covidlens.config import OfflineAugmentConfig, load_recipe
from covidlens.data.adapters.base import IndexOptions
from covidlens.data.cache import CachedImages
from covidlens.data.offline_augment import augment_rows, copy_parameters, offline_training_set, transform_images
from covidlens.errors import CovidlensError

PAPER_004 = {"factor": 4, "rotation": (0.0, 90.0), "scale": (1.1, 1.3), "noise_std": 0.1}
RECIPE = [
    "data.image_size=32",
    "train.epochs=1",
    "train.threads=1",
    "cv.folds=3",
    "train.offline_augment.factor=4",
    "train.offline_augment.rotation=[0, 90]",
    "train.offline_augment.scale=[1.1, 1.3]",
    "train.offline_augment.noise_std=0.1",
]


def _base(n: int = 10, size: int = 24, seed: int = 0) -> CachedImages:
    return CachedImages(np.random.default_rng(seed).integers(0, 256, (n, size, size), dtype=np.uint8))


def test_copies_are_appended_after_the_base_rows_and_read_back_in_any_order():
    base = _base()
    rows = np.array([1, 4, 7])
    source = augment_rows(base, rows, OfflineAugmentConfig(**PAPER_004), seed=3)
    assert len(source) == 10 + 3 * 3
    assert source.origin.tolist() == [1, 4, 7] * 3
    np.testing.assert_array_equal(source.get([0, 9]), base.get([0, 9]))  # base rows untouched
    mixed = [12, 2, 10, 5]
    got = source.get(mixed)
    np.testing.assert_array_equal(got[1], base.get([2])[0])
    np.testing.assert_array_equal(got[0], source.copies[2])
    assert source.source_rows(mixed).tolist() == [7, 2, 1, 5]


def test_copies_differ_from_originals_and_are_deterministic_for_a_seed():
    base = _base()
    rows = np.arange(10)
    config = OfflineAugmentConfig(**PAPER_004)
    first = augment_rows(base, rows, config, seed=5)
    again = augment_rows(base, rows, config, seed=5)
    other = augment_rows(base, rows, config, seed=6)
    np.testing.assert_array_equal(first.copies, again.copies)
    assert not np.array_equal(first.copies, other.copies)
    originals = base.get(first.origin)
    assert all(not np.array_equal(c, o) for c, o in zip(first.copies, originals, strict=True))


def test_rotation_by_90_degrees_is_a_quarter_turn():
    image = np.zeros((1, 16, 16), np.uint8)
    image[0, 2:5, 3:12] = 200  # an off-centre bar: every quarter turn looks different
    turned = transform_images(image, np.array([90.0]), np.array([1.0]), np.array([False]), 0.0, None)
    np.testing.assert_array_equal(turned[0], np.rot90(image[0]))


def test_scale_enlarges_about_the_centre():
    image = np.zeros((1, 64, 64), np.uint8)
    image[0, 24:40, 24:40] = 255  # a centred 16 x 16 square
    enlarged = transform_images(image, np.array([0.0]), np.array([1.25]), np.array([False]), 0.0, None)
    bright = np.argwhere(enlarged[0] > 127)
    assert len(bright) == pytest.approx(20 * 20, rel=0.1)
    assert bright.mean(axis=0) == pytest.approx([31.5, 31.5], abs=0.5)


def test_noise_has_the_configured_sd():
    flat = np.full((4, 64, 64), 128, np.uint8)
    rng = np.random.default_rng(0)
    noisy = transform_images(flat, np.zeros(4), np.ones(4), np.array([True, True, False, False]), 0.05, rng)
    assert noisy[:2].astype(float).std() == pytest.approx(0.05 * 255, rel=0.05)
    np.testing.assert_array_equal(noisy[2:], flat[2:])


def test_volumes_move_alike_in_every_slice():
    volume = np.zeros((1, 3, 16, 16), np.uint8)
    volume[0, :, 2:5, 3:12] = 150
    turned = transform_images(volume, np.array([90.0]), np.array([1.0]), np.array([False]), 0.0, None)
    for depth in range(3):
        np.testing.assert_array_equal(turned[0, depth], np.rot90(volume[0, depth]))


def test_separate_mode_deals_one_transformation_to_each_copy():
    config = OfflineAugmentConfig(**PAPER_004, mode="separate")
    angle, scale, noise = copy_parameters(config, 5, np.random.default_rng(0))
    rotated, scaled, noised = slice(0, 5), slice(5, 10), slice(10, 15)  # copy 1, 2, 3 of each of 5 rows
    assert (angle[rotated] > 0).all() and (scale[rotated] == 1).all() and not noise[rotated].any()
    assert (angle[scaled] == 0).all() and ((scale[scaled] >= 1.1) & (scale[scaled] <= 1.3)).all()
    assert not noise[scaled].any() and noise[noised].all() and (angle[noised] == 0).all()
    angle, scale, noise = copy_parameters(OfflineAugmentConfig(**PAPER_004), 5, np.random.default_rng(0))
    assert ((angle >= 0) & (angle <= 90)).all() and ((scale >= 1.1) & (scale <= 1.3)).all() and noise.all()


def test_recipe_checks_the_offline_settings():
    recipe = load_recipe("demo", RECIPE)
    assert recipe.train.offline_augment.transformations == ["rotation", "scale", "noise"]
    assert not load_recipe("demo").train.offline_augment.enabled
    with pytest.raises(CovidlensError, match="needs a rotation, scale or noise_std"):
        load_recipe("demo", ["train.offline_augment.factor=4"])
    with pytest.raises(CovidlensError, match="low <= high"):
        load_recipe("demo", ["train.offline_augment.rotation=[90, 0]"])


@pytest.fixture(scope="module")
def augmented_run(tiny_ct, tmp_path_factory):
    """A run set up (not trained) with paper 004's offline augmentation, and its image source."""
    recipe = load_recipe("demo", RECIPE)
    run, _ = cv.prepare_run(recipe, str(tiny_ct), tmp_path_factory.mktemp("offline") / "run", None, IndexOptions())
    return run, cv.image_source(run, show=False)


def test_only_training_rows_are_multiplied_and_no_patient_crosses_a_split(augmented_run):
    """Acceptance 3 of issue 7: the training split alone is multiplied; copies never cross a split."""
    run, source = augmented_run
    n_base = len(run.samples)
    for round_index, fold in cv.fold_keys(run.folds):
        rows = {role: run.rows(round_index, fold, role) for role in ("train", "val", "test")}
        train_source, labels, train_rows = cv.fold_training_set(run, source, round_index, fold)
        # rows per role: training x4 (the original + 3 copies); validation and test as the folds table has them
        assert len(train_rows) == 4 * len(rows["train"])
        assert len(train_source) == n_base + 3 * len(rows["train"])
        assert sorted(train_rows[train_rows < n_base]) == sorted(rows["train"])
        copies = train_rows[train_rows >= n_base]
        assert len(copies) == 3 * len(rows["train"])
        # every copy comes from a training row of this fold, with that row's label and a training patient
        origin = train_source.source_rows(copies)
        assert set(origin) <= set(rows["train"])
        np.testing.assert_array_equal(labels[copies], run.labels[origin])
        patients = run.samples["patient_id"].to_numpy()
        train_patients = set(patients[rows["train"]])
        held_out = set(patients[rows["val"]]) | set(patients[rows["test"]])
        assert set(patients[origin]) <= train_patients and not set(patients[origin]) & held_out
        # validation and test rows are the base images, never copies
        for role in ("val", "test"):
            assert (rows[role] < n_base).all()
            np.testing.assert_array_equal(train_source.get(rows[role]), source.get(rows[role]))


def test_the_trainer_gets_the_augmented_training_set(augmented_run, monkeypatch):
    run, source = augmented_run
    seen = {}

    def fake_fit(model, fit_source, labels, train_idx, val_idx, *args, **kwargs):
        seen.update(source=fit_source, labels=labels, train=train_idx, val=val_idx)
        return cv.FitResult(pd.DataFrame(columns=["epoch"]), 1)

    monkeypatch.setattr(cv, "fit", fake_fit)
    cv.train_fold(run, source, 0, 1, show=False)
    expected_source, expected_labels, expected_rows = cv.fold_training_set(run, source, 0, 1)
    np.testing.assert_array_equal(seen["train"], expected_rows)
    np.testing.assert_array_equal(seen["labels"], expected_labels)
    np.testing.assert_array_equal(seen["val"], run.rows(0, 1, "val"))
    np.testing.assert_array_equal(seen["source"].copies, expected_source.copies)  # same seed, same copies


def test_off_by_default_leaves_the_training_set_alone():
    base = _base()
    labels = np.arange(10) % 3
    rows = np.array([0, 3])
    source, got_labels, got_rows = offline_training_set(base, labels, rows, OfflineAugmentConfig(), seed=0)
    assert source is base and got_labels is labels and got_rows is rows
