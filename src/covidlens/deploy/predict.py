"""Classify image files or folders with a checkpoint, or with every fold model of a run (averaged)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from covidlens.config import Recipe
from covidlens.data.adapters.common import check_image, list_images
from covidlens.data.cache import CachedImages, DecodedImages
from covidlens.errors import CovidlensError
from covidlens.train.checkpoint import load_checkpoint
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


def load_models(model_path: str | Path, device: torch.device) -> tuple[list[tuple[nn.Module, Recipe]], list[str]]:
    """The models of a checkpoint or run directory on `device`, with their recipes and shared classes."""
    models, classes = [], None
    for checkpoint in checkpoints_of(model_path):
        model, recipe, model_classes = load_checkpoint(checkpoint)
        if classes is not None and model_classes != classes:
            raise CovidlensError(f"{checkpoint}: classes {model_classes} differ from the run's other models")
        classes = model_classes
        models.append((model.to(device), recipe))
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
    if any(recipe.data.depth is not None for _, recipe in models):
        raise CovidlensError(
            f"{model_path}: a volume model (data.depth) classifies stacked slices of a scan, not single image "
            "files; its test-set predictions are in the run's predictions.csv"
        )
    parts = []
    for start in range(0, len(files), chunk):
        names = [str(f) for f in files[start : start + chunk]]
        decoded: dict[tuple, CachedImages] = {}
        total = np.zeros((len(names), len(classes)))
        for model, recipe in models:
            key = (recipe.data.image_size, recipe.data.window, recipe.data.lung_mask)
            if key not in decoded:
                source = DecodedImages(names, *key[:2], lung_mask=key[2])
                decoded[key] = CachedImages(source.get(range(len(names))))
            rows = np.arange(len(names))
            total += predict_proba(model, decoded[key], rows, batch_size, recipe.data.channels, torch_device)
        parts.append(total / len(models))
    mean = np.concatenate(parts)
    table = pd.DataFrame({"path": [str(f) for f in files], "predicted": [classes[i] for i in mean.argmax(1)]})
    for i, name in enumerate(classes):
        table[f"p_{name}"] = mean[:, i]
    return table
