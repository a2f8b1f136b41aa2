"""Classify image files or folders with a checkpoint, or with every fold model of a run (averaged)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

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


def predict_files(
    model_path: str | Path, files: Sequence[Path], device: str = "auto", batch_size: int = 32
) -> pd.DataFrame:
    """Class probabilities for each file: one row per file with `predicted` and `p_<class>` columns."""
    torch_device = select_device(device)
    total, classes = None, None
    decoded: dict[tuple, CachedImages] = {}  # fold models share preprocessing: decode once
    checkpoints = checkpoints_of(model_path)
    for checkpoint in checkpoints:
        model, recipe, model_classes = load_checkpoint(checkpoint)
        if classes is not None and model_classes != classes:
            raise CovidlensError(f"{checkpoint}: classes {model_classes} differ from the run's other models")
        classes = model_classes
        key = (recipe.data.image_size, recipe.data.window)
        if key not in decoded:
            decoder = DecodedImages([str(f) for f in files], *key)
            decoded[key] = CachedImages(decoder.get(range(len(files))))
        source = decoded[key]
        probs = predict_proba(
            model.to(torch_device),
            source,
            np.arange(len(files)),
            batch_size,
            recipe.data.channels,
            torch_device,
        )
        total = probs if total is None else total + probs
    mean = total / len(checkpoints)
    table = pd.DataFrame({"path": [str(f) for f in files], "predicted": [classes[i] for i in mean.argmax(1)]})
    for i, name in enumerate(classes):
        table[f"p_{name}"] = mean[:, i]
    return table
