"""Checkpoints: the weights plus everything `predict` needs to rebuild and feed the model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from covidlens import atomic
from covidlens.config import Recipe
from covidlens.data.preprocess import Preprocessing, preprocessing_of
from covidlens.data.xray_prep import Threshold
from covidlens.errors import CovidlensError
from covidlens.models import create_model
from covidlens.models.registry import read_torch_file

FORMAT = "covidlens-checkpoint-1"


def save_checkpoint(
    path: str | Path, model: nn.Module, recipe: Recipe, classes: list[str], **extra: Any
) -> Path:
    """Write weights, recipe and class list atomically."""
    payload = {
        "format": FORMAT,
        "recipe": recipe.model_dump(mode="json"),
        "classes": list(classes),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **extra,
    }
    return atomic.write_with(path, lambda tmp: torch.save(payload, tmp))


@dataclass
class Checkpoint:
    """A rebuilt model (eval mode) with its recipe, classes and the preprocessing it was trained with."""

    model: nn.Module
    recipe: Recipe
    classes: list[str]
    prep: Preprocessing


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Rebuild a checkpoint's model and its preprocessing (a data-derived threshold is stored in it)."""
    payload = read_torch_file(path, "covidlens checkpoint")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CovidlensError(f"{path}: not a covidlens checkpoint (no {FORMAT!r} marker)")
    recipe = Recipe.model_validate(payload["recipe"])
    classes = list(payload["classes"])
    stored = (payload.get("preprocessing") or {}).get("threshold")
    threshold = Threshold.from_dict(stored) if stored else None
    if recipe.data.resize != "square" and threshold is None:
        raise CovidlensError(f"{path}: resizing method {recipe.data.resize} but no stored threshold; retrain it")
    prep = preprocessing_of(recipe.data, threshold)
    model = create_model(
        recipe.model.name,
        num_classes=len(classes),
        in_chans=recipe.data.channels,
        drop_rate=recipe.model.drop_rate,
        options=recipe.model.options,
        input_shape=prep.shape,
    )
    model.load_state_dict(payload["state_dict"])
    return Checkpoint(model.eval(), recipe, classes, prep)


def load_checkpoint(path: str | Path) -> tuple[nn.Module, Recipe, list[str]]:
    """Rebuild the model of a checkpoint, in eval mode, with its recipe and classes."""
    checkpoint = read_checkpoint(path)
    return checkpoint.model, checkpoint.recipe, checkpoint.classes
