"""Bayesian search of SGD's initial learning rate, momentum and L2 regularization (paper 004, Section 2.4).

One study = one experiment of paper 004's Tables 3-4: each trial trains the recipe's model on the first
fold of the recipe's patient-wise split with the trial's hyper-parameters and scores its best validation
accuracy; optuna's GPSampler (a Gaussian-process Bayesian optimizer, as MATLAB's bayesopt the paper used)
proposes the next point. The split and the decode-once cache are made once, in `<out>/run/` (an ordinary
run directory set up by `prepare_run`), and every trial reuses them; every trial starts from the same
seed (the fold's), so trials differ only in their hyper-parameters.

The study lives in an optuna storage (`sqlite:///<out>/study.db` unless `--storage` names another, e.g.
a PostgreSQL server several machines share). Rerunning the command continues it until `trials` trials
are COMPLETE; failed trials and trials left RUNNING by a killed process never count, and a RUNNING
trial whose heartbeat has stopped for `HEARTBEAT_GRACE_S` seconds is marked FAIL by the next trial.
The study records the recipe, the split and the search space; a rerun with another one is refused.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import sqlalchemy
import torch
from optuna.trial import FrozenTrial, TrialState

from covidlens import atomic
from covidlens.config import Recipe, recipe_to_yaml, validate_recipe
from covidlens.data.adapters.base import IndexOptions
from covidlens.errors import CovidlensError
from covidlens.progress import console
from covidlens.resume import folder_record
from covidlens.train.cv import RunData, fold_keys, image_source, prepare_run, resolved_path, train_fold

PARAMS = ("lr", "momentum", "weight_decay")  # optuna parameter names = trials.csv columns
TRIAL_COLUMNS = ["number", "state", *PARAMS, "val_accuracy", "seconds"]
TABLE_COLUMNS = [
    "experiment", "observed_accuracy", "estimated_accuracy", "learning_rate", "momentum", "l2_regularization",
    "trials", "best_trial",
]
PAPER_HEADERS = {  # paper 004's Tables 3-4
    "experiment": "Exp.", "observed_accuracy": "Obs. Acc.", "estimated_accuracy": "Est. Acc.",
    "learning_rate": "Learn. Rate", "momentum": "Mom.", "l2_regularization": "L2-Reg.",
    "trials": "Trials", "best_trial": "Best trial",
}
STUDY_ATTR = "covidlens"  # the study's user attribute recording what it tunes
HEARTBEAT_INTERVAL_S = 60  # a running trial writes a heartbeat this often ...
HEARTBEAT_GRACE_S = 180  # ... and is failed as stale when none came for this long


@dataclass(frozen=True)
class SearchSpace:
    """Ranges of the three searched hyper-parameters; learning rate and L2 are searched on a log scale.

    Paper 004 does not print its ranges. These contain every value of its Tables 3-4 (learning rates
    1.0e-4 .. 0.090, momenta 0.585 .. 0.979, L2 1.0e-12 .. 9.5e-7); the L2 range reaches down to 1e-12
    because Table 3 reports 1.0172e-12, below the 1e-10 of MATLAB's bayesopt example.
    """

    lr: tuple[float, float] = (1e-4, 1e-1)
    momentum: tuple[float, float] = (0.5, 0.99)
    weight_decay: tuple[float, float] = (1e-12, 1e-2)

    def suggest(self, trial: optuna.Trial) -> dict[str, float]:
        """The trial's point of the space."""
        return {
            "lr": trial.suggest_float("lr", *self.lr, log=True),
            "momentum": trial.suggest_float("momentum", *self.momentum),
            "weight_decay": trial.suggest_float("weight_decay", *self.weight_decay, log=True),
        }


DEFAULT_SPACE = SearchSpace()
LOG_SCALED = {"lr": True, "momentum": False, "weight_decay": True}


# ----------------------------------------------------------------------------------------------------------
# checks before anything is written


def check_trials(trials: int) -> None:
    """A study needs at least one trial."""
    if trials < 1:
        raise CovidlensError(f"--trials {trials}: a study needs at least 1 trial")


def check_sgd(recipe: Recipe) -> None:
    """Paper 004 tunes SGD with momentum; another optimizer is refused rather than silently replaced."""
    if recipe.train.optimizer.name != "sgd":
        raise CovidlensError(
            f"tune searches SGD's learning rate, momentum and L2 (paper 004), but recipe {recipe.name!r} trains "
            f"with {recipe.train.optimizer.name}; add --set train.optimizer.name=sgd"
        )


def check_storage_url(url: str) -> str:
    """The storage URL with its password hidden; an unknown scheme or a malformed URL is a user error."""
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise CovidlensError(
            f"--storage {url!r} is not a database URL; use e.g. sqlite:///study.db or "
            "postgresql://USER:PASSWORD@HOST/DATABASE"
        ) from None
    shown = parsed.render_as_string(hide_password=True)
    try:
        parsed.get_dialect()
    except sqlalchemy.exc.NoSuchModuleError:
        raise CovidlensError(
            f"--storage {shown}: unknown scheme {parsed.drivername!r}; use sqlite:///FILE, postgresql://... "
            "or mysql://... (any SQLAlchemy database optuna supports)"
        ) from None
    return shown


def _check_out_folder(out: Path, record: dict) -> None:
    """`out` must be new, empty, or hold this very study (same name, storage and data)."""
    found = folder_record(out, "tune.json", "tuning")
    if found is not None and found != record:
        raise CovidlensError(
            f"{out}: holds study {found.get('study')!r} on {found.get('storage')} with data "
            f"{found.get('data')!r}; use another --out, or the same --study, --storage and --data to resume it"
        )


# ----------------------------------------------------------------------------------------------------------
# the study


def split_fingerprint(run: RunData, key: tuple[int, int]) -> str:
    """A hash of the tuned split (training and validation sample ids), the same wherever the data lies."""
    part = run.folds[(run.folds["round"] == key[0]) & (run.folds["fold"] == key[1])]
    part = part[part["role"].isin(["train", "val"])].sort_values(["role", "sample_id"])
    text = "\n".join(f"{role}\t{sample}" for role, sample in zip(part["role"], part["sample_id"], strict=True))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def study_record(recipe: Recipe, split: str, space: SearchSpace) -> dict:
    """What a study tunes; a rerun against the same study name must match it."""
    return {"recipe": recipe_to_yaml(recipe), "split": split, "space": {k: list(v) for k, v in asdict(space).items()}}


def open_storage(url: str, shown: str) -> optuna.storages.RDBStorage:
    """An optuna RDB storage with heartbeats, so trials of killed processes become stale and fail."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats are experimental
            return optuna.storages.RDBStorage(
                url, heartbeat_interval=HEARTBEAT_INTERVAL_S, grace_period=HEARTBEAT_GRACE_S
            )
    except ImportError as exc:  # optuna wraps the missing driver's ModuleNotFoundError
        missing = getattr(exc.__cause__, "name", None) or getattr(exc, "name", None) or "of its scheme"
        raise CovidlensError(f"--storage {shown}: needs the database driver {missing}; install it") from None
    except sqlalchemy.exc.SQLAlchemyError as exc:
        reason = str(exc.orig if getattr(exc, "orig", None) is not None else exc).splitlines()[0]
        raise CovidlensError(f"--storage {shown}: cannot open it ({reason})") from None


def open_study(storage: optuna.storages.RDBStorage, name: str, record: dict, shown: str) -> optuna.Study:
    """Create the study, or load it and check that it tunes the same recipe, split and space."""
    study = optuna.create_study(storage=storage, study_name=name, direction="maximize", load_if_exists=True)
    found = study.user_attrs.get(STUDY_ATTR)
    if found is None and study.trials:
        raise CovidlensError(f"study {name!r} in {shown} was not made by covidlens tune; use another --study")
    if found is None:
        study.set_user_attr(STUDY_ATTR, record)
        return study
    if study.direction != optuna.study.StudyDirection.MAXIMIZE or found != record:
        what = [k for k in ("recipe", "split", "space") if found.get(k) != record[k]] or ["direction"]
        raise CovidlensError(
            f"study {name!r} in {shown} tunes another {' and '.join(what)} (recipe, --set, --epochs or data); "
            "use another --study, or the same recipe, --set values, --epochs and data to resume it"
        )
    return study


def complete_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The study's COMPLETE trials (failed and running ones never count towards --trials)."""
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def trial_recipe(recipe: Recipe, params: Mapping[str, float]) -> Recipe:
    """The recipe with SGD's learning rate, momentum and weight decay (L2) set to a trial's values."""
    data = recipe.model_dump(mode="json")
    data["train"]["optimizer"].update(name="sgd", **params)
    return validate_recipe(data, f"recipe {recipe.name!r} with the trial's hyper-parameters")


@contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Our own one line per trial replaces optuna's log, whose failed-trial warnings carry tracebacks."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(logging.ERROR)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)


def _report_trial(target: int) -> Callable[[optuna.Study, FrozenTrial], None]:
    """A callback printing one line per finished trial; it stops the study once `target` trials are complete."""

    def report(study: optuna.Study, trial: FrozenTrial) -> None:
        done = complete_trials(study)
        if trial.state != TrialState.COMPLETE:
            console.print(f"trial {trial.number}: {trial.state.name}", soft_wrap=True)
        else:
            best = max(done, key=lambda t: t.value)
            p = trial.params
            console.print(
                f"trial {trial.number} ({len(done)}/{target} complete): lr {p['lr']:.3g}  momentum "
                f"{p['momentum']:.3f}  L2 {p['weight_decay']:.3g}  val accuracy {trial.value:.4f}  best "
                f"{best.value:.4f} (trial {best.number})  {_seconds(trial):.1f} s",
                highlight=False,
                soft_wrap=True,
            )
        if len(done) >= target:
            study.stop()  # other machines may have completed trials meanwhile

    return report


def _seconds(trial: FrozenTrial) -> float:
    return trial.duration.total_seconds() if trial.duration is not None else float("nan")


def run_tuning(
    recipe: Recipe,
    data: str | Path,
    out: str | Path,
    trials: int,
    storage: str | None = None,
    study_name: str | None = None,
    seed: int = 0,
    startup_trials: int | None = None,
    layout: str | None = None,
    options: IndexOptions | None = None,
    space: SearchSpace = DEFAULT_SPACE,
    show_progress: bool = True,
    cache_dir: str | Path | None = None,
) -> dict:
    """Run (or resume) a study until `trials` trials are COMPLETE; write trials.csv, best.json, table.csv.

    `cache_dir` lets the search share a decode-once cache with other runs on the same data (a study's do).

    The sampler is seeded from (`seed`, trials already in the study), so a resumed study proposes new points
    rather than replaying the first ones. Machines sharing a storage should each get their own `seed`.
    """
    check_trials(trials)
    if startup_trials is not None and startup_trials < 1:
        raise CovidlensError(f"--startup-trials {startup_trials}: give at least 1")
    check_sgd(recipe)
    out = Path(out)
    url = storage or f"sqlite:///{(out / 'study.db').resolve()}"
    shown = check_storage_url(url)
    data = resolved_path(data)
    name = study_name or recipe.name
    record = {"study": name, "storage": shown, "data": data}
    _check_out_folder(out, record)
    existed = out.is_dir()
    with _quiet_optuna():
        try:
            run, _ = prepare_run(recipe, data, out / "run", layout, options or IndexOptions())
            if cache_dir is not None:
                run.paths.cache = Path(cache_dir)
            key = fold_keys(run.folds)[0]
            fingerprint = study_record(recipe, split_fingerprint(run, key), space)
            study = open_study(open_storage(url, shown), name, fingerprint, shown)
            atomic.write_json(out / "tune.json", record)
        except BaseException:
            if not (out / "tune.json").is_file():  # a new study that failed its checks leaves nothing behind
                _remove_new(out, existed)
            raise
        done = len(complete_trials(study))
        if done >= trials:
            console.print(f"study {name!r} already has {done} complete trials (--trials {trials})")
        else:
            if study.trials:
                console.print(f"resuming study {name!r}: {done} of {trials} trials complete")
            sampler_seed = int(np.random.SeedSequence([seed, len(study.trials)]).generate_state(1)[0])
            sampler_options = {} if startup_trials is None else {"n_startup_trials": startup_trials}
            study.sampler = optuna.samplers.GPSampler(seed=sampler_seed, **sampler_options)
            objective = _objective(run, key, space, show_progress)
            study.optimize(objective, n_trials=trials - done, callbacks=[_report_trial(trials)])
    return write_outputs(study, out, name, shown, recipe)


def _objective(
    run: RunData, key: tuple[int, int], space: SearchSpace, show_progress: bool
) -> Callable[[optuna.Trial], float]:
    """Train the fold `key` with a trial's hyper-parameters; its value is the best validation accuracy of any epoch.

    The images are decoded once, here, and shared by every trial.
    """
    if run.recipe.train.threads:
        torch.set_num_threads(run.recipe.train.threads)
    source = image_source(run, show_progress)

    def objective(trial: optuna.Trial) -> float:
        trial_run = replace(run, recipe=trial_recipe(run.recipe, space.suggest(trial)))
        _, result = train_fold(trial_run, source, *key, show_progress)
        history = result.history
        trial.set_user_attr("best_epoch", int(history.loc[history["val_accuracy"].idxmax(), "epoch"]))
        return float(history["val_accuracy"].max())

    return objective


def _remove_new(out: Path, existed: bool) -> None:
    if not existed:
        shutil.rmtree(out, ignore_errors=True)
        return
    for child in out.iterdir():  # it was empty before this command
        if child.is_dir():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------------------
# tables


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial of any state: number, state, lr, momentum, weight_decay, val_accuracy, seconds."""
    rows = [
        {
            "number": t.number,
            "state": t.state.name,
            **{p: t.params.get(p, np.nan) for p in PARAMS},
            "val_accuracy": t.value if t.state == TrialState.COMPLETE else np.nan,
            "seconds": _seconds(t),
        }
        for t in study.get_trials(deepcopy=False)
    ]
    return pd.DataFrame(rows, columns=TRIAL_COLUMNS)


def surrogate_features(params: pd.DataFrame) -> np.ndarray:
    """Points as the surrogate sees them: log10 of learning rate and L2, momentum as is."""
    return np.column_stack([np.log10(params[p]) if LOG_SCALED[p] else params[p] for p in PARAMS]).astype(float)


def surrogate_estimate(points: np.ndarray, values: np.ndarray, at: np.ndarray) -> float:
    """The Gaussian-process surrogate's mean accuracy at `at`, fitted to `values` observed at `points`.

    Paper 004's "estimated accuracy" is bayesopt's model value at its best point. As bayesopt's model:
    scikit-learn's GaussianProcessRegressor with a constant x ARD Matern 5/2 kernel plus white noise
    (validation accuracy is noisy), targets normalized, on features scaled to [0, 1] by the observed range
    of each (use `surrogate_features` for log scales), hyper-parameters by maximum marginal likelihood
    with fixed restarts (seed 0). The mean is clipped to [0, 1]. A noisy best point's estimate usually
    lies below its observed value, as in the paper's tables.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

    points = np.asarray(points, dtype=float)
    values = np.asarray(values, dtype=float)
    if len(points) == 0 or len(points) != len(values):
        raise CovidlensError("the surrogate needs at least one complete trial")
    low, span = points.min(axis=0), np.ptp(points, axis=0)
    span[span == 0] = 1.0
    kernel = ConstantKernel(1.0, (1e-3, 1e3)) * Matern(
        length_scale=np.ones(points.shape[1]), length_scale_bounds=(1e-2, 1e2), nu=2.5
    ) + WhiteKernel(1e-2, (1e-6, 1.0))
    model = GaussianProcessRegressor(kernel, normalize_y=True, n_restarts_optimizer=3, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit((points - low) / span, values)
    estimate = model.predict(((np.asarray(at, dtype=float) - low) / span).reshape(1, -1))[0]
    return float(np.clip(estimate, 0.0, 1.0))


def experiment_row(name: str, trials: pd.DataFrame) -> dict:
    """One row of paper 004's Tables 3-4 from a trials table: best observed and estimated accuracy, and the point."""
    complete = trials[trials["state"] == "COMPLETE"].dropna(subset=["val_accuracy", *PARAMS])
    if complete.empty:
        raise CovidlensError(f"experiment {name!r} has no complete trial yet")
    complete = complete.sort_values("number").reset_index(drop=True)
    best_row = int(complete["val_accuracy"].to_numpy().argmax())  # ties: the earliest trial
    best = complete.iloc[best_row]
    features = surrogate_features(complete)
    at = features[best_row]
    return {
        "experiment": name,
        "observed_accuracy": float(best["val_accuracy"]),
        "estimated_accuracy": surrogate_estimate(features, complete["val_accuracy"].to_numpy(), at),
        "learning_rate": float(best["lr"]),
        "momentum": float(best["momentum"]),
        "l2_regularization": float(best["weight_decay"]),
        "trials": len(complete),
        "best_trial": int(best["number"]),
    }


def _trials_of(source: str | Path | optuna.Study) -> pd.DataFrame:
    if isinstance(source, optuna.Study):
        return trials_frame(source)
    path = Path(source)
    path = path / "trials.csv" if path.is_dir() else path
    if not path.is_file():
        raise CovidlensError(f"{path}: no trials.csv; give a covidlens tune output folder or its trials.csv")
    return pd.read_csv(path)


def tuning_table(studies: Mapping[str, str | Path | optuna.Study]) -> pd.DataFrame:
    """Paper 004's Tables 3-4, one row per experiment, from tune output folders (or trials.csv) or studies."""
    return pd.DataFrame([experiment_row(name, _trials_of(s)) for name, s in studies.items()], columns=TABLE_COLUMNS)


def format_tuning_table(table: pd.DataFrame) -> pd.DataFrame:
    """The table as paper 004 prints it: accuracies in percent, hyper-parameters to 5 significant digits."""
    shown = pd.DataFrame({"experiment": table["experiment"].astype(str)})
    for column in ("observed_accuracy", "estimated_accuracy"):
        shown[column] = table[column].map(lambda v: f"{100 * v:.2f}%")
    for column in ("learning_rate", "momentum", "l2_regularization"):
        shown[column] = table[column].map(lambda v: f"{v:.5g}")
    shown["trials"] = table["trials"].astype(str)
    shown["best_trial"] = table["best_trial"].astype(str)
    return shown.rename(columns=PAPER_HEADERS)


def write_outputs(study: optuna.Study, out: Path, name: str, storage: str, recipe: Recipe) -> dict:
    """Write trials.csv, table.csv and best.json of a study; return best.json's content."""
    trials = trials_frame(study)
    atomic.write_csv(out / "trials.csv", trials)
    table = tuning_table({name: study})
    atomic.write_csv(out / "table.csv", table)
    row = table.iloc[0]
    params = {"lr": row["learning_rate"], "momentum": row["momentum"], "weight_decay": row["l2_regularization"]}
    best = {
        "study": name,
        "storage": storage,
        "recipe": recipe.name,
        "epochs": recipe.train.epochs,
        "trials_complete": int(row["trials"]),
        "best_trial": int(row["best_trial"]),
        "val_accuracy": float(row["observed_accuracy"]),
        "estimated_accuracy": float(row["estimated_accuracy"]),
        "params": {k: float(v) for k, v in params.items()},
        "set": ["train.optimizer.name=sgd"] + [f"train.optimizer.{k}={float(v)!r}" for k, v in params.items()],
    }
    atomic.write_json(out / "best.json", best)
    return best
