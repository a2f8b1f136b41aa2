"""Paper 003's three recipes (CORONet, linear SVM, MLP) and the recipe's model.options."""

import pytest

from covidlens.config import load_recipe, recipe_to_yaml
from covidlens.errors import CovidlensError
from covidlens.models.registry import check_model_input

RECIPES_003 = ["krivonos2020", "krivonos2020-svm", "krivonos2020-mlp"]


@pytest.mark.parametrize("name", RECIPES_003)
def test_each_recipe_loads_and_builds_its_model_at_its_input_size(name):
    recipe = load_recipe(name)
    assert recipe.paper == "003" and recipe.data.channels == 1
    assert recipe.data.classes == ["normal", "bacterial", "viral", "covid"]
    assert (recipe.cv.split, recipe.cv.folds) == ("kfold", 10)
    check_model_input(
        recipe.model.name, len(recipe.data.classes), recipe.data.channels, recipe.data.image_size,
        recipe.data.depth, recipe.model.options,
    )


def test_coronet_recipe_holds_section_iii_c():
    recipe = load_recipe("krivonos2020")
    assert (recipe.model.name, recipe.data.image_size, recipe.train.epochs) == ("CORONet", 200, 200)
    assert recipe.train.optimizer.lr == pytest.approx(0.1)
    scheduler = recipe.train.scheduler
    assert (scheduler.name, scheduler.factor, scheduler.patience, scheduler.monitor) == ("plateau", 0.1, 3, "val_loss")
    assert scheduler.min_delta == pytest.approx(0.1)
    augment = recipe.train.augment
    assert augment.rotation == (-20, 20) and augment.zoom == (0.7, 1.3)
    assert (augment.width_shift, augment.height_shift, augment.shear) == (0.3, 0.3, 0.3)
    assert augment.hflip and not augment.vflip
    assert recipe.train.restore_best and recipe.train.monitor == "val_loss_and_accuracy"
    assert recipe.cv.val_fraction == pytest.approx(0.2)


def test_svm_and_mlp_recipes_hold_sections_iii_a_and_iii_b():
    svm = load_recipe("krivonos2020-svm")
    assert (svm.model.name, svm.data.image_size) == ("LinearSVM", 88)
    assert svm.model.options == {"c": 0.01, "epsilon": 0.0001, "epochs": 100}
    assert svm.train.epochs == svm.model.options["epochs"] == 100
    optimizer = svm.train.optimizer
    assert (optimizer.name, optimizer.lr, optimizer.momentum, svm.train.batch_size) == ("sgd", 1.0, 0.0, 1)
    mlp = load_recipe("krivonos2020-mlp")
    assert (mlp.model.name, mlp.data.image_size, mlp.model.options) == ("MLP", 88, {"hidden": 512})
    assert (mlp.train.epochs, mlp.train.batch_size, mlp.train.optimizer.lr) == (500, 32, pytest.approx(1e-4))
    assert mlp.cv.val_fraction == pytest.approx(0.2)


def test_options_are_set_checked_and_written_with_the_recipe(tmp_path):
    recipe = load_recipe("krivonos2020-svm", ["model.options.c=1", "model.options.epochs=50"])
    assert recipe.model.options == {"c": 1.0, "epsilon": 0.0001, "epochs": 50}
    assert isinstance(recipe.model.options["c"], float)
    assert load_recipe("krivonos2020-svm", ["model.options.epsilon=1e-5"]).model.options["epsilon"] == 1e-5
    path = tmp_path / "svm.yaml"
    path.write_text(recipe_to_yaml(recipe))
    assert load_recipe(str(path)) == recipe
    with pytest.raises(CovidlensError, match=r"model: model.options: LinearSVM has no option C; its options are c, "):
        load_recipe("krivonos2020-svm", ["model.options.C=0.1"])
    with pytest.raises(CovidlensError, match="model.options.epsilon: 'small' is not a valid float for LinearSVM"):
        load_recipe("krivonos2020-svm", ["model.options.epsilon=small"])
    with pytest.raises(CovidlensError, match="CORONet has no option c, epsilon, epochs; it takes no options"):
        load_recipe("krivonos2020-svm", ["model.name=CORONet"])  # the SVM's options do not follow a new model
    timm = load_recipe("demo", ["model.options.global_pool=max"])  # timm names: passed on, checked when built
    assert timm.model.options == {"global_pool": "max"}


def test_unknown_monitor_is_refused():
    with pytest.raises(CovidlensError, match="train.monitor"):
        load_recipe("demo", ["train.monitor=val_auc"])
