"""Numbers about heatmaps: paper 000's base-mask intensities, lesion localization, and the randomization check.

- Paper 000 (Section 3.5.1): the mask of the base model's heatmap is its pixels above the mean + 1 SD; the
  mean heatmap intensity inside that mask is compared between the base model and each other model.
  Intensities here are the normalized map values (the paper measured the RGB pixels of rendered heatmaps).
- Beyond the papers, where a lesion mask is known (the synthetic data writes one): the share of the map's
  energy (the sum of its values, as in Score-CAM's energy-based pointing game, Wang et al. 2020) inside the
  lesion, and the pointing game (Zhang et al. 2016): does the map's maximum fall on the lesion, within a
  tolerance of a few pixels.
- Model randomization (Adebayo et al. 2018, "Sanity checks for saliency maps"): an explanation that
  barely changes when every weight is re-initialized does not depend on what the model learned. Compare
  the trained and randomized maps by Spearman rank correlation, and their lesion energy.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from scipy import ndimage, stats
from torch import nn

from covidlens.errors import CovidlensError

POINTING_TOLERANCE_PX = 15  # Zhang et al. 2016's tolerance, in pixels of their ~224 px inputs


def base_mask(heatmap: np.ndarray) -> np.ndarray:
    """Paper 000's mask: the pixels above the heatmap's mean + 1 standard deviation (population SD)."""
    values = np.asarray(heatmap, dtype=np.float64)
    return values > values.mean() + values.std()


def mean_intensity_in_mask(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """Mean heatmap value inside `mask`; NaN for an empty mask."""
    heatmap, mask = _pair(heatmap, mask)
    return float(heatmap[mask].mean()) if mask.any() else float("nan")


def base_mask_intensities(
    maps: Mapping[str, np.ndarray], base: str, images: Sequence[str], method: str
) -> pd.DataFrame:
    """Paper 000's comparison, one row per (image, model): the base model's mask applied to every model's map.

    `maps` holds, per model name, an array (N, *spatial) of normalized maps of the same N `images`.
    Columns: image, model, method, base_model, mask_pixels, mean_intensity.
    """
    if base not in maps:
        raise CovidlensError(f"base model {base!r} has no maps; models: {', '.join(maps)}")
    reference = np.asarray(maps[base])
    for name, array in maps.items():
        if np.shape(array) != reference.shape:
            raise CovidlensError(f"maps of {name!r} have shape {np.shape(array)}, the base's {reference.shape}")
    if len(images) != len(reference):
        raise CovidlensError(f"{len(images)} image names for {len(reference)} maps")
    rows = []
    for i, image in enumerate(images):
        mask = base_mask(reference[i])
        for name, array in maps.items():
            rows.append(
                {
                    "image": image,
                    "model": name,
                    "method": method,
                    "base_model": base,
                    "mask_pixels": int(mask.sum()),
                    "mean_intensity": mean_intensity_in_mask(array[i], mask),
                }
            )
    return pd.DataFrame(rows)


def summarize_intensities(table: pd.DataFrame) -> pd.DataFrame:
    """Mean ± SD (ddof 1) of the in-mask intensity per model and method: model, method, images, mean, sd."""
    grouped = table.groupby(["model", "method"], sort=False)["mean_intensity"]
    summary = grouped.agg(images="count", mean="mean", sd="std").reset_index()
    summary["mean ± SD"] = [f"{m:.3f} ± {s:.3f}" for m, s in zip(summary["mean"], summary["sd"], strict=True)]
    return summary


def lesion_energy_share(heatmap: np.ndarray, lesion_mask: np.ndarray) -> float:
    """Share of the map's energy (sum of its non-negative values) inside the lesion; NaN for an all-zero map.

    A uniform map scores the lesion's area fraction, so compare with `mask.mean()`.
    """
    heatmap, mask = _pair(heatmap, lesion_mask)
    if (heatmap < 0).any():
        raise ValueError("heatmap has negative values; energy shares need a non-negative map")
    total = heatmap.sum()
    return float(heatmap[mask].sum() / total) if total > 0 else float("nan")


def pointing_game_hit(
    heatmap: np.ndarray, lesion_mask: np.ndarray, tolerance_px: float = POINTING_TOLERANCE_PX
) -> bool:
    """True when the map's maximum lies within `tolerance_px` (Euclidean) of the lesion; a flat map points nowhere.

    Works for 2D maps and 3D volumes (distances in voxels). Ties take the first maximum in C order.
    """
    heatmap, mask = _pair(heatmap, lesion_mask)
    if not mask.any():
        raise ValueError("the lesion mask is empty: there is nothing to point at")
    if heatmap.max() <= heatmap.min():
        return False
    peak = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    distance = ndimage.distance_transform_edt(~mask)  # 0 on the lesion, else distance to its nearest pixel
    return bool(distance[peak] <= tolerance_px)


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps' values (SciPy); NaN when either map is constant."""
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"maps differ in size: {a.size} and {b.size} values")
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        return float(stats.spearmanr(a, b).statistic)


def randomized_model(model: nn.Module, seed: int = 0) -> nn.Module:
    """A copy of `model` with every module that has `reset_parameters()` re-initialized, seeded (Adebayo et al.).

    Batch-norm layers get their initial weights and running statistics too. The original is untouched.
    """
    clone = copy.deepcopy(model)
    devices = sorted({p.device.index or 0 for p in clone.parameters() if p.device.type == "cuda"})
    reset = 0
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(seed)
        for module in clone.modules():
            if callable(getattr(module, "reset_parameters", None)):
                module.reset_parameters()
                reset += 1
    if reset == 0:
        raise CovidlensError(f"{type(model).__name__} has no module with reset_parameters(); cannot randomize it")
    return clone


def localization_scores(heatmap: np.ndarray, lesion_mask: np.ndarray, tolerance_px: float) -> dict[str, float]:
    """Energy share in the lesion, pointing-game hit (1 / 0) and the lesion's area fraction for one map."""
    _, mask = _pair(heatmap, lesion_mask)
    return {
        "energy_share": lesion_energy_share(heatmap, mask),
        "pointing_hit": float(pointing_game_hit(heatmap, mask, tolerance_px)),
        "lesion_fraction": float(mask.mean()),
    }


def summarize_localization(table: pd.DataFrame) -> pd.DataFrame:
    """Per method and model (trained / randomized): images, mean energy share, lesion area share (what a
    uniform map scores), pointing-game hit rate, and the mean Spearman correlation of trained vs randomized."""
    grouped = table.groupby(["method", "model"], sort=False)
    return grouped.agg(
        images=("path", "count"),
        energy_share=("energy_share", "mean"),
        lesion_fraction=("lesion_fraction", "mean"),
        pointing_hit_rate=("pointing_hit", "mean"),
        spearman_trained_vs_randomized=("spearman_trained_vs_randomized", "mean"),
    ).reset_index()


def _pair(heatmap: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    heatmap, mask = np.asarray(heatmap, dtype=np.float64), np.asarray(mask).astype(bool)
    if heatmap.shape != mask.shape:
        raise ValueError(f"heatmap shape {heatmap.shape} differs from mask shape {mask.shape}")
    return heatmap, mask


LOCALIZATION_NOTE = (
    "energy in lesion: share of the map's sum inside the lesion mask (a uniform map scores the lesion area); "
    "pointing hits: share of maps whose maximum falls on the lesion; Spearman t-vs-r near 1 means the map "
    "ignores what the model learned."
)

INTENSITY_NOTE = (
    "Per image, the base model's ({base}) map gives the mask of its pixels above mean + 1 SD (paper 000); each "
    "value is the mean ± SD over images of a model's mean map intensity (0 to 1) inside that mask. The base model "
    "scores high by construction; a lower value means a model highlights other regions than the base model."
)


def localization_frame(summary: pd.DataFrame) -> pd.DataFrame:
    """`summarize_localization`'s table with display headers and rounded values, as the CLI and report show it."""
    return pd.DataFrame(
        {
            "method": summary["method"].astype(str),
            "model": summary["model"].astype(str),
            "images": summary["images"].map(lambda n: f"{int(n)}"),
            "energy in lesion": summary["energy_share"].map(lambda v: f"{v:.3f}"),
            "lesion area": summary["lesion_fraction"].map(lambda v: f"{v:.3f}"),
            "pointing hits": summary["pointing_hit_rate"].map(lambda v: f"{v:.2f}"),
            "Spearman t-vs-r": summary["spearman_trained_vs_randomized"].map(lambda v: f"{v:.2f}"),
        }
    )


def intensity_frame(summary: pd.DataFrame) -> pd.DataFrame:
    """A `summarize_intensities` table (with an optional `images_of` column) with display headers."""
    columns = {"model": "model", "method": "method", "images_of": "images of", "images": "images",
               "mean ± SD": "mean intensity in base mask (± SD)"}
    shown = summary[[c for c in columns if c in summary.columns]].rename(columns=columns)
    return shown.astype(str).reset_index(drop=True)
