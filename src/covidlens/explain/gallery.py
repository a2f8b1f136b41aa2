"""`covidlens gallery`: paper 000's Fig. 1 and its heatmap analysis, over several models and the same images.

The first model is the base model. Each model explains `per_class` images of the positive class and as many of
the other classes; the gallery shows every image with each model's overlay (paper 000's Fig. 1, paper 004's
Figs. 4-5). Paper 000's statistic (Sections 3.5.1 and 5): per image, the base model's map gives the mask of its
pixels above mean + 1 SD, and the mean intensity of every model's map inside that mask is compared. Maps of a
model with another input size are resized (bilinear) to the base model's before that comparison, so every model
must place an image's pixels alike: all stretch the whole image (square, or paper 003's method B), or all share
one method A, C or D at one input shape (their padding and cropping depend on it).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from covidlens import atomic
from covidlens.config import Recipe
from covidlens.data.adapters.common import mask_path_for
from covidlens.data.index import index_dataset
from covidlens.data.preprocess import Preprocessing, to_model_input
from covidlens.errors import CovidlensError
from covidlens.explain.activations import pick_checkpoint
from covidlens.explain.cam import CAM_METHODS, Explainer
from covidlens.explain.heatmap_stats import base_mask_intensities, summarize_intensities
from covidlens.explain.pipeline import (
    ExplainItem,
    collect_images,
    explanation_folder,
    load_item,
    load_lesion_mask,
    parse_target,
    unique_names,
)
from covidlens.explain.render import OUTLINE_NOTE, GalleryRow, GalleryTile, resize_heatmap, save_gallery
from covidlens.progress import console, progress_bar

BATCH_SIZE = 8
GALLERY_SIDE = 256  # tiles show the preprocessed image with at least this many pixels on its longer side
SPLIT_FROM_MODELS = 4  # from this many models on, positives and negatives also get a figure each
NAME_CHARS = 30  # image names in tile titles keep their last characters
STRETCHES = ("square", "B")  # resizings that stretch the whole image onto the input, whatever its aspect


@dataclass
class GalleryModel:
    """One model of a gallery: its display name, where it came from, and the loaded network."""

    name: str
    source: Path
    checkpoint: Path
    which: str
    model: nn.Module
    recipe: Recipe
    classes: list[str]
    prep: Preprocessing


@dataclass
class GalleryResult:
    """What `run_gallery` wrote and computed."""

    out: Path
    grid: tuple[int, int]  # rows and columns of gallery.png
    images: pd.DataFrame  # image, path, true_class, group, lesion_mask: positives first, then negatives
    intensities: pd.DataFrame  # one row per (image, model)
    summary: pd.DataFrame  # per model: all images, the positives, the negatives


def model_name(path: str | Path) -> str:
    """A model's name in the gallery: a run directory's name, or a checkpoint's file stem."""
    path = Path(path)
    return path.stem if path.is_file() else Path(os.path.abspath(path)).name


def load_gallery_models(model_paths: Sequence[str | Path]) -> list[GalleryModel]:
    """Load fold model 0 of each run directory, or each checkpoint; all must be 2D and share the class list."""
    from covidlens.train.checkpoint import read_checkpoint

    if not model_paths:
        raise CovidlensError("give at least one model: a run directory or a checkpoint .pt")
    models: list[GalleryModel] = []
    for path, name in zip(model_paths, unique_names([model_name(p) for p in model_paths]), strict=True):
        checkpoint, which = pick_checkpoint(path, 0)
        loaded = read_checkpoint(checkpoint)
        recipe, classes = loaded.recipe, loaded.classes
        if recipe.data.depth is not None:
            raise CovidlensError(
                f"{path}: a volume model ({recipe.model.name}, depth {recipe.data.depth}); the gallery compares 2D "
                "models, use 'covidlens explain' for volumes"
            )
        if models and classes != models[0].classes:
            raise CovidlensError(
                f"{path}: classes {', '.join(classes)} differ from the base model's ({', '.join(models[0].classes)}); "
                "a gallery compares models trained on the same classes"
            )
        if models:
            check_same_geometry(path, loaded.prep, models[0].prep)
        models.append(GalleryModel(name, Path(path), checkpoint, which, loaded.model, recipe, classes, loaded.prep))
    return models


def check_same_geometry(path: str | Path, prep: Preprocessing, base: Preprocessing) -> None:
    """Refuse a model whose inputs place an image's pixels elsewhere than the base model's (its maps cannot be
    compared pixel by pixel): both must stretch the whole image, or share one method A, C or D and input shape."""
    if prep.resize in STRETCHES and base.resize in STRETCHES:
        return
    if prep.resize != base.resize or prep.shape != base.shape:
        raise CovidlensError(
            f"{path}: input {_geometry(prep)}, but the base model's is {_geometry(base)}; their maps do not line up, "
            "so compare models that pad or crop alike (the same data.resize and threshold)"
        )


def _geometry(prep: Preprocessing) -> str:
    height, width = prep.shape
    return f"{height}x{width} ({'stretched' if prep.resize == 'square' else 'method ' + prep.resize})"


def true_classes(
    items: Sequence[ExplainItem],
    paths: Sequence[str | Path],
    classes: Sequence[str],
    relabel: Mapping[str, str] | None = None,
) -> list[str | None]:
    """Each image's true class: its label when a folder given indexes as a known layout, else the name of the
    nearest folder above it named like a class (any case); None when neither tells. Labels and folder names the
    models' `data.relabel` renamed count as their new class (Healthy -> NonCOVID)."""
    by_name = {name.casefold(): name for name in classes}
    by_name.update({old.casefold(): new for old, new in (relabel or {}).items() if new in classes})
    indexed: dict[str, str] = {}
    for folder in (Path(p) for p in paths if Path(p).is_dir()):
        try:
            manifest = index_dataset(folder).manifest
        except CovidlensError:
            continue  # not a known layout: the folder names above each image decide
        labels = [by_name.get(str(label).casefold(), str(label)) for label in manifest["label"]]
        indexed.update(zip(map(os.path.abspath, manifest["path"]), labels, strict=True))
    found: list[str | None] = []
    for item in items:
        absolute = os.path.abspath(item.path)
        label = indexed.get(absolute)
        if label is None:
            parents = (p.name.casefold() for p in Path(absolute).parents)
            label = next((by_name[name] for name in parents if name in by_name), None)
        found.append(label)
    return found


def pick_examples(
    items: Sequence[ExplainItem], labels: Sequence[str | None], positive: str, per_class: int, seed: int = 0
) -> tuple[list[int], list[int]]:
    """Indices of up to `per_class` images of the positive class and as many of the others, in a seeded random order
    that prefers positives with a lesion mask beside them, one image per folder (patient) before a second, and
    negatives of each other class in turn."""
    shuffled = np.random.default_rng(seed).permutation(len(items)).tolist()
    folder_seen: Counter[Path] = Counter()
    positives, negatives = [], []
    for rank, i in enumerate(shuffled):
        if labels[i] is None:
            continue
        folder = items[i].path.parent
        folder_rank = folder_seen[folder]
        folder_seen[folder] += 1
        if labels[i] == positive:
            has_mask = mask_path_for(items[i].path).is_file()
            positives.append(((not has_mask, folder_rank, rank), i))
        else:
            negatives.append(((folder_rank, rank), i))
    class_seen: Counter[str] = Counter()
    in_turn = []
    for key, i in sorted(negatives):
        in_turn.append(((class_seen[labels[i]], key), i))  # the n-th of its class comes after every class's (n-1)-th
        class_seen[labels[i]] += 1
    return [i for _, i in sorted(positives)[:per_class]], [i for _, i in sorted(in_turn)[:per_class]]


def explain_items(
    model: GalleryModel,
    items: Sequence[ExplainItem],
    method: str,
    target: str | int,
    seed: int,
    device: torch.device,
) -> tuple[str, np.ndarray, np.ndarray, np.ndarray]:
    """One model's maps of the items at its input size: (layer, maps (N, H, W), probabilities, predicted)."""
    channels = model.recipe.data.channels
    explainer = Explainer(model.model.to(device), method, model_name=model.recipe.model.name, seed=seed)
    maps, probabilities, predicted = [], [], []
    for first in range(0, len(items), BATCH_SIZE):
        pixels = np.stack([load_item(item, model.prep) for item in items[first : first + BATCH_SIZE]])
        explained = explainer.explain(torch.from_numpy(to_model_input(pixels, channels)).to(device), target)
        maps.append(explained.maps)
        probabilities.append(explained.probabilities)
        predicted.append(explained.predicted)
    return explainer.layer or "", np.concatenate(maps), np.concatenate(probabilities), np.concatenate(predicted)


def summarize_by_group(table: pd.DataFrame, positive: str) -> pd.DataFrame:
    """`summarize_intensities` per model over all images, the positives and the negatives, models in table order."""
    parts = [summarize_intensities(table).assign(images_of="all")]
    for group, label in (("positive", positive), ("negative", f"not {positive}")):
        if (table["group"] == group).any():
            parts.append(summarize_intensities(table[table["group"] == group]).assign(images_of=label))
    order = {name: i for i, name in enumerate(table["model"].unique())}
    summary = pd.concat(parts, ignore_index=True).sort_values("model", key=lambda s: s.map(order), kind="stable")
    return summary[["model", "method", "images_of", "images", "mean", "sd", "mean ± SD"]].reset_index(drop=True)


def _tile_name(item: ExplainItem) -> str:
    name = item.name.replace("__", "/")
    return name if len(name) <= NAME_CHARS else "…" + name[-(NAME_CHARS - 1) :]


def run_gallery(
    model_paths: Sequence[str | Path],
    data: Sequence[str | Path],
    positive: str,
    out: str | Path | None = None,
    per_class: int = 3,
    method: str = "gradcam",
    target: str | int = "predicted",
    seed: int = 0,
    device: str = "cpu",
    show_progress: bool = True,
) -> GalleryResult:
    """Explain the same positive and negative images with every model; write the gallery and paper 000's analysis.

    Writes `out/gallery.png` (for 4 models or more also `gallery_positive.png` and `gallery_negative.png`),
    `out/heatmap_intensity.csv`, `out/heatmap_intensity_summary.csv` and `out/gallery.json`. `out` defaults to
    `<RUN>/explanations/gallery` when the first model is a run directory, else `gallery`.
    """
    from covidlens.train.trainer import select_device

    cam_method = CAM_METHODS.get(method)
    if per_class < 1:
        raise CovidlensError(f"--per-class {per_class}: must be 1 or more")
    models = load_gallery_models(model_paths)
    base, classes = models[0], models[0].classes
    positive_class = {name.casefold(): name for name in classes}.get(str(positive).casefold())
    if positive_class is None:
        raise CovidlensError(f"--positive {positive}: not a class of these models ({', '.join(classes)})")
    wanted = parse_target(target, classes)
    items, skipped = collect_images(data)
    for path, reason in skipped:
        console.print(f"[yellow]skipped {path}: {reason}[/]", highlight=False)
    labels = true_classes(items, data, classes, base.recipe.data.relabel)
    unlabelled = sum(label is None for label in labels)
    if unlabelled:
        console.print(
            f"[yellow]{unlabelled} of {len(items)} images have no true class (no indexed dataset, no folder above "
            f"them named {', '.join(classes)}): left out[/]", highlight=False,
        )
    positives, negatives = pick_examples(items, labels, positive_class, per_class, seed)
    if not positives or not negatives:
        missing = f"of class {positive_class}" if not positives else f"of a class other than {positive_class}"
        raise CovidlensError(f"no image {missing} among the {len(items) - unlabelled} labelled images of the --data")
    if min(len(positives), len(negatives)) < per_class:
        console.print(
            f"[yellow]--per-class {per_class}: only {len(positives)} positive and {len(negatives)} negative images[/]"
        )
    chosen = [items[i] for i in positives + negatives]
    images = pd.DataFrame(
        {
            "image": [item.name for item in chosen],
            "path": [str(item.path) for item in chosen],
            "true_class": [labels[i] for i in positives + negatives],
            "group": ["positive"] * len(positives) + ["negative"] * len(negatives),
            "lesion_mask": [mask_path_for(item.path).is_file() for item in chosen],
        }
    )
    out = Path(out) if out is not None else explanation_folder(model_paths[0], "gallery", "gallery")
    torch_device = select_device(device)
    base_shape = base.prep.shape
    maps: dict[str, np.ndarray] = {}
    predictions, layers = [], {}
    rows = [
        GalleryRow(f"{label}\n({group})", [_image_tile(item, base.prep)])
        for item, label, group in zip(chosen, images["true_class"], images["group"], strict=True)
    ]
    explained_class = "" if wanted == "predicted" else f"\nmap for {classes[int(wanted)]}"
    with progress_bar("gallery", total=len(models), enabled=show_progress) as update:
        for done, model in enumerate(models, start=1):
            layer, model_maps, probabilities, predicted = explain_items(
                model, chosen, cam_method.name, wanted, seed, torch_device
            )
            layers[model.name] = layer
            console.print(
                f"model {done} of {len(models)}: {model.name} = {model.which}: {model.recipe.model.name} at {layer}",
                highlight=False,
            )
            maps[model.name] = np.stack([resize_heatmap(m, base_shape) for m in model_maps])
            for i, item in enumerate(chosen):
                shown = classes[int(predicted[i])]
                probability = float(probabilities[i, int(predicted[i])])
                predictions.append({"image": item.name, "model": model.name, "layer": layer,
                                    "predicted": shown, "probability": probability})
                title = f"{model.name}\npredicted {shown} (p = {probability:.2f})" + explained_class
                rows[i].tiles.append(_overlay_tile(item, model.prep, model_maps[i], title))
            update(done)
    table = base_mask_intensities(maps, base.name, list(images["image"]), cam_method.name)
    table = images[["image", "path", "true_class", "group"]].merge(table, on="image").merge(
        pd.DataFrame(predictions), on=["image", "model"]
    )
    table = table[["image", "path", "true_class", "group", "model", "method", "layer", "base_model", "mask_pixels",
                   "mean_intensity", "predicted", "probability"]]
    summary = summarize_by_group(table, positive_class)
    def title(shown: str, masks: pd.Series) -> str:
        models_text = f"{len(models)} model(s), base model: {base.name}"
        return f"{cam_method.title}: {shown}, {models_text}" + (OUTLINE_NOTE if masks.any() else "")

    split = len(positives)
    both = f"{split} {positive_class} and {len(negatives)} other images"
    grid = save_gallery(out / "gallery.png", rows, title(both, images["lesion_mask"]))
    figures = ["gallery.png"]
    if len(models) >= SPLIT_FROM_MODELS:
        shown = f"{split} {positive_class} images"
        save_gallery(out / "gallery_positive.png", rows[:split], title(shown, images["lesion_mask"][:split]))
        shown = f"{len(negatives)} images of other classes"
        save_gallery(out / "gallery_negative.png", rows[split:], title(shown, images["lesion_mask"][split:]))
        figures += ["gallery_positive.png", "gallery_negative.png"]
    atomic.write_csv(out / "heatmap_intensity.csv", table)
    atomic.write_csv(out / "heatmap_intensity_summary.csv", summary)
    atomic.write_json(
        out / "gallery.json",
        {
            "models": [
                {"name": m.name, "source": str(m.source), "checkpoint": str(m.checkpoint),
                 "architecture": m.recipe.model.name, "layer": layers[m.name], "image_size": m.recipe.data.image_size,
                 "input_shape": list(m.prep.shape)}
                for m in models
            ],
            "base_model": base.name,
            "classes": classes,
            "positive": positive_class,
            "method": cam_method.name,
            "method_title": cam_method.title,
            "target": "predicted" if wanted == "predicted" else classes[int(wanted)],
            "per_class": per_class,
            "seed": seed,
            "grid": list(grid),
            "figures": figures,
            "images": images.to_dict(orient="records"),
        },
    )
    console.print(f"wrote {', '.join(figures)}, heatmap_intensity.csv, its summary and gallery.json to {out}")
    return GalleryResult(out, grid, images, table, summary)


def _display(item: ExplainItem, prep: Preprocessing) -> tuple[np.ndarray, np.ndarray | None]:
    display = prep.enlarged(GALLERY_SIDE)
    return load_item(item, display), load_lesion_mask(item, display)


def _image_tile(item: ExplainItem, prep: Preprocessing) -> GalleryTile:
    image, outline = _display(item, prep)
    return GalleryTile(image, None, _tile_name(item), outline)


def _overlay_tile(item: ExplainItem, prep: Preprocessing, heatmap: np.ndarray, title: str) -> GalleryTile:
    image, outline = _display(item, prep)
    return GalleryTile(image, heatmap, title, outline)
