import pytest

from covidlens.config import apply_overrides, builtin_recipes, load_recipe, recipe_to_yaml, validate_recipe
from covidlens.errors import CovidlensError


def test_builtin_recipes_hold_paper_000_numbers():
    assert {"garg2022", "demo"} <= set(builtin_recipes())
    recipe = load_recipe("garg2022")
    assert recipe.train.optimizer.name == "adam" and recipe.train.optimizer.lr == pytest.approx(1e-4)
    assert recipe.train.scheduler.name == "plateau"
    assert (recipe.train.scheduler.factor, recipe.train.scheduler.patience) == (0.5, 3)
    assert recipe.train.scheduler.min_delta == pytest.approx(1e-4)
    assert (recipe.cv.folds, recipe.cv.rounds, recipe.cv.val_fraction) == (5, 25, 0.15)
    assert recipe.train.epochs == 25 and recipe.train.restore_best
    augment = recipe.train.augment
    assert augment.rotation == (0, 360) and augment.zoom == (0.85, 1.15)
    assert (augment.width_shift, augment.height_shift, augment.shear) == (0.15, 0.15, 0.15)
    assert augment.hflip and augment.vflip
    assert recipe.train.label_smoothing > 0


def test_overrides_are_parsed_as_yaml_values():
    recipe = load_recipe("demo", ["train.epochs=3", "model.name=efficientnet_b0", "data.window=[-600, 1500]"])
    assert recipe.train.epochs == 3
    assert recipe.model.name == "efficientnet_b0"
    assert recipe.data.window == (-600, 1500)


def test_typo_in_key_is_a_one_line_error():
    with pytest.raises(CovidlensError, match="unknown recipe key 'train.epoch'"):
        load_recipe("demo", ["train.epoch=3"])


def test_bad_value_names_the_field():
    with pytest.raises(CovidlensError, match="train.epochs"):
        load_recipe("demo", ["train.epochs=0"])
    with pytest.raises(CovidlensError, match="expected key=value"):
        load_recipe("demo", ["train.epochs"])


def test_unknown_recipe_and_missing_file(tmp_path):
    with pytest.raises(CovidlensError, match="unknown recipe 'garg'"):
        load_recipe("garg")
    with pytest.raises(CovidlensError, match="not found"):
        load_recipe(str(tmp_path / "nope.yaml"))


def test_recipe_file_round_trips(tmp_path):
    recipe = load_recipe("demo", ["train.epochs=2"])
    path = tmp_path / "mine.yaml"
    path.write_text(recipe_to_yaml(recipe))
    assert load_recipe(str(path)) == recipe


def test_override_cannot_descend_into_a_value():
    with pytest.raises(CovidlensError, match="is a value"):
        apply_overrides({"train": {"epochs": 3}}, ["train.epochs.x=1"])
    with pytest.raises(CovidlensError, match="unknown recipe key"):
        validate_recipe({"trian": {}}, "test")


def test_zoom_range_must_be_positive():
    with pytest.raises(CovidlensError, match="zoom"):
        load_recipe("demo", ["train.augment.zoom=[0, 1.1]"])
