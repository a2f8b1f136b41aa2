"""Paper 003's chest X-ray pre-processing: CLAHE and the resizing Methods A-D with their threshold sizes.

Section II of the paper resizes every training and testing image by one of four methods, each "tried with
three different conditions for *threshold* size": the maximum or the minimum of the training images, or "a
preset size of 200 pixels, maintaining aspect ratio"; "images from all methods were post-processed through
CLAHE". Methods A and D work on a square of side T (the *threshold size*); Methods B and C on the *threshold
dimensions* (a width and a height). `compute_threshold` turns the training images' sizes into both, once per
run, and `Threshold.as_dict` lets the run store them so test images get exactly the training geometry.

Everything here is a pure function of a 2D uint8 array; reading files and the recipe wiring live elsewhere.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from covidlens.errors import CovidlensError

PRESET_SIZE = 200  # paper 003: "a preset size of 200 pixels, maintaining aspect ratio"
DEFAULT_CLAHE_GRID = (8, 8)  # OpenCV's default tile grid; paper 003 names no CLAHE parameters
THRESHOLD_KINDS = ("max", "min", "preset")


# --------------------------------------------------------------------------------------------- CLAHE


def clahe(image: np.ndarray, clip_limit: float, tile_grid: tuple[int, int]) -> np.ndarray:
    """Contrast-limited adaptive histogram equalization of a gray 8- or 16-bit image (OpenCV's CLAHE).

    `clip_limit` is OpenCV's clipLimit (a multiple of the mean histogram bin height, > 0) and `tile_grid`
    its tileGridSize as (columns, rows) of tiles. 16-bit images are equalized over their 65536 levels by
    OpenCV itself and stay uint16; other dtypes are refused rather than silently truncated.
    """
    gray = _gray_2d(image, "CLAHE input")
    if gray.dtype not in (np.uint8, np.uint16):
        raise CovidlensError(
            f"CLAHE input has dtype {gray.dtype}; give an 8-bit or 16-bit gray image "
            "(scale floats to 0-255 and convert with .astype(np.uint8) first)"
        )
    limit = _clip_limit(clip_limit)
    grid = _tile_grid(tile_grid)
    return cv2.createCLAHE(clipLimit=limit, tileGridSize=grid).apply(np.ascontiguousarray(gray))


def _clip_limit(value: float) -> float:
    """A finite, positive CLAHE clip limit as float, else CovidlensError."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise CovidlensError(f"CLAHE clip limit {value!r} must be a positive number (e.g. 2.0)")
    limit = float(value)
    if not math.isfinite(limit) or limit <= 0:
        raise CovidlensError(f"CLAHE clip limit {value!r} must be a positive, finite number (e.g. 2.0)")
    return limit


def _tile_grid(value: Sequence[int]) -> tuple[int, int]:
    """Two positive integers (columns, rows of tiles), else CovidlensError."""
    try:
        items = list(value)
    except TypeError:
        items = []
    if len(items) != 2 or not all(_is_int(v) and int(v) >= 1 for v in items):
        raise CovidlensError(f"CLAHE tile grid {value!r} must be two positive integers, e.g. (8, 8)")
    return int(items[0]), int(items[1])


# ----------------------------------------------------------------------------------------- thresholds


@dataclass(frozen=True)
class Threshold:
    """The run's threshold geometry: square size T (Methods A, D) and dimensions width x height (B, C)."""

    kind: str
    width: int
    height: int
    size: int

    def __post_init__(self) -> None:
        """Refuse an unknown kind, non-positive sides, or a size that contradicts the kind."""
        if self.kind not in THRESHOLD_KINDS:
            raise CovidlensError(f"threshold kind {self.kind!r} is unknown; use one of {', '.join(THRESHOLD_KINDS)}")
        for name in ("width", "height", "size"):
            value = getattr(self, name)
            if not _is_int(value) or int(value) < 1:
                raise CovidlensError(f"threshold {name} {value!r} must be a positive integer")
        pick = {"max": max, "min": min}.get(self.kind)
        if pick is not None and self.size != pick(self.width, self.height):
            raise CovidlensError(
                f"threshold size {self.size} must be the {self.kind} of width {self.width} and height "
                f"{self.height} for kind {self.kind!r}; recompute it with compute_threshold"
            )

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable form, for a run's stored config."""
        return {"kind": self.kind, "width": int(self.width), "height": int(self.height), "size": int(self.size)}

    def scaled(self, factor: float) -> Threshold:
        """The same geometry `factor` times larger (each side rounded; max and min stay consistent)."""
        return Threshold(self.kind, *(max(1, round(value * factor)) for value in (self.width, self.height, self.size)))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Threshold:
        """Rebuild from `as_dict` output; missing or extra keys are errors."""
        if not isinstance(data, Mapping):
            raise CovidlensError(f"threshold {data!r} must be a mapping with kind, width, height and size")
        expected = {"kind", "width", "height", "size"}
        if set(data) != expected:
            raise CovidlensError(
                f"threshold keys {sorted(data)} must be exactly {sorted(expected)}; store Threshold.as_dict()"
            )
        return cls(kind=data["kind"], width=data["width"], height=data["height"], size=data["size"])


def compute_threshold(sizes: Sequence[tuple[int, int]], kind: str, preset: int = PRESET_SIZE) -> Threshold:
    """The threshold from the TRAINING images' sizes, given as (width, height) pairs (PIL's `Image.size`).

    Our reading of paper 003, Section II ("we found the training image with the threshold width and height.
    Then, we took either max{width, height} or min{width, height} of the image, and called it the threshold
    size"): the threshold is one actual training image, not a per-axis max/min over different images.
      - "max": the training image with the largest max{w, h} (ties: larger area, then the first listed);
        T = its max{w, h}, and its (w, h) are the threshold dimensions.
      - "min": the training image with the smallest min{w, h} (ties: smaller area, then the first listed);
        T = its min{w, h}, and its (w, h) are the threshold dimensions.
      - "preset": T = `preset` (200 in the paper, "maintaining aspect ratio"). The dimensions follow the
        CORONet section ("stretched one side to 200 pixels and the other side proportional to the ratio
        between the mean height and width of all images"): the longer of the mean width / mean height gets
        `preset` pixels and the other side preset x (shorter mean / longer mean), rounded.
    Pass training sizes only: test images must not influence the geometry.
    """
    if kind not in THRESHOLD_KINDS:
        raise CovidlensError(f"threshold kind {kind!r} is unknown; use one of {', '.join(THRESHOLD_KINDS)}")
    checked = [_size_pair(pair, index) for index, pair in enumerate(sizes)]
    if not checked:
        raise CovidlensError("no training image sizes given; the threshold is computed from the training images")
    if kind == "max":
        width, height = max(checked, key=lambda wh: (max(wh), wh[0] * wh[1]))
        return Threshold(kind="max", width=width, height=height, size=max(width, height))
    if kind == "min":
        width, height = min(checked, key=lambda wh: (min(wh), wh[0] * wh[1]))
        return Threshold(kind="min", width=width, height=height, size=min(width, height))
    if not _is_int(preset) or int(preset) < 1:
        raise CovidlensError(f"preset threshold size {preset!r} must be a positive integer (the paper uses 200)")
    mean_width = float(np.mean([w for w, _ in checked]))
    mean_height = float(np.mean([h for _, h in checked]))
    if mean_width >= mean_height:
        width, height = int(preset), max(1, round(preset * mean_height / mean_width))
    else:
        width, height = max(1, round(preset * mean_width / mean_height)), int(preset)
    return Threshold(kind="preset", width=width, height=height, size=int(preset))


def _size_pair(pair: tuple[int, int], index: int) -> tuple[int, int]:
    """One (width, height) pair of positive integers, else CovidlensError naming its position."""
    try:
        width, height = pair
    except (TypeError, ValueError):
        raise CovidlensError(f"training size #{index} {pair!r} must be a (width, height) pair") from None
    if not (_is_int(width) and _is_int(height)) or int(width) < 1 or int(height) < 1:
        raise CovidlensError(f"training size #{index} {pair!r} must be two positive integers (width, height)")
    return int(width), int(height)


# ---------------------------------------------------------------------------------- resizing methods


def resize_method_a(image: np.ndarray, size: int) -> np.ndarray:
    """Method A: fit into a size x size square keeping the aspect ratio, then pad black (centred).

    Paper 003: "All training and testing images were subsequently resized to the threshold size, maintaining
    their aspect ratios. The empty spaces in each image were filled with black pixels." The longer side
    becomes `size`; the shorter side's leftover is split evenly (an odd pixel goes to the bottom / right).
    """
    side = _positive_int(size, "Method A threshold size")
    return _fit_and_pad(_gray_uint8(image), side, side)


def resize_method_b(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Method B: stretch to the threshold dimensions (height, width), ignoring the aspect ratio.

    Paper 003: "we applied the threshold dimensions to all training and testing images, ignoring aspect
    ratio."
    """
    height, width = _shape(shape, "Method B threshold dimensions")
    return _resize(_gray_uint8(image), height, width)


def resize_method_c(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Method C: cover the threshold dimensions (height, width) keeping the aspect ratio, centre-crop the rest.

    Paper 003: "As in method B, we applied the threshold dimensions to all training and testing images, this
    time keeping each image's aspect ratio", and its results: "Methods C and D cropped the images, and thus
    lost potentially valuable information". So C is D with the threshold image's width and height in place
    of D's square: the image is scaled until it covers both, and the overflow is cut evenly from both ends.
    """
    height, width = _shape(shape, "Method C threshold dimensions")
    return _cover_and_crop(_gray_uint8(image), height, width)


def resize_method_d(image: np.ndarray, size: int) -> np.ndarray:
    """Method D: cover a size x size square keeping the aspect ratio, then centre-crop the overflow.

    Paper 003: "All training and testing images were subsequently resized to the threshold size while
    covering the square frame and maintaining their aspect ratios." The shorter side becomes `size`; the
    longer side's overflow is cut evenly from both ends (an odd pixel from the bottom / right).
    """
    side = _positive_int(size, "Method D threshold size")
    return _cover_and_crop(_gray_uint8(image), side, side)


def _cover_and_crop(gray: np.ndarray, height: int, width: int) -> np.ndarray:
    """Scale `gray` keeping its aspect ratio until it covers height x width, then cut the overflow centred."""
    rows, cols = gray.shape
    scale = max(height / rows, width / cols)
    new_rows = max(height, round(rows * scale))
    new_cols = max(width, round(cols * scale))
    resized = _resize(gray, new_rows, new_cols)
    top = (new_rows - height) // 2
    left = (new_cols - width) // 2
    return np.ascontiguousarray(resized[top : top + height, left : left + width])


RESIZE_METHODS: dict[str, Callable[[np.ndarray, Any], np.ndarray]] = {
    "A": resize_method_a,
    "B": resize_method_b,
    "C": resize_method_c,
    "D": resize_method_d,
}


def method_target(method: str, threshold: Threshold) -> int | tuple[int, int]:
    """The second argument of RESIZE_METHODS[method]: T for A and D, (height, width) for B and C."""
    key = _method_key(method)
    if key in ("A", "D"):
        return threshold.size
    return threshold.height, threshold.width


def output_shape(method: str, threshold: Threshold) -> tuple[int, int]:
    """The (height, width) that `method` produces under `threshold`, for every input image."""
    target = method_target(method, threshold)
    return (target, target) if isinstance(target, int) else target


def prepare_xray(
    image: np.ndarray,
    method: str,
    threshold: Threshold,
    clahe_clip: float | None = None,
    clahe_grid: tuple[int, int] = DEFAULT_CLAHE_GRID,
) -> np.ndarray:
    """Resize a gray uint8 X-ray by paper 003's `method` under `threshold`, then CLAHE if a clip is given.

    The paper applies CLAHE after resizing ("images from all methods were post-processed through CLAHE"),
    so for Methods A and C the black padding takes part in the tile histograms, as it did there.
    """
    if not isinstance(threshold, Threshold):
        raise CovidlensError(f"threshold {threshold!r} must be a Threshold; build it with compute_threshold")
    key = _method_key(method)
    resized = RESIZE_METHODS[key](image, method_target(key, threshold))
    if clahe_clip is None:
        return resized
    return clahe(resized, clahe_clip, clahe_grid)


def _method_key(method: str) -> str:
    """Upper-case method letter A-D, else CovidlensError listing the methods."""
    key = method.upper() if isinstance(method, str) else None
    if key not in RESIZE_METHODS:
        raise CovidlensError(f"resizing method {method!r} is unknown; use one of {', '.join(RESIZE_METHODS)}")
    return key


# ------------------------------------------------------------------------------------------- helpers


def _is_int(value: object) -> bool:
    """True for ints (numpy included), False for bools and everything else."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _positive_int(value: object, what: str) -> int:
    """A positive integer, else CovidlensError naming `what`."""
    if not _is_int(value) or int(value) < 1:
        raise CovidlensError(f"{what} {value!r} must be a positive integer number of pixels")
    return int(value)


def _shape(value: object, what: str) -> tuple[int, int]:
    """A (height, width) pair of positive integers, else CovidlensError naming `what`."""
    try:
        rows, cols = value  # type: ignore[misc]
    except (TypeError, ValueError):
        raise CovidlensError(f"{what} {value!r} must be a (height, width) pair of positive integers") from None
    return _positive_int(rows, what + " height"), _positive_int(cols, what + " width")


def _gray_2d(image: np.ndarray, what: str) -> np.ndarray:
    """The 2D view of a gray image (H x W or H x W x 1), else CovidlensError."""
    if not isinstance(image, np.ndarray):
        raise CovidlensError(f"{what} must be a numpy array, got {type(image).__name__}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim != 2 or image.shape[0] < 1 or image.shape[1] < 1:
        raise CovidlensError(
            f"{what} has shape {image.shape}; give one gray channel (convert colour with preprocess.to_gray)"
        )
    return image


def _gray_uint8(image: np.ndarray) -> np.ndarray:
    """A contiguous 2D uint8 image, else CovidlensError saying how to convert."""
    gray = _gray_2d(image, "X-ray image")
    if gray.dtype != np.uint8:
        raise CovidlensError(
            f"X-ray image has dtype {gray.dtype}; the resizing methods take 8-bit gray images "
            "(scale to [0, 1] with preprocess.to_unit_range, multiply by 255 and round to uint8)"
        )
    return np.ascontiguousarray(gray)


def _resize(image: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Resize to rows x cols: area averaging when no side grows, bilinear when any side grows."""
    if image.shape == (rows, cols):
        return image.copy()
    shrinking = rows <= image.shape[0] and cols <= image.shape[1]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(image, (cols, rows), interpolation=interpolation)


def _fit_and_pad(image: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Scale to fit inside rows x cols keeping the aspect ratio, centred on a black canvas."""
    in_rows, in_cols = image.shape
    scale = min(rows / in_rows, cols / in_cols)
    new_rows = min(rows, max(1, round(in_rows * scale)))
    new_cols = min(cols, max(1, round(in_cols * scale)))
    canvas = np.zeros((rows, cols), dtype=np.uint8)
    top = (rows - new_rows) // 2
    left = (cols - new_cols) // 2
    canvas[top : top + new_rows, left : left + new_cols] = _resize(image, new_rows, new_cols)
    return canvas
