"""`covidlens explain`: maps for image files or scan folders with one checkpoint, written as PNG, NPY and CSV.

Inputs are preprocessed by the checkpoint's own `Preprocessing` (window, lung mask, square resize or paper 003's
method A-D at the run's threshold, CLAHE), so the model sees what it was trained on; lesion masks are padded,
stretched or cropped as their images are. Overlays show the same preprocessing enlarged until the longer side is
DISPLAY_SIDE, so they stay legible; the saved maps are at the model's input resolution (H x W, not always
square). `evaluate=True` scores the maps of inputs with a lesion mask beside them against that mask, for the
trained model and for a copy with re-initialized weights (the randomization sanity check).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from covidlens import atomic
from covidlens.data.adapters.common import check_image, list_images, mask_path_for, natural_key
from covidlens.data.preprocess import Preprocessing, to_model_input
from covidlens.deploy.predict import collect_inputs
from covidlens.errors import CovidlensError
from covidlens.explain.activations import pick_checkpoint
from covidlens.explain.cam import CAM_METHODS, Explainer, Explanation
from covidlens.explain.heatmap_stats import (
    POINTING_TOLERANCE_PX,
    localization_scores,
    randomized_model,
    rank_correlation,
    summarize_localization,
)
from covidlens.explain.render import overlay_title, save_montage, save_overlay
from covidlens.progress import console, progress_bar

DISPLAY_SIDE = 384  # overlays show the preprocessed image with at least this many pixels on its longer side
POINTING_REFERENCE_SIDE = 224  # the input side Zhang et al.'s tolerance refers to


@dataclass
class ExplainItem:
    """One input: an image file (2D models) or a scan folder and the slices taken from it (3D models)."""

    path: Path
    name: str  # output file stem, unique in the output folder
    files: list[Path]
    volume: bool = False  # the files are the slices of one 3D input


@dataclass
class ExplainResult:
    """What `explain_paths` wrote and computed."""

    checkpoint: Path
    layer: str
    explanations: pd.DataFrame
    evaluation: pd.DataFrame | None = None  # one row per (input with a lesion, trained / randomized)
    summary: pd.DataFrame | None = None


def parse_target(text: str | int, classes: Sequence[str]) -> str | int:
    """'predicted', a class name (any case) or a class index -> 'predicted' or the index."""
    value = str(text).strip()
    if value.lower() == "predicted":
        return "predicted"
    by_name = {name.lower(): i for i, name in enumerate(classes)}
    if value.lower() in by_name:
        return by_name[value.lower()]
    if value.lstrip("-").isdigit() and 0 <= int(value) < len(classes):
        return int(value)
    raise CovidlensError(
        f"--target {value}: not 'predicted', nor a class of this model ({', '.join(classes)}), "
        f"nor a class index 0-{len(classes) - 1}"
    )


def unique_names(stems: Sequence[str]) -> list[str]:
    """The stems made unique by appending -2, -3 ... to repeats."""
    seen: dict[str, int] = {}
    names = []
    for stem in stems:
        seen[stem] = seen.get(stem, 0) + 1
        names.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return names


def _relative_stem(path: Path, roots: Sequence[Path], keep_suffix: bool = False) -> str:
    for root in roots:
        if path.is_relative_to(root) and path != root:
            relative = path.relative_to(root)
            parts = [*relative.parts[:-1], relative.name if keep_suffix else relative.stem]
            return "__".join(parts)
    return path.name if keep_suffix else path.stem


def collect_images(paths: Sequence[str | Path]) -> tuple[list[ExplainItem], list[tuple[str, str]]]:
    """Image files named or found (recursively, lesion masks skipped) in folders, with unique output names."""
    files, skipped = collect_inputs(paths)
    roots = [Path(p) for p in paths if Path(p).is_dir()]
    names = unique_names([_relative_stem(f, roots) for f in files])
    return [ExplainItem(f, n, [f]) for f, n in zip(files, names, strict=True)], skipped


def collect_scans(
    paths: Sequence[str | Path], depth: int, start: int = 0
) -> tuple[list[ExplainItem], list[tuple[str, str]]]:
    """Scan folders (folders holding slice images; a folder of scans is searched) and `depth` slices of each.

    Slices are taken in natural order of their names from the `start`-th; a scan with fewer left repeats
    its last slice, as training does.
    """
    if start < 0:
        raise CovidlensError(f"--start {start}: must be 0 or more")
    scans: list[tuple[Path, list[Path]]] = []
    roots = []
    for item in map(Path, paths):
        if not item.exists():
            raise CovidlensError(f"{item}: no such scan folder")
        if not item.is_dir():
            raise CovidlensError(f"{item}: a file; this volume model takes scan folders of numbered slice images")
        roots.append(item)
        by_folder: dict[Path, list[Path]] = {}
        for image in list_images(item).images:
            by_folder.setdefault(image.parent, []).append(image)
        if not by_folder:
            raise CovidlensError(f"{item}: no slice images in this folder or below it")
        scans += sorted(by_folder.items(), key=lambda entry: natural_key(str(entry[0])))
    items, skipped, stems = [], [], []
    for folder, slices in scans:
        if start >= len(slices):
            raise CovidlensError(f"{folder}: --start {start}, but the scan has {len(slices)} slices")
        chosen = slices[start : start + depth]
        chosen += [chosen[-1]] * (depth - len(chosen))
        reasons = [(str(f), r) for f in dict.fromkeys(chosen) if (r := check_image(f))]
        if reasons:
            skipped += reasons
            continue
        items.append(ExplainItem(folder, "", chosen, volume=True))
        stems.append(_relative_stem(folder, roots, keep_suffix=True))
    if not items:
        raise CovidlensError(f"no readable scan among {len(scans)} scan folder(s); check the paths")
    for item, name in zip(items, unique_names(stems), strict=True):
        item.name = name
    return items, skipped


def load_item(item: ExplainItem, prep: Preprocessing) -> np.ndarray:
    """The item's uint8 pixels as `prep` makes them: (H, W) for an image, (D, H, W) for a scan's slices."""
    slices = [prep.load(f) for f in item.files]
    return np.stack(slices) if item.volume else slices[0]


def load_lesion_mask(item: ExplainItem, prep: Preprocessing) -> np.ndarray | None:
    """The lesion mask beside the item's image(s), brought to `prep.shape` as the image is, or None.

    In a volume, slices without a mask file count as lesion-free, but at least one must have one.
    """
    paths = [mask_path_for(file) for file in item.files]
    if not any(path.is_file() for path in paths):
        return None
    masks = [prep.load_mask(path) if path.is_file() else np.zeros(prep.shape, dtype=bool) for path in paths]
    return np.stack(masks) if item.volume else masks[0]


def pointing_tolerance(shape: tuple[int, int]) -> float:
    """Zhang et al.'s pointing-game tolerance in pixels of an input of `shape` (H, W)."""
    # Their 15 px are about 7 % of a ~224 px input's extent, so the tolerance scales with the extent. The longer
    # side is it for square inputs (as before) and for method A's padded square T (the image's own longer side),
    # and a portrait and a landscape input of one size get one tolerance.
    return POINTING_TOLERANCE_PX * max(shape) / POINTING_REFERENCE_SIDE


def explanation_folder(model_path: str | Path, name: str, fallback: str | Path) -> Path:
    """Where explanations go by default: `<RUN>/explanations/<name>` for a run directory, else `fallback`."""
    return Path(model_path) / "explanations" / name if Path(model_path).is_dir() else Path(fallback)


def explain_paths(
    model_path: str | Path,
    paths: Sequence[str | Path],
    out: str | Path | None = None,
    method: str = "gradcam",
    layer: str | None = None,
    target: str | int = "predicted",
    evaluate: bool = False,
    fold_model: int = 0,
    start: int = 0,
    batch_size: int = 8,
    device: str = "cpu",
    seed: int = 0,
    show_progress: bool = True,
) -> ExplainResult:
    """Explain every input with one checkpoint (a .pt, or fold model `fold_model` of a run directory).

    Writes `out/<name>.png` (overlay; for a scan a montage, plus `out/<name>/<slice>.png` per slice),
    `out/<name>.npy` (the normalized map at input resolution) and `out/explanations.csv`; with `evaluate`
    also `out/evaluation.csv` and `out/evaluation.json`. `out` defaults to `<RUN>/explanations/<method>` for
    a run directory and `explanations` for a checkpoint.
    """
    from covidlens.train.checkpoint import read_checkpoint
    from covidlens.train.trainer import select_device

    cam_method = CAM_METHODS.get(method)
    if batch_size < 1:
        raise CovidlensError(f"--batch-size {batch_size}: must be 1 or more")
    checkpoint, which = pick_checkpoint(model_path, fold_model)
    loaded = read_checkpoint(checkpoint)
    model, recipe, classes, prep = loaded.model, loaded.recipe, loaded.classes, loaded.prep
    data = recipe.data
    wanted = parse_target(target, classes)
    volume = data.depth is not None
    items, skipped = collect_scans(paths, data.depth, start) if volume else collect_images(paths)
    for path, reason in skipped:
        console.print(f"[yellow]skipped {path}: {reason}[/]", highlight=False)
    torch_device = select_device(device)
    model = model.to(torch_device)
    explainer = Explainer(model, method, layer, model_name=recipe.model.name, seed=seed)
    console.print(f"explaining with {which}: {recipe.model.name}, {cam_method.title}", highlight=False)
    random_explainer: Explainer | None = None
    tolerance = pointing_tolerance(prep.shape)
    display = prep.enlarged(DISPLAY_SIDE)
    out = Path(out) if out is not None else explanation_folder(model_path, cam_method.name, "explanations")
    rows, scores = [], []
    with progress_bar("explaining", total=len(items), enabled=show_progress) as update:
        for first in range(0, len(items), batch_size):
            batch = items[first : first + batch_size]
            pixels = np.stack([load_item(item, prep) for item in batch])
            inputs = torch.from_numpy(to_model_input(pixels, data.channels)).to(torch_device)
            explained = explainer.explain(inputs, wanted)
            if first == 0:
                console.print(f"target layer: {explained.layer}", highlight=False)
            for i, item in enumerate(batch):
                rows.append(_write_item(out, item, explained, i, display, classes, cam_method.title))
            if evaluate:
                masks = [load_lesion_mask(item, prep) for item in batch]
                if any(mask is not None and mask.any() for mask in masks):
                    if random_explainer is None:
                        random_explainer = Explainer(
                            randomized_model(model, seed), method, explained.layer, recipe.model.name, seed=seed
                        )
                    randomized = random_explainer.explain(inputs, explained.targets.tolist())
                    scores += _score_batch(batch, masks, explained, randomized, tolerance)
            update(first + len(batch))
    table = pd.DataFrame(rows)
    atomic.write_csv(out / "explanations.csv", table)
    flat = int(table["flat_map"].sum())
    if flat:
        console.print(
            f"{flat} of {len(table)} maps are flat (no positive evidence at {explainer.layer}): they show as all blue"
        )
    console.print(f"wrote {len(table)} overlays and maps, and explanations.csv, to {out}")
    result = ExplainResult(checkpoint, explainer.layer or "", table)
    if evaluate:
        _write_evaluation(result, out, scores, len(items), seed, tolerance, which)
    return result


def _write_item(
    out: Path,
    item: ExplainItem,
    explained: Explanation,
    i: int,
    display: Preprocessing,
    classes: Sequence[str],
    method_title: str,
) -> dict:
    predicted, target = int(explained.predicted[i]), int(explained.targets[i])
    probability = float(explained.probabilities[i, predicted])
    heatmap = explained.maps[i]
    image = load_item(item, display)
    outline = load_lesion_mask(item, display)
    title = overlay_title(
        _display_name(item), classes[predicted], probability, classes[target], method_title, explained.layer
    )
    atomic.write_with(out / f"{item.name}.npy", lambda tmp: _save_npy(tmp, heatmap))
    if item.volume:
        labels = [f.stem for f in item.files]
        save_montage(out / f"{item.name}.png", image, heatmap, title, labels, outline)
        for k, (file, pixels, slice_map) in enumerate(zip(item.files, image, heatmap, strict=True)):
            slice_title = overlay_title(
                f"{_display_name(item)} · {file.stem} ({k + 1} of {len(item.files)})",
                classes[predicted], probability, classes[target], method_title, explained.layer,
            )
            slice_outline = outline[k] if outline is not None else None
            save_overlay(out / item.name / f"{k:02d}_{file.stem}.png", pixels, slice_map, slice_title, slice_outline)
    else:
        save_overlay(out / f"{item.name}.png", image, heatmap, title, outline)
    raw = explained.raw[i]
    return {
        "path": str(item.path),
        "output": item.name,
        "predicted": classes[predicted],
        "probability": probability,
        "target": classes[target],
        "target_probability": float(explained.probabilities[i, target]),
        "method": explained.method,
        "layer": explained.layer,
        "flat_map": bool(raw.max() <= raw.min()),
    }


def _save_npy(tmp: Path, array: np.ndarray) -> None:
    with open(tmp, "wb") as handle:  # a file object: np.save would add .npy to the temp name
        np.save(handle, array.astype(np.float32))


def _display_name(item: ExplainItem) -> str:
    return os.fspath(item.path) if len(item.path.parts) <= 3 else os.path.join(*item.path.parts[-3:])


def _score_batch(
    batch: Sequence[ExplainItem],
    masks: Sequence[np.ndarray | None],
    trained: Explanation,
    randomized: Explanation,
    tolerance: float,
) -> list[dict]:
    rows = []
    for i, (item, mask) in enumerate(zip(batch, masks, strict=True)):
        if mask is None or not mask.any():
            continue
        correlation = rank_correlation(trained.maps[i], randomized.maps[i])
        for model, explained in (("trained", trained), ("randomized", randomized)):
            rows.append(
                {
                    "path": str(item.path),
                    "method": explained.method,
                    "model": model,
                    **localization_scores(explained.maps[i], mask, tolerance),
                    "spearman_trained_vs_randomized": correlation,
                }
            )
    return rows


def _write_evaluation(
    result: ExplainResult, out: Path, scores: list[dict], inputs: int, seed: int, tolerance: float, which: str
) -> None:
    if not scores:
        console.print(
            "--evaluate: no input has a lesion mask beside it (<image stem>.mask.png); nothing to evaluate"
        )
        return
    table = pd.DataFrame(scores)
    summary = summarize_localization(table)
    atomic.write_csv(out / "evaluation.csv", table)
    atomic.write_json(
        out / "evaluation.json",
        {
            "model": which,
            "layer": result.layer,
            "inputs": inputs,
            "inputs_with_lesion": int(table["path"].nunique()),
            "pointing_tolerance_px": tolerance,
            "randomization_seed": seed,
            "summary": summary.to_dict(orient="records"),
        },
    )
    result.evaluation, result.summary = table, summary

