import json
import time

import numpy as np
import optuna
import pandas as pd
import pytest

from cli_helpers import assert_one_line_error, covidlens
from covidlens.config import load_recipe
from covidlens.data.synth import synthesize
from covidlens.errors import CovidlensError
from covidlens.train import hpo
from covidlens.train.hpo import (
    check_storage_url,
    experiment_row,
    format_tuning_table,
    run_tuning,
    surrogate_estimate,
    surrogate_features,
    tuning_table,
)

FAST = [
    "model.name=test_resnet",
    "data.image_size=32",
    "train.optimizer.name=sgd",
    "train.epochs=1",
    "train.threads=1",
    "cv.folds=2",
]


def fast_recipe(*extra):
    return load_recipe("demo", FAST + list(extra))


@pytest.fixture(scope="module")
def tiny_slices(tmp_path_factory):
    out = tmp_path_factory.mktemp("tune") / "data"
    synthesize("ct-slices", out, patients=9, seed=0, size=64, slices=(3, 4))
    return out


def study_of(out):
    return optuna.load_study(study_name="demo", storage=f"sqlite:///{out / 'study.db'}")


def tune(data, out, trials, **kwargs):
    kwargs.setdefault("startup_trials", 2)  # the Gaussian process proposes from the third trial on
    return run_tuning(fast_recipe(), data, out, trials, show_progress=False, **kwargs)


def test_search_resumes_without_repeating_finished_trials(tiny_slices, tmp_path, monkeypatch, capsys):
    trained, decoded = [], []
    real_train, real_source = hpo.train_fold, hpo.image_source

    def spy_train(run, source, round_index, fold, show):
        trained.append((round_index, fold, run.recipe.train.optimizer.model_dump()))
        return real_train(run, source, round_index, fold, show)

    monkeypatch.setattr(hpo, "train_fold", spy_train)
    monkeypatch.setattr(hpo, "image_source", lambda run, show: decoded.append(1) or real_source(run, show))
    out = tmp_path / "tune"
    tune(tiny_slices, out, 4)
    first = pd.read_csv(out / "trials.csv")
    assert list(first.columns) == ["number", "state", "lr", "momentum", "weight_decay", "val_accuracy", "seconds"]
    assert first["number"].tolist() == [0, 1, 2, 3] and (first["state"] == "COMPLETE").all()
    assert len(trained) == 4 and len(decoded) == 1  # the images are decoded once for all trials
    assert {(r, f) for r, f, _ in trained} == {(0, 0)}  # every trial trains the first fold
    for (_, _, optimizer), row in zip(trained, first.itertuples(), strict=True):
        assert optimizer["name"] == "sgd"
        assert optimizer["lr"] == pytest.approx(row.lr) and optimizer["weight_decay"] == pytest.approx(row.weight_decay)
        assert 1e-4 <= row.lr <= 1e-1 and 0.5 <= row.momentum <= 0.99 and 1e-12 <= row.weight_decay <= 1e-2

    best = tune(tiny_slices, out, 7)
    assert len(trained) == 7 and len(decoded) == 2  # exactly 3 new trials, one decode per command
    second = pd.read_csv(out / "trials.csv")
    pd.testing.assert_frame_equal(second.iloc[:4], first)  # finished trials untouched
    new = second.iloc[4:]
    assert new["number"].tolist() == [4, 5, 6] and (new["state"] == "COMPLETE").all()
    old_points = set(map(tuple, first[["lr", "momentum", "weight_decay"]].round(12).to_numpy()))
    assert not old_points & set(map(tuple, new[["lr", "momentum", "weight_decay"]].round(12).to_numpy()))

    assert best["trials_complete"] == 7 and best["val_accuracy"] == second["val_accuracy"].max()
    assert best["best_trial"] == second.loc[second["val_accuracy"].idxmax(), "number"]
    assert json.loads((out / "best.json").read_text()) == best
    assert best["set"][0] == "train.optimizer.name=sgd"
    table = pd.read_csv(out / "table.csv")
    assert table["experiment"].tolist() == ["demo"] and table["trials"].tolist() == [7]
    assert 0.0 <= table["estimated_accuracy"].iloc[0] <= 1.0
    err = capsys.readouterr().err
    assert "resuming study 'demo': 4 of 7 trials complete" in err
    assert "trial 6 (7/7 complete): lr " in err and "val accuracy" in err

    tune(tiny_slices, out, 7)  # already complete: nothing trains
    assert len(trained) == 7

    with pytest.raises(CovidlensError, match="different recipe"):
        run_tuning(fast_recipe("train.epochs=2"), tiny_slices, out, 7, show_progress=False)


def test_interrupted_trials_do_not_block_the_resume(tiny_slices, tmp_path, monkeypatch):
    out = tmp_path / "tune"
    real_train = hpo.train_fold
    calls = []

    def interrupted(error):
        def train(*args):
            calls.append(1)
            if len(calls) == 2:
                raise error
            return real_train(*args)

        return train

    # Ctrl-C in the second trial: optuna marks it FAIL and the command stops
    monkeypatch.setattr(hpo, "train_fold", interrupted(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        tune(tiny_slices, out, 3)
    assert [t.state.name for t in study_of(out).trials] == ["COMPLETE", "FAIL"]
    first = study_of(out).trials[0]

    # a process killed inside a trial never tells the storage: the trial stays RUNNING
    calls.clear()
    monkeypatch.setattr(hpo, "train_fold", interrupted(SystemExit(137)))
    with pytest.raises(SystemExit):
        tune(tiny_slices, out, 3)
    assert [t.state.name for t in study_of(out).trials] == ["COMPLETE", "FAIL", "COMPLETE", "RUNNING"]

    monkeypatch.setattr(hpo, "train_fold", real_train)
    tune(tiny_slices, out, 3)  # its heartbeat is fresh (it might be another machine's): ignored, not counted
    states = [t.state.name for t in study_of(out).trials]
    assert states == ["COMPLETE", "FAIL", "COMPLETE", "RUNNING", "COMPLETE"]
    assert study_of(out).trials[0].params == first.params and study_of(out).trials[0].value == first.value

    monkeypatch.setattr(hpo, "HEARTBEAT_INTERVAL_S", 1)
    monkeypatch.setattr(hpo, "HEARTBEAT_GRACE_S", 1)
    time.sleep(2.5)  # the killed trial's heartbeat is now stale
    tune(tiny_slices, out, 4)
    states = [t.state.name for t in study_of(out).trials]
    assert states == ["COMPLETE", "FAIL", "COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    trials = pd.read_csv(out / "trials.csv")
    assert trials["state"].tolist() == states and trials["val_accuracy"].notna().sum() == 4
    assert json.loads((out / "best.json").read_text())["trials_complete"] == 4


def test_a_shared_study_refuses_another_recipe_or_data(tiny_slices, tmp_path):
    shared = f"sqlite:///{tmp_path / 'shared.db'}"
    tune(tiny_slices, tmp_path / "a", 1, storage=shared)
    with pytest.raises(CovidlensError, match="tunes another recipe"):
        run_tuning(fast_recipe("train.epochs=2"), tiny_slices, tmp_path / "b", 1, storage=shared, show_progress=False)
    assert not (tmp_path / "b").exists()  # a refused new study leaves nothing behind
    other = tmp_path / "other-data"
    synthesize("ct-slices", other, patients=9, seed=1, size=64, slices=(3, 4))
    with pytest.raises(CovidlensError, match="tunes another split"):
        tune(other, tmp_path / "c", 1, storage=shared)
    assert not (tmp_path / "c").exists()
    best = tune(tiny_slices, tmp_path / "d", 2, storage=shared)  # the same study from a second folder
    assert best["trials_complete"] == 2
    assert pd.read_csv(tmp_path / "d" / "trials.csv")["number"].tolist() == [0, 1]
    with pytest.raises(CovidlensError, match="holds study 'demo'"):
        tune(tiny_slices, tmp_path / "d", 2, study_name="another")


def smooth_accuracy(features):
    """A known smooth accuracy surface over (log10 lr, momentum, log10 L2), highest (0.9) at (-2, 0.85, -6)."""
    log_lr, momentum, log_l2 = features.T
    return 0.9 - 0.04 * (log_lr + 2) ** 2 - 0.8 * (momentum - 0.85) ** 2 - 0.004 * (log_l2 + 6) ** 2


def random_points(n, seed):
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "lr": 10 ** rng.uniform(-4, -1, n),
            "momentum": rng.uniform(0.5, 0.99, n),
            "weight_decay": 10 ** rng.uniform(-12, -2, n),
        }
    )


def test_surrogate_recovers_a_smooth_objective():
    points = surrogate_features(random_points(30, seed=0))
    values = smooth_accuracy(points)
    best = int(values.argmax())
    estimate = surrogate_estimate(points, values, points[best])
    assert 0.0 <= estimate <= 1.0 and estimate == pytest.approx(values[best], abs=0.01)
    unseen = surrogate_features(random_points(5, seed=1))
    for point, truth in zip(unseen, smooth_accuracy(unseen), strict=True):
        assert surrogate_estimate(points, values, point) == pytest.approx(truth, abs=0.05)
    noisy = values + np.random.default_rng(2).normal(0, 0.02, len(values))
    best = int(noisy.argmax())
    estimate = surrogate_estimate(points, noisy, points[best])
    assert abs(estimate - values[best]) < abs(noisy[best] - values[best]) + 0.01  # shrinks the lucky draw
    assert estimate <= noisy[best]


def test_surrogate_stays_in_the_unit_interval():
    points = surrogate_features(random_points(6, seed=3))
    assert surrogate_estimate(points, np.ones(6), points[0]) == pytest.approx(1.0, abs=1e-6)
    assert surrogate_estimate(points[:1], np.array([0.7]), points[0]) == pytest.approx(0.7, abs=1e-6)
    with pytest.raises(CovidlensError):
        surrogate_estimate(points[:0], np.array([]), points[0])


def test_tuning_table_puts_experiments_in_paper_004s_layout(tmp_path):
    points = random_points(12, seed=4)
    values = np.clip(smooth_accuracy(surrogate_features(points)), 0, 1)
    for name, shift in (("exp1", 0.0), ("exp2", -0.05)):
        trials = points.assign(number=range(12), state="COMPLETE", val_accuracy=values + shift, seconds=1.0)
        trials.loc[3, ["state", "val_accuracy"]] = ["FAIL", np.nan]
        trials.loc[11, ["state", "val_accuracy"]] = ["RUNNING", np.nan]
        (tmp_path / name).mkdir()
        trials.to_csv(tmp_path / name / "trials.csv", index=False)
    table = tuning_table({"#1": tmp_path / "exp1", "#2": tmp_path / "exp2" / "trials.csv"})
    assert table["experiment"].tolist() == ["#1", "#2"] and table["trials"].tolist() == [10, 10]
    kept = [i for i in range(12) if i not in (3, 11)]
    best = kept[int(values[kept].argmax())]
    assert table["best_trial"].tolist() == [best, best]
    assert table.loc[0, "learning_rate"] == pytest.approx(points.loc[best, "lr"])
    assert table.loc[1, "observed_accuracy"] == pytest.approx(values[best] - 0.05)
    shown = format_tuning_table(table)
    assert list(shown.columns[:6]) == ["Exp.", "Obs. Acc.", "Est. Acc.", "Learn. Rate", "Mom.", "L2-Reg."]
    assert shown.loc[0, "Obs. Acc."] == f"{100 * values[best]:.2f}%"
    empty = pd.DataFrame(columns=hpo.TRIAL_COLUMNS)
    with pytest.raises(CovidlensError, match="no complete trial"):
        experiment_row("none", empty)


def test_storage_urls_hide_passwords_and_refuse_unknown_schemes():
    assert check_storage_url("postgresql://me:secret@db.example/hpo") == "postgresql://me:***@db.example/hpo"
    with pytest.raises(CovidlensError, match="unknown scheme 'redis'"):
        check_storage_url("redis://localhost/0")


def test_tune_command_prints_the_table(tiny_slices, tmp_path):
    out = tmp_path / "cli"
    args = ["tune", "demo", "--data", tiny_slices, "--out", out, "--trials", 2, "--epochs", 1, "--quiet"]
    for item in FAST:
        args += ["--set", item]
    result = covidlens(*args)
    assert result.returncode == 0, result.stderr
    assert "Obs. Acc." in result.stdout and "Est. Acc." in result.stdout and "L2-Reg." in result.stdout
    assert "trial 1 (2/2 complete)" in result.stderr
    assert {"trials.csv", "best.json", "table.csv", "study.db"} <= {p.name for p in out.iterdir()}


@pytest.mark.parametrize(
    ("extra", "needles"),
    [
        (["--set", "train.optimizer.name=adam"], ["trains with adam", "train.optimizer.name=sgd"]),
        (["--storage", "foo://host/db"], ["unknown scheme 'foo'"]),
        (["--trials", "0"], ["--trials 0"]),
    ],
)
def test_bad_tune_input_is_a_one_line_error(tiny_slices, tmp_path, extra, needles):
    out = tmp_path / "bad"
    args = ["tune", "demo", "--data", tiny_slices, "--out", out, "--set", "train.optimizer.name=sgd", *extra]
    assert_one_line_error(covidlens(*args), *needles)
    assert not out.exists()
