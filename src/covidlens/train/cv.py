"""The cross-validation runner: a run directory that is written atomically and resumes fold by fold."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from covidlens import __version__, atomic
from covidlens.config import Recipe, recipe_to_yaml
from covidlens.data.adapters.base import IndexOptions
from covidlens.data.cache import DecodedImages, ImageSource, build_cache
from covidlens.data.index import index_dataset
from covidlens.data.manifest import class_names, is_image_wise, read_manifest, write_manifest
from covidlens.data.splits import check_folds, folds_from_split_column, patient_wise_folds
from covidlens.errors import CovidlensError
from covidlens.evaluate.aggregate import summarize_cv
from covidlens.models import create_model
from covidlens.models.registry import check_model_name
from covidlens.progress import console, progress_bar
from covidlens.train.checkpoint import save_checkpoint
from covidlens.train.trainer import fit, predict_proba, select_device


class RunPaths:
    """Where each table of a run directory lives."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.config = root / "config.yaml"
        self.run_info = root / "run.json"
        self.manifest = root / "manifest.csv"
        self.folds = root / "folds.csv"
        self.history = root / "history.csv"
        self.predictions = root / "predictions.csv"
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


def fold_seed(seed: int, round_index: int, fold: int) -> int:
    """A seed per fold that does not depend on which folds ran before, so resumed runs match."""
    return seed * 1_000_003 + round_index * 1000 + fold


def _start_or_resume(paths: RunPaths, recipe: Recipe, data: str) -> bool:
    """Write config.yaml and run.json for a new run, or check they match a run being resumed."""
    resolved = recipe_to_yaml(recipe)
    if paths.config.is_file():
        if paths.config.read_text(encoding="utf-8") != resolved:
            raise CovidlensError(
                f"{paths.root}: holds a run with a different recipe; use another --out, "
                "or the same recipe and --set values to resume it"
            )
        info = json.loads(paths.run_info.read_text(encoding="utf-8"))
        if info.get("data") != data:
            raise CovidlensError(f"{paths.root}: was started on data {info.get('data')!r}, not {data!r}")
        return True
    if paths.root.exists() and any(paths.root.iterdir()):
        raise CovidlensError(f"{paths.root}: exists and is not a covidlens run; choose another --out")
    atomic.write_text(paths.config, resolved)
    atomic.write_json(paths.run_info, {"data": data, "covidlens": __version__})
    return False


def _load_manifest(paths: RunPaths, data: str, options: IndexOptions, layout: str | None) -> pd.DataFrame:
    if paths.manifest.is_file():
        return read_manifest(paths.manifest)
    result = index_dataset(data, layout=layout, options=options)
    if result.skipped:
        console.print(f"[yellow]skipped {len(result.skipped)} unreadable file(s) while indexing {data}[/]")
    write_manifest(result.manifest, paths.manifest)
    return result.manifest


def _load_folds(paths: RunPaths, manifest: pd.DataFrame, recipe: Recipe) -> pd.DataFrame:
    if paths.folds.is_file():
        folds = pd.read_csv(paths.folds, dtype={"sample_id": str})
        check_folds(folds, manifest)
        return folds
    cv = recipe.cv
    if cv.split == "fixed":
        folds = folds_from_split_column(manifest)
    else:
        folds = patient_wise_folds(manifest, cv.folds, cv.rounds, cv.seed, cv.val_fraction)
    atomic.write_csv(paths.folds, folds)
    return folds


def image_source(paths: RunPaths, manifest: pd.DataFrame, recipe: Recipe, show: bool) -> ImageSource:
    """The run's images, decoded once into the cache unless the recipe turns caching off."""
    files = manifest["path"].astype(str).tolist()
    window = recipe.data.window
    if not recipe.data.cache:
        return DecodedImages(files, recipe.data.image_size, window)
    with progress_bar("decode + resize (once)", len(files), show) as update:
        return build_cache(files, recipe.data.image_size, paths.cache, window, progress=update)


def _train_fold(paths, recipe, manifest, folds, source, classes, round_index, fold, device, show) -> None:
    """Train one fold and write its checkpoint, history and test predictions (the last marks it done)."""
    part = folds[(folds["round"] == round_index) & (folds["fold"] == fold)]
    row_of = pd.Series(np.arange(len(manifest)), index=manifest["sample_id"])
    rows = {
        role: row_of[part.loc[part["role"] == role, "sample_id"]].to_numpy()
        for role in ("train", "val", "test")
    }
    labels = manifest["label"].map({c: i for i, c in enumerate(classes)}).to_numpy(dtype=np.int64)
    seed = fold_seed(recipe.cv.seed, round_index, fold)
    torch.manual_seed(seed)
    model = create_model(
        recipe.model.name,
        num_classes=len(classes),
        in_chans=recipe.data.channels,
        pretrained=recipe.model.pretrained,
        weights=recipe.model.weights,
        drop_rate=recipe.model.drop_rate,
    )
    label = f"round {round_index + 1} fold {fold + 1}"
    with progress_bar(f"train {label}", recipe.train.epochs, show) as update:

        def on_epoch(record: dict) -> None:
            note = f"loss {record['train_loss']:.3f} val_acc {record['val_accuracy']:.3f}"
            update(record["epoch"], note=note)

        result = fit(
            model,
            source,
            labels,
            rows["train"],
            rows["val"],
            recipe.train,
            recipe.data.channels,
            seed,
            device,
            on_epoch,
        )
    fold_dir = paths.fold_dir(round_index, fold)
    save_checkpoint(paths.checkpoint(round_index, fold), model, recipe, classes, best_epoch=result.best_epoch)
    atomic.write_csv(fold_dir / "history.csv", result.history.assign(round=round_index, fold=fold))
    probs = predict_proba(model, source, rows["test"], recipe.train.batch_size, recipe.data.channels, device)
    test = manifest.iloc[rows["test"]]
    table = pd.DataFrame(
        {
            "sample_id": test["sample_id"].to_numpy(),
            "patient_id": test["patient_id"].to_numpy(),
            "scan_id": test["scan_id"].to_numpy(),
            "round": round_index,
            "fold": fold,
            "model": recipe.model.name,
            "y_true": test["label"].to_numpy(),
        }
    )
    for i, name in enumerate(classes):
        table[f"p_{name}"] = probs[:, i]
    atomic.write_csv(fold_dir / "predictions.csv", table)


def run_cv(
    recipe: Recipe,
    data: str | Path,
    out: str | Path,
    layout: str | None = None,
    options: IndexOptions | None = None,
    show_progress: bool = True,
) -> dict:
    """Run (or resume) patient-wise repeated k-fold CV; return the metrics summary written to metrics.json."""
    check_model_name(recipe.model.name)  # fail before any indexing or writing
    paths = RunPaths(Path(out))
    data = str(Path(data).resolve()) if Path(data).exists() else str(data)
    resumed = _start_or_resume(paths, recipe, data)
    if resumed:
        console.print(f"resuming {paths.root}: finished folds are read from disk")
    manifest = _load_manifest(paths, data, options or IndexOptions(), layout)
    classes = recipe.data.classes or class_names(manifest)
    unknown = sorted(set(manifest["label"]) - set(classes))
    if unknown:
        raise CovidlensError(f"labels {unknown} are not in data.classes {classes}; add them to the recipe")
    folds = _load_folds(paths, manifest, recipe)
    if recipe.train.threads:
        torch.set_num_threads(recipe.train.threads)
    device = select_device(recipe.train.device)
    source = image_source(paths, manifest, recipe, show_progress)
    for round_index, fold in fold_keys(folds):
        if (paths.fold_dir(round_index, fold) / "predictions.csv").is_file():
            continue
        _train_fold(paths, recipe, manifest, folds, source, classes, round_index, fold, device, show_progress)
    return finish_run(paths, recipe, folds, classes, is_image_wise(manifest))


def fold_keys(folds: pd.DataFrame) -> list[tuple[int, int]]:
    """The (round, fold) pairs of a folds table, in order."""
    pairs = folds[["round", "fold"]].drop_duplicates().sort_values(["round", "fold"])
    return [(int(r), int(f)) for r, f in pairs.itertuples(index=False)]


def finish_run(
    paths: RunPaths, recipe: Recipe, folds: pd.DataFrame, classes: list[str], image_wise: bool
) -> dict:
    """Gather fold tables into the run's predictions.csv, history.csv and metrics.json."""
    fold_dirs = [paths.fold_dir(r, f) for r, f in fold_keys(folds)]
    predictions = pd.concat([pd.read_csv(d / "predictions.csv", dtype={"sample_id": str}) for d in fold_dirs])
    history = pd.concat([pd.read_csv(d / "history.csv") for d in fold_dirs])
    atomic.write_csv(paths.predictions, predictions)
    atomic.write_csv(paths.history, history)
    summary = summarize_cv(
        predictions, classes, unit=recipe.evaluate.ci_unit, confidence=recipe.evaluate.confidence
    )
    summary["image_wise"] = image_wise
    atomic.write_json(paths.metrics, summary)
    return summary
