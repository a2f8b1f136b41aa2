import json
from pathlib import Path

import pandas as pd
import pytest

from cli_helpers import assert_one_line_error, covidlens
from covidlens.errors import CovidlensError
from covidlens.train.checkpoint import load_checkpoint
from covidlens.train.sweep import Sweep, cell_name, grid_cells, parse_grid, resolve_key, run_sweep

FAST_VOLUMES = [
    "data.image_size=32",
    "train.epochs=1",
    "train.batch_size=4",
    "train.threads=1",
    "evaluate.bootstrap_resamples=100",
]


@pytest.mark.parametrize(
    ("key", "full"),
    [
        ("depth", "data.depth"),
        ("batch_size", "train.batch_size"),
        ("model", "model.name"),
        ("lr", "train.optimizer.lr"),
        ("train.scheduler.factor", "train.scheduler.factor"),
    ],
)
def test_grid_keys_resolve_to_recipe_fields(key, full):
    assert resolve_key(key) == full


@pytest.mark.parametrize(("key", "message"), [("monitor", "ambiguous"), ("deepth", "not a recipe")])
def test_bad_grid_keys_are_refused(key, message):
    with pytest.raises(CovidlensError, match=message):
        resolve_key(key)


def test_grid_cells_put_the_first_axis_outermost_and_name_folders_safely():
    axes = parse_grid(["depth=2,4", "model=ResNet3D-18,R(2+1)D-18"])
    cells = grid_cells(axes)
    assert cells == [
        {"data.depth": 2, "model.name": "ResNet3D-18"},
        {"data.depth": 2, "model.name": "R(2+1)D-18"},
        {"data.depth": 4, "model.name": "ResNet3D-18"},
        {"data.depth": 4, "model.name": "R(2+1)D-18"},
    ]
    assert cell_name(axes, cells[1]) == "depth=2_model=R-2+1-D-18"
    for bad in (["depth"], ["depth="], ["depth=2,2"], ["depth=2", "data.depth=4"]):
        with pytest.raises(CovidlensError):
            parse_grid(bad)


def test_sweep_needs_a_positive_class(tiny_volumes, tmp_path):
    with pytest.raises(CovidlensError, match="positive_class"):
        run_sweep("demo", ["train.batch_size=4,8"], tiny_volumes, tmp_path / "s", ["evaluate.positive_class=null"])
    assert not (tmp_path / "s").exists()


def sweep_args(data, out, grid):
    args = ["sweep", "li2021", "--data", data, "--out", out, "--grid", grid]
    for item in FAST_VOLUMES:
        args += ["--set", item]
    return args


def test_sweep_runs_the_grid_resumes_and_reports_the_table(tiny_volumes, tmp_path):
    out = tmp_path / "sweep"
    result = covidlens(*sweep_args(tiny_volumes, out, "depth=2,4"))
    assert result.returncode == 0, result.stderr
    assert "Accuracy (95% CI)" in result.stdout
    results = json.loads((out / "results.json").read_text())
    assert [row["group"] for row in results["rows"]] == ["depth=2", "depth=4"]
    assert [row["settings"] for row in results["rows"]] == [{"depth": 2}, {"depth": 4}]
    for row in results["rows"]:
        predictions = pd.read_csv(out / "runs" / row["group"] / "predictions.csv")
        assert row["n"] == len(predictions)
        assert predictions["sample_id"].str.contains("@").all()  # volumes
    depth2 = pd.read_csv(out / "runs" / "depth=2" / "volumes.csv")
    depth4 = pd.read_csv(out / "runs" / "depth=4" / "volumes.csv")
    assert len(depth2) > len(depth4) and set(depth4["depth"]) == {4}
    assert len(list((out / "cache").glob("images-*.npy"))) == 1  # one cache shared by the cells
    table = pd.read_csv(out / "sweep.csv")
    assert table["depth"].tolist() == [2, 4]
    report = (out / "report.html").read_text()
    assert "Accuracy (95% CI)" in report and "Fisher" in report
    assert report.count("<img") == 2 * 2 + 1  # confusion matrices and curves of each cell, the accuracy bars
    assert (out / "runs" / "depth=4" / "report.html").is_file()

    checkpoint = out / "runs" / "depth=2" / "checkpoints" / "r00-f0.pt"
    stamp = checkpoint.stat().st_mtime_ns
    again = covidlens(*sweep_args(tiny_volumes, out, "depth=2,4"))
    assert again.returncode == 0, again.stderr
    assert checkpoint.stat().st_mtime_ns == stamp  # finished cells are not retrained
    assert json.loads((out / "results.json").read_text())["rows"] == results["rows"]

    other = covidlens(*sweep_args(tiny_volumes, out, "depth=2,8"))
    assert_one_line_error(other, "another recipe", str(out))


def test_model_options_are_grid_keys_labelled_by_their_name():
    assert resolve_key("model.options.c") == "model.options.c"
    with pytest.raises(CovidlensError, match="model.options.<name>"):
        resolve_key("model.options.")
    axes = parse_grid(["model.options.c=0.1,0.01", "model.options.epsilon=1e-3,1e-4"])
    assert [(a.key, a.label) for a in axes] == [("model.options.c", "c"), ("model.options.epsilon", "epsilon")]
    assert axes[1].values == (0.001, 0.0001)  # YAML 1.1 reads 1e-3 as text; the grid reads it as a number
    cells = grid_cells(axes)
    assert cell_name(axes, cells[1]) == "c=0.1_epsilon=0.0001"
    sweep = Sweep(Path("unused"), "krivonos2020-svm", [], axes)
    assert sweep.cell_recipe(cells[1]).model.options == {"c": 0.1, "epsilon": 0.0001, "epochs": 100}


def test_an_unknown_model_option_stops_the_sweep_before_anything_is_written(tiny_ct, tmp_path):
    with pytest.raises(CovidlensError, match="LinearSVM has no option gamma; its options are c, epsilon, epochs"):
        run_sweep("krivonos2020-svm", ["model.options.gamma=1,2"], tiny_ct, tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_svm_grid_gives_paper_003s_table_one_row_per_c_and_epsilon_pair(tiny_ct, tmp_path):
    out = tmp_path / "svm"
    overrides = [
        "data.classes=null", "cv.folds=2", "train.epochs=1", "train.batch_size=8", "train.threads=1",
        "evaluate.positive_class=COVID", "evaluate.bootstrap_resamples=100",
    ]
    grid = ["model.options.c=0.1,0.01", "model.options.epsilon=0.001,0.0001"]
    rows = run_sweep("krivonos2020-svm", grid, tiny_ct, out, overrides, show_progress=False)
    pairs = [{"c": 0.1, "epsilon": 0.001}, {"c": 0.1, "epsilon": 0.0001}, {"c": 0.01, "epsilon": 0.001},
             {"c": 0.01, "epsilon": 0.0001}]
    assert [row["settings"] for row in rows] == pairs
    table = pd.read_csv(out / "sweep.csv")
    assert table[["c", "epsilon"]].to_dict("records") == pairs and table["accuracy_estimate"].between(0, 1).all()
    for name, c, epsilon in (("c=0.1_epsilon=0.001", 0.1, 0.001), ("c=0.01_epsilon=0.0001", 0.01, 0.0001)):
        model, recipe, _ = load_checkpoint(out / "runs" / name / "checkpoints" / "r00-f0.pt")
        assert model.c == c == recipe.model.options["c"]  # the checkpoint rebuilds the model with its options
        assert model.epsilon == epsilon


def test_a_recipe_axis_swaps_whole_recipes_per_cell(tmp_path):
    axes = parse_grid(["recipe=krivonos2020-svm,krivonos2020-mlp", "data.resize=A,D"])
    assert [a.key for a in axes] == ["recipe", "data.resize"]
    sweep = Sweep(tmp_path / "s", "krivonos2020", ["train.epochs=1"], axes)
    recipes = [sweep.cell_recipe(cell) for cell in sweep.cells]
    assert [(r.name, r.model.name, r.data.resize) for r in recipes] == [
        ("krivonos2020-svm", "LinearSVM", "A"),
        ("krivonos2020-svm", "LinearSVM", "D"),
        ("krivonos2020-mlp", "MLP", "A"),
        ("krivonos2020-mlp", "MLP", "D"),
    ]
    assert all(r.train.epochs == 1 for r in recipes)
    assert sweep.names[0] == "recipe=krivonos2020-svm_resize=A"
