"""Paper 004's study (Section 3.1) as one command: each experiment on each dataset arrangement, tuned and tested.

A study file (`studies/<name>.yaml`) names a recipe, its experiments (recipe overrides: the model, transfer
learning) and its dataset arrangements (Section 2.1). For each arrangement and experiment, `run_study`

1. tunes SGD's learning rate, momentum and L2 on the cell's split (`covidlens tune`; Tables 3-4);
2. trains the experiment with the best point (`covidlens cv`), tests it on Test-1 (the split's test patients)
   and, for separate sources, on Test-2 (the second source, never seen in training; Table 5);
3. measures every trained model's efficiency (Table 7).

Both sources are indexed once, their ids prefixed `source1:` / `source2:` (two hospitals never share a patient)
and written as manifests into each arrangement's folder. Arrangement 1 ("separate") trains, validates and tests on
the first source; Test-2 is the second source, and where it lacks a class (paper 004's Italian source is
COVID-only) that class's Test-1 images complete it, as the paper's Test-2 reuses Test-1's not-COVID images.
Arrangement 2 ("mixed") trains on both: the first source keeps the split of the arrangement named by
`first_split_of` and the second is split patient-wise by `second_split` (paper 004's Table 2 keeps Table 1's
not-COVID rows and adds 60 / 20 / 20 Italian images), written as the manifest's fixed `split` column. An
experiment that transfers ImageNet weights needs `--weights FILE`; without one its rows say why they are missing.

Every cell trains one model (a holdout or fixed split, one round); the searches and runs of an arrangement share
one decode-once cache (`arrangement-N/cache`, keyed by the files and the preprocessing as every cache is).
Everything resumes: each tuning study and each run continues where it stopped; a cell whose best point changed
(more --trials) trains a new run, named by its best trial. The first call's inputs are kept in `study.json`; a
rerun with other data, weights or overrides is refused once a cell has started. The tables hold every cell run
so far, whichever were selected this time.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import pandas as pd
from pydantic import Field, model_validator

from covidlens import atomic
from covidlens.config import Recipe, Section, builtin_names, load_recipe, packaged_yaml, validate_as
from covidlens.data.adapters.base import IndexOptions
from covidlens.data.manifest import relabel_manifest
from covidlens.data.splits import patient_wise_holdout
from covidlens.errors import CovidlensError
from covidlens.evaluate.efficiency import efficiency_row, positive_class
from covidlens.evaluate.metrics import metrics_from_predictions
from covidlens.progress import console
from covidlens.resume import folder_record
from covidlens.train.cv import class_list, index_data, resolved_path, run_cv
from covidlens.train.hpo import TABLE_COLUMNS, check_sgd, check_trials, run_tuning

SOURCE_TAGS = ("source1", "source2")  # id prefixes of the first (--data) and second (--second-source) source
NAME_PATTERN = r"^[A-Za-z0-9._-]+$"  # experiment and arrangement names become folder names
COUNT_COLUMNS = {"trials", "best_trial", "images", "images_timed"}
PERFORMANCE_COLUMNS = [
    "arrangement", "experiment", "model", "test_set", "images", "accuracy", "sensitivity", "specificity",
    "precision", "f1",
]
TABLE_NAMES = ("tuning", "performance", "efficiency")


class StudyExperiment(Section):
    """One experiment: a title and the recipe overrides that make it."""

    name: str = Field(pattern=NAME_PATTERN)
    title: str
    set: list[str] = []
    transfer: bool = Field(False, description="starts from the ImageNet weights of --weights FILE; skipped without")


class StudyArrangement(Section):
    """One dataset arrangement: how the two sources are used, and the split's proportions."""

    name: str = Field(pattern=NAME_PATTERN)
    title: str
    sources: Literal["separate", "mixed"]
    set: list[str] = []
    first_split_of: str | None = Field(
        None, description="mixed: split the first source as this separate arrangement does (its cv fractions)"
    )
    second_split: tuple[float, float] | None = Field(
        None, description="mixed: (test, validation) fractions of the second source's patients"
    )

    @model_validator(mode="after")
    def _split_needs_both_parts(self) -> StudyArrangement:
        if (self.first_split_of is None) != (self.second_split is None):
            raise ValueError("give first_split_of and second_split together (mixed sources split per source)")
        if self.first_split_of is not None and self.sources != "mixed":
            raise ValueError("first_split_of and second_split split mixed sources; this arrangement keeps them apart")
        return self


class Study(Section):
    """A study file: a recipe, its experiments and its dataset arrangements."""

    name: str
    paper: str = ""
    description: str = ""
    recipe: str
    trials: int = Field(30, ge=1, description="complete tuning trials per experiment and arrangement")
    experiments: list[StudyExperiment] = Field(min_length=1)
    arrangements: list[StudyArrangement] = Field(min_length=1)


def builtin_studies() -> list[str]:
    """Names of the studies shipped with covidlens."""
    return builtin_names("studies")


def load_study(name_or_path: str) -> Study:
    """A study by built-in name or YAML path, validated; names are unique, a split reference names a separate
    arrangement."""
    data, origin = packaged_yaml("studies", "study", name_or_path)
    study = validate_as(Study, data, origin, "study")
    for what, items in (("experiment", study.experiments), ("arrangement", study.arrangements)):
        names = [item.name for item in items]
        if len(set(names)) != len(names):
            raise CovidlensError(f"{origin}: two {what}s share a name ({', '.join(names)}); name each once")
    separate = [a.name for a in study.arrangements if a.sources == "separate"]
    for arrangement in study.arrangements:
        if arrangement.first_split_of is not None and arrangement.first_split_of not in separate:
            raise CovidlensError(
                f"{origin}: arrangement {arrangement.name}: first_split_of {arrangement.first_split_of!r} is not a "
                f"separate-sources arrangement ({', '.join(separate) or 'none'})"
            )
    return study


@dataclass(frozen=True)
class StudyInputs:
    """What a study runs on; kept in study.json so that a rerun continues the same study."""

    data: str
    second_source: str
    weights: str | None = None
    overrides: list[str] = field(default_factory=list)
    epochs: int | None = None  # training epochs of each tuning trial; default the recipe's
    layout: str | None = None  # the first source's layout; default detected
    second_layout: str | None = None  # the second source's layout; default detected


def select(items: Sequence[StudyExperiment | StudyArrangement], names: Sequence[str] | None, what: str) -> list:
    """The items named (all when `names` is None), in the study's order; an unknown name is a user error."""
    if names is None:
        return list(items)
    known = [item.name for item in items]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise CovidlensError(f"--{what}s {','.join(names)}: the study's {what}s are {', '.join(known)}")
    return [item for item in items if item.name in names]


def experiment_recipe(
    study: Study,
    arrangement: StudyArrangement,
    experiment: StudyExperiment,
    inputs: StudyInputs,
    extra: Sequence[str] = (),
) -> Recipe:
    """One cell's recipe: the study's recipe, then the arrangement's, the experiment's, the user's and `extra`
    overrides. A per-source split makes the split the manifest's fixed one."""
    weights = [f"model.weights={inputs.weights}"] if experiment.transfer else []
    fixed = ["cv.split=fixed"] if arrangement.first_split_of is not None else []
    overrides = [*arrangement.set, *fixed, *experiment.set, *weights, *inputs.overrides, *extra]
    return load_recipe(study.recipe, overrides)


def skip_reason(experiment: StudyExperiment, inputs: StudyInputs) -> str | None:
    """Why an experiment cannot run, or None."""
    if experiment.transfer and inputs.weights is None:
        return "skipped: transfer learning needs --weights FILE (ImageNet SqueezeNet 1.0, e.g. torchvision's file)"
    return None


# ----------------------------------------------------------------------------------------------------------
# data of each arrangement


def tag_source(manifest: pd.DataFrame, tag: str) -> pd.DataFrame:
    """A source's manifest with its ids prefixed by `tag` (two sources never share a patient) and source = tag."""
    part = manifest.copy()
    for column, joint in (("sample_id", "/"), ("patient_id", ":"), ("scan_id", ":")):
        part[column] = f"{tag}{joint}" + part[column].astype(str)
    return part.assign(source=tag)


def split_roles(manifest: pd.DataFrame, recipe: Recipe, fractions: tuple[float, float] | None = None) -> pd.Series:
    """Each sample's role (train / val / test) in the recipe's holdout split of `manifest`, or in a holdout with
    (test, validation) `fractions` and the recipe's seed; labels renamed by the recipe first, as a run does."""
    test, val = fractions or (recipe.cv.test_fraction, recipe.cv.val_fraction)
    folds = patient_wise_holdout(relabel_manifest(manifest, recipe.data.relabel), test, val, 1, recipe.cv.seed)
    return pd.Series(folds["role"].to_numpy(), index=folds["sample_id"].to_numpy())


def mixed_manifest(first: pd.DataFrame, second: pd.DataFrame, roles: pd.Series | None = None) -> pd.DataFrame:
    """Both (tagged) sources as one manifest; `roles` (sample id -> role) become its fixed `split` column."""
    mixed = pd.concat([first, second], ignore_index=True)
    if roles is not None:
        mixed["split"] = mixed["sample_id"].map(roles)
    elif "split" in mixed:  # a layout's own split lists mean nothing once sources mix
        mixed = mixed.drop(columns="split")
    return mixed


def write_once(path: Path, manifest: pd.DataFrame) -> str:
    """Write a manifest the study made, or check that the one already there is the same; return its path."""
    if path.is_file():
        before = pd.read_csv(path, dtype=str, keep_default_na=False)
        now = pd.read_csv(io.StringIO(manifest.to_csv(index=False)), dtype=str, keep_default_na=False)
        if not before.equals(now):
            raise CovidlensError(
                f"{path}: the sources changed since this study started; use another --out to study the new data"
            )
    else:
        atomic.write_csv(path, manifest)
    return str(path)


def arrangement_manifests(
    study: Study, inputs: StudyInputs, arrangement: StudyArrangement, sources: tuple[pd.DataFrame, pd.DataFrame]
) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """(training manifest, external test manifest or None) of an arrangement."""
    if arrangement.sources == "separate":
        return sources
    roles = None
    if arrangement.first_split_of is not None:
        reference = next(a for a in study.arrangements if a.name == arrangement.first_split_of)
        recipe = experiment_recipe(study, reference, study.experiments[0], inputs)
        if recipe.cv.split != "holdout":
            raise CovidlensError(
                f"arrangement {arrangement.name} splits the first source as arrangement {reference.name}, whose "
                f"split is {recipe.cv.split}; it must be a holdout"
            )
        roles = pd.concat(
            [split_roles(sources[0], recipe), split_roles(sources[1], recipe, arrangement.second_split)]
        )
    return mixed_manifest(*sources, roles), None


# ----------------------------------------------------------------------------------------------------------
# checks before anything is written


def check_cell(recipe: Recipe, training: pd.DataFrame, external: pd.DataFrame | None, where: str) -> None:
    """What would fail only after tuning: one model per cell, SGD, the classes, the positive class, the external
    set's classes and files."""
    if recipe.cv.split not in ("holdout", "fixed") or recipe.cv.rounds != 1:
        raise CovidlensError(
            f"{where}: a study trains one model per cell; use cv.split holdout (or fixed) with cv.rounds 1, "
            f"not {recipe.cv.split} x {recipe.cv.rounds} round(s)"
        )
    check_sgd(recipe)
    classes = class_list(relabel_manifest(training, recipe.data.relabel), recipe)
    positive_class(classes, recipe.evaluate.positive_class)
    if external is not None:
        labels = set(relabel_manifest(external, recipe.data.relabel)["label"].astype(str))
        if not labels <= set(classes):
            raise CovidlensError(
                f"{where}: the second source's labels {sorted(labels - set(classes))} are not classes of the first "
                f"({', '.join(classes)}); set data.relabel or data.classes with --set"
            )


def check_sources(first: pd.DataFrame, second: pd.DataFrame, inputs: StudyInputs) -> None:
    """The two sources must not share an image file."""
    shared = sorted(set(first["path"].astype(str)) & set(second["path"].astype(str)))
    if shared:
        raise CovidlensError(
            f"{inputs.second_source}: image {shared[0]} is also in {inputs.data} ({len(shared)} shared); the two "
            "sources must hold different images"
        )


def check_inputs(inputs: StudyInputs, trials: int | None, efficiency_images: int) -> None:
    """Paths, counts and the weights file."""
    for path in (inputs.data, inputs.second_source):
        if not Path(path).exists():
            raise CovidlensError(f"{path}: no such dataset folder or manifest")
    if inputs.weights is not None and not Path(inputs.weights).is_file():
        raise CovidlensError(f"--weights {inputs.weights}: file not found")
    if inputs.epochs is not None and inputs.epochs < 1:
        raise CovidlensError(f"--epochs {inputs.epochs}: train each trial at least 1 epoch")
    if trials is not None:
        check_trials(trials)
    if efficiency_images < 1:
        raise CovidlensError(f"--images {efficiency_images}: time at least one image")


def claim_out(out: Path, study: Study, inputs: StudyInputs) -> None:
    """`out` must be new, empty, or hold this study with the same inputs; its study.json records them. The record
    may change until a cell has started tuning (a first call that failed locks nothing)."""
    record = {"study": study.name, **asdict(inputs)}
    found = folder_record(out, "study.json", "study")
    started = any(out.glob("arrangement-*/experiment-*/tune/tune.json"))
    if found is not None and found != record and started:
        changed = [k for k in record if found.get(k) != record[k]]
        raise CovidlensError(
            f"{out}: holds study {found.get('study')!r} made with other {', '.join(changed)}; "
            "give the same study and inputs to resume it, or use another --out"
        )
    if found != record:
        atomic.write_json(out / "study.json", record)


# ----------------------------------------------------------------------------------------------------------
# tables


def predictions_by_test_set(run_dir: Path, classes: Sequence[str]) -> dict[str, pd.DataFrame]:
    """Test-1 (the run's test predictions) and, with an external test set, Test-2: its predictions plus, for each
    class it lacks, that class's Test-1 predictions (paper 004's Test-2). A study's cell has one model."""
    test1 = pd.read_csv(run_dir / "predictions.csv", dtype={"sample_id": str})
    sets = {"Test-1": test1}
    external = run_dir / "external_predictions.csv"
    if external.is_file():
        test2 = pd.read_csv(external, dtype={"sample_id": str})
        lacking = sorted(set(classes) - set(test2["y_true"].astype(str)))
        sets["Test-2"] = pd.concat([test2, test1[test1["y_true"].astype(str).isin(lacking)]], ignore_index=True)
    return sets


def performance_rows(run_dir: Path, classes: Sequence[str], positive: str) -> list[dict]:
    """Table 5's metrics on each test set of a run: accuracy, then the positive class's sensitivity, specificity,
    precision and F1."""
    rows = []
    for name, predictions in predictions_by_test_set(run_dir, classes).items():
        metrics = metrics_from_predictions(predictions, classes)
        own = metrics["per_class"][positive]
        rows.append(
            {
                "test_set": name,
                "images": int(len(predictions)),
                "accuracy": metrics["accuracy"],
                **{k: own[k] for k in ("sensitivity", "specificity", "precision", "f1")},
            }
        )
    return rows


# ----------------------------------------------------------------------------------------------------------
# the study


def tune_cell(
    study: Study,
    arrangement: StudyArrangement,
    experiment: StudyExperiment,
    inputs: StudyInputs,
    data: str,
    cell_dir: Path,
    trials: int | None,
    show_progress: bool,
) -> tuple[dict, Recipe]:
    """Tune one cell into cell_dir/tune; return its Tables 3-4 row and its recipe with the best point."""
    epochs = [] if inputs.epochs is None else [f"train.epochs={inputs.epochs}"]
    best = run_tuning(
        experiment_recipe(study, arrangement, experiment, inputs, epochs),
        data,
        cell_dir / "tune",
        trials or study.trials,
        study_name=f"{study.name}-arrangement-{arrangement.name}-experiment-{experiment.name}",
        show_progress=show_progress,
        cache_dir=cell_dir.parent / "cache",
    )
    row = pd.read_csv(cell_dir / "tune" / "table.csv").iloc[0].to_dict()
    return row, experiment_recipe(study, arrangement, experiment, inputs, best["set"])


def run_cell(
    final: Recipe, data: str, external: str | None, run_dir: Path, out: Path, images: int, threads: Sequence[int],
    show_progress: bool,
) -> tuple[list[dict], dict]:
    """Train and test one cell's final model; return its Table 5 rows and its Table 7 row."""
    cache = run_dir.parents[1] / "cache"  # the arrangement's, shared with its searches
    summary = run_cv(final, data, run_dir, show_progress=show_progress, cache_dir=cache, external_test=external)
    classes = [str(c) for c in summary["classes"]]
    positive = positive_class(classes, final.evaluate.positive_class)
    performance = [{"model": final.model.name, **row} for row in performance_rows(run_dir, classes, positive)]
    efficiency = efficiency_row(run_dir, images, threads) | {"run": run_dir.relative_to(out).as_posix()}
    return performance, efficiency


def run_study(
    study: Study,
    inputs: StudyInputs,
    out: str | Path,
    arrangements: Sequence[str] | None = None,
    experiments: Sequence[str] | None = None,
    trials: int | None = None,
    efficiency_images: int = 20,
    threads: Sequence[int] = (1,),
    show_progress: bool = True,
) -> dict:
    """Run (or resume) the study; write tuning.csv, performance.csv, efficiency.csv and results.json into `out`."""
    out = Path(out)
    inputs = StudyInputs(**{**asdict(inputs), "data": resolved_path(inputs.data),
                            "second_source": resolved_path(inputs.second_source),
                            "weights": None if inputs.weights is None else resolved_path(inputs.weights)})  # fmt: skip
    chosen_arrangements = select(study.arrangements, arrangements, "arrangement")
    chosen_experiments = select(study.experiments, experiments, "experiment")
    check_inputs(inputs, trials, efficiency_images)
    sources = (
        tag_source(index_data(inputs.data, IndexOptions(), inputs.layout, {}), SOURCE_TAGS[0]),
        tag_source(index_data(inputs.second_source, IndexOptions(), inputs.second_layout, {}), SOURCE_TAGS[1]),
    )
    check_sources(*sources, inputs)
    manifests = {a.name: arrangement_manifests(study, inputs, a, sources) for a in chosen_arrangements}
    for arrangement in chosen_arrangements:  # every cell is checked before anything is written
        for experiment in chosen_experiments:
            recipe = experiment_recipe(study, arrangement, experiment, inputs)
            check_cell(recipe, *manifests[arrangement.name], f"arrangement {arrangement.name}, experiment "
                       f"{experiment.name}")  # fmt: skip
    claim_out(out, study, inputs)
    tables: dict[str, list[dict]] = {name: [] for name in TABLE_NAMES}
    for arrangement in chosen_arrangements:
        folder = out / f"arrangement-{arrangement.name}"
        folder.mkdir(parents=True, exist_ok=True)
        training, external = manifests[arrangement.name]
        data = write_once(folder / "training.csv", training)
        external_path = None if external is None else write_once(folder / "external-test.csv", external)
        for experiment in chosen_experiments:
            cell = {"arrangement": arrangement.name, "experiment": experiment.name}
            reason = skip_reason(experiment, inputs)
            if reason is not None:
                for rows in tables.values():
                    rows.append({**cell, "note": reason})
                continue
            console.print(f"[bold]arrangement {arrangement.name}, experiment {experiment.name}[/]: {experiment.title}")
            cell_dir = folder / f"experiment-{experiment.name}"
            tuned, final = tune_cell(study, arrangement, experiment, inputs, data, cell_dir, trials, show_progress)
            tables["tuning"].append({**tuned, **cell, "note": ""})
            run_dir = cell_dir / f"run-trial-{int(tuned['best_trial'])}"  # a new best point trains a new run
            performance, efficiency = run_cell(
                final, data, external_path, run_dir, out, efficiency_images, threads, show_progress
            )
            tables["performance"] += [{**cell, **row, "note": ""} for row in performance]
            tables["efficiency"].append({**cell, **efficiency, "note": ""})
    return write_tables(out, study, tables)


def merged_rows(previous: list[dict], new: list[dict], study: Study) -> list[dict]:
    """Earlier calls' rows of the cells this call did not run, and this call's rows, in the study's order."""
    ran = {(str(row["arrangement"]), str(row["experiment"])) for row in new}
    kept = [row for row in previous if (str(row["arrangement"]), str(row["experiment"])) not in ran]
    arrangement_order = {a.name: i for i, a in enumerate(study.arrangements)}
    experiment_order = {e.name: i for i, e in enumerate(study.experiments)}
    return sorted(
        kept + new,
        key=lambda row: (
            arrangement_order.get(str(row["arrangement"]), len(arrangement_order)),
            experiment_order.get(str(row["experiment"]), len(experiment_order)),
        ),
    )  # sorted() is stable: a cell's Test-1 stays before its Test-2


def write_tables(out: Path, study: Study, rows: dict[str, list[dict]]) -> dict:
    """Write tuning.csv, performance.csv, efficiency.csv and results.json with every cell run so far."""
    columns = {
        "tuning": ["arrangement", *TABLE_COLUMNS, "note"],
        "performance": [*PERFORMANCE_COLUMNS, "note"],
        "efficiency": None,
    }
    results_file = out / "results.json"
    previous = json.loads(results_file.read_text(encoding="utf-8")) if results_file.is_file() else {}
    results: dict = {
        "study": study.name,
        "paper": study.paper,
        "experiments": {e.name: e.title for e in study.experiments},
        "arrangements": {a.name: {"title": a.title, "sources": a.sources} for a in study.arrangements},
    }
    for name in TABLE_NAMES:
        table = pd.DataFrame(merged_rows(previous.get(name, []), rows[name], study), columns=columns[name])
        table["arrangement"] = table["arrangement"].astype(str)
        table["experiment"] = table["experiment"].astype(str)
        for column in COUNT_COLUMNS.intersection(table.columns):  # counts stay whole beside a skipped row's blanks
            table[column] = table[column].astype("Int64")
        atomic.write_csv(out / f"{name}.csv", table)
        results[name] = table.astype(object).where(table.notna(), None).to_dict(orient="records")
    atomic.write_json(results_file, results)
    return results
