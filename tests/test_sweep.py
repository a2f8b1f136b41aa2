import json

import pandas as pd
import pytest

from cli_helpers import assert_one_line_error, covidlens
from covidlens.errors import CovidlensError
from covidlens.train.sweep import cell_name, grid_cells, parse_grid, resolve_key, run_sweep

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
    assert report.count("<img") == 2 * 2  # confusion matrices and curves of each cell
    assert (out / "runs" / "depth=4" / "report.html").is_file()

    checkpoint = out / "runs" / "depth=2" / "checkpoints" / "r00-f0.pt"
    stamp = checkpoint.stat().st_mtime_ns
    again = covidlens(*sweep_args(tiny_volumes, out, "depth=2,4"))
    assert again.returncode == 0, again.stderr
    assert checkpoint.stat().st_mtime_ns == stamp  # finished cells are not retrained
    assert json.loads((out / "results.json").read_text())["rows"] == results["rows"]

    other = covidlens(*sweep_args(tiny_volumes, out, "depth=2,8"))
    assert_one_line_error(other, "another recipe", str(out))
