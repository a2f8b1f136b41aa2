"""Paper 004's efficiency table (Table 7, SPEC E6/S3): sensitivity, parameters, their ratio and CPU time per image.

Sensitivity is that of the positive class (the recipe's `evaluate.positive_class`, else a class named COVID,
NCP or covid), POOLED over the run's test predictions: computed from metrics.json's confusion matrix summed over
all folds / rounds, so it equals the one-vs-rest sensitivity of `metrics_from_predictions` on the whole
predictions.csv (not the mean across CV units). Parameters are those of the fold-0 checkpoint's model.

CPU time per image is the mean over N test images (from predictions.csv, located through the manifest) of one
forward pass of one image, under `torch.inference_mode`, after one warm-up image; decoding and preprocessing
happen before the timed part. It is measured once per thread setting (e.g. 1 thread and all threads).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from rich.table import Table

from covidlens.data.preprocess import to_model_input
from covidlens.deploy.predict import checkpoints_of
from covidlens.errors import CovidlensError
from covidlens.evaluate.metrics import binary_metrics, one_vs_rest_counts
from covidlens.train.checkpoint import Checkpoint, read_checkpoint

DEFAULT_POSITIVES: tuple[str, ...] = ("COVID", "NCP", "covid")
SENSITIVITY_DEFINITION = "pooled over all test predictions of the run"


def parse_threads(text: str) -> list[int]:
    """'1,all' -> [1, every CPU core]; each item is a positive integer or 'all'."""
    counts = []
    for item in (part.strip() for part in text.split(",")):
        if item == "all":
            counts.append(_all_threads())
        elif item.isdigit() and int(item) > 0:
            counts.append(int(item))
        else:
            raise CovidlensError(f"--threads {text!r}: give positive integers or 'all', separated by commas")
    if not counts:
        raise CovidlensError("--threads is empty; e.g. 1,all")
    return list(dict.fromkeys(counts))


def positive_class(classes: Sequence[str], configured: str | None) -> str:
    """The class whose sensitivity is reported: the recipe's positive class, else COVID / NCP / covid."""
    wanted = [configured] if configured else list(DEFAULT_POSITIVES)
    for name in wanted:
        if name in classes:
            return name
    raise CovidlensError(
        f"no positive class among {', '.join(classes)} (looked for {', '.join(wanted)}); "
        "set evaluate.positive_class in the run's recipe"
    )


def run_sensitivity(run_dir: Path, checkpoint: Checkpoint) -> tuple[str, float]:
    """(positive class, its sensitivity pooled over the run's test predictions) from metrics.json."""
    path = run_dir / "metrics.json"
    if not path.is_file():
        raise CovidlensError(f"{run_dir}: no metrics.json; is it a finished covidlens run?")
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
        classes = [str(c) for c in summary["classes"]]
        cm = np.asarray(summary["confusion_matrix"], dtype=np.int64)
    except (ValueError, KeyError, TypeError) as exc:
        raise CovidlensError(f"{path}: damaged or not a covidlens metrics file ({type(exc).__name__})") from None
    if cm.shape != (len(classes), len(classes)):
        raise CovidlensError(f"{path}: confusion matrix shape {cm.shape} does not fit {len(classes)} classes")
    positive = positive_class(classes, checkpoint.recipe.evaluate.positive_class)
    counts = one_vs_rest_counts(cm, classes.index(positive))
    sensitivity = binary_metrics(counts["tp"], counts["fn"], counts["tn"], counts["fp"], math.nan)["sensitivity"]
    return positive, sensitivity


def timed_image_paths(run_dir: Path, count: int) -> list[str]:
    """Paths of the first `count` distinct test images of a run (predictions.csv rows, located by manifest.csv)."""
    try:
        manifest = pd.read_csv(run_dir / "manifest.csv", usecols=["sample_id", "path"], dtype=str)
        tested = pd.read_csv(run_dir / "predictions.csv", usecols=["sample_id"], dtype=str)
    except FileNotFoundError as exc:
        raise CovidlensError(f"{run_dir}: no {Path(exc.filename).name}; is it a finished covidlens run?") from None
    except ValueError as exc:
        raise CovidlensError(f"{run_dir}: manifest.csv or predictions.csv is damaged ({exc})") from None
    where = dict(zip(manifest["sample_id"], manifest["path"], strict=True))
    paths = [where[s] for s in dict.fromkeys(tested["sample_id"]) if s in where]
    if not paths:
        raise CovidlensError(f"{run_dir}: no test image of predictions.csv is in manifest.csv")
    return paths[:count]


def time_per_image_ms(checkpoint: Checkpoint, inputs: Sequence[torch.Tensor], threads: int) -> float:
    """Mean ms of one CPU forward pass of one input with `threads` torch threads, after one warm-up pass."""
    model = checkpoint.model.cpu().eval()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            model(inputs[0])
            elapsed = []
            for tensor in inputs:
                start = time.perf_counter()
                model(tensor)
                elapsed.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    return 1000.0 * float(np.mean(elapsed))


def efficiency_row(run_dir: str | Path, images: int = 20, threads: Sequence[int] = (1,)) -> dict:
    """One Table 7 row of a run: model, positive class, sensitivity, parameters (M), ratio, ms/image per setting."""
    run_dir = Path(run_dir)
    if images < 1:
        raise CovidlensError(f"--images {images}: time at least one image")
    if run_dir.is_file():
        raise CovidlensError(f"{run_dir}: give a run directory, not a checkpoint file (metrics.json is needed)")
    checkpoint = read_checkpoint(checkpoints_of(run_dir)[0])
    if checkpoint.recipe.data.depth is not None:
        raise CovidlensError(f"{run_dir}: a volume model (data.depth); efficiency times single-image models")
    positive, sensitivity = run_sensitivity(run_dir, checkpoint)
    parameters_m = sum(p.numel() for p in checkpoint.model.parameters()) / 1e6
    channels = checkpoint.recipe.data.channels
    inputs = [
        torch.from_numpy(to_model_input(checkpoint.prep.load(path)[None], channels))
        for path in timed_image_paths(run_dir, images)
    ]
    row = {
        "run": str(run_dir),
        "model": checkpoint.recipe.model.name,
        "positive_class": positive,
        "sensitivity": sensitivity,
        "parameters_m": parameters_m,
        "sensitivity_per_m": sensitivity / parameters_m,
        "images_timed": len(inputs),
    }
    for count in threads:
        row[f"ms_per_image_{count}_threads"] = time_per_image_ms(checkpoint, inputs, count)
    return row


def efficiency_table(runs: Sequence[str | Path], images: int = 20, threads: Sequence[int] = (1,)) -> pd.DataFrame:
    """Table 7 of paper 004 for several runs, one row each."""
    if not runs:
        raise CovidlensError("give at least one run directory")
    return pd.DataFrame([efficiency_row(run, images, threads) for run in runs])


def thread_setting(column: str) -> str:
    """A timing column's thread setting in words: 'ms_per_image_1_threads' -> '1 thread'."""
    count = column.removeprefix("ms_per_image_").removesuffix("_threads")
    return f"{count} thread{'' if count == '1' else 's'}"


def efficiency_cells(row: Mapping[str, Any], timing: Sequence[str]) -> list[str]:
    """One Table 7 row as printed: works, sensitivity %, parameters (M), the ratio in % per million, then ms/image."""
    return [
        f"{row['model']} ({row['positive_class']})",
        f"{100 * row['sensitivity']:.2f}",
        f"{row['parameters_m']:.2f}",
        f"{100 * row['sensitivity_per_m']:.2f}",
        *(f"{row[c]:.2f}" for c in timing),
    ]


def efficiency_rich_table(table: pd.DataFrame) -> Table:
    """Paper 004's Table 7 layout plus CPU ms per image; as there, the ratio is sensitivity in % per million."""
    timing = [c for c in table.columns if c.startswith("ms_per_image_")]
    out = Table(title=f"Efficiency (paper 004, Table 7); sensitivity {SENSITIVITY_DEFINITION}")
    out.add_column("Works", justify="left")
    for header in ("Sensitivity (%)", "#Parameters (Millions)", "Sens. ÷ #Param."):
        out.add_column(header, justify="right")
    for column in timing:
        out.add_column(f"CPU ms/image ({thread_setting(column)})", justify="right")
    for _, row in table.iterrows():
        out.add_row(*efficiency_cells(row, timing))
    return out


def _all_threads() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
