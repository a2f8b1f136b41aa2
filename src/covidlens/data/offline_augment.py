"""Offline augmentation (paper 004, Section 2.1): each fold's training images multiplied once, before training.

Paper 004 trains on "x4" its training images (382 -> 1,528), augmented with a random rotation (0-90 degrees), a
random scale (1.1-1.3) and additive Gaussian noise. Here a fold's training rows get `factor - 1` augmented
copies each, drawn once from the fold's seed and kept in memory; `OfflineAugmentedImages` serves the base images
unchanged and appends the copies after them, so a copy is a new row whose label is its original's. Only rows
given as training rows are copied: validation and test rows are never augmented, and a copy's patient is always
a training patient of that fold.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from covidlens.config import OfflineAugmentConfig
from covidlens.data.cache import ImageSource

BATCH = 64  # copies transformed per grid_sample call


class OfflineAugmentedImages:
    """An image source: every row of `base`, then the augmented copies, copy j made from base row `origin[j]`."""

    def __init__(self, base: ImageSource, origin: np.ndarray, copies: np.ndarray) -> None:
        self.base = base
        self.origin = np.asarray(origin, dtype=np.int64)
        self.copies = copies
        self.n_base = len(base)

    def __len__(self) -> int:
        return self.n_base + len(self.origin)

    def get(self, indices: Sequence[int]) -> np.ndarray:
        """Rows below len(base) from the base source, the others from the copies, in the order asked."""
        indices = np.asarray(indices, dtype=np.int64)
        is_copy = indices >= self.n_base
        out = np.empty((len(indices), *self.copies.shape[1:]), dtype=np.uint8)
        if (~is_copy).any():
            out[~is_copy] = self.base.get(indices[~is_copy])
        if is_copy.any():
            out[is_copy] = self.copies[indices[is_copy] - self.n_base]
        return out

    def source_rows(self, indices: Sequence[int]) -> np.ndarray:
        """The base row each of `indices` is (a base row) or was copied from (a copy)."""
        indices = np.asarray(indices, dtype=np.int64)
        return np.where(indices < self.n_base, indices, self.origin[np.maximum(indices - self.n_base, 0)])


def copy_parameters(
    config: OfflineAugmentConfig, n_rows: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Angle (degrees), scale and whether noise is added, for each of the (factor - 1) x n_rows copies.

    Copies are ordered copy index first (all rows' first copies, then all second copies, ...). In `separate`
    mode copy k gets only the (k mod number of transformations)-th transformation switched on.
    """
    n_copies = config.factor - 1
    n = n_copies * n_rows
    angle = rng.uniform(*config.rotation, n)
    scale = rng.uniform(*config.scale, n)
    noise = np.full(n, config.noise_std > 0)
    if config.mode == "separate" and n:
        names = config.transformations
        dealt = np.repeat([names[k % len(names)] for k in range(n_copies)], n_rows)
        angle = np.where(dealt == "rotation", angle, 0.0)
        scale = np.where(dealt == "scale", scale, 1.0)
        noise = dealt == "noise"
    return angle, scale, noise


def affine_matrices(angle_deg: np.ndarray, scale: np.ndarray, height: int, width: int) -> torch.Tensor:
    """(n, 2, 3) grid_sample matrices that rotate each image by its angle about the centre and enlarge it by its
    scale, in pixel units (so non-square images are not sheared)."""
    angle = np.deg2rad(angle_deg)
    cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
    # Output pixel offsets (x, y) from the centre sample the input at R(angle) / scale of them; grid_sample's
    # normalised coordinates divide x by width / 2 and y by height / 2.
    theta = np.zeros((len(angle), 2, 3))
    theta[:, 0, 0] = cos
    theta[:, 0, 1] = -sin * height / width
    theta[:, 1, 0] = sin * width / height
    theta[:, 1, 1] = cos
    return torch.from_numpy(theta).float()


def transform_images(
    images: np.ndarray,
    angle_deg: np.ndarray,
    scale: np.ndarray,
    noise: np.ndarray,
    noise_std: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Rotate, scale (bilinear, zeros outside) and add Gaussian noise to uint8 images (N, H, W) or volumes
    (N, D, H, W); a volume's slices move alike. Returns uint8 of the same shape."""
    shape = images.shape
    planes = torch.from_numpy(images.reshape(shape[0], -1, shape[-2], shape[-1]).astype(np.float32))
    theta = affine_matrices(angle_deg, scale, shape[-2], shape[-1])
    grid = F.affine_grid(theta, list(planes.shape), align_corners=False)
    moved = F.grid_sample(planes, grid, mode="bilinear", padding_mode="zeros", align_corners=False).numpy()
    moved = moved.reshape(shape)
    if noise.any():
        gaussian = rng.standard_normal(moved.shape, dtype=np.float32) * np.float32(noise_std * 255.0)
        moved += gaussian * noise.reshape((-1,) + (1,) * (moved.ndim - 1))
    return np.clip(np.rint(moved), 0, 255).astype(np.uint8)


def augment_rows(
    base: ImageSource, rows: np.ndarray, config: OfflineAugmentConfig, seed: int
) -> OfflineAugmentedImages:
    """`base` with config.factor - 1 augmented copies of each of its `rows` appended, made once from `seed`."""
    rows = np.asarray(rows, dtype=np.int64)
    origin = np.tile(rows, max(config.factor - 1, 0))
    rng = np.random.default_rng(seed)
    angle, scale, noise = copy_parameters(config, len(rows), rng)
    sample_shape = base.get(rows[:1]).shape[1:] if len(rows) else base.get([0]).shape[1:]
    copies = np.empty((len(origin), *sample_shape), dtype=np.uint8)
    for start in range(0, len(origin), BATCH):
        part = slice(start, start + BATCH)
        copies[part] = transform_images(
            base.get(origin[part]), angle[part], scale[part], noise[part], config.noise_std, rng
        )
    return OfflineAugmentedImages(base, origin, copies)


def offline_training_set(
    base: ImageSource, labels: np.ndarray, train_rows: np.ndarray, config: OfflineAugmentConfig, seed: int
) -> tuple[ImageSource, np.ndarray, np.ndarray]:
    """The image source, labels and training rows a fold trains on: unchanged when offline augmentation is off,
    else the training rows plus their copies (appended after the base rows, each with its original's label)."""
    if not config.enabled:
        return base, labels, train_rows
    source = augment_rows(base, train_rows, config, seed)
    all_labels = np.concatenate([labels, labels[source.origin]])
    rows = np.concatenate([np.asarray(train_rows, dtype=np.int64), source.n_base + np.arange(len(source.origin))])
    return source, all_labels, rows
