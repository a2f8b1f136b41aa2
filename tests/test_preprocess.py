import cv2
import numpy as np
import pytest

from covidlens.data.cache import DecodedImages, build_cache, cache_key
from covidlens.data.preprocess import (
    Preprocessing,
    load_gray_uint8,
    read_image,
    to_gray,
    to_model_input,
    to_unit_range,
    window_hu,
)
from covidlens.errors import CovidlensError


def test_window_maps_level_to_half_and_clips():
    hu = np.array([-1500.0, -1350.0, -600.0, 150.0, 3000.0])
    out = window_hu(hu, level=-600, width=1500)
    np.testing.assert_allclose(out, [0.0, 0.0, 0.5, 1.0, 1.0])
    with pytest.raises(CovidlensError):
        window_hu(hu, -600, 0)


def test_16_bit_is_stretched_not_truncated(tmp_path):
    image = np.linspace(1000, 61000, 64 * 64).reshape(64, 64).astype(np.uint16)
    path = tmp_path / "slice.tif"
    cv2.imwrite(str(path), image)
    decoded = read_image(path)
    assert decoded.dtype == np.uint16
    unit = to_unit_range(decoded)
    assert unit.min() == 0.0 and unit.max() == 1.0
    # the low byte alone would wrap around many times; a monotone ramp must stay monotone
    assert np.all(np.diff(unit.ravel()) >= 0)
    windowed = to_unit_range(decoded, window=(31000, 60000))
    np.testing.assert_allclose(windowed.ravel()[[0, -1]], [0.0, 1.0], atol=1e-6)


def test_colour_and_alpha_become_gray():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[..., 3] = 255
    assert to_gray(rgba).shape == (4, 4) and int(to_gray(rgba)[0, 0]) == 200


def test_load_resizes_and_model_input_repeats_channels(tmp_path):
    path = tmp_path / "a.png"
    cv2.imwrite(str(path), np.full((100, 80, 3), 255, np.uint8))
    gray = load_gray_uint8(path, 32)
    assert gray.shape == (32, 32) and gray.dtype == np.uint8 and gray.min() == 255
    batch = to_model_input(np.stack([gray, gray]), channels=3)
    assert batch.shape == (2, 3, 32, 32) and batch.dtype == np.float32 and batch.max() == 1.0


def test_unreadable_file_is_a_clear_error(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("not an image")
    with pytest.raises(CovidlensError, match="notes.png"):
        read_image(path)


def test_cache_matches_decoding_and_is_reused(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(5):
        path = tmp_path / f"{i}.png"
        cv2.imwrite(str(path), rng.integers(0, 255, (40, 50), dtype=np.uint8))
        paths.append(str(path))
    cached = build_cache(paths, Preprocessing(16), tmp_path / "cache")
    decoded = DecodedImages(paths, Preprocessing(16))
    np.testing.assert_array_equal(cached.get([4, 0, 2]), decoded.get([4, 0, 2]))
    files = list((tmp_path / "cache").glob("*.npy"))
    assert len(files) == 1
    mtime = files[0].stat().st_mtime_ns
    build_cache(paths, Preprocessing(16), tmp_path / "cache")
    assert files[0].stat().st_mtime_ns == mtime  # reused, not rebuilt
    key = cache_key(paths, Preprocessing(16))
    cv2.imwrite(paths[0], np.zeros((40, 51), np.uint8))
    assert cache_key(paths, Preprocessing(16)) != key
    assert cache_key(paths, Preprocessing(32)) != cache_key(paths, Preprocessing(16))
    assert cache_key(paths, Preprocessing(16, clahe_clip=2.0)) != cache_key(paths, Preprocessing(16))
