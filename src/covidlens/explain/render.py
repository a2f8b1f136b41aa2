"""Heatmap overlays as PNG: an image in gray with its map blended in jet, a colour bar and a titled prediction.

A volume gets one overlay per slice and a montage of all its slices with one shared colour bar. Figures
are matplotlib `Figure` objects (no pyplot state, the Agg canvas), written atomically.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from covidlens import atomic

CMAP = "jet"
ALPHA = 0.45  # heatmap opacity over the gray image
DPI = 110
TILE_INCHES = 2.9  # one slice in a montage
MONTAGE_COLUMNS = 4
COLORBAR_LABEL = "importance (normalized: 0 low, 1 high)"
OUTLINE_NOTE = "\nwhite outline: lesion mask"
GALLERY_TILE_INCHES = 2.6  # one image or overlay in a gallery
GALLERY_COLORBAR_INCHES = 1.0
GALLERY_TITLE_INCHES = 0.8


def overlay_title(
    name: str, predicted: str, probability: float, target: str, method: str, layer: str, max_chars: int = 64
) -> str:
    """Three lines: the image, the prediction with its probability and the class explained, the method and layer."""
    shown = name if len(name) <= max_chars else "…" + name[-(max_chars - 1) :]
    return f"{shown}\npredicted {predicted} (p = {probability:.2f}) · map for {target}\n{method} at {layer}"


def resize_heatmap(heatmap: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A 2D map resized (bilinear) to `shape` (rows, columns) and clipped to [0, 1]."""
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if heatmap.shape != tuple(shape):
        heatmap = cv2.resize(heatmap, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    return np.clip(heatmap, 0.0, 1.0)


def draw_overlay(
    ax,
    image: np.ndarray,
    heatmap: np.ndarray | None,
    alpha: float = ALPHA,
    label: str | None = None,
    outline: np.ndarray | None = None,
) -> None:
    """Draw a gray image (uint8 or [0, 1]) and its [0, 1] heatmap (any size; None: the image alone) on `ax`,
    without ticks; `outline`, a boolean mask of the image's shape (a known lesion), is drawn as a white contour."""
    image = np.asarray(image)
    top = 255 if image.dtype == np.uint8 else 1.0
    ax.imshow(image, cmap="gray", vmin=0, vmax=top, interpolation="nearest")
    if heatmap is not None:
        ax.imshow(resize_heatmap(heatmap, image.shape[:2]), cmap=colormaps[CMAP], vmin=0.0, vmax=1.0, alpha=alpha)
    if outline is not None and outline.any():
        ax.contour(outline.astype(np.float32), levels=[0.5], colors="white", linewidths=1.2)
    ax.set_xticks([])
    ax.set_yticks([])
    if label:
        ax.set_title(label, fontsize=10)


def _colorbar(figure: Figure, axes) -> None:
    mappable = ScalarMappable(norm=Normalize(0.0, 1.0), cmap=colormaps[CMAP])
    bar = figure.colorbar(mappable, ax=axes, fraction=0.046, pad=0.03)
    bar.set_label(COLORBAR_LABEL, fontsize=9)
    bar.ax.tick_params(labelsize=8)


def save_overlay(
    path: str | Path,
    image: np.ndarray,
    heatmap: np.ndarray,
    title: str,
    outline: np.ndarray | None = None,
    alpha: float = ALPHA,
) -> Path:
    """Write one image with its heatmap blended in, a colour bar and `title` as a PNG (`outline`: a lesion)."""
    figure = Figure(figsize=(6.2, 6.2), dpi=DPI, layout="constrained")
    ax = figure.add_subplot()
    draw_overlay(ax, image, heatmap, alpha, outline=outline)
    _colorbar(figure, ax)
    figure.suptitle(title + (OUTLINE_NOTE if outline is not None and outline.any() else ""), fontsize=11)
    return atomic.write_with(path, lambda tmp: figure.savefig(tmp, format="png", dpi=DPI))


def save_montage(
    path: str | Path,
    slices: np.ndarray,
    heatmaps: np.ndarray,
    title: str,
    labels: Sequence[str] | None = None,
    outlines: np.ndarray | None = None,
    alpha: float = ALPHA,
) -> Path:
    """Write every slice (D, H, W) of a volume with its heatmap (D, h, w) in a grid, one colour bar, as a PNG
    (`outlines`: lesion masks, (D, H, W))."""
    if len(slices) != len(heatmaps):
        raise ValueError(f"{len(slices)} slices but {len(heatmaps)} heatmaps")
    labels = list(labels) if labels is not None else [f"slice {i}" for i in range(len(slices))]
    columns = min(len(slices), MONTAGE_COLUMNS)
    rows = math.ceil(len(slices) / columns)
    figure = Figure(
        figsize=(columns * TILE_INCHES + 1.2, rows * TILE_INCHES + 1.0), dpi=DPI, layout="constrained"
    )
    axes = figure.subplots(rows, columns, squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i < len(slices):
            draw_overlay(ax, slices[i], heatmaps[i], alpha, labels[i], None if outlines is None else outlines[i])
        else:
            ax.axis("off")
    _colorbar(figure, axes)
    figure.suptitle(title + (OUTLINE_NOTE if outlines is not None and outlines.any() else ""), fontsize=11)
    return atomic.write_with(path, lambda tmp: figure.savefig(tmp, format="png", dpi=DPI))


@dataclass
class GalleryTile:
    """One cell of a gallery: an image, its heatmap (None: the image alone), a title and an optional lesion."""

    image: np.ndarray
    heatmap: np.ndarray | None
    title: str
    outline: np.ndarray | None = None


@dataclass
class GalleryRow:
    """One row of a gallery: a label on its left and its tiles (the image, then one overlay per model)."""

    label: str
    tiles: list[GalleryTile]


def gallery_size(rows: int, columns: int) -> tuple[float, float]:
    """A gallery figure's size in inches: tiles, the colour bar and the title."""
    return (
        columns * GALLERY_TILE_INCHES + GALLERY_COLORBAR_INCHES,
        rows * GALLERY_TILE_INCHES + GALLERY_TITLE_INCHES,
    )


def save_gallery(path: str | Path, rows: Sequence[GalleryRow], title: str, alpha: float = ALPHA) -> tuple[int, int]:
    """Write rows of images with one overlay per model (paper 000's Fig. 1) as a PNG; return (rows, columns)."""
    if not rows:
        raise ValueError("a gallery needs at least one row")
    columns = max(len(row.tiles) for row in rows)
    figure = Figure(figsize=gallery_size(len(rows), columns), dpi=DPI, layout="constrained")
    axes = figure.subplots(len(rows), columns, squeeze=False)
    for row, row_axes in zip(rows, axes, strict=True):
        for ax, tile in zip(row_axes, [*row.tiles, *[None] * (columns - len(row.tiles))], strict=True):
            if tile is None:
                ax.axis("off")
            else:
                draw_overlay(ax, tile.image, tile.heatmap, alpha, tile.title, tile.outline)
        row_axes[0].set_ylabel(row.label, fontsize=11, fontweight="bold")
    _colorbar(figure, axes)
    figure.suptitle(title, fontsize=12)
    atomic.write_with(path, lambda tmp: figure.savefig(tmp, format="png", dpi=DPI))
    return len(rows), columns
