import torch

from covidlens.config import AugmentConfig
from covidlens.data.augment import augment_batch, random_affine_matrices


def test_disabled_augmentation_is_identity():
    images = torch.rand(4, 1, 16, 16)
    assert augment_batch(images, AugmentConfig(), torch.Generator().manual_seed(0)) is images


def test_parameters_stay_in_their_ranges():
    config = AugmentConfig(rotation=(0, 360), zoom=(0.85, 1.15), width_shift=0.15, height_shift=0.15)
    theta = random_affine_matrices(config, 2000, torch.Generator().manual_seed(0))
    area = torch.linalg.det(theta[:, :, :2]).abs()  # zoom_x * zoom_y with no shear
    assert area.min() >= 0.85**2 - 1e-5 and area.max() <= 1.15**2 + 1e-5
    column_norms = theta[:, :, :2].norm(dim=1)  # each zoom factor alone (rotation keeps lengths)
    assert not torch.allclose(column_norms[:, 0], column_norms[:, 1])
    shifts = theta[:, :, 2] / 2
    assert shifts.abs().max() <= 0.15 + 1e-6 and shifts.abs().max() > 0.14


def test_each_sample_gets_its_own_transform_and_seed_repeats():
    config = AugmentConfig(rotation=(0, 360), hflip=True, vflip=True)
    images = torch.rand(1, 1, 32, 32).repeat(6, 1, 1, 1)
    a = augment_batch(images, config, torch.Generator().manual_seed(1))
    b = augment_batch(images, config, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert not torch.allclose(a[0], a[1])


def test_horizontal_flip_mirrors_exactly():
    config = AugmentConfig(hflip=True)
    images = torch.arange(16.0).reshape(1, 1, 4, 4).repeat(64, 1, 1, 1)
    out = augment_batch(images, config, torch.Generator().manual_seed(0))
    flipped = torch.isclose(out, images.flip(-1)).flatten(1).all(1)
    same = torch.isclose(out, images).flatten(1).all(1)
    assert (flipped | same).all() and flipped.any() and same.any()
