"""Paper 003's X-ray pre-processing: Methods A-D on a tall and a wide image, thresholds, and CLAHE."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from covidlens.data.xray_prep import (
    RESIZE_METHODS,
    Threshold,
    clahe,
    compute_threshold,
    method_target,
    output_shape,
    prepare_xray,
    resize_method_a,
    resize_method_b,
    resize_method_c,
    resize_method_d,
)
from covidlens.errors import CovidlensError

# Gray levels of the synthetic X-ray: nothing is 0, so exact zeros in an output can only be padding.
BACKGROUND, SIDE_STRIPE, FIRST_BAR, LAST_BAR, DISC = 40, 80, 110, 130, 255
TOL = 3  # gray levels of interpolation slack at pixels well inside a feature


def tall_image() -> np.ndarray:
    """300 x 120 (rows x cols): bars at both ends of the long axis, stripes along the short-axis edges, a disc."""
    image = np.full((300, 120), BACKGROUND, dtype=np.uint8)
    image[30:270, :10] = SIDE_STRIPE
    image[30:270, 110:] = SIDE_STRIPE
    image[:30] = FIRST_BAR
    image[270:] = LAST_BAR
    rows, cols = np.mgrid[:300, :120]
    image[(rows - 150) ** 2 + (cols - 60) ** 2 <= 45**2] = DISC
    return image


def wide_image() -> np.ndarray:
    """The tall image turned on its side: 120 x 300, bars at the left and right ends."""
    return np.ascontiguousarray(tall_image().T)


def disc_aspect(image: np.ndarray) -> float:
    """Width / height of the bright disc's bounding box."""
    mask = image > (BACKGROUND + DISC) / 2
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return (cols[-1] - cols[0] + 1) / (rows[-1] - rows[0] + 1)


def disc_rows(image: np.ndarray) -> tuple[int, int]:
    """First and last row holding the disc."""
    rows = np.flatnonzero((image > (BACKGROUND + DISC) / 2).any(axis=1))
    return int(rows[0]), int(rows[-1])


def near(value: float, expected: float) -> bool:
    """Within TOL gray levels."""
    return abs(float(value) - expected) <= TOL


# ------------------------------------------------------------------------------------------ Method A


def test_method_a_tall_pads_left_and_right_only() -> None:
    """300x120 at T=100 -> content 100x40, centred, 30 black columns each side, no black rows."""
    out = resize_method_a(tall_image(), 100)
    assert out.shape == (100, 100) and out.dtype == np.uint8
    assert (out[:, :30] == 0).all() and (out[:, 70:] == 0).all()
    content = out[:, 30:70]
    assert (content >= BACKGROUND).all()  # the long axis fills the square: no black rows
    assert near(content[3, 20], FIRST_BAR) and near(content[-3, 20], LAST_BAR)  # both ends kept
    assert near(content[50, 1], SIDE_STRIPE) and near(content[50, -2], SIDE_STRIPE)
    assert disc_aspect(out) == pytest.approx(1.0, abs=0.1)


def test_method_a_wide_pads_top_and_bottom_only() -> None:
    """120x300 at T=100 -> content 40x100 with 30 black rows above and below, no black columns."""
    out = resize_method_a(wide_image(), 100)
    assert out.shape == (100, 100)
    assert (out[:30] == 0).all() and (out[70:] == 0).all()
    content = out[30:70]
    assert (content >= BACKGROUND).all()
    assert near(content[20, 3], FIRST_BAR) and near(content[20, -3], LAST_BAR)
    assert disc_aspect(out) == pytest.approx(1.0, abs=0.1)


def test_method_a_odd_padding_and_enlarging() -> None:
    """Enlarging to T=401 keeps the long side at T; the odd leftover pixel goes to the right."""
    out = resize_method_a(tall_image(), 401)  # scale 401/300: content 401 x 160, 241 columns of padding
    assert out.shape == (401, 401)
    black_cols = np.flatnonzero((out == 0).all(axis=0))
    assert black_cols.size == 401 - 160
    assert (black_cols < 200).sum() == 120 and (black_cols > 200).sum() == 121
    assert (out[:, 120:280] >= BACKGROUND).all()  # bilinear is a convex blend: no value below the background
    assert disc_aspect(out) == pytest.approx(1.0, abs=0.05)


def test_method_a_shrinks_with_area_averaging() -> None:
    """The content region is OpenCV's INTER_AREA resize when shrinking."""
    image = tall_image()
    out = resize_method_a(image, 100)
    expected = cv2.resize(image, (40, 100), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(out[:, 30:70], expected)


# ------------------------------------------------------------------------------------------ Method B


def test_method_b_stretches_tall_and_wide_to_the_threshold_dimensions() -> None:
    """Both become exactly 100x200 with no padding; the circle becomes an ellipse by the axis scale ratio."""
    tall = resize_method_b(tall_image(), (100, 200))
    wide = resize_method_b(wide_image(), (100, 200))
    assert tall.shape == wide.shape == (100, 200)
    assert (tall > 0).all() and (wide > 0).all()
    # tall: x scale 200/120, y scale 100/300 -> width/height of the disc x5; wide: (200/300)/(100/120) = 0.8
    assert disc_aspect(tall) == pytest.approx(5.0, rel=0.1)
    assert disc_aspect(wide) == pytest.approx(0.8, rel=0.1)
    assert near(tall[2, 100], FIRST_BAR) and near(tall[-2, 100], LAST_BAR)  # nothing cropped
    assert near(wide[50, 5], FIRST_BAR) and near(wide[50, -5], LAST_BAR)


def test_method_b_keeps_a_circle_when_the_aspect_matches() -> None:
    """Stretching a 300x120 image to 150x60 scales both axes alike."""
    assert disc_aspect(resize_method_b(tall_image(), (150, 60))) == pytest.approx(1.0, abs=0.05)


# ------------------------------------------------------------------------------------------ Method C


def test_method_c_tall_into_wide_dimensions_crops_the_long_axis() -> None:
    """300x120 into 100x200: scale max(1/3, 5/3) -> 500x200, rows 200..299 kept; no padding, ends cut."""
    out = resize_method_c(tall_image(), (100, 200))
    assert out.shape == (100, 200)
    assert (out >= BACKGROUND).all()  # nothing padded
    assert near(out[0, 100], DISC) and near(out[-1, 100], DISC)  # only the middle rows 120-180 remain
    assert near(out[50, 5], SIDE_STRIPE) and near(out[50, -6], SIDE_STRIPE)  # the short axis is kept whole
    assert (out[40:60, 60:140] == DISC).mean() > 0.9  # the disc's middle, magnified 5/3


def test_method_c_wide_into_wide_dimensions_crops_left_and_right() -> None:
    """120x300 into 100x200: scale max(5/6, 2/3) -> 100x250, 25 columns cut each side; the disc stays round."""
    out = resize_method_c(wide_image(), (100, 200))
    assert out.shape == (100, 200)
    assert (out >= BACKGROUND).all()
    assert near(out[50, 0], BACKGROUND) and near(out[50, -1], BACKGROUND)  # the end bars are gone
    assert near(out[2, 100], SIDE_STRIPE) and near(out[-3, 100], SIDE_STRIPE)
    assert disc_aspect(out) == pytest.approx(1.0, abs=0.1)


# ------------------------------------------------------------------------------------------ Method D


def test_method_d_tall_crops_the_ends_of_the_long_axis() -> None:
    """300x120 at T=100: scale 100/120 -> 250x100, rows 75..174 kept; bars gone, side stripes kept."""
    out = resize_method_d(tall_image(), 100)
    assert out.shape == (100, 100)
    assert (out >= BACKGROUND).all()  # no padding anywhere
    # the end bars (resized rows 0-24 and 225-249) are cropped away: first and last rows are background
    assert (np.abs(out[:10, 15:85].astype(int) - BACKGROUND) <= TOL).all()
    assert (np.abs(out[-10:, 15:85].astype(int) - BACKGROUND) <= TOL).all()
    assert all(near(out[row, 2], SIDE_STRIPE) and near(out[row, -3], SIDE_STRIPE) for row in (0, 50, 99))
    assert disc_aspect(out) == pytest.approx(1.0, abs=0.1)
    top, bottom = disc_rows(out)  # disc of diameter 91 * 100/120 = 76 rows, centred on row 50
    assert abs(top - 12) <= 2 and abs(bottom - 87) <= 2


def test_method_d_wide_crops_left_and_right() -> None:
    """120x300 at T=100: the left / right bars are cut, the top / bottom stripes kept."""
    out = resize_method_d(wide_image(), 100)
    assert out.shape == (100, 100)
    assert (out >= BACKGROUND).all()
    assert near(out[50, 0], BACKGROUND) and near(out[50, -1], BACKGROUND)
    assert all(near(out[2, col], SIDE_STRIPE) and near(out[-3, col], SIDE_STRIPE) for col in (0, 50, 99))
    assert disc_aspect(out) == pytest.approx(1.0, abs=0.1)


def test_method_d_enlarging() -> None:
    """T larger than the image: the short side grows to T bilinearly, then the overflow is cropped."""
    out = resize_method_d(wide_image(), 240)
    assert out.shape == (240, 240)
    assert (out >= BACKGROUND).all()
    assert disc_aspect(out) == pytest.approx(1.0, abs=0.05)


# --------------------------------------------------------------------------- registry and validation


def test_registry_and_output_shape_agree_with_every_method() -> None:
    """RESIZE_METHODS maps A-D; each output's shape is output_shape for both orientations."""
    assert list(RESIZE_METHODS) == ["A", "B", "C", "D"]
    threshold = Threshold(kind="max", width=200, height=100, size=200)
    expected = {"A": (200, 200), "B": (100, 200), "C": (100, 200), "D": (200, 200)}
    for method, function in RESIZE_METHODS.items():
        assert output_shape(method, threshold) == expected[method]
        for image in (tall_image(), wide_image()):
            out = function(image, method_target(method, threshold))
            assert out.shape == expected[method] and out.dtype == np.uint8


def test_resize_accepts_a_single_channel_axis() -> None:
    """An H x W x 1 array is treated as gray."""
    np.testing.assert_array_equal(resize_method_a(tall_image()[:, :, None], 50), resize_method_a(tall_image(), 50))


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((10, 10), dtype=np.uint16), "uint16"),
        (np.zeros((10, 10), dtype=np.float32), "float32"),
        (np.zeros((10, 10, 3), dtype=np.uint8), "to_gray"),
        (np.zeros((0, 10), dtype=np.uint8), "gray"),
    ],
)
def test_resize_refuses_non_gray_8_bit_images(image: np.ndarray, message: str) -> None:
    """Resizing takes 2D uint8 only and says how to convert."""
    with pytest.raises(CovidlensError, match=message):
        resize_method_a(image, 10)


@pytest.mark.parametrize("size", [0, -5, 2.5, True, "100"])
def test_resize_refuses_bad_targets(size: object) -> None:
    """A non-positive or non-integer size / shape is a user error."""
    with pytest.raises(CovidlensError, match="positive integer"):
        resize_method_a(tall_image(), size)  # type: ignore[arg-type]
    with pytest.raises(CovidlensError, match="positive integer"):
        resize_method_b(tall_image(), (size, 10))  # type: ignore[arg-type]
    with pytest.raises(CovidlensError, match="height, width"):
        resize_method_c(tall_image(), 100)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------- thresholds

TRAINING_SIZES = [(1000, 800), (1200, 900), (900, 1300), (640, 480), (500, 700)]  # (width, height)


def test_compute_threshold_max_min_preset() -> None:
    """max: the image with the largest side; min: the one with the smallest side; preset: 200, mean aspect."""
    assert compute_threshold(TRAINING_SIZES, "max") == Threshold(kind="max", width=900, height=1300, size=1300)
    assert compute_threshold(TRAINING_SIZES, "min") == Threshold(kind="min", width=640, height=480, size=480)
    # mean width 848 > mean height 836: width 200, height round(200 * 836 / 848) = 197
    assert compute_threshold(TRAINING_SIZES, "preset") == Threshold(kind="preset", width=200, height=197, size=200)
    portrait = compute_threshold([(300, 600), (500, 600)], "preset", preset=120)  # mean 400 x 600
    assert (portrait.width, portrait.height, portrait.size) == (80, 120, 120)


def test_compute_threshold_is_one_training_image_not_per_axis_extremes() -> None:
    """The max widths and heights of different images (1200, 1300) are not combined."""
    threshold = compute_threshold(TRAINING_SIZES, "max")
    assert (threshold.width, threshold.height) in TRAINING_SIZES


def test_compute_threshold_breaks_ties_by_area_then_order() -> None:
    """Equal max sides: the larger image wins; equal min sides: the smaller image wins; then the first."""
    assert compute_threshold([(800, 600), (800, 700), (700, 800)], "max") == Threshold("max", 800, 700, 800)
    assert compute_threshold([(400, 500), (400, 450), (450, 400)], "min") == Threshold("min", 400, 450, 400)


def test_threshold_round_trips_through_json() -> None:
    """as_dict is plain JSON; from_dict rebuilds an equal Threshold, also from numpy integers."""
    for kind in ("max", "min", "preset"):
        threshold = compute_threshold(np.array(TRAINING_SIZES), kind)  # numpy rows work too
        restored = Threshold.from_dict(json.loads(json.dumps(threshold.as_dict())))
        assert restored == threshold and isinstance(restored.size, int)


@pytest.mark.parametrize(
    ("sizes", "kind", "preset", "message"),
    [
        ([], "max", 200, "no training image sizes"),
        ([(100, 0)], "max", 200, "#0"),
        ([(100, 100), (5,)], "min", 200, "#1"),
        ([(100, 100)], "median", 200, "median"),
        ([(100, 100)], "preset", 0, "preset threshold size"),
    ],
)
def test_compute_threshold_refuses_bad_input(sizes: list, kind: str, preset: int, message: str) -> None:
    """Empty or bad sizes, unknown kinds and bad presets are user errors naming the value."""
    with pytest.raises(CovidlensError, match=message):
        compute_threshold(sizes, kind, preset)


@pytest.mark.parametrize(
    "data",
    [
        {"kind": "max", "width": 100, "height": 50, "size": 50},  # size contradicts the kind
        {"kind": "max", "width": 100, "height": 50},
        {"kind": "big", "width": 100, "height": 50, "size": 100},
        {"kind": "preset", "width": -1, "height": 50, "size": 200},
        ["max", 100, 50, 100],
    ],
)
def test_threshold_from_dict_refuses_bad_data(data: object) -> None:
    """A stored threshold that is incomplete or inconsistent is refused."""
    with pytest.raises(CovidlensError, match="threshold"):
        Threshold.from_dict(data)  # type: ignore[arg-type]


# -------------------------------------------------------------------------------------------- CLAHE


def low_contrast_image() -> np.ndarray:
    """A 128x160 gradient squeezed into gray levels 100-130 with a little noise."""
    rng = np.random.default_rng(0)
    gradient = np.linspace(100, 125, 160)[None, :] + 5 * np.sin(np.arange(128) / 9.0)[:, None]
    return np.clip(gradient + rng.normal(0, 1.5, (128, 160)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize(("clip", "grid"), [(2.0, (8, 8)), (4.0, (4, 6)), (1, (1, 1))])
def test_clahe_equals_opencv(clip: float, grid: tuple[int, int]) -> None:
    """Exactly cv2.createCLAHE(clipLimit, tileGridSize).apply on the same image."""
    image = low_contrast_image()
    expected = cv2.createCLAHE(clipLimit=clip, tileGridSize=grid).apply(image)
    np.testing.assert_array_equal(clahe(image, clip, grid), expected)


def test_clahe_raises_contrast_of_a_low_contrast_image() -> None:
    """The standard deviation and range grow, more so with a higher clip limit or larger tiles."""
    image = low_contrast_image()
    out = clahe(image, 2.0, (8, 8))
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert out.std() > 1.1 * image.std()
    assert int(out.max()) - int(out.min()) > int(image.max()) - int(image.min())
    assert clahe(image, 4.0, (8, 8)).std() > 1.2 * out.std()  # the clip limit caps the amplification
    assert clahe(image, 4.0, (2, 2)).std() > 2.5 * image.std()


def test_clahe_handles_16_bit_as_opencv_does() -> None:
    """16-bit images are equalized over 65536 levels and stay uint16."""
    image = (low_contrast_image().astype(np.uint16) * 200).astype(np.uint16)
    out = clahe(image, 2.0, (8, 8))
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(image))


@pytest.mark.parametrize(
    ("image", "clip", "grid", "message"),
    [
        (None, 0.0, (8, 8), "clip limit"),
        (None, -1.0, (8, 8), "clip limit"),
        (None, float("nan"), (8, 8), "clip limit"),
        (None, "2", (8, 8), "clip limit"),
        (None, 2.0, (0, 8), "tile grid"),
        (None, 2.0, (8,), "tile grid"),
        (None, 2.0, (8.0, 8), "tile grid"),
        (np.zeros((8, 8), dtype=np.float32), 2.0, (8, 8), "float32"),
        (np.zeros((8, 8, 3), dtype=np.uint8), 2.0, (8, 8), "to_gray"),
    ],
)
def test_clahe_refuses_bad_parameters(image: np.ndarray | None, clip: object, grid: object, message: str) -> None:
    """Bad clip limits, tile grids, dtypes and colour images are user errors."""
    with pytest.raises(CovidlensError, match=message):
        clahe(low_contrast_image() if image is None else image, clip, grid)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------- prepare_xray


@pytest.mark.parametrize("method", ["A", "B", "C", "D", "d"])
def test_prepare_xray_resizes_then_applies_clahe(method: str) -> None:
    """Without a clip limit it is the method alone; with one it is CLAHE of the method's output."""
    threshold = compute_threshold([(120, 300), (300, 120), (200, 100)], "max")  # the 300-wide image: 300 x 120
    image = tall_image()
    resized = prepare_xray(image, method, threshold)
    np.testing.assert_array_equal(resized, RESIZE_METHODS[method.upper()](image, method_target(method, threshold)))
    assert resized.shape == output_shape(method, threshold)
    enhanced = prepare_xray(image, method, threshold, clahe_clip=2.0, clahe_grid=(4, 4))
    np.testing.assert_array_equal(enhanced, cv2.createCLAHE(clipLimit=2.0, tileGridSize=(4, 4)).apply(resized))


def test_prepare_xray_refuses_unknown_method_and_bad_threshold() -> None:
    """Unknown method letters and non-Threshold geometry are user errors."""
    threshold = Threshold(kind="preset", width=200, height=150, size=200)
    with pytest.raises(CovidlensError, match="'E'"):
        prepare_xray(tall_image(), "E", threshold)
    with pytest.raises(CovidlensError, match="compute_threshold"):
        prepare_xray(tall_image(), "A", {"kind": "preset"})  # type: ignore[arg-type]
