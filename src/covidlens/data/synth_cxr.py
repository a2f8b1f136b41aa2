"""Synthetic frontal chest radiographs in paper 003's competition layout (`covidlens synth cxr`).

A radiograph is a projection: each pixel shows the attenuation summed along one ray, so dense things
(bone, heart, soft tissue, consolidated lung) are bright and the air-filled lungs dark. The renderer works
in "chest units" (the rib cage spans u = -1..1; v = 0 is the lung apex, v = 1 the costophrenic angles),
builds a density map from body, lungs, mediastinum, heart, diaphragm, spine, ribs, clavicles, scapulae
and vessels, adds the findings of the class inside the lungs, and maps density to 8-bit brightness as a
detector would (1 - exp(-k * density), a window, noise). The display is radiological: the patient's right
is on the image's left, so the heart bulges to the image's right and the right dome (image left) is higher.

Classes, in paper 003's training proportions (350 : 350 : 350 : 77):
- normal: clear lungs;
- bacterial: a lobar consolidation of one lung, more often in an upper zone (sharp lower edge at the
  fissure, air bronchograms);
- viral: bilateral perihilar interstitial haze with a reticular (net-like) pattern;
- covid: bilateral, peripheral, lower-zone patchy ground-glass opacities.
Anatomy, image size and acquisition are drawn from streams that ignore the class, so the same draw with
another label differs only in its findings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from covidlens.data.manifest import MASK_SUFFIX
from covidlens.data.synth import (
    SYNTH_KINDS,
    ProgressFn,
    _check_common,
    _check_size,
    _lerp,
    _write_record,
    class_counts,
    patient_labels,
)
from covidlens.errors import CovidlensError

CXR_CLASSES = ("normal", "bacterial", "viral", "covid")
# Paper 003's training set: 350 normal, 350 bacterial, 350 viral and 77 COVID-19 radiographs.
CXR_CLASS_SHARES = {"normal": 350, "bacterial": 350, "viral": 350, "covid": 77}
PAPER_TRAIN_IMAGES = 1127
PAPER_TEST_IMAGES = 484  # unlabelled test images of the paper's Kaggle competition
CXR_ROW_COLUMNS = ["path", "label", "patient_id", "split", "mask_path"]
TEST_LABELS = "test_labels.csv"  # beside test/, never inside it: Id (the file stem), label
JPEG_SHARE = 0.2  # the real data mixes PNG and JPEG files
EXTREME_SHARE = 0.12  # images with a strongly portrait or landscape frame
MIN_CXR_SIZE = 64

_SHIFT = 4  # fixed-point bits for sub-pixel vertices in cv2 drawing calls
_NOISE_BOX = (-1.5, 1.5, -1.0, 1.8)  # u0, u1, v0, v1: where noise textures are defined, chest units


@dataclass(frozen=True, eq=False)
class CxrAnatomy:
    """One patient's chest, pose and body habitus (chest units; v grows downward)."""

    fill: tuple[float, float]  # share of the frame width / height the chest may take
    shift: tuple[float, float]  # centre offset, fractions of the frame
    rotation: float  # radians
    body_width: float
    soft_density: float
    air_density: float
    lung_lateral: tuple[float, float]  # lateral extent of the image-left and image-right lung
    domes: tuple[float, float]  # v of the dome tops (image-left = patient's right is higher)
    outline_jitter: np.ndarray  # (2, 14) radial jitter of the lung outline control points
    heart: tuple[float, float, float, float]  # centre u, v, half width, half height
    rib_start: float
    rib_step: float
    rib_jitter: np.ndarray  # (2, 10)
    gastric_bubble: bool
    arms: bool
    vessel_seed: int


@dataclass(frozen=True, eq=False)
class CxrRender:
    """A rendered radiograph: 8-bit image, lung-field mask and lesion mask (same shape)."""

    image: np.ndarray  # uint8
    lung: np.ndarray  # bool
    lesion: np.ndarray  # bool


@dataclass(frozen=True, eq=False)
class _Frame:
    """The chest-to-pixel map of one image and the chest coordinates of every pixel."""

    height: int
    width: int
    scale: float  # pixels per chest unit
    matrix: np.ndarray  # 2x3, chest (u, v) -> pixel (x, y)
    u: np.ndarray  # (h, w) float32
    v: np.ndarray

    def px(self, points: np.ndarray) -> np.ndarray:
        """Chest points (n, 2) -> fixed-point int32 pixel vertices for cv2 drawing with shift=_SHIFT."""
        xy = np.asarray(points, dtype=np.float64) @ self.matrix[:, :2].T + self.matrix[:, 2]
        return np.round(xy * (1 << _SHIFT)).astype(np.int32)

    def thickness(self, units: float) -> int:
        """A line width in chest units as whole pixels (at least 1)."""
        return max(1, int(round(units * self.scale)))


# ---------------------------------------------------------------------------------------------------------
# Difficulty knobs


def finding_contrast(difficulty: float) -> float:
    """Multiplier of every finding's density: 1 at difficulty 0, 0.3 at difficulty 1."""
    return _lerp(1.0, 0.3, difficulty)


def detector_noise(difficulty: float) -> float:
    """Standard deviation of detector noise, in units of the full 8-bit range."""
    return _lerp(0.01, 0.028, difficulty)


def unlabelled_image_count(train_images: int) -> int:
    """Unlabelled test images for a set of `train_images`: 484 per 1,127 as in paper 003, at least 4."""
    return max(len(CXR_CLASSES), int(round(train_images * PAPER_TEST_IMAGES / PAPER_TRAIN_IMAGES)))


# ---------------------------------------------------------------------------------------------------------
# Random draws


def image_streams(seed: int, split: int, index: int) -> tuple[np.random.Generator, ...]:
    """Independent RNGs (frame, anatomy, findings, acquisition) of one image, from (seed, split, index) only."""
    children = np.random.SeedSequence([seed, 3, split, index]).spawn(4)
    return tuple(np.random.default_rng(c) for c in children)


def image_shape(rng: np.random.Generator, size: int) -> tuple[int, int]:
    """(height, width): each side 0.6-1.0 x size, or a strongly portrait / landscape frame for a few images."""
    if rng.uniform() < EXTREME_SHARE:
        long_side = size * rng.uniform(0.9, 1.0)
        short_side = long_side * rng.uniform(0.5, 0.68)
        height, width = (long_side, short_side) if rng.uniform() < 0.5 else (short_side, long_side)
    else:
        height, width = size * rng.uniform(0.6, 1.0, 2)
    return max(32, int(round(height))), max(32, int(round(width)))


def draw_cxr_anatomy(rng: np.random.Generator) -> CxrAnatomy:
    """Draw one chest: pose in the frame, habitus, lung and heart size, ribs."""
    dome_right = rng.uniform(0.72, 0.82)
    return CxrAnatomy(
        fill=(rng.uniform(0.82, 0.98), rng.uniform(0.85, 0.98)),
        shift=(rng.uniform(-0.03, 0.03), rng.uniform(-0.03, 0.03)),
        rotation=float(np.clip(rng.normal(0.0, 0.03), -0.07, 0.07)),
        body_width=rng.uniform(0.95, 1.1),
        soft_density=rng.uniform(0.85, 1.0),
        air_density=rng.uniform(0.55, 0.65),
        lung_lateral=(rng.uniform(0.82, 0.9), rng.uniform(0.82, 0.9)),
        domes=(dome_right, dome_right + rng.uniform(0.03, 0.08)),
        outline_jitter=rng.normal(0.0, 0.012, (2, 14)),
        heart=(rng.uniform(0.1, 0.16), rng.uniform(0.68, 0.74), rng.uniform(0.4, 0.48), rng.uniform(0.24, 0.29)),
        rib_start=rng.uniform(-0.14, -0.08),
        rib_step=rng.uniform(0.1, 0.12),
        rib_jitter=rng.normal(0.0, 0.01, (2, 10)),
        gastric_bubble=bool(rng.uniform() < 0.7),
        arms=bool(rng.uniform() < 0.5),
        vessel_seed=int(rng.integers(0, 2**31)),
    )


# ---------------------------------------------------------------------------------------------------------
# Geometry helpers


def _frame(anatomy: CxrAnatomy, height: int, width: int) -> _Frame:
    """Fit the chest (u -1.05..1.05, v -0.25..1.25) into the frame, then rotate and shift it."""
    scale = min(width * anatomy.fill[0] / 2.1, height * anatomy.fill[1] / 1.5)
    cx = width / 2 + anatomy.shift[0] * width
    cy = height / 2 + anatomy.shift[1] * height
    v_centre = 0.5
    c, s = np.cos(anatomy.rotation), np.sin(anatomy.rotation)
    linear = scale * np.array([[c, -s], [s, c]])
    offset = np.array([cx, cy]) - linear @ np.array([0.0, v_centre])
    matrix = np.hstack([linear, offset[:, None]])
    inverse = cv2.invertAffineTransform(matrix)
    x, y = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    u = (inverse[0, 0] * x + inverse[0, 1] * y + inverse[0, 2]).astype(np.float32)
    v = (inverse[1, 0] * x + inverse[1, 1] * y + inverse[1, 2]).astype(np.float32)
    return _Frame(height, width, float(scale), matrix, u, v)


def _smoothstep(lo: float, hi: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _chaikin(points: np.ndarray, rounds: int = 3) -> np.ndarray:
    """Corner cutting of a closed polygon: a smooth outline through the control points' neighbourhood."""
    for _ in range(rounds):
        following = np.roll(points, -1, axis=0)
        points = np.stack([0.75 * points + 0.25 * following, 0.25 * points + 0.75 * following], axis=1)
        points = points.reshape(-1, 2)
    return points


def _blur(image: np.ndarray, sigma_px: float) -> np.ndarray:
    if sigma_px < 0.3:
        return image
    return cv2.GaussianBlur(image, (0, 0), sigma_px)


def _noise(rng: np.random.Generator, frame: _Frame, cells: int, smooth: float = 1.0) -> np.ndarray:
    """Smooth unit-variance noise defined in chest units (so textures scale with the chest), sampled per pixel."""
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    coarse = cv2.GaussianBlur(coarse, (0, 0), smooth)
    coarse = (coarse - coarse.mean()) / max(float(coarse.std()), 1e-6)
    u0, u1, v0, v1 = _NOISE_BOX
    map_x = ((frame.u - u0) / (u1 - u0) * (cells - 1)).astype(np.float32)
    map_y = ((frame.v - v0) / (v1 - v0) * (cells - 1)).astype(np.float32)
    return cv2.remap(coarse, map_x, map_y, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)


def _polylines(frame: _Frame, lines: list[np.ndarray], width: float) -> np.ndarray:
    """Anti-aliased lines (chest units) drawn as a float image in 0..1."""
    canvas = np.zeros((frame.height, frame.width), np.uint8)
    cv2.polylines(canvas, [frame.px(line) for line in lines], False, 255, frame.thickness(width), cv2.LINE_AA, _SHIFT)
    return canvas.astype(np.float32) / 255.0


def _filled(frame: _Frame, polygon: np.ndarray) -> np.ndarray:
    canvas = np.zeros((frame.height, frame.width), np.uint8)
    cv2.fillPoly(canvas, [frame.px(polygon)], 255, cv2.LINE_AA, _SHIFT)
    return canvas.astype(np.float32) / 255.0


def _ellipse_profile(frame: _Frame, cu: float, cv: float, au: float, av: float) -> np.ndarray:
    """Projected thickness of an ellipsoid: sqrt(1 - r^2) inside the ellipse, 0 outside."""
    r2 = ((frame.u - cu) / au) ** 2 + ((frame.v - cv) / av) ** 2
    return np.sqrt(np.clip(1.0 - r2, 0.0, 1.0))


# ---------------------------------------------------------------------------------------------------------
# Anatomy


def lung_outline(anatomy: CxrAnatomy, side: int) -> np.ndarray:
    """Closed outline (chest units) of the image-left (side 0) or image-right (side 1) lung field."""
    lateral, dome = anatomy.lung_lateral[side], anatomy.domes[side]
    control = np.array(
        [
            (0.15, 0.10), (0.26, -0.01), (0.42, -0.05), (0.58, 0.02), (0.72, 0.17), (lateral, 0.48),
            (lateral + 0.03, 0.82), (lateral + 0.01, 1.0), (lateral - 0.1, 0.93), (0.52, dome),
            (0.32, dome + 0.02), (0.15, dome + 0.08), (0.12, 0.6), (0.12, 0.3),
        ]
    )
    control[:, 0] *= 1.0 + anatomy.outline_jitter[side]
    control[:, 1] += anatomy.outline_jitter[side] * 0.5
    outline = _chaikin(control)
    sign = -1.0 if side == 0 else 1.0
    return np.column_stack([sign * outline[:, 0], outline[:, 1]])


def _lung_fields(frame: _Frame, anatomy: CxrAnatomy) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-side lung masks (soft, 0..1), their union as bool, and the air depth (0 at the edge, 1 deep)."""
    sides = np.stack([_filled(frame, lung_outline(anatomy, side)) for side in (0, 1)])
    union = sides.max(axis=0) > 0.5
    distance = cv2.distanceTransform(union.astype(np.uint8), cv2.DIST_L2, 3)
    depth = np.clip(distance / (0.22 * frame.scale), 0.0, 1.0) ** 0.6
    return sides, union, depth.astype(np.float32)


def _body(frame: _Frame, anatomy: CxrAnatomy) -> np.ndarray:
    """Soft-tissue density: an elliptical trunk section whose width follows neck, shoulders and chest."""
    half_width = anatomy.body_width * np.interp(
        frame.v, [-0.9, -0.36, -0.27, -0.17, -0.05, 0.3, 1.0, 1.6], [0.3, 0.34, 0.6, 0.98, 1.16, 1.14, 1.1, 1.04]
    )
    thickness = np.clip(1.0 - (frame.u / half_width) ** 2, 0.0, 1.0) ** 0.6
    along = np.interp(frame.v, [-0.9, -0.2, 0.2, 0.9, 1.3], [0.62, 0.8, 0.92, 1.0, 1.08])
    density = thickness * along
    if anatomy.arms:  # arms beside the chest, humeral heads at the shoulders
        for sign in (-1.0, 1.0):
            arm_u = sign * (1.28 * anatomy.body_width + 0.04)
            arm = np.clip(1.0 - ((frame.u - arm_u) / 0.15) ** 2, 0.0, 1.0) ** 0.6 * _smoothstep(-0.3, -0.12, frame.v)
            density = np.maximum(density, 0.55 * arm) + 0.3 * _ellipse_profile(frame, arm_u, -0.14, 0.12, 0.14)
    return (anatomy.soft_density * density).astype(np.float32)


def _spine(frame: _Frame) -> np.ndarray:
    """Vertebral bodies (discs between them less dense) and pedicles, down the midline."""
    column = _smoothstep(0.08, 0.06, np.abs(frame.u)) * np.interp(frame.v, [-0.9, -0.3, 0.9, 1.4], [0.3, 0.6, 1.0, 0.7])
    phase = (frame.v + 0.3) / 0.105
    frac = phase - np.floor(phase)
    discs = np.exp(-((frac / 0.09) ** 2)) + np.exp(-(((1.0 - frac) / 0.09) ** 2))
    pedicle_u = np.abs(np.abs(frame.u) - 0.052)
    pedicles = np.exp(-((pedicle_u / 0.014) ** 2) - (((frac - 0.45) / 0.2) ** 2))
    return (column * (0.12 - 0.05 * discs) + 0.05 * pedicles * column).astype(np.float32)


def _ribs(frame: _Frame, anatomy: CxrAnatomy) -> np.ndarray:
    """Posterior ribs arching out and down from the spine, fainter anterior ribs sloping down medially."""
    t = np.linspace(0.0, 1.0, 24)
    posterior, anterior = [], []
    for side, sign in ((0, -1.0), (1, 1.0)):
        lateral = anatomy.lung_lateral[side] + 0.07
        for k in range(10):
            v0 = anatomy.rib_start + k * anatomy.rib_step + anatomy.rib_jitter[side, k]
            u = 0.07 + t * (lateral - 0.07)
            v = v0 - 0.06 * np.sin(np.pi * 0.9 * t) + (0.26 + 0.02 * k) * t**2.6
            posterior.append(np.column_stack([sign * u, v]))
            if k < 6:
                a = t[:16] / t[15]
                anterior.append(np.column_stack([sign * (lateral - a * (lateral - 0.3)), v0 + 0.1 + 0.24 * a**1.3]))
    width = 0.036
    back = _polylines(frame, posterior, width) - 0.45 * _polylines(frame, posterior, width * 0.4)
    front = _polylines(frame, anterior, width * 0.9)
    sigma = 0.004 * frame.scale
    fade = np.interp(frame.v, [0.85, 1.25], [1.0, 0.45])  # lower ribs hide behind the liver and stomach
    return ((0.09 * _blur(back, sigma) + 0.035 * _blur(front, 2 * sigma)) * fade).astype(np.float32)


def _shoulder_girdle(frame: _Frame) -> np.ndarray:
    """Clavicles and scapulae."""
    clavicles = []
    for sign in (-1.0, 1.0):
        clavicles.append(np.array([(0.1, -0.08), (0.3, -0.14), (0.55, -0.14), (0.78, -0.19), (0.92, -0.25)])
                         * np.array([sign, 1.0]))
    density = 0.15 * _blur(_polylines(frame, clavicles, 0.05), 0.005 * frame.scale)
    for sign in (-1.0, 1.0):
        density += 0.06 * _ellipse_profile(frame, sign * 0.98, 0.08, 0.16, 0.32) ** 0.3
    return density.astype(np.float32)


def _mediastinum(frame: _Frame, anatomy: CxrAnatomy) -> tuple[np.ndarray, np.ndarray]:
    """How much the heart and aortic knob hide the lung behind them (0..1), and the airway air column."""
    hu, hv, hw, hh = anatomy.heart
    # the heart's long axis runs from the upper right of the patient down to the apex (image lower right)
    c, s = np.cos(0.45), np.sin(0.45)
    du, dv = frame.u - hu, frame.v - hv
    r2 = ((c * du + s * dv) / hw) ** 2 + ((-s * du + c * dv) / hh) ** 2
    heart = np.clip(1.0 - r2, 0.0, 1.0) ** 0.25
    knob = _ellipse_profile(frame, 0.15, 0.31, 0.1, 0.075) ** 0.5  # the aortic knob, bulging from the mediastinum
    band = _smoothstep(0.17, 0.13, np.abs(frame.u - 0.02)) * _smoothstep(0.6, 0.45, frame.v)  # upper mediastinum
    cover = np.maximum(np.maximum(heart, knob), band)
    airway = [np.array([(0.0, -0.7), (0.005, 0.0), (0.01, 0.26)]),
              np.array([(0.01, 0.26), (-0.12, 0.36), (-0.2, 0.42)]),
              np.array([(0.01, 0.26), (0.13, 0.37), (0.2, 0.44)])]
    trachea = _blur(_polylines(frame, airway[:1], 0.065), 0.006 * frame.scale)
    bronchi = _blur(_polylines(frame, airway[1:], 0.035), 0.006 * frame.scale)
    air = 0.16 * trachea + 0.1 * bronchi
    return cover.astype(np.float32), air.astype(np.float32)


def _abdomen(frame: _Frame, anatomy: CxrAnatomy) -> np.ndarray:
    """Gastric air under the image-right dome in most patients (negative density)."""
    if not anatomy.gastric_bubble:
        return np.zeros((frame.height, frame.width), np.float32)
    return (-0.22 * _ellipse_profile(frame, 0.45, anatomy.domes[1] + 0.13, 0.11, 0.06) ** 0.5).astype(np.float32)


def _vessels(frame: _Frame, anatomy: CxrAnatomy, lungs: np.ndarray) -> np.ndarray:
    """Branching pulmonary vessels from each hilum, thick and dense centrally, fine at the periphery."""
    rng = np.random.default_rng(anatomy.vessel_seed)
    canvas = np.zeros((frame.height, frame.width), np.float32)
    for sign in (-1.0, 1.0):
        hilum = np.array([sign * 0.22, 0.45])
        angles = rng.uniform(-np.pi * 0.85, np.pi * 0.85, 9)
        starts = np.repeat(hilum[None, :], len(angles), axis=0)
        directions = np.column_stack([sign * np.cos(angles) * 0.9 + sign * 0.5, np.sin(angles)])
        length, width, weight = 0.16, 0.024, 1.0
        for _ in range(5):
            directions = directions / np.linalg.norm(directions, axis=1, keepdims=True)
            ends = starts + directions * length * rng.uniform(0.7, 1.3, (len(starts), 1))
            layer = np.zeros((frame.height, frame.width), np.uint8)
            segments = [frame.px(np.stack([a, b])) for a, b in zip(starts, ends, strict=True)]
            cv2.polylines(layer, segments, False, 255, frame.thickness(width), cv2.LINE_AA, _SHIFT)
            canvas = np.maximum(canvas, layer.astype(np.float32) / 255.0 * weight)
            starts = np.repeat(ends, 2, axis=0)
            directions = np.repeat(directions, 2, axis=0) + rng.normal(0.0, 0.45, (len(starts), 2))
            length, width, weight = length * 0.8, width * 0.72, weight * 0.75
    hila = sum(np.exp(-(((frame.u - s * 0.2) / 0.07) ** 2 + ((frame.v - 0.45) / 0.1) ** 2)) for s in (-1.0, 1.0))
    vessels = 0.13 * _blur(canvas, 0.004 * frame.scale) + 0.12 * hila
    return (vessels * (0.3 + 0.7 * lungs)).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------
# Findings: each returns (the share of the lung's air it replaces, 0..1; its extent 0..1) for one image.
# Consolidation replaces almost all air (as dense as the heart at difficulty 0), ground glass about half, the
# interstitial pattern less; `strength` (finding_contrast) scales every share.


def _bacterial(
    rng: np.random.Generator, frame: _Frame, anatomy: CxrAnatomy, sides: np.ndarray, strength: float
) -> tuple[np.ndarray, np.ndarray]:
    """A lobar consolidation of one lung: upper zone (sharp lower edge at the fissure) or lower zone."""
    side = int(rng.integers(0, 2))
    sign = -1.0 if side == 0 else 1.0
    if rng.uniform() < 0.6:  # upper lobe: bounded below by the horizontal / oblique fissure
        fissure = rng.uniform(0.38, 0.55)
        lobe = _smoothstep(fissure + 0.015, fissure - 0.015, frame.v)
        centre = (sign * rng.uniform(0.4, 0.6), rng.uniform(0.12, 0.32))
    else:  # lower lobe: fuzzy upper edge, hides the dome
        lobe = _smoothstep(rng.uniform(0.5, 0.62), 0.72, frame.v)
        centre = (sign * rng.uniform(0.5, 0.68), rng.uniform(0.72, 0.88))
    radii = (rng.uniform(0.28, 0.4), rng.uniform(0.22, 0.32))
    r2 = ((frame.u - centre[0]) / radii[0]) ** 2 + ((frame.v - centre[1]) / radii[1]) ** 2
    envelope = np.exp(-(r2**2))  # a flat-topped blob with a soft margin
    texture = 0.88 + 0.12 * np.clip(_noise(rng, frame, 48, 1.2), -2.0, 2.0) / 2.0
    extent = sides[side] * lobe * envelope
    bronchi = []
    hilum = np.array([sign * 0.2, 0.45])
    for _ in range(3):
        target = np.array(centre) + rng.normal(0.0, 0.1, 2)
        mid = (hilum + target) / 2 + rng.normal(0.0, 0.03, 2)
        bronchi.append(np.stack([hilum, mid, target]))
    bronchogram = _blur(_polylines(frame, bronchi, 0.016), 0.003 * frame.scale)
    fill = 0.92 * strength * extent * texture * (1.0 - 0.3 * bronchogram)
    return fill.astype(np.float32), extent.astype(np.float32)


def _viral(
    rng: np.random.Generator, frame: _Frame, anatomy: CxrAnatomy, sides: np.ndarray, strength: float
) -> tuple[np.ndarray, np.ndarray]:
    """Bilateral perihilar interstitial opacity: diffuse haze with a reticular net of fine lines."""
    reach = rng.uniform(0.32, 0.42)
    weight = np.zeros((frame.height, frame.width), np.float32)
    for side, sign in ((0, -1.0), (1, 1.0)):
        hilum_u = sign * rng.uniform(0.22, 0.3)
        spread = np.exp(-(((frame.u - hilum_u) / reach) ** 2) - ((frame.v - rng.uniform(0.42, 0.55)) / 0.4) ** 2)
        weight += sides[side] * spread
    net = np.exp(-((_noise(rng, frame, 150, 1.0) / 0.3) ** 2))  # zero crossings of smooth noise: a mesh
    haze = 0.7 + 0.3 * np.clip(_noise(rng, frame, 24, 1.0), -2.0, 2.0) / 2.0
    fill = 0.5 * strength * weight * (0.6 * haze + 0.45 * net)
    return fill.astype(np.float32), weight.astype(np.float32)


def _covid(
    rng: np.random.Generator, frame: _Frame, anatomy: CxrAnatomy, sides: np.ndarray, strength: float
) -> tuple[np.ndarray, np.ndarray]:
    """Bilateral, peripheral, lower-zone ground glass: patchy opacities along the lateral lung, worst at the bases."""
    lower = _smoothstep(0.4, 0.78, frame.v)
    patches = 1.0 / (1.0 + np.exp(-(_noise(rng, frame, 44, 1.3) - 0.2) / 0.22))
    extent = np.zeros((frame.height, frame.width), np.float32)
    for side, sign in ((0, -1.0), (1, 1.0)):
        lateral = anatomy.lung_lateral[side]
        peripheral = _smoothstep(0.3 * lateral, 0.75 * lateral, sign * frame.u)
        anchor_u, anchor_v = sign * rng.uniform(0.6, 0.75) * lateral, rng.uniform(0.68, 0.85)
        anchor = np.exp(-(((frame.u - anchor_u) / 0.17) ** 2 + ((frame.v - anchor_v) / 0.13) ** 2))
        extent += sides[side] * np.maximum(patches * peripheral * lower, anchor)  # the anchor keeps it bilateral
    texture = 0.8 + 0.2 * np.clip(_noise(rng, frame, 90, 1.0), -2.0, 2.0) / 2.0
    fill = 0.7 * strength * extent * texture
    return fill.astype(np.float32), extent.astype(np.float32)


_FINDINGS = {"bacterial": _bacterial, "viral": _viral, "covid": _covid}


# ---------------------------------------------------------------------------------------------------------
# Rendering


def render_cxr(
    label: str,
    anatomy: CxrAnatomy,
    shape: tuple[int, int],
    findings_rng: np.random.Generator,
    acquisition_rng: np.random.Generator,
    difficulty: float = 0.5,
) -> CxrRender:
    """Render one radiograph of `anatomy` with the findings of `label` in a frame of `shape` (height, width)."""
    if label not in CXR_CLASSES:
        raise CovidlensError(f"unknown chest X-ray class {label!r}; use one of {', '.join(CXR_CLASSES)}")
    frame = _frame(anatomy, *shape)
    sides, lung, depth = _lung_fields(frame, anatomy)
    lungs = sides.max(axis=0)
    cover, airway = _mediastinum(frame, anatomy)
    air = anatomy.air_density * lungs * (0.3 + 0.7 * depth) * (1.0 - 0.85 * cover)  # the heart hides lung behind it
    lesion = np.zeros(shape, bool)
    if label != "normal":
        fill, extent = _FINDINGS[label](findings_rng, frame, anatomy, sides, finding_contrast(difficulty))
        air = air * (1.0 - np.clip(fill, 0.0, 1.0))
        lesion = (extent > 0.3) & lung
    density = (
        _body(frame, anatomy)
        - air
        + 0.08 * cover
        - airway
        + _spine(frame)
        + _ribs(frame, anatomy)
        + _shoulder_girdle(frame)
        + _abdomen(frame, anatomy)
        + _vessels(frame, anatomy, lungs) * (1.0 - 0.8 * cover)
    )
    return CxrRender(_acquire(density, frame, acquisition_rng, difficulty), lung, lesion)


def _acquire(density: np.ndarray, frame: _Frame, rng: np.random.Generator, difficulty: float) -> np.ndarray:
    """Detector response, display window, unsharpness, noise and an occasional side marker, as 8 bits."""
    k = rng.uniform(1.3, 1.7)
    signal = (1.0 - np.exp(-k * np.clip(density, 0.0, None))) / (1.0 - np.exp(-k * 1.7))
    low, high = rng.uniform(0.18, 0.28), rng.uniform(0.95, 1.02)
    image = np.clip((signal - low) / (high - low), 0.0, 1.0) ** rng.uniform(1.0, 1.35)
    image = _blur(image.astype(np.float32), 0.0015 * frame.scale)
    grain = rng.standard_normal(image.shape).astype(np.float32)
    image = image + detector_noise(difficulty) * rng.uniform(0.8, 1.2) * grain
    pixels = np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)
    if rng.uniform() < 0.5:  # a lead side marker in an upper corner
        height = frame.scale * 0.09
        font_scale = height / 22.0
        x = int(frame.width * (0.05 if rng.uniform() < 0.5 else 0.88))
        y = int(frame.height * 0.06 + height)
        cv2.putText(pixels, "R" if rng.uniform() < 0.5 else "L", (x, y), cv2.FONT_HERSHEY_SIMPLEX, font_scale, 245,
                    max(1, int(round(font_scale * 2))), cv2.LINE_AA)
    return pixels


# ---------------------------------------------------------------------------------------------------------
# The dataset


def _write_image(path: Path, image: np.ndarray, params: list[int] | None = None) -> None:
    if not cv2.imwrite(str(path), image, params or []):
        raise CovidlensError(f"could not write {path}; check the folder is writable and the disk is not full")


def _write_one(
    folder: Path, name: str, label: str, seed: int, split: int, index: int, size: int, difficulty: float,
    with_mask: bool,
) -> dict[str, object]:
    """Render and write image `index` of `split` (0 train, 1 test) as `folder/name.png|jpeg`."""
    frame_rng, anatomy_rng, findings_rng, acquisition_rng = image_streams(seed, split, index)
    shape = image_shape(frame_rng, size)
    jpeg = frame_rng.uniform() < JPEG_SHARE
    quality = int(frame_rng.integers(85, 96))
    render = render_cxr(label, draw_cxr_anatomy(anatomy_rng), shape, findings_rng, acquisition_rng, difficulty)
    path = folder / f"{name}.{'jpeg' if jpeg else 'png'}"
    _write_image(path, render.image, [cv2.IMWRITE_JPEG_QUALITY, quality] if jpeg else None)
    mask_path = ""
    if with_mask and render.lesion.any():
        mask_file = folder / f"{name}{MASK_SUFFIX}"
        _write_image(mask_file, render.lesion.astype(np.uint8) * 255)
        mask_path = str(mask_file)
    return {"path": str(path), "label": label, "mask_path": mask_path}


@SYNTH_KINDS.register("cxr")
def synth_cxr(
    out: Path,
    patients: int,
    seed: int = 0,
    difficulty: float = 0.5,
    size: int = 512,
    progress: ProgressFn | None = None,
) -> pd.DataFrame:
    """Write frontal chest radiographs as paper 003's competition: OUT/train/<class>/, OUT/test/, test_labels.csv.

    `patients` is the number of labelled training images (each image its own patient: the competition
    gives no patient ids), in the classes normal / bacterial / viral / covid at 350 : 350 : 350 : 77.
    About 484 / 1127 as many unlabelled test images (same class mix, shuffled) go to OUT/test/<Id>.png|jpeg,
    their labels to OUT/test_labels.csv (Id, label) beside test/. Width and height vary (0.6-1.0 x size,
    some strongly portrait or landscape); about a fifth are JPEG. Training images with findings get a
    lesion mask `<name>.mask.png` beside them.
    """
    out = Path(out)
    _check_common(out, patients, seed, difficulty)
    if patients < len(CXR_CLASSES):
        raise CovidlensError(f"patients={patients!r} is too few; use at least 4 so every class has an image")
    size = _check_size(size)
    if size < MIN_CXR_SIZE:
        raise CovidlensError(f"size={size} is too small for a chest radiograph; use at least {MIN_CXR_SIZE}")
    difficulty = float(difficulty)
    seed = int(seed)
    tests = unlabelled_image_count(patients)
    total = patients + tests
    out.mkdir(parents=True, exist_ok=True)
    for label in CXR_CLASSES:
        (out / "train" / label).mkdir(parents=True, exist_ok=True)
    (out / "test").mkdir()
    rows: list[dict[str, object]] = []
    width = max(4, len(str(patients)))
    for index, label in enumerate(patient_labels(patients, CXR_CLASS_SHARES)):
        name = f"img_{index + 1:0{width}d}"
        row = _write_one(out / "train" / label, name, label, seed, 0, index, size, difficulty, with_mask=True)
        rows.append({**row, "patient_id": name, "split": "train"})
        if progress is not None:
            progress(index + 1, total)
    order = np.random.default_rng(np.random.SeedSequence([seed, 3, 2])).permutation(tests)
    test_labels = patient_labels(tests, CXR_CLASS_SHARES)
    table = []
    for image_id in range(tests):
        label = test_labels[int(order[image_id])]
        row = _write_one(out / "test", str(image_id), label, seed, 1, image_id, size, difficulty, with_mask=False)
        rows.append({**row, "patient_id": f"test_{image_id}", "split": "test"})
        table.append({"Id": image_id, "label": label})
        if progress is not None:
            progress(patients + image_id + 1, total)
    pd.DataFrame(table).to_csv(out / TEST_LABELS, index=False, lineterminator="\n")
    _write_record(
        out, "cxr", patients, seed, difficulty, CXR_CLASS_SHARES, size=size, train_images=patients,
        test_images=tests, test_classes=class_counts(tests, CXR_CLASS_SHARES),
    )
    return pd.DataFrame(rows, columns=CXR_ROW_COLUMNS)
