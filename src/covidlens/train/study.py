"""Paper 004's study (Section 3.1) as one command: each experiment on each dataset arrangement, tuned and tested.

A study file (`studies/<name>.yaml`) names a recipe, its experiments (recipe overrides: the model, transfer
learning) and its dataset arrangements (Section 2.1). For each arrangement and experiment, `run_study`

1. tunes SGD's learning rate, momentum and L2 on the recipe's first split (`covidlens tune`; Tables 3-4);
2. trains the experiment with the best point (`covidlens cv`), tests it on Test-1 (the split's test patients)
   and, for separate sources, on Test-2 (the second source, never seen in training; Table 5);
3. measures every trained model's efficiency (Table 7).

Arrangement 1 ("separate") trains, validates and tests on the first source; Test-2 is the second source, and
where it lacks a class (paper 004's Italian source is COVID-only) that class's Test-1 images complete it, as the
paper's Test-2 reuses Test-1's not-COVID images. Arrangement 2 ("mixed") pools both sources into one manifest
(ids prefixed by their source) split patient-wise, stratified by class and source. An experiment that transfers
ImageNet weights needs `--weights FILE`; without one its rows say why they are missing.

Everything resumes: each tuning study and each run continues where it stopped. The first call's inputs are kept in
`study.json`; a rerun with other data, weights or overrides is refused.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import pandas as pd
from pydantic import Field

from covidlens import atomic
from covidlens.config import Recipe, Section, builtin_names, load_recipe, packaged_yaml, validate_as
from covidlens.data.adapters.base import IndexOptions
from covidlens.data.index import index_dataset
from covidlens.errors import CovidlensError
from covidlens.evaluate.efficiency import efficiency_row, positive_class
from covidlens.evaluate.metrics import metrics_from_predictions
from covidlens.progress import console
from covidlens.resume import folder_record
from covidlens.train.cv import run_cv
from covidlens.train.hpo import TABLE_COLUMNS, run_tuning

SOURCE_TAGS = ("source1", "source2")  # the first (--data) and second (--second-source) source in a mixed manifest
COUNT_COLUMNS = {"trials", "best_trial", "images", "images_timed"}
PERFORMANCE_COLUMNS = [
    "arrangement", "experiment", "model", "test_set", "images", "accuracy", "sensitivity", "specificity",
    "precision", "f1",
]


class StudyExperiment(Section):
    """One experiment: a title and the recipe overrides that make it."""

    name: str
    title: str
    set: list[str] = []
    transfer: bool = Field(False, description="starts from the ImageNet weights of --weights FILE; skipped without")


class StudyArrangement(Section):
    """One dataset arrangement: how the two sources are used, and its split's proportions."""

    name: str
    title: str
    sources: Literal["separate", "mixed"]
    set: list[str] = []


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
    """A study by built-in name or YAML path, validated; its experiment and arrangement names must be unique."""
    data, origin = packaged_yaml("studies", "study", name_or_path)
    study = validate_as(Study, data, origin, "study")
    for what, items in (("experiment", study.experiments), ("arrangement", study.arrangements)):
        names = [item.name for item in items]
        if len(set(names)) != len(names):
            raise CovidlensError(f"{origin}: two {what}s share a name ({', '.join(names)}); name each once")
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


# ----------------------------------------------------------------------------------------------------------
# data of each arrangement


def index_source(folder: str, layout: str | None) -> pd.DataFrame:
    """One source's manifest (unreadable files listed and skipped, as `covidlens index` does)."""
    result = index_dataset(folder, layout=layout, options=IndexOptions())
    if result.skipped:
        console.print(f"[yellow]skipped {len(result.skipped)} unreadable file(s) while indexing {folder}[/]")
    return result.manifest


def mixed_manifest(first: pd.DataFrame, second: pd.DataFrame) -> pd.DataFrame:
    """Both sources as one manifest: ids prefixed by source tag (two sources never share a patient), source column
    set to the tag, so the holdout split stratifies by class and source."""
    parts = []
    for tag, manifest in zip(SOURCE_TAGS, (first, second), strict=True):
        part = manifest.copy()
        for column, joint in (("sample_id", "/"), ("patient_id", ":"), ("scan_id", ":")):
            part[column] = f"{tag}{joint}" + part[column].astype(str)
        parts.append(part.assign(source=tag))
    return pd.concat(parts, ignore_index=True)


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


def arrangement_data(
    arrangement: StudyArrangement, sources: tuple[pd.DataFrame, pd.DataFrame], folder: Path
) -> tuple[str, str | None]:
    """(training data, external test set) of an arrangement, as manifests written into its folder.

    Separate sources: the first source trains, validates and tests; the second is the external test set.
    Mixed: one manifest of both.
    """
    if arrangement.sources == "separate":
        return write_once(folder / "first-source.csv", sources[0]), write_once(folder / "second-source.csv", sources[1])
    return write_once(folder / "mixed.csv", mixed_manifest(*sources)), None


# ----------------------------------------------------------------------------------------------------------
# tables


def predictions_by_test_set(run_dir: Path, classes: Sequence[str]) -> dict[str, pd.DataFrame]:
    """Test-1 (the run's test predictions) and, with an external test set, Test-2: its predictions plus, for each
    class it lacks, that class's Test-1 predictions (paper 004's Test-2). With a holdout split, as the study's,
    one model made them all."""
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
    precision and F1, from the predictions pooled over the run's fold models."""
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


def _check_out(out: Path, study: Study, inputs: StudyInputs) -> None:
    """`out` must be new, empty, or hold this very study with the same inputs; a new one gets study.json."""
    record = {"study": study.name, **asdict(inputs)}
    found = folder_record(out, "study.json", "study")
    if found is None:
        atomic.write_json(out / "study.json", record)
    elif found != record:
        changed = [k for k in record if found.get(k) != record[k]]
        raise CovidlensError(
            f"{out}: holds study {found.get('study')!r} made with other {', '.join(changed)}; "
            "give the same study and inputs to resume it, or use another --out"
        )


def experiment_recipe(
    study: Study,
    arrangement: StudyArrangement,
    experiment: StudyExperiment,
    inputs: StudyInputs,
    extra: Sequence[str] = (),
) -> Recipe:
    """One cell's recipe: the study's recipe, then the arrangement's, the experiment's, the user's and `extra`
    overrides."""
    weights = [f"model.weights={inputs.weights}"] if experiment.transfer else []
    return load_recipe(study.recipe, [*arrangement.set, *experiment.set, *weights, *inputs.overrides, *extra])


def skip_reason(experiment: StudyExperiment, inputs: StudyInputs) -> str | None:
    """Why an experiment cannot run, or None."""
    if experiment.transfer and inputs.weights is None:
        return "skipped: transfer learning needs --weights FILE (ImageNet SqueezeNet 1.0, e.g. torchvision's file)"
    return None


def _check_inputs(inputs: StudyInputs, trials: int | None) -> None:
    if trials is not None and trials < 1:
        raise CovidlensError(f"--trials {trials}: tune each experiment with at least 1 trial")
    for path in (inputs.data, inputs.second_source):
        if not Path(path).exists():
            raise CovidlensError(f"{path}: no such dataset folder or manifest")
    if inputs.weights is not None and not Path(inputs.weights).is_file():
        raise CovidlensError(f"--weights {inputs.weights}: file not found")
    if inputs.epochs is not None and inputs.epochs < 1:
        raise CovidlensError(f"--epochs {inputs.epochs}: train each trial at least 1 epoch")


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
    )
    row = pd.read_csv(cell_dir / "tune" / "table.csv").iloc[0].to_dict()
    return row, experiment_recipe(study, arrangement, experiment, inputs, best["set"])


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
    chosen_arrangements = select(study.arrangements, arrangements, "arrangement")
    chosen_experiments = select(study.experiments, experiments, "experiment")
    _check_inputs(inputs, trials)
    for arrangement in chosen_arrangements:  # every cell's recipe is checked before anything is written
        for experiment in chosen_experiments:
            experiment_recipe(study, arrangement, experiment, inputs)
    sources = index_source(inputs.data, inputs.layout), index_source(inputs.second_source, inputs.second_layout)
    _check_out(out, study, inputs)
    tables: dict[str, list[dict]] = {"tuning": [], "performance": [], "efficiency": []}
    for arrangement in chosen_arrangements:
        folder = out / f"arrangement-{arrangement.name}"
        folder.mkdir(parents=True, exist_ok=True)
        data, external = arrangement_data(arrangement, sources, folder)
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
            summary = run_cv(final, data, cell_dir / "run", show_progress=show_progress, external_test=external)
            classes = [str(c) for c in summary["classes"]]
            positive = positive_class(classes, final.evaluate.positive_class)
            for result in performance_rows(cell_dir / "run", classes, positive):
                tables["performance"].append({**cell, "model": final.model.name, **result, "note": ""})
            efficiency = efficiency_row(cell_dir / "run", efficiency_images, threads)
            efficiency["run"] = (cell_dir / "run").relative_to(out).as_posix()
            tables["efficiency"].append({**cell, **efficiency, "note": ""})
    return write_tables(out, study, tables)


def write_tables(out: Path, study: Study, rows: dict[str, list[dict]]) -> dict:
    """Write tuning.csv, performance.csv, efficiency.csv and results.json; return the results."""
    columns = {
        "tuning": ["arrangement", *TABLE_COLUMNS, "note"],
        "performance": [*PERFORMANCE_COLUMNS, "note"],
        "efficiency": None,
    }
    results: dict = {
        "study": study.name,
        "paper": study.paper,
        "experiments": {e.name: e.title for e in study.experiments},
        "arrangements": {a.name: {"title": a.title, "sources": a.sources} for a in study.arrangements},
    }
    for name, table_rows in rows.items():
        table = pd.DataFrame(table_rows, columns=columns[name])
        for column in COUNT_COLUMNS.intersection(table.columns):  # counts stay whole beside a skipped row's blanks
            table[column] = table[column].astype("Int64")
        atomic.write_csv(out / f"{name}.csv", table)
        results[name] = table.astype(object).where(table.notna(), None).to_dict(orient="records")
    atomic.write_json(out / "results.json", results)
    return results
