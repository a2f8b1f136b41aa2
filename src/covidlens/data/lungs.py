"""Classical lung segmentation of a lung-windowed CT slice: threshold, connected components, morphology.

Paper 002 compares complete CT slices with lung-segmented ones (everything outside the lungs black).
`mask_outside_lungs` makes that variant from a complete slice (`data.lung_mask: true` in a recipe).
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage

from covidlens.data.preprocess import DEFAULT_HU_WINDOW
from covidlens.errors import CovidlensError

LUNG_THRESHOLD_HU = -320.0  # the classical fixed lung / soft-tissue cut, for callers who know their HU window
OTSU_SHIFT = 0.5  # the default cut lies halfway from Otsu's threshold to the bright (tissue) class mean
MIN_CONTRAST = 0.15  # dark and bright class means closer than this (unit range): no air in the slice
MIN_AREA_FRACTION = 0.002  # dark components smaller than this share of the image are not lung
CLOSE_RADIUS_FRACTION = 0.02  # closing disk radius as a share of the image side (10 px at 512 px)
MAX_LUNGS = 2
FACING_MIDLINE_COS = 0.3  # a hull defect within 72 degrees of medial (seen from its lung's centre) is anatomy
MAX_DEFECT_FRACTION = 0.4  # so is a hull defect larger than this share of the hull (a diaphragm dome)
MIN_DEFECT_FRACTION = 0.01  # smaller hull defects are pixel steps of the outline and rib impressions


def hu_to_unit(hu: float, window: tuple[float, float] = DEFAULT_HU_WINDOW) -> float:
    """Where `hu` lands in [0, 1] after windowing with (level, width), as `window_hu` maps it."""
    level, width = window
    if width <= 0:
        raise CovidlensError(f"window width {width} must be positive (e.g. a lung window is -600, 1500)")
    return float(np.clip((hu - (level - width / 2.0)) / width, 0.0, 1.0))


LUNG_THRESHOLD_UNIT = hu_to_unit(LUNG_THRESHOLD_HU)  # about 0.687 in the default lung window


def default_threshold(unit: np.ndarray) -> float | None:
    """The default dark / bright cut of a [0, 1] slice, or None where the slice holds no air-tissue contrast.

    Otsu's threshold splits the slice into its dark (air, lung) and bright (tissue, bone) classes; the
    cut is then moved OTSU_SHIFT of the way from Otsu's value toward the bright class mean. Plain Otsu
    lies near -500 HU in a -600 / 1500 lung window and cuts ground-glass opacities (-700 .. -300 HU,
    denser where they overlie the dependent lung) at their cores; the shifted cut lies near -250 HU on
    the synthetic slices, above the classical -320 HU (LUNG_THRESHOLD_HU), so dense ground glass stays
    lung, yet well below fat (-100 HU) and muscle, so the chest wall stays out. Unlike a fixed unit
    threshold, it follows the data: PNG slices exported with another, unknown lung window are cut at
    the same place relative to their own air and tissue.
    """
    image = np.round(np.clip(unit, 0.0, 1.0) * 255.0).astype(np.uint8)
    otsu, _ = cv2.threshold(image, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    dark = image <= otsu
    if dark.all() or not dark.any():
        return None
    dark_mean = float(image[dark].mean()) / 255.0
    bright_mean = float(image[~dark].mean()) / 255.0
    if bright_mean - dark_mean < MIN_CONTRAST:
        return None
    cut = (otsu + 0.5) / 255.0
    return cut + OTSU_SHIFT * (bright_mean - cut)


def segment_lungs(unit: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Boolean lung mask of a 2D [0, 1] CT slice with air dark (a lung-windowed slice).

    Dark pixels (below `threshold` as given, else `default_threshold`) are grouped into 4-connected
    components; those touching the image border (air around the body, under the table) go, and the
    largest two stay if they cover MIN_AREA_FRACTION of the image (the trachea and main bronchi are
    smaller). A closing with a disk of CLOSE_RADIUS_FRACTION of the side rejoins vessels, nodules and
    lesions at the lung edge, and holes are filled (vessels, lesions inside the lung); dark fragments
    within that radius (lung cut off by hilar vessels) join. Last, lesions against the chest wall
    (consolidation reaching the pleura) come back from each lung's convex hull, split at the body's
    midline so lungs touching in front of the heart stay two: a hull defect is added unless it faces
    the mediastinum or covers MAX_DEFECT_FRACTION of the hull, where the concavity is anatomy (heart,
    hilum, diaphragm dome), or is under MIN_DEFECT_FRACTION (outline steps, ribs). A slice without
    lungs (no air-tissue contrast, or no dark region inside the body) gives an all-False mask.
    """
    image = _check_unit(unit)
    empty = np.zeros(image.shape, dtype=bool)
    cut = default_threshold(image) if threshold is None else float(threshold)
    if cut is None:
        return empty
    dark = (image < cut).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(dark, connectivity=4)
    height, width = image.shape
    min_area = MIN_AREA_FRACTION * height * width
    inside = []  # (area, label) of dark components that do not touch the border
    for label in range(1, count):
        x, y, w, h, area = stats[label]
        if not (x == 0 or y == 0 or x + w == width or y + h == height):
            inside.append((int(area), label))
    inside.sort(reverse=True)
    keep = [label for area, label in inside[:MAX_LUNGS] if area >= min_area]
    if not keep:
        return empty
    radius = max(1, round(CLOSE_RADIUS_FRACTION * np.sqrt(height * width)))
    mask = _close_and_fill(np.isin(labels, keep), radius)
    # lung fragments cut off by vessels or bronchi at the hilum lie within `radius` of the lungs: take them too
    touching = np.unique(labels[cv2.dilate(mask.astype(np.uint8), _disk(radius)).astype(bool)])
    fragments = [label for _, label in inside[MAX_LUNGS:] if label in set(touching.tolist())]
    if fragments:
        mask = _close_and_fill(mask | np.isin(labels, fragments), radius)
    border = np.ones(count, dtype=bool)
    border[[label for _, label in inside]] = False
    border[0] = False  # label 0: the bright pixels
    body_columns = np.nonzero(~border[labels])[1]  # everything but the air around the body
    return _add_pleural_defects(mask, float(body_columns.mean()))


def mask_outside_lungs(unit: np.ndarray) -> np.ndarray:
    """The slice (float32) with every pixel outside `segment_lungs(unit)` set to 0."""
    image = _check_unit(unit)
    return np.where(segment_lungs(image), image, np.float32(0.0)).astype(np.float32)


def _check_unit(unit: np.ndarray) -> np.ndarray:
    image = np.asarray(unit)
    if image.ndim != 2 or min(image.shape) < 2:
        raise CovidlensError(f"lung segmentation needs one 2D gray slice, got an array of shape {image.shape}")
    image = image.astype(np.float32, copy=False)
    if not np.isfinite(image).all() or image.min() < -1e-6 or image.max() > 1.0 + 1e-6:
        raise CovidlensError(
            "lung segmentation needs a slice scaled to [0, 1] (air dark); scale it with "
            "covidlens.data.preprocess.to_unit_range (8-bit images: divide by 255) or window_hu first"
        )
    return image


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def _close_and_fill(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary closing with a disk (padded, so the image border neither adds nor removes lung), holes filled."""
    pad = radius + 1
    closed = cv2.morphologyEx(np.pad(mask.astype(np.uint8), pad), cv2.MORPH_CLOSE, _disk(radius))
    return ndimage.binary_fill_holes(closed[pad:-pad, pad:-pad].astype(bool))


def _add_pleural_defects(mask: np.ndarray, midline: float) -> np.ndarray:
    """Add the convex-hull defects of each lung (each side of `midline`) that do not face the midline."""
    out = mask.copy()
    columns = np.arange(mask.shape[1])[None, :]
    for lateral, side in ((-1.0, columns < midline), (1.0, columns >= midline)):
        count, labels, _, centroids = cv2.connectedComponentsWithStats((mask & side).astype(np.uint8), connectivity=8)
        for label in range(1, count):
            lung = (labels == label).astype(np.uint8)
            contours, _ = cv2.findContours(lung, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            hull = np.zeros_like(lung)
            cv2.fillPoly(hull, [cv2.convexHull(np.vstack(contours))], 1)
            defects = (hull.astype(bool) & ~mask).astype(np.uint8)
            n, parts, stats, part_centroids = cv2.connectedComponentsWithStats(defects, connectivity=4)
            hull_area = int(hull.sum())
            for part in range(1, n):
                dx, dy = part_centroids[part] - centroids[label]
                norm = float(np.hypot(dx, dy))
                facing_midline = norm > 0.0 and lateral * dx / norm <= -FACING_MIDLINE_COS
                area = stats[part, cv2.CC_STAT_AREA] / hull_area
                if MIN_DEFECT_FRACTION <= area < MAX_DEFECT_FRACTION and not facing_midline:
                    out |= parts == part
    return out
