"""Paper 004's efficiency table (covidlens efficiency) and the polsinelli2020 recipe."""

import math

import pandas as pd
import pytest

from cli_helpers import assert_one_line_error, covidlens
from covidlens.config import load_recipe
from covidlens.evaluate.efficiency import efficiency_table
from covidlens.evaluate.metrics import metrics_from_predictions
from covidlens.models.registry import check_model_input
from covidlens.train.checkpoint import read_checkpoint

COLUMNS = ["run", "model", "positive_class", "sensitivity", "parameters_m", "sensitivity_per_m", "images_timed"]


@pytest.fixture(scope="module")
def table(tiny_run):
    return efficiency_table([tiny_run / "run"], images=3, threads=[1, 2])


def test_row_matches_checkpoint_and_predictions(table, tiny_run):
    run = tiny_run / "run"
    assert list(table.columns) == [*COLUMNS, "ms_per_image_1_threads", "ms_per_image_2_threads"]
    row = table.iloc[0]
    checkpoint = read_checkpoint(run / "checkpoints" / "r00-f0.pt")
    assert row["model"] == checkpoint.recipe.model.name
    assert row["parameters_m"] == sum(p.numel() for p in checkpoint.model.parameters()) / 1e6
    pooled = metrics_from_predictions(pd.read_csv(run / "predictions.csv"), checkpoint.classes)
    assert row["positive_class"] == "COVID"
    assert row["sensitivity"] == pytest.approx(pooled["per_class"]["COVID"]["sensitivity"])
    assert row["sensitivity_per_m"] == pytest.approx(row["sensitivity"] / row["parameters_m"])
    assert row["images_timed"] == 3
    for column in ("ms_per_image_1_threads", "ms_per_image_2_threads"):
        assert math.isfinite(row[column]) and row[column] > 0


def test_cli_two_runs_two_rows(tiny_run, tmp_path):
    out = tmp_path / "table.csv"
    run = tiny_run / "run"
    result = covidlens("efficiency", run, run, "--images", 2, "--threads", "1", "-o", out)
    assert result.returncode == 0, result.stderr
    assert "Sens. ÷ #Param." in result.stdout
    table = pd.read_csv(out)
    assert len(table) == 2 and "ms_per_image_1_threads" in table.columns


def test_cli_errors_are_one_line(tiny_run):
    assert_one_line_error(covidlens("efficiency", tiny_run / "data"), "no checkpoints/")
    assert_one_line_error(covidlens("efficiency", tiny_run / "run", "--threads", "x"), "--threads")


def test_polsinelli2020_recipe_fits_its_model():
    recipe = load_recipe("polsinelli2020")
    assert recipe.model.name == "LightCNN" and recipe.data.classes == ["COVID", "NonCOVID"]
    assert recipe.data.relabel == {"Healthy": "NonCOVID", "Others": "NonCOVID"}  # other illnesses and healthy
    assert recipe.evaluate.positive_class == "COVID"
    assert recipe.train.offline_augment.factor == 4 and recipe.train.offline_augment.rotation == (0, 90)
    assert (recipe.train.scheduler.name, recipe.train.scheduler.factor, recipe.train.scheduler.step_size) == (
        "step", 0.8, 5
    )
    assert recipe.train.optimizer.name == "sgd" and recipe.train.epochs == 20
    assert recipe.train.precise_bn and not recipe.train.restore_best  # MATLAB's population BN statistics; last epoch
    check_model_input(recipe.model.name, 2, recipe.data.channels, recipe.data.image_size)
