"""The cross-validation runner: a run directory that is written atomically and resumes fold by fold."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from covidlens import __version__, atomic
from covidlens.config import Recipe, recipe_to_yaml
from covidlens.data.adapters.base import IndexOptions
from covidlens.data.cache import DecodedImages, ImageSource, build_cache
from covidlens.data.index import index_dataset
from covidlens.data.manifest import class_names, is_image_wise, read_manifest, relabel_manifest, write_manifest
from covidlens.data.offline_augment import offline_training_set
from covidlens.data.preprocess import Preprocessing, preprocessing_of, stored_size
from covidlens.data.splits import check_folds, folds_from_split_column, patient_wise_folds, patient_wise_holdout
from covidlens.data.volumes import VolumeSource, build_volume_table, volume_slice_rows
from covidlens.data.xray_prep import Threshold, compute_threshold
from covidlens.errors import CovidlensError
from covidlens.evaluate.aggregate import summarize_cv
from covidlens.evaluate.levels import aggregate_predictions
from covidlens.evaluate.stats import bootstrap_metrics
from covidlens.models import create_model
from covidlens.models.registry import check_model_input, check_model_name
from covidlens.progress import console, progress_bar
from covidlens.train.checkpoint import save_checkpoint
from covidlens.train.trainer import FitResult, fit, predict_proba, select_device

# Files a run writes while it is being set up, before config.yaml marks it as started.
SETUP_FILES = {
    "run.json",
    "manifest.csv",
    "volumes.csv",
    "preprocessing.json",
    "folds.csv",
    "external_manifest.csv",
    "external_volumes.csv",
}


class RunPaths:
    """Where each table of a run directory lives."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.config = root / "config.yaml"
        self.run_info = root / "run.json"
        self.manifest = root / "manifest.csv"
        self.volumes = root / "volumes.csv"
        self.preprocessing = root / "preprocessing.json"
        self.folds = root / "folds.csv"
        self.history = root / "history.csv"
        self.predictions = root / "predictions.csv"
        self.external_manifest = root / "external_manifest.csv"
        self.external_volumes = root / "external_volumes.csv"
        self.external_predictions = root / "external_predictions.csv"
        self.metrics = root / "metrics.json"
        self.report = root / "report.html"
        self.cache = root / "cache"
        self.checkpoints = root / "checkpoints"

    def fold_dir(self, round_index: int, fold: int) -> Path:
        """Folder of one fold's history and predictions."""
        return self.root / "folds" / f"r{round_index:02d}-f{fold}"

    def checkpoint(self, round_index: int, fold: int) -> Path:
        """Best-epoch checkpoint of one fold."""
        return self.checkpoints / f"r{round_index:02d}-f{fold}.pt"

    def fold_done(self, round_index: int, fold: int) -> bool:
        """A fold is finished once its predictions are on disk (they are written last)."""
        return (self.fold_dir(round_index, fold) / "predictions.csv").is_file()


@dataclass
class RunData:
    """What every fold of a run shares.

    `samples` is what the folds split and the models see: the manifest itself (slices), or the volume
    table built from it when the recipe sets data.depth.
    """

    paths: RunPaths
    recipe: Recipe
    manifest: pd.DataFrame
    samples: pd.DataFrame
    folds: pd.DataFrame
    classes: list[str]
    device: torch.device
    prep: Preprocessing
    external_test: str | None = None  # the external test set as given, when the run has one
    external_manifest: pd.DataFrame | None = None
    external_samples: pd.DataFrame | None = None  # its slices, or its volumes when data.depth is set

    @property
    def volume_mode(self) -> bool:
        """True when samples are volumes of stacked slices."""
        return self.recipe.data.depth is not None

    @cached_property
    def labels(self) -> np.ndarray:
        """Class index of every sample."""
        return self.samples["label"].map({c: i for i, c in enumerate(self.classes)}).to_numpy(np.int64)

    @cached_property
    def _row_of(self) -> pd.Series:
        return pd.Series(np.arange(len(self.samples)), index=self.samples["sample_id"])

    def rows(self, round_index: int, fold: int, role: str) -> np.ndarray:
        """Sample row numbers of one role of one fold."""
        part = self.folds[(self.folds["round"] == round_index) & (self.folds["fold"] == fold)]
        return self._row_of[part.loc[part["role"] == role, "sample_id"]].to_numpy()


def fold_seed(seed: int, round_index: int, fold: int) -> int:
    """A seed per fold that does not depend on which folds ran before, so resumed runs match."""
    return int(np.random.SeedSequence([seed, round_index, fold]).generate_state(1)[0])


def fold_keys(folds: pd.DataFrame) -> list[tuple[int, int]]:
    """The (round, fold) pairs of a folds table, in order."""
    pairs = folds[["round", "fold"]].drop_duplicates().sort_values(["round", "fold"])
    return [(int(r), int(f)) for r, f in pairs.itertuples(index=False)]


def _check_resumable(paths: RunPaths, recipe: Recipe, data: str, external_test: str | None = None) -> None:
    """Refuse to resume a run made with another recipe, other data or another external test set."""
    if paths.config.read_text(encoding="utf-8") != recipe_to_yaml(recipe):
        raise CovidlensError(
            f"{paths.root}: holds a run with a different recipe; use another --out, "
            "or the same recipe and --set values to resume it"
        )
    try:
        info = json.loads(paths.run_info.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        raise CovidlensError(
            f"{paths.root}: run.json is missing or damaged; start the run in a new --out"
        ) from None
    started_on = info.get("data")
    if started_on != data:
        raise CovidlensError(f"{paths.root}: was started on data {started_on!r}, not {data!r}")
    external_before = info.get("external_test")
    if external_before != external_test:
        raise CovidlensError(
            f"{paths.root}: was started with external test set {external_before!r}, not {external_test!r}; "
            "give the same --external-test to resume it, or use another --out"
        )


def _check_new_run_folder(paths: RunPaths) -> None:
    """A new run may go into a missing or empty folder, or one that only holds an unfinished set-up."""
    if paths.root.exists() and not paths.root.is_dir():
        raise CovidlensError(f"{paths.root}: is a file; --out must name a folder")
    if paths.root.is_dir():
        foreign = {p.name for p in paths.root.iterdir()} - SETUP_FILES
        if foreign:
            raise CovidlensError(f"{paths.root}: exists and is not a covidlens run; choose another --out")


def index_data(data: str, options: IndexOptions, layout: str | None, relabel: dict[str, str]) -> pd.DataFrame:
    """The data's manifest, labels renamed by `relabel`; unreadable files are counted and skipped."""
    result = index_dataset(data, layout=layout, options=options)
    if result.skipped:
        console.print(f"[yellow]skipped {len(result.skipped)} unreadable file(s) while indexing {data}[/]")
    return relabel_manifest(result.manifest, relabel)


def _make_folds(samples: pd.DataFrame, recipe: Recipe) -> pd.DataFrame:
    cv = recipe.cv
    if cv.split == "fixed":
        return folds_from_split_column(samples)
    if cv.split == "holdout":
        return patient_wise_holdout(samples, cv.test_fraction, cv.val_fraction, cv.rounds, cv.seed)
    return patient_wise_folds(samples, cv.folds, cv.rounds, cv.seed, cv.val_fraction)


def _samples(manifest: pd.DataFrame, recipe: Recipe) -> pd.DataFrame:
    """The manifest's slices, or the volumes stacked from them when the recipe sets data.depth."""
    data = recipe.data
    return manifest if data.depth is None else build_volume_table(manifest, data.depth, data.stride)


def _check_positive_class(recipe: Recipe, classes: list[str]) -> None:
    positive = recipe.evaluate.positive_class
    if positive is not None and positive not in classes:
        raise CovidlensError(
            f"evaluate.positive_class {positive!r} is not one of the classes {classes}; set it to one of them"
        )


def class_list(manifest: pd.DataFrame, recipe: Recipe) -> list[str]:
    """The run's classes in order: data.classes, else the sorted labels; a label outside data.classes is an error."""
    classes = recipe.data.classes or class_names(manifest)
    unknown = sorted(set(manifest["label"]) - set(classes))
    if unknown:
        raise CovidlensError(f"labels {unknown} are not in data.classes {classes}; add them to the recipe")
    return classes


def prepare_run(
    recipe: Recipe,
    data: str,
    out: Path,
    layout: str | None,
    options: IndexOptions,
    external_test: str | None = None,
) -> tuple[RunData, bool]:
    """Resume a run, or check everything a new one needs before its first file is written."""
    check_model_name(recipe.model.name)
    paths = RunPaths(out)
    if paths.config.is_file():
        _check_resumable(paths, recipe, data, external_test)
        manifest = read_manifest(paths.manifest)
        samples = _samples(manifest, recipe)
        folds = pd.read_csv(paths.folds, dtype={"sample_id": str})
        check_folds(folds, samples)
        classes = class_list(manifest, recipe)
        device = select_device(recipe.train.device)
        prep = _read_preprocessing(paths, recipe)
        external = (None, None)
        if external_test is not None:
            external_manifest = read_manifest(paths.external_manifest)
            external = (external_manifest, _samples(external_manifest, recipe))
        run = RunData(paths, recipe, manifest, samples, folds, classes, device, prep, external_test, *external)
        return run, True
    _check_new_run_folder(paths)
    manifest = index_data(data, options, layout, recipe.data.relabel)
    classes = class_list(manifest, recipe)
    _check_positive_class(recipe, classes)
    prep = _preprocessing(manifest, recipe)
    check_model_input(
        recipe.model.name,
        len(classes),
        recipe.data.channels,
        prep.shape,
        recipe.data.depth,
        options=recipe.model.options,
    )
    samples = _samples(manifest, recipe)
    folds = _make_folds(samples, recipe)
    external_manifest, external_samples = None, None
    if external_test is not None:
        external_manifest = _index_external(external_test, options, manifest, classes, data, recipe.data.relabel)
        external_samples = _samples(external_manifest, recipe)
    device = select_device(recipe.train.device)
    write_manifest(manifest, paths.manifest)
    if samples is not manifest:
        atomic.write_csv(paths.volumes, samples)
    if external_manifest is not None:
        write_manifest(external_manifest, paths.external_manifest)
        if external_samples is not external_manifest:
            atomic.write_csv(paths.external_volumes, external_samples)
    atomic.write_csv(paths.folds, folds)
    atomic.write_json(paths.preprocessing, prep.settings())
    atomic.write_json(paths.run_info, {"data": data, "external_test": external_test, "covidlens": __version__})
    atomic.write_text(paths.config, recipe_to_yaml(recipe))  # last: marks the run as started
    run = RunData(
        paths, recipe, manifest, samples, folds, classes, device, prep, external_test, external_manifest,
        external_samples,
    )
    return run, False


def _index_external(
    external_test: str,
    options: IndexOptions,
    manifest: pd.DataFrame,
    classes: list[str],
    data: str,
    relabel: dict[str, str],
) -> pd.DataFrame:
    """Index an external test set (its layout detected) and check it: only the run's classes, no patient and no
    image of the training data."""
    external = index_data(external_test, options, None, relabel)
    unknown = sorted(set(external["label"].astype(str)) - set(classes))
    if unknown:
        raise CovidlensError(
            f"external test set {external_test}: labels {unknown} are not classes of the run {classes}; "
            "an external test set may only hold the run's classes"
        )
    shared = sorted(set(external["patient_id"].astype(str)) & set(manifest["patient_id"].astype(str)))
    if shared:
        raise CovidlensError(
            f"external test set {external_test}: patient {shared[0]!r} is also in the training data {data} "
            f"({len(shared)} shared patient(s)); that leaks, so an external test set must hold other patients"
        )
    same_files = sorted(set(external["path"].astype(str)) & set(manifest["path"].astype(str)))
    if same_files:
        raise CovidlensError(
            f"external test set {external_test}: image {same_files[0]} is also in the training data {data}; "
            "an external test set must hold other images"
        )
    return external


def _preprocessing(manifest: pd.DataFrame, recipe: Recipe) -> Preprocessing:
    """The run's preprocessing; paper 003's methods A-D take their threshold from the training images.

    Those are the indexed images less a fixed split's test list (a competition's unlabelled test folder is
    never indexed), so no test image decides the input size.
    """
    data = recipe.data
    if data.resize == "square":
        return preprocessing_of(data)
    training = manifest[manifest["split"].astype(str) != "test"] if "split" in manifest else manifest
    sizes = [stored_size(path, frame) for path, frame in zip(training["path"], training["slice_index"], strict=True)]
    return preprocessing_of(data, compute_threshold(sizes, data.threshold, preset=data.image_size))


def _read_preprocessing(paths: RunPaths, recipe: Recipe) -> Preprocessing:
    """The preprocessing a run was started with (its threshold is data-derived, so it is stored)."""
    if recipe.data.resize == "square":
        return preprocessing_of(recipe.data)
    try:
        stored = json.loads(paths.preprocessing.read_text(encoding="utf-8"))
        return preprocessing_of(recipe.data, Threshold.from_dict(stored["threshold"]))
    except (OSError, json.JSONDecodeError, KeyError, TypeError, CovidlensError):
        raise CovidlensError(f"{paths.preprocessing}: missing or damaged; start the run in a new --out") from None


def image_source(run: RunData, show: bool) -> ImageSource:
    """The run's samples: slices decoded once into the cache (unless the recipe turns caching off),
    stacked into volumes when the recipe sets data.depth."""
    return _decoded_samples(run, run.manifest, run.samples, show, "decode + resize (once)")


def external_source(run: RunData, show: bool) -> ImageSource:
    """The external test set's samples, decoded with the run's preprocessing into the run's cache."""
    if run.external_manifest is None or run.external_samples is None:
        raise CovidlensError(f"{run.paths.root}: the run has no external test set")
    return _decoded_samples(run, run.external_manifest, run.external_samples, show, "decode external set (once)")


def _decoded_samples(
    run: RunData, manifest: pd.DataFrame, samples: pd.DataFrame, show: bool, title: str
) -> ImageSource:
    files = manifest["path"].astype(str).tolist()
    frames = manifest["slice_index"].astype(int).tolist()
    if not run.recipe.data.cache:
        slices: ImageSource = DecodedImages(files, run.prep, frames)
    else:
        with progress_bar(title, len(files), show) as update:
            slices = build_cache(files, run.prep, run.paths.cache, update, frames)
    if not run.volume_mode:
        return slices
    return VolumeSource(slices, volume_slice_rows(manifest, samples))


def fold_training_set(
    run: RunData, source: ImageSource, round_index: int, fold: int
) -> tuple[ImageSource, np.ndarray, np.ndarray]:
    """The image source, labels and rows one fold trains on: its training rows, plus their augmented copies
    (appended after the run's samples) when the recipe sets train.offline_augment."""
    seed = fold_seed(run.recipe.cv.seed, round_index, fold)
    train_rows = run.rows(round_index, fold, "train")
    return offline_training_set(source, run.labels, train_rows, run.recipe.train.offline_augment, seed)


def train_fold(
    run: RunData, source: ImageSource, round_index: int, fold: int, show: bool
) -> tuple[torch.nn.Module, FitResult]:
    """Train one fold's model from its seed; it ends holding its best epoch's weights."""
    recipe = run.recipe
    seed = fold_seed(recipe.cv.seed, round_index, fold)
    torch.manual_seed(seed)
    model = create_model(
        recipe.model.name,
        num_classes=len(run.classes),
        in_chans=recipe.data.channels,
        pretrained=recipe.model.pretrained,
        weights=recipe.model.weights,
        drop_rate=recipe.model.drop_rate,
        options=recipe.model.options,
        input_shape=run.prep.shape,
    )
    train_source, labels, train_rows = fold_training_set(run, source, round_index, fold)
    with progress_bar(f"train round {round_index + 1} fold {fold + 1}", recipe.train.epochs, show) as update:

        def on_epoch(record: dict) -> None:
            update(
                record["epoch"], note=f"loss {record['train_loss']:.3f} val_acc {record['val_accuracy']:.3f}"
            )

        result = fit(
            model,
            train_source,
            labels,
            train_rows,
            run.rows(round_index, fold, "val"),
            recipe.train,
            recipe.data.channels,
            seed,
            run.device,
            on_epoch,
        )
    return model, result


def predictions_table(
    run: RunData,
    rows: np.ndarray,
    probs: np.ndarray,
    round_index: int,
    fold: int,
    samples: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """The Predictions table of one fold's test rows (of `samples`, by default the run's)."""
    test = (run.samples if samples is None else samples).iloc[rows]
    table = pd.DataFrame(
        {
            "sample_id": test["sample_id"].to_numpy(),
            "patient_id": test["patient_id"].to_numpy(),
            "scan_id": test["scan_id"].to_numpy(),
            "round": round_index,
            "fold": fold,
            "model": run.recipe.model.name,
            "y_true": test["label"].to_numpy(),
        }
    )
    for i, name in enumerate(run.classes):
        table[f"p_{name}"] = probs[:, i]
    return table


def write_fold(
    run: RunData,
    source: ImageSource,
    model: torch.nn.Module,
    result: FitResult,
    key: tuple[int, int],
    external: ImageSource | None = None,
) -> None:
    """Write a fold's checkpoint, history, predictions of the external test set (`external`, when the run has
    one) and test predictions; the test predictions go last and mark the fold done."""
    round_index, fold = key
    paths, recipe = run.paths, run.recipe
    save_checkpoint(
        paths.checkpoint(*key), model, recipe, run.classes, best_epoch=result.best_epoch,
        preprocessing=run.prep.settings(),
    )
    atomic.write_csv(
        paths.fold_dir(*key) / "history.csv", result.history.assign(round=round_index, fold=fold)
    )
    if external is not None and run.external_samples is not None:
        rows = np.arange(len(run.external_samples))
        probs = predict_proba(model, external, rows, recipe.train.batch_size, recipe.data.channels, run.device)
        atomic.write_csv(
            paths.fold_dir(*key) / "external_predictions.csv",
            predictions_table(run, rows, probs, *key, samples=run.external_samples),
        )
    rows = run.rows(round_index, fold, "test")
    probs = predict_proba(model, source, rows, recipe.train.batch_size, recipe.data.channels, run.device)
    atomic.write_csv(paths.fold_dir(*key) / "predictions.csv", predictions_table(run, rows, probs, *key))


def run_cv(
    recipe: Recipe,
    data: str | Path,
    out: str | Path,
    layout: str | None = None,
    options: IndexOptions | None = None,
    show_progress: bool = True,
    cache_dir: str | Path | None = None,
    external_test: str | Path | None = None,
) -> dict:
    """Run (or resume) patient-wise repeated k-fold CV; return the metrics summary written to metrics.json.

    `cache_dir` lets several runs on the same data share one decode-once cache (a sweep does). Every fold model
    also predicts `external_test` (a dataset folder or manifest CSV of other patients), scored apart.
    """
    data = resolved_path(data)
    external = None if external_test is None else resolved_path(external_test)
    run, resumed = prepare_run(recipe, data, Path(out), layout, options or IndexOptions(), external)
    if cache_dir is not None:
        run.paths.cache = Path(cache_dir)
    if resumed:
        console.print(f"resuming {run.paths.root}: finished folds are read from disk")
    if recipe.train.threads:
        torch.set_num_threads(recipe.train.threads)
    todo = [key for key in fold_keys(run.folds) if not run.paths.fold_done(*key)]
    if todo:
        source = image_source(run, show_progress)
        external_images = external_source(run, show_progress) if external is not None else None
        for key in todo:
            model, result = train_fold(run, source, *key, show_progress)
            write_fold(run, source, model, result, key, external_images)
    return finish_run(run)


def resolved_path(path: str | Path) -> str:
    """An existing path made absolute (a run records where its data is); anything else as given."""
    return str(Path(path).resolve()) if Path(path).exists() else str(path)


def finish_run(run: RunData) -> dict:
    """Gather fold tables into the run's predictions.csv, history.csv and metrics.json."""
    paths = run.paths
    fold_dirs = [paths.fold_dir(r, f) for r, f in fold_keys(run.folds)]
    predictions = pd.concat([pd.read_csv(d / "predictions.csv", dtype={"sample_id": str}) for d in fold_dirs])
    history = pd.concat([pd.read_csv(d / "history.csv") for d in fold_dirs])
    atomic.write_csv(paths.predictions, predictions)
    atomic.write_csv(paths.history, history)
    summary = summarize_run(predictions, run.classes, run.recipe)
    summary["image_wise"] = is_image_wise(run.manifest)
    if run.external_samples is not None:
        external = pd.concat(
            [pd.read_csv(d / "external_predictions.csv", dtype={"sample_id": str}) for d in fold_dirs]
        )
        atomic.write_csv(paths.external_predictions, external)
        summary["external"] = summarize_external(external, run.classes, run.recipe) | {
            "data": run.external_test,
            "n_samples": int(len(run.external_samples)),
            "n_patients": int(run.external_samples["patient_id"].nunique()),
        }
    atomic.write_json(paths.metrics, summary)
    return summary


def summarize_external(predictions: pd.DataFrame, classes: list[str], recipe: Recipe) -> dict:
    """metrics.json's `external`: each fold model's predictions on the whole external set are one CV unit."""
    return summarize_run(predictions, classes, recipe, unit="fold", bootstrap=False)


def summarize_run(
    predictions: pd.DataFrame, classes: list[str], recipe: Recipe, unit: str | None = None, bootstrap: bool = True
) -> dict:
    """metrics.json: CV mean ± CI per metric, plus the recipe's aggregation levels and bootstrap CIs.

    `unit` overrides evaluate.ci_unit; `bootstrap` False leaves the recipe's bootstrap out.
    """
    evaluate = recipe.evaluate
    unit = unit or evaluate.ci_unit
    summary = summarize_cv(predictions, classes, unit=unit, confidence=evaluate.confidence)
    if evaluate.levels:
        summary["levels"] = {
            level: summarize_cv(
                aggregate_predictions(predictions, classes, level, evaluate.aggregation),
                classes,
                unit=unit,
                confidence=evaluate.confidence,
            )
            | {"aggregation": evaluate.aggregation}
            for level in evaluate.levels
        }
    if bootstrap and evaluate.bootstrap_resamples:
        first_round = predictions[predictions["round"] == predictions["round"].min()]
        summary["bootstrap"] = bootstrap_metrics(
            first_round,
            classes,
            evaluate.positive_class,
            n_resamples=evaluate.bootstrap_resamples,
            confidence=evaluate.confidence,
            seed=recipe.cv.seed,
        ) | {"round": int(first_round["round"].iloc[0])}
    return summary
