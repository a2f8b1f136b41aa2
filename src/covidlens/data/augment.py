"""Per-sample random affine augmentation of a batch, in one grid_sample call."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from covidlens.config import AugmentConfig


def _uniform(low: float, high: float, n: int, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def random_affine_matrices(config: AugmentConfig, n: int, generator: torch.Generator) -> torch.Tensor:
    """Draw n affine matrices (n, 2, 3) in the normalised [-1, 1] grid coordinates of grid_sample."""
    angle = torch.deg2rad(_uniform(*config.rotation, n, generator))
    zoom_x = _uniform(*config.zoom, n, generator)
    zoom_y = _uniform(*config.zoom, n, generator)
    shear = _uniform(-config.shear, config.shear, n, generator)
    shift_x = _uniform(-config.width_shift, config.width_shift, n, generator) * 2.0
    shift_y = _uniform(-config.height_shift, config.height_shift, n, generator) * 2.0
    flip_x = (
        torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0) if config.hflip else torch.ones(n)
    )
    flip_y = (
        torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0) if config.vflip else torch.ones(n)
    )
    cos, sin = torch.cos(angle), torch.sin(angle)
    rotation = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    shearing = torch.zeros(n, 2, 2)
    shearing[:, 0, 0] = 1.0
    shearing[:, 0, 1] = shear
    shearing[:, 1, 1] = 1.0
    # As in Keras, the zoom factors scale output to input coordinates: > 1 samples a larger area (zooms
    # out), and width and height are drawn independently.
    scaling = torch.diag_embed(torch.stack([flip_x * zoom_x, flip_y * zoom_y], -1))
    linear = rotation @ shearing @ scaling
    return torch.cat([linear, torch.stack([shift_x, shift_y], -1)[:, :, None]], dim=2)


def augment_batch(images: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Apply an independent random affine transform to each image of a (B, C, H, W) batch.

    A volume batch (B, C, D, H, W) gets one in-plane transform per volume, the same for all its
    slices. Pixels that come from outside the image take the nearest border value, as Keras'
    ImageDataGenerator does with its default fill_mode="nearest".
    """
    if not config.enabled:
        return images
    shape = images.shape
    planes = images.reshape(shape[0], -1, shape[-2], shape[-1])
    theta = random_affine_matrices(config, shape[0], generator).to(images.dtype)
    grid = F.affine_grid(theta, list(planes.shape), align_corners=False)
    moved = F.grid_sample(planes, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return moved.reshape(shape)
