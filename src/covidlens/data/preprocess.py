"""Decoding and preprocessing of 2D images: bit depth, HU windowing, grayscale, resize, channels."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from covidlens.config import DataConfig
from covidlens.data.xray_prep import RESIZE_METHODS, Threshold, clahe, method_target, output_shape
from covidlens.errors import CovidlensError

HU_SUFFIXES = (".dcm", ".nii", ".nii.gz")
DEFAULT_HU_WINDOW = (-600.0, 1500.0)  # lung window (level, width) for HU data when the recipe names none


def window_hu(values: np.ndarray, level: float, width: float) -> np.ndarray:
    """Map intensities in the window [level - width/2, level + width/2] to [0, 1], clipping outside."""
    if width <= 0:
        raise CovidlensError(f"window width {width} must be positive (e.g. a lung window is -600, 1500)")
    low = level - width / 2.0
    return np.clip((values.astype(np.float32) - low) / float(width), 0.0, 1.0)


def to_unit_range(image: np.ndarray, window: tuple[float, float] | None = None) -> np.ndarray:
    """Scale an 8-bit, 16-bit or float image to float32 in [0, 1].

    With a (level, width) window, the stored values are windowed whatever their bit depth (use it
    for HU arrays and raw 16-bit scans). Without one, 8-bit images are divided by 255 and deeper
    images are stretched between their own min and max, so 16-bit data is never truncated to its low
    byte; that stretch is per image, so give a window where intensities must compare across slices.
    """
    if window is not None:
        return window_hu(image, *window)
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    values = image.astype(np.float32)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros_like(values)
    return (values - low) / (high - low)


def to_gray(image: np.ndarray) -> np.ndarray:
    """Drop colour: RGB and RGBA (as decoded by OpenCV, BGR order) become one luminance channel."""
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] == 1:
        return image[:, :, 0]
    if image.ndim == 3 and image.shape[2] in (3, 4):
        code = cv2.COLOR_BGRA2GRAY if image.shape[2] == 4 else cv2.COLOR_BGR2GRAY
        return cv2.cvtColor(image, code)
    raise CovidlensError(f"unsupported image shape {image.shape}; expected gray, RGB or RGBA")


def is_hu_file(path: str | Path) -> bool:
    """True for files that hold Hounsfield units (DICOM slices, NIfTI volumes) rather than display pixels."""
    name = str(path).lower()
    return name.endswith(HU_SUFFIXES)


def read_slice(path: str | Path, frame: int | None = None) -> np.ndarray:
    """One 2D slice: a DICOM file or slice `frame` of a NIfTI volume in HU, else an image as stored."""
    if is_hu_file(path):
        from covidlens.data import medical_io  # pydicom / nibabel load only when such files are used

        if str(path).lower().endswith(".dcm"):
            return medical_io.read_dicom_hu(path)
        if frame is None or frame < 0:
            raise CovidlensError(f"{path}: a NIfTI volume needs a slice index; index the folder with covidlens")
        return medical_io.read_nifti_slice(path, frame)
    return read_image(path)


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file as stored (8 or 16 bit, gray or colour); raise CovidlensError if unreadable."""
    data = np.fromfile(str(path), dtype=np.uint8) if Path(path).is_file() else None
    if data is None:
        raise CovidlensError(f"{path}: no such image file")
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise CovidlensError(f"{path}: cannot decode this file as an image; remove it or re-export it")
    return image


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """Resize to size x size (area averaging when shrinking, bilinear when enlarging)."""
    if image.shape[0] == size and image.shape[1] == size:
        return image
    shrinking = image.shape[0] > size or image.shape[1] > size
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def load_gray_uint8(
    path: str | Path,
    size: int,
    window: tuple[float, float] | None = None,
    frame: int | None = None,
    lung_mask: bool = False,
) -> np.ndarray:
    """Decode, grayscale, window or scale to [0, 1], optionally keep only the lungs, resize, and quantise
    to uint8: one model-ready slice."""
    return to_uint8(resize_square(load_unit(path, window, frame, lung_mask), size))


def load_unit(
    path: str | Path,
    window: tuple[float, float] | None = None,
    frame: int | None = None,
    lung_mask: bool = False,
) -> np.ndarray:
    """One slice decoded, in gray, windowed or scaled to float [0, 1] at its stored size, optionally only the
    lungs kept. HU files without a window get the lung window DEFAULT_HU_WINDOW."""
    if window is None and is_hu_file(path):
        window = DEFAULT_HU_WINDOW
    unit = to_unit_range(to_gray(read_slice(path, frame)), window)
    if lung_mask:
        from covidlens.data.lungs import mask_outside_lungs

        unit = mask_outside_lungs(unit)
    return unit


def to_uint8(unit: np.ndarray) -> np.ndarray:
    """[0, 1] floats quantised to 0..255."""
    return np.round(unit * 255.0).astype(np.uint8)


def to_model_input(batch: np.ndarray, channels: int) -> np.ndarray:
    """uint8 (B, H, W) -> float32 (B, C, H, W) rescaled by 1/255, gray repeated to C channels."""
    scaled = batch.astype(np.float32)[:, None] / 255.0
    return np.repeat(scaled, channels, axis=1) if channels > 1 else scaled


@dataclass(frozen=True)
class Preprocessing:
    """Everything that turns one stored image into one model-ready uint8 array of `shape` (H, W).

    `resize` "square" stretches to size x size (the CT pipelines); "A".."D" are paper 003's resizing
    methods at `threshold` (computed from the training images). CLAHE, when `clahe_clip` is set, comes
    after resizing, as paper 003 post-processes every method's output.
    """

    size: int
    window: tuple[float, float] | None = None
    lung_mask: bool = False
    resize: str = "square"
    threshold: Threshold | None = None
    clahe_clip: float | None = None
    clahe_grid: tuple[int, int] = (8, 8)

    def __post_init__(self) -> None:
        if self.resize != "square" and self.threshold is None:
            raise CovidlensError(f"resizing method {self.resize} needs a threshold computed from the training images")

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) of every output array."""
        if self.resize == "square":
            return (self.size, self.size)
        return output_shape(self.resize, self.threshold)

    def load(self, path: str | Path, frame: int | None = None) -> np.ndarray:
        """Decode one image (slice `frame` of a volume file) into a uint8 array of `shape`."""
        unit = load_unit(path, self.window, frame, self.lung_mask)
        # square resizes the float image (the CT pipelines' cached bytes), A-D take 8-bit images
        image = to_uint8(self.fit(unit)) if self.resize == "square" else self.fit(to_uint8(unit))
        if self.clahe_clip is not None:
            image = clahe(image, self.clahe_clip, self.clahe_grid)
        return image

    def fit(self, image: np.ndarray) -> np.ndarray:
        """Bring a 2D image at its stored size to `shape` by this resizing (square, or method A-D: uint8 only)."""
        if self.resize == "square":
            return resize_square(image, self.size)
        return RESIZE_METHODS[self.resize](image, method_target(self.resize, self.threshold))

    def load_mask(self, path: str | Path) -> np.ndarray:
        """A binary mask file (nonzero inside) padded, stretched or cropped as its image is: a bool array of `shape`.

        A pixel is inside when most of the pixels averaged into it were (or, when enlarging, its interpolated
        value is at least half).
        """
        inside = to_gray(read_image(path)) > 0
        return self.fit(inside.astype(np.uint8) * 255) >= 128

    def enlarged(self, side: int) -> Preprocessing:
        """The same preprocessing with outputs scaled up until the longer side is at least `side` (for display):
        the same crop, padding and contrast, more pixels."""
        factor = side / max(self.shape)
        if factor <= 1:
            return self
        threshold = self.threshold.scaled(factor) if self.threshold is not None else None
        return replace(self, size=round(self.size * factor), threshold=threshold)

    def settings(self) -> dict[str, Any]:
        """The settings as plain JSON (a cache key part, and what a run stores)."""
        return {
            "size": self.size,
            "window": list(self.window) if self.window is not None else None,
            "lung_mask": self.lung_mask,
            "resize": self.resize,
            "threshold": self.threshold.as_dict() if self.threshold is not None else None,
            "clahe_clip": self.clahe_clip,
            "clahe_grid": list(self.clahe_grid),
        }


def preprocessing_of(data: DataConfig, threshold: Threshold | None = None) -> Preprocessing:
    """The Preprocessing a recipe's data section describes (A-D need the run's threshold)."""
    return Preprocessing(
        size=data.image_size,
        window=data.window,
        lung_mask=data.lung_mask,
        resize=data.resize,
        threshold=threshold if data.resize != "square" else None,
        clahe_clip=data.clahe_clip,
        clahe_grid=tuple(data.clahe_grid),
    )


def stored_size(path: str | Path, frame: int | None = None) -> tuple[int, int]:
    """(width, height) of a stored image as PIL reports it, from the header where the format allows."""
    if is_hu_file(path):
        rows, cols = read_slice(path, frame).shape[:2]
        return int(cols), int(rows)
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, UnidentifiedImageError):
        rows, cols = read_image(path).shape[:2]  # raises the one-line error for an unreadable file
        return int(cols), int(rows)
