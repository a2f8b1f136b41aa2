"""Classify image files or folders with a checkpoint, or with every fold model of a run (averaged).

`submission_table` turns the predictions into paper 003's competition submission: one row per test image,
`Id` (the image's file name without its extension, as the competition's test/ folder and test_labels.csv
name them) and `label` (the predicted class name).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from covidlens.data.adapters.common import check_image, list_images, natural_key
from covidlens.data.cache import CachedImages, DecodedImages
from covidlens.data.preprocess import Preprocessing
from covidlens.errors import CovidlensError
from covidlens.train.checkpoint import Checkpoint, read_checkpoint
from covidlens.train.trainer import predict_proba, select_device


def checkpoints_of(model_path: str | Path) -> list[Path]:
    """A checkpoint file as given, or all fold checkpoints of a run directory."""
    path = Path(model_path)
    if path.is_file():
        return [path]
    if path.is_dir():
        found = sorted((path / "checkpoints").glob("*.pt"))
        if found:
            return found
        raise CovidlensError(f"{path}: no checkpoints/ in this folder; is it a finished covidlens run?")
    raise CovidlensError(f"{path}: no such run directory or checkpoint file")


def collect_inputs(paths: Sequence[str | Path]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Image files named directly or found in folders; unreadable ones are returned with a reason."""
    files: list[Path] = []
    skipped: list[tuple[str, str]] = []
    for item in map(Path, paths):
        if item.is_dir():
            listing = list_images(item)
            files.extend(listing.images)
            skipped += [(str(path), "not an image file") for path in listing.not_images]
        elif item.is_file():
            files.append(item)
        else:
            raise CovidlensError(f"{item}: no such file or folder")
    usable = []
    for file in files:
        reason = check_image(file)
        if reason:
            skipped.append((str(file), reason))
        else:
            usable.append(file)
    if not usable:
        raise CovidlensError(f"no readable image among {len(files)} input file(s); check the paths")
    return usable, skipped


def load_models(model_path: str | Path, device: torch.device) -> tuple[list[Checkpoint], list[str]]:
    """The models of a checkpoint or run directory on `device`, with their recipes and shared classes."""
    models, classes = [], None
    for path in checkpoints_of(model_path):
        checkpoint = read_checkpoint(path)
        if classes is not None and checkpoint.classes != classes:
            raise CovidlensError(f"{path}: classes {checkpoint.classes} differ from the run's other models")
        classes = checkpoint.classes
        checkpoint.model.to(device)
        models.append(checkpoint)
    return models, classes


def predict_files(
    model_path: str | Path, files: Sequence[Path], device: str = "auto", batch_size: int = 32, chunk: int = 512
) -> pd.DataFrame:
    """Class probabilities for each file (the mean over the models): `path, predicted, p_<class>...`.

    Files are decoded `chunk` at a time, once per preprocessing the models share, so memory stays
    bounded however many files there are.
    """
    torch_device = select_device(device)
    models, classes = load_models(model_path, torch_device)
    if any(checkpoint.recipe.data.depth is not None for checkpoint in models):
        raise CovidlensError(
            f"{model_path}: a volume model (data.depth) classifies stacked slices of a scan, not single image "
            "files; its test-set predictions are in the run's predictions.csv"
        )
    parts = []
    for start in range(0, len(files), chunk):
        names = [str(f) for f in files[start : start + chunk]]
        decoded: dict[Preprocessing, CachedImages] = {}
        total = np.zeros((len(names), len(classes)))
        for checkpoint in models:
            prep = checkpoint.prep
            if prep not in decoded:
                decoded[prep] = CachedImages(DecodedImages(names, prep).get(range(len(names))))
            rows = np.arange(len(names))
            channels = checkpoint.recipe.data.channels
            total += predict_proba(checkpoint.model, decoded[prep], rows, batch_size, channels, torch_device)
        parts.append(total / len(models))
    mean = np.concatenate(parts)
    table = pd.DataFrame({"path": [str(f) for f in files], "predicted": [classes[i] for i in mean.argmax(1)]})
    for i, name in enumerate(classes):
        table[f"p_{name}"] = mean[:, i]
    return table


SUBMISSION_COLUMNS = ["Id", "label"]


def submission_table(predictions: pd.DataFrame) -> pd.DataFrame:
    """Paper 003's submission from a `predict_files` table: `Id` (file stem), `label` (predicted class), by Id.

    Ids sort naturally (2 before 10, as the competition numbers its test images); two files with one
    stem would give one Id twice, which a submission cannot hold, so that is an error.
    """
    ids = [Path(path).stem for path in predictions["path"]]
    table = pd.DataFrame({"Id": ids, "label": predictions["predicted"].astype(str).to_numpy()})
    doubled = table["Id"].duplicated(keep=False)
    if doubled.any():
        paths = predictions.loc[doubled.to_numpy(), "path"].astype(str).tolist()
        raise CovidlensError(
            f"Id {table.loc[doubled, 'Id'].iloc[0]!r} names more than one image ({', '.join(paths[:3])}); "
            "a submission needs one image per file name: predict one test folder"
        )
    order = sorted(range(len(table)), key=lambda row: natural_key(ids[row]))
    return table.iloc[order].reset_index(drop=True)
