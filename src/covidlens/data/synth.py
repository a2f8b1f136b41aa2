"""Synthetic chest CT phantoms: patient anatomy in Hounsfield units, COVID-like and other-pneumonia
findings, and generators that write them as datasets (`covidlens synth`).

The core is scanner-independent: `make_phantom` draws one patient's 3D anatomy and findings, and
`render_hu_slice` renders the clean HU image at any height z (0 = lung apex, 1 = lung base). A slice
generator adds acquisition noise and a lung window; a volume generator can stack many z, and a
projection (X-ray) generator can integrate attenuation over z, all from the same phantom.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from covidlens import __version__
from covidlens.atomic import write_json
from covidlens.data import medical_io
from covidlens.data.manifest import MASK_SUFFIX
from covidlens.data.preprocess import window_hu
from covidlens.errors import CovidlensError
from covidlens.registry import Registry

DEFAULT_SLICES = (10, 30)  # slices per patient, like the 15-27 per patient of paper 000's data

SynthGenerator = Callable[..., pd.DataFrame]
ProgressFn = Callable[[int, int], object]

SYNTH_KINDS: Registry[SynthGenerator] = Registry("synth kind")

CLASS_NAMES = ("COVID", "Healthy", "Others")
# Paper 000's "A COVID multiclass dataset of CT scans": 80 COVID, 50 healthy, 80 other-pneumonia patients.
CLASS_SHARES = {"COVID": 80, "Healthy": 50, "Others": 80}
ROW_COLUMNS = ["path", "label", "patient_id", "slice_index", "mask_path"]

# CC-CCII as used by paper 002 (Table 1, complete CT): 246 NCP, 201 CP, 244 Normal patients.
VOLUME_CLASS_SHARES = {"NCP": 246, "CP": 201, "Normal": 244}
VOLUME_PHANTOM_LABELS = {"NCP": "COVID", "CP": "Others", "Normal": "Healthy"}  # which findings each class gets
DEFAULT_VOLUME_SLICES = (16, 40)  # slices per scan: enough for depth-4..32 volumes at small sizes
SECOND_SCAN_SHARE = 1 / 3  # patients with a follow-up scan
VOLUME_ROW_COLUMNS = ["path", "label", "patient_id", "scan_id", "slice_index", "mask_path"]
VOLUME_FORMATS = ("png", "nifti", "dicom")
FIELD_OF_VIEW_MM = 350.0  # side of the square slice in DICOM / NIfTI output
LUNG_HEIGHT_MM = 250.0  # z = 1 (lung base) lies this far below z = 0 (apex): a slice at height h is at -h * this

HU_AIR = -1000.0
HU_FAT = -100.0
HU_SOFT = 40.0
HU_LUNG = -850.0
HU_BONE = 700.0
HU_VESSEL = 40.0
HU_BRONCHUS_AIR = -920.0
LUNG_WINDOW = (-600.0, 1500.0)  # level, width
CHEST_WALL = 0.035  # muscle between the fat and the lungs, body units (about 6 mm on a 35 cm field)



@dataclass(frozen=True)
class SiteProfile:
    """How one hospital's scanner and protocol show the same anatomy (a second source for external tests)."""

    window: tuple[float, float]  # display window (level, width) of the written PNGs
    noise: float  # multiplier of every patient's CT noise SD
    field_of_view: float  # multiplier of the body's size in the image (< 1: a wider field of view)
    kernel: float  # multiplier of the reconstruction blur (> 1: a smoother kernel)
    prefix: str  # put before every patient id, so two sites never share a patient


# Site 1 is the default data; site 2 a second source: a narrower window set lower (darker, more contrast),
# 1.6x the noise, the body at 0.85x its size (a 41 cm instead of a 35 cm field) and a smoother kernel.
SITES = {
    1: SiteProfile(window=LUNG_WINDOW, noise=1.0, field_of_view=1.0, kernel=1.0, prefix=""),
    2: SiteProfile(window=(-500.0, 1200.0), noise=1.6, field_of_view=0.85, kernel=1.6, prefix="s2_"),
}

_SHIFT = 4  # fixed-point bits for sub-pixel polygon vertices in cv2 drawing calls
_FIXED = float(1 << _SHIFT)
_Z_SCALE = 3.0  # lung height / lung half-width, so vessel directions are isotropic in lung-local space
_VESSEL_SLAB = 0.03  # half thickness of a slice in lung-local units (w = z * _Z_SCALE)


# ---------------------------------------------------------------------------------------------------------
# Phantom description (all lengths in body units: the image spans [-1, 1] on both axes before zoom)


@dataclass(frozen=True, eq=False)
class VesselTree:
    """Vessel segments of one lung in lung-local coordinates (u lateral, v posterior, w = z * 3)."""

    start: np.ndarray  # (n, 3)
    end: np.ndarray  # (n, 3)
    radius: np.ndarray  # (n,) in lung-local units


@dataclass(frozen=True, eq=False)
class Anatomy:
    """One patient's body, lungs, heart, bones and vessels; z-dependence is applied when rendering."""

    zoom: float
    rotation: float  # radians
    shift: tuple[float, float]
    body_axes: tuple[float, float]
    body_cy: float
    fat: float
    lung_cx: float  # distance of each lung centre from the midline
    lung_cy: float
    lung_axes: tuple[float, float]
    lung_harmonics: np.ndarray  # (2 sides, 3 harmonics, cos/sin)
    lung_notch: np.ndarray  # (2,) medial (hilar) indentation per side
    dome_start: np.ndarray  # (2,) z where the diaphragm dome starts to replace each lung
    heart_center: tuple[float, float]
    heart_axes: tuple[float, float]
    heart_angle: float  # degrees
    lung_hu: float
    dependent_hu: float  # extra density of the posterior (dependent) lung in a supine patient
    rib_angles: np.ndarray  # (k,) body-ellipse angles of the ribs on one side
    rib_phase: np.ndarray  # (k,)
    vessels: tuple[VesselTree, VesselTree]


@dataclass(frozen=True, eq=False)
class GroundGlass:
    """A ground-glass opacity: blurred lobules that raise lung HU additively."""

    side: int  # 0 = image-left lung, 1 = image-right lung
    z_center: float
    z_half: float
    lobules: np.ndarray  # (k, 5): u, v, axis_a, axis_b, angle (radians), lung-local
    amplitude_hu: float


@dataclass(frozen=True, eq=False)
class Consolidation:
    """A lobar consolidation: a wedge from near the hilum to the pleura, blended toward soft-tissue HU."""

    side: int
    z_center: float
    z_half: float
    apex: tuple[float, float]  # lung-local u, v
    direction: float  # radians, lung-local
    half_angle: float
    density_hu: float
    strength: float  # blend weight toward density_hu, 0..1
    bronchi: tuple[np.ndarray, ...]  # air-bronchogram polylines, lung-local (m, 2)


Finding = GroundGlass | Consolidation


@dataclass(frozen=True, eq=False)
class Phantom:
    """A synthetic patient: label, anatomy, findings and scan noise level."""

    patient_id: str
    label: str
    anatomy: Anatomy
    findings: tuple[Finding, ...]
    noise_hu: float


@dataclass(frozen=True, eq=False)
class SliceRender:
    """A clean rendered slice: HU image, lung mask and lesion mask (same shape)."""

    hu: np.ndarray  # float32
    lung: np.ndarray  # bool
    lesion: np.ndarray  # bool


# ---------------------------------------------------------------------------------------------------------
# Difficulty: every knob is a smooth function of d in [0, 1]


def _lerp(easy: float, hard: float, d: float) -> float:
    return easy + (hard - easy) * d


def lesion_z_fraction(difficulty: float) -> float:
    """Fraction of the lung height that carries findings in an ill patient."""
    return _lerp(1.0, 0.6, difficulty)


def lesion_size_scale(difficulty: float) -> float:
    """Multiplier of lesion size."""
    return _lerp(1.7, 0.7, difficulty)


def ggo_amplitude_hu(difficulty: float) -> float:
    """HU added by ground-glass opacity at its core."""
    return _lerp(480.0, 120.0, difficulty)


def consolidation_strength(difficulty: float) -> float:
    """Blend weight of consolidation toward soft-tissue density."""
    return _lerp(1.0, 0.4, difficulty)


def noise_hu(difficulty: float) -> float:
    """Nominal standard deviation of CT noise in HU."""
    return _lerp(12.0, 45.0, difficulty)


# ---------------------------------------------------------------------------------------------------------
# Patients and classes


def class_counts(patients: int, shares: dict[str, int] = CLASS_SHARES) -> dict[str, int]:
    """Patients per class in the proportions of `shares` (default paper 000's), at least one per class."""
    names = tuple(shares)
    total = sum(shares.values())
    exact = {c: patients * shares[c] / total for c in names}
    counts = {c: int(exact[c]) for c in names}
    by_remainder = sorted(names, key=lambda c: (-(exact[c] - counts[c]), names.index(c)))
    for c in by_remainder[: patients - sum(counts.values())]:
        counts[c] += 1
    for c in names:
        if counts[c] == 0:
            donor = max(names, key=lambda k: counts[k])
            counts[donor] -= 1
            counts[c] = 1
    return counts


def patient_labels(patients: int, shares: dict[str, int] = CLASS_SHARES) -> list[str]:
    """Class of each patient index, classes interleaved evenly (COVID, Healthy, Others, ...)."""
    names = tuple(shares)
    counts = class_counts(patients, shares)
    keyed = [((j + 0.5) / counts[c], names.index(c), c) for c in names for j in range(counts[c])]
    return [c for _, _, c in sorted(keyed)]


def patient_id(label: str, index: int, patients: int) -> str:
    """Unique patient id such as `covid_p001` (1-based index across the whole set)."""
    width = max(3, len(str(patients)))
    return f"{label.lower()}_p{index + 1:0{width}d}"


def patient_streams(seed: int, index: int, site: int = 1) -> tuple[np.random.Generator, ...]:
    """Independent RNGs (anatomy, findings, acquisition) of one patient, from (seed, index[, site]) only."""
    children = np.random.SeedSequence([seed, index] if site == 1 else [seed, index, site]).spawn(3)
    return tuple(np.random.default_rng(c) for c in children)


def make_phantom(
    label: str,
    difficulty: float,
    anatomy_rng: np.random.Generator,
    findings_rng: np.random.Generator,
    patient_id: str = "",
) -> Phantom:
    """Draw one patient; its random draws ignore difficulty, so difficulty moves findings smoothly."""
    anatomy = draw_anatomy(anatomy_rng)
    if label == "COVID":
        findings: tuple[Finding, ...] = _draw_covid(findings_rng, anatomy, difficulty)
    elif label == "Others":
        findings = _draw_pneumonia(findings_rng, difficulty)
    elif label == "Healthy":
        findings = ()
    else:
        raise CovidlensError(f"unknown phantom label {label!r}; use one of {', '.join(CLASS_NAMES)}")
    noise = noise_hu(difficulty) * float(findings_rng.uniform(0.8, 1.25))
    return Phantom(patient_id, label, anatomy, findings, noise)


def draw_anatomy(rng: np.random.Generator) -> Anatomy:
    """Draw a patient's anatomy: body size, lung shape, small rotation, vessels."""
    body_b = rng.uniform(0.56, 0.65)
    rib_count = 7
    return Anatomy(
        zoom=rng.uniform(0.86, 1.0),
        rotation=float(np.clip(rng.normal(0.0, 0.05), -0.1, 0.1)),
        shift=(rng.uniform(-0.03, 0.03), rng.uniform(-0.03, 0.03)),
        body_axes=(rng.uniform(0.82, 0.92), body_b),
        body_cy=0.04,
        fat=rng.uniform(0.025, 0.075),
        lung_cx=rng.uniform(0.37, 0.40),
        lung_cy=rng.uniform(-0.04, 0.01),
        lung_axes=(rng.uniform(0.27, 0.31), rng.uniform(0.41, 0.45)),
        lung_harmonics=rng.normal(0.0, 0.03, (2, 3, 2)),
        lung_notch=rng.uniform(0.15, 0.28, 2),
        dome_start=np.array([0.68, 0.74]) + rng.uniform(-0.04, 0.04, 2),
        heart_center=(rng.uniform(0.12, 0.18), rng.uniform(-0.18, -0.1)),
        heart_axes=(rng.uniform(0.21, 0.26), rng.uniform(0.16, 0.2)),
        heart_angle=rng.uniform(20.0, 40.0),
        lung_hu=HU_LUNG + rng.uniform(-30.0, 30.0),
        dependent_hu=rng.uniform(20.0, 90.0),
        rib_angles=np.linspace(0.45, np.pi - 0.45, rib_count) + rng.uniform(-0.08, 0.08, rib_count),
        rib_phase=rng.uniform(0.0, 1.0, rib_count),
        vessels=(_draw_vessel_tree(rng), _draw_vessel_tree(rng)),
    )


def _draw_vessel_tree(rng: np.random.Generator, roots: int = 22, depth: int = 5) -> VesselTree:
    """Branching segments from the hilum outward; thick and dense near the hilum, fine at the periphery."""
    hilum = np.array([-0.55, 0.05, 0.5 * _Z_SCALE])
    direction = rng.normal(0.0, 1.0, (roots, 3))
    direction[:, 0] = np.abs(direction[:, 0]) + 0.4  # grow laterally, away from the mediastinum
    direction[:, 2] *= 1.6  # and up and down the tall lung
    start = np.repeat(hilum[None, :], roots, axis=0)
    length, radius = 0.4, 0.04
    starts, ends, radii = [], [], []
    for _ in range(depth + 1):
        direction = direction / np.linalg.norm(direction, axis=1, keepdims=True)
        seg_len = length * rng.uniform(0.7, 1.3, (len(start), 1))
        end = start + direction * seg_len
        starts.append(start)
        ends.append(end)
        radii.append(np.full(len(start), radius))
        start = np.repeat(end, 2, axis=0)
        direction = np.repeat(direction, 2, axis=0) + rng.normal(0.0, 0.55, (len(start), 3))
        length, radius = length * 0.75, radius * 0.7
    return VesselTree(np.concatenate(starts), np.concatenate(ends), np.concatenate(radii))


def lung_radius(anatomy: Anatomy, side: int, theta: np.ndarray | float) -> np.ndarray:
    """Lung-local radius of the lung outline at angle theta (0 lateral, pi/2 posterior, pi medial)."""
    theta = np.asarray(theta, dtype=np.float64)
    k = np.arange(2, 5)[:, None]
    coef = anatomy.lung_harmonics[side]
    shape = (coef[:, :1] * np.cos(k * theta.ravel()) + coef[:, 1:] * np.sin(k * theta.ravel())).sum(axis=0)
    medial = np.angle(np.exp(1j * (theta.ravel() - np.pi)))
    notch = anatomy.lung_notch[side] * np.exp(-(medial**2) / (2 * 0.4**2))
    return (1.0 + shape - notch).reshape(theta.shape)


def _peripheral_point(rng: np.random.Generator, anatomy: Anatomy, side: int) -> tuple[float, float, float]:
    """A subpleural point, mostly posterior/lateral (dependent lung); returns u, v, theta."""
    theta = float(np.clip(rng.normal(0.8, 0.8), -1.6, 2.3))
    rho = float(lung_radius(anatomy, side, theta)) * rng.uniform(0.82, 0.95)
    return rho * np.cos(theta), rho * np.sin(theta), theta


def _lesion_band(rng: np.random.Generator, difficulty: float, lower_bias: float) -> tuple[float, float]:
    """Centre and half height of the z-range that carries findings; lower lung favoured."""
    z_lo, z_hi = 0.04, 0.97
    width = (z_hi - z_lo) * lesion_z_fraction(difficulty) * rng.uniform(0.92, 1.0)
    centre = z_lo + width / 2 + (z_hi - z_lo - width) * rng.beta(lower_bias, 2.0)
    return centre, width / 2


def _draw_covid(rng: np.random.Generator, anatomy: Anatomy, difficulty: float) -> tuple[GroundGlass, ...]:
    """Bilateral, peripheral ground-glass opacities, more in the lower and posterior lung."""
    size = lesion_size_scale(difficulty)
    amplitude = ggo_amplitude_hu(difficulty) * rng.uniform(0.85, 1.15)
    z_center, z_half = _lesion_band(rng, difficulty, lower_bias=3.0)
    extra_weight = np.clip((1.0 - difficulty) * 3.0 - np.arange(3), 0.0, 1.0)  # extra patches fade out
    findings = []
    for side in (0, 1):
        # an anchor patch spans the whole band, so every lesioned slice is bilateral
        patches = [(z_center, z_half * 1.08, 1.0)]
        for weight in extra_weight:
            zc = z_center + z_half * rng.uniform(-0.8, 0.8)
            patches.append((zc, z_half * rng.uniform(0.3, 0.7), float(weight)))
        for zc, zh, weight in patches:
            lobules = _ggo_lobules(rng, anatomy, side, rng.uniform(0.24, 0.36) * size)
            if weight > 0:
                lobules[:, 2:4] *= weight
                findings.append(GroundGlass(side, zc, zh, lobules, amplitude))
    return tuple(findings)


def _ggo_lobules(rng: np.random.Generator, anatomy: Anatomy, side: int, radius: float) -> np.ndarray:
    """Three ellipses around a subpleural point, elongated along the pleura."""
    u, v, theta = _peripheral_point(rng, anatomy, side)
    tangent = np.array([-np.sin(theta), np.cos(theta)])
    normal = np.array([np.cos(theta), np.sin(theta)])
    lobules = np.empty((3, 5))
    for i in range(3):
        offset = tangent * rng.uniform(-0.6, 0.6) * radius + normal * rng.uniform(-0.2, 0.2) * radius
        lobules[i] = (
            u + offset[0],
            v + offset[1],
            radius * rng.uniform(0.6, 1.0),
            radius * rng.uniform(0.4, 0.7),
            theta + np.pi / 2 + rng.normal(0.0, 0.3),
        )
    return lobules


def _draw_pneumonia(rng: np.random.Generator, difficulty: float) -> tuple[Consolidation, ...]:
    """Lobar consolidation of one lung, sometimes a small patch in the other lung."""
    z_center, z_half = _lesion_band(rng, difficulty, lower_bias=2.5)
    side = int(rng.integers(0, 2))
    density = rng.uniform(-100.0, 40.0)
    strength = consolidation_strength(difficulty) * rng.uniform(0.9, 1.0)
    size = lesion_size_scale(difficulty)
    push = _lerp(0.0, 0.45, difficulty)
    main = _wedge(rng, side, z_center, z_half * 1.08, size, density, strength, push)
    second = _wedge(rng, 1 - side, z_center, z_half * 0.6, size * 0.45, density, strength, push + 0.4)
    return (main, second) if rng.uniform() < 0.3 else (main,)


def _wedge(
    rng: np.random.Generator,
    side: int,
    z_center: float,
    z_half: float,
    size: float,
    density: float,
    strength: float,
    push: float,
) -> Consolidation:
    """A wedge from near the hilum to the pleura; `push` moves its apex outward (a smaller lobe region)."""
    direction = rng.uniform(-0.5, 1.9)
    half_angle = rng.uniform(0.45, 0.8) * min(size, 1.1)
    apex = np.array([-0.45, rng.uniform(-0.3, 0.3)]) + push * np.array([np.cos(direction), np.sin(direction)])
    bronchi = []
    for _ in range(4):
        offset = rng.uniform(-0.6, 0.6) * half_angle
        steps = np.linspace(0.15, 1.2, 6)
        angles = direction + offset + np.cumsum(rng.normal(0.0, 0.08, 6))
        line = apex + steps[:, None] * np.stack([np.cos(angles), np.sin(angles)], axis=1)
        bronchi.append(line)
        fork = rng.integers(2, 4)
        branch_angles = angles[fork] + rng.choice([-1.0, 1.0]) * rng.uniform(0.3, 0.6)
        tail = steps[fork:] - steps[fork]
        branch = line[fork] + tail[:, None] * np.array([np.cos(branch_angles), np.sin(branch_angles)])
        bronchi.append(branch)
    return Consolidation(
        side,
        z_center,
        z_half,
        (float(apex[0]), float(apex[1])),
        direction,
        half_angle,
        density,
        strength,
        tuple(bronchi),
    )


# ---------------------------------------------------------------------------------------------------------
# Geometry: homogeneous 3x3 matrices from body / lung-local coordinates to pixels


def _matrix(linear: np.ndarray, offset: np.ndarray) -> np.ndarray:
    m = np.eye(3)
    m[:2, :2] = linear
    m[:2, 2] = offset
    return m


def body_to_pixels(anatomy: Anatomy, size: int) -> np.ndarray:
    """Matrix from body units (image spans [-1, 1] before zoom) to pixel coordinates."""
    c, s = np.cos(anatomy.rotation), np.sin(anatomy.rotation)
    rotate = _matrix(anatomy.zoom * np.array([[c, -s], [s, c]]), np.asarray(anatomy.shift))
    return _matrix(np.eye(2) * size / 2, np.full(2, size / 2 - 0.5)) @ rotate


def lung_scale(z: float) -> float:
    """Lung size along z: small at the apex, largest at mid height, shrinking toward the base."""
    z = float(np.clip(z, 0.0, 1.0))
    rise = np.sin(0.5 * np.pi * min(1.0, z / 0.6)) ** 0.7
    fall = 1.0 - 0.12 * max(0.0, (z - 0.6) / 0.4) ** 2
    return 0.3 + 0.7 * rise * fall


def lung_to_body(anatomy: Anatomy, side: int, z: float) -> np.ndarray:
    """Matrix from lung-local (u lateral, v posterior) to body units for one lung at height z."""
    sign = -1.0 if side == 0 else 1.0
    scale = lung_scale(z)
    ax, ay = anatomy.lung_axes
    offset = np.array([sign * anatomy.lung_cx, anatomy.lung_cy])
    return _matrix(np.diag([sign * ax * scale, ay * scale]), offset)


def _apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ m[:2, :2].T + m[:2, 2]


def _fixed(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return np.round(_apply(m, pts) * _FIXED).astype(np.int32)


def _ellipse(cx: float, cy: float, ax: float, ay: float, angle: float = 0.0, n: int = 40) -> np.ndarray:
    t = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    x, y = ax * np.cos(t), ay * np.sin(t)
    c, s = np.cos(angle), np.sin(angle)
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], axis=1)


def _fill(img: np.ndarray, m: np.ndarray, pts: np.ndarray, value: float) -> None:
    cv2.fillPoly(img, [_fixed(m, pts)], value, cv2.LINE_8, _SHIFT)


def _smoothstep(lo: float, hi: float, x: float) -> float:
    t = float(np.clip((x - lo) / (hi - lo), 0.0, 1.0))
    return t * t * (3 - 2 * t)


# ---------------------------------------------------------------------------------------------------------
# Rendering


def render_hu_slice(phantom: Phantom, z: float, size: int) -> SliceRender:
    """Render the clean HU slice of a phantom at height z (0 apex, 1 base), with lung and lesion masks."""
    anatomy = phantom.anatomy
    to_px = body_to_pixels(anatomy, size)
    hu = np.full((size, size), HU_AIR, dtype=np.float32)
    _draw_body(hu, to_px, anatomy, z)
    lung = np.zeros((size, size), dtype=np.uint8)
    lung_px = [to_px @ lung_to_body(anatomy, side, z) for side in (0, 1)]
    for side in (0, 1):
        _fill(lung, lung_px[side], _lung_outline(anatomy, side), 1)
    cavity = np.zeros_like(lung)  # the lungs never reach past the chest wall (muscle and ribs)
    _fill(cavity, to_px, _body_section(anatomy, z, anatomy.fat + CHEST_WALL), 1)
    lung &= cavity
    carve = _carved_structures(anatomy, z, lung_px)
    for pts, m, _ in carve:
        _fill(lung, m, pts, 0)
    in_lung = lung.astype(bool)
    hu[in_lung] = _lung_density(anatomy, z, to_px, size)[in_lung]
    for pts, m, value in carve:
        _fill(hu, m, pts, value)
    _draw_airways(hu, to_px, z)
    lung_f = lung.astype(np.float32)
    _draw_vessels(hu, lung_f, anatomy, z, lung_px, size)
    lesion = _draw_findings(hu, lung_f, phantom.findings, z, lung_px, size) & in_lung
    return SliceRender(hu, in_lung, lesion)


def _body_section(anatomy: Anatomy, z: float, inset: float) -> np.ndarray:
    """The body's cross-section at height z shrunk by `inset` (0: the skin), flattened at the back."""
    a, b = anatomy.body_axes
    a *= 0.95 + 0.05 * z
    back = anatomy.body_cy + b * 0.9  # supine: the back is flattened on the table
    outline = _ellipse(0.0, anatomy.body_cy, a - inset, b - inset, n=72)
    outline[:, 1] = np.minimum(outline[:, 1], back - inset)
    return outline


def _draw_body(hu: np.ndarray, to_px: np.ndarray, anatomy: Anatomy, z: float) -> None:
    """Table, body outline with fat rim and soft tissue."""
    back = anatomy.body_cy + anatomy.body_axes[1] * 0.9
    table = np.array([[-0.95, back + 0.04], [0.95, back + 0.04], [0.95, back + 0.1], [-0.95, back + 0.1]])
    _fill(hu, to_px, table, -300.0)
    top_edge = table[[0, 1, 1, 0]] + np.array([[0, -0.005], [0, -0.005], [0, 0.008], [0, 0.008]])
    _fill(hu, to_px, top_edge, 200.0)
    _fill(hu, to_px, _body_section(anatomy, z, 0.0), HU_FAT)
    _fill(hu, to_px, _body_section(anatomy, z, anatomy.fat), HU_SOFT)


def _lung_outline(anatomy: Anatomy, side: int, n: int = 72) -> np.ndarray:
    theta = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    rho = lung_radius(anatomy, side, theta)
    return np.stack([rho * np.cos(theta), rho * np.sin(theta)], axis=1)


def _carved_structures(
    anatomy: Anatomy, z: float, lung_px: list[np.ndarray]
) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """Structures drawn over the lungs (polygon, matrix to pixels, HU): they cut the lung mask too."""
    to_px = lung_px[0] @ np.linalg.inv(lung_to_body(anatomy, 0, z))
    a, b = anatomy.body_axes
    cy = anatomy.body_cy
    out: list[tuple[np.ndarray, np.ndarray, float]] = []
    out.append((_ellipse(0.0, cy - 0.16, 0.12, 0.3), to_px, HU_SOFT))  # mediastinum
    heart = _smoothstep(0.35, 0.65, z) * (1.0 - 0.3 * _smoothstep(0.85, 1.0, z))
    if heart > 0.05:
        (hx, hy), (ha, hb) = anatomy.heart_center, anatomy.heart_axes
        angle = np.radians(anatomy.heart_angle)
        out.append((_ellipse(hx, hy, (ha + 0.025) * heart, (hb + 0.025) * heart, angle), to_px, -90.0))
        out.append((_ellipse(hx, hy, ha * heart, hb * heart, angle), to_px, HU_SOFT))
    for side in (0, 1):
        start = anatomy.dome_start[side]
        if z > start:
            radius = 1.15 * np.sqrt((z - start) / (1.0 - start))
            out.append((_ellipse(-0.3, -0.3, radius, radius), lung_px[side], 55.0))  # liver / spleen dome
    spine_y = cy + b * 0.5
    if z > 0.25:
        out.append((_ellipse(0.1, spine_y - 0.12, 0.05, 0.05), to_px, 45.0))  # descending aorta
    out.append((_ellipse(0.0, spine_y, 0.085, 0.08), to_px, 450.0))  # vertebral body
    out.append((_ellipse(0.0, spine_y + 0.12, 0.07, 0.055), to_px, HU_BONE))  # posterior arch
    out.append((_ellipse(0.0, spine_y + 0.12, 0.035, 0.03), to_px, 20.0))  # spinal canal
    out.append((_ellipse(0.0, spine_y + 0.19, 0.018, 0.04), to_px, HU_BONE))  # spinous process
    if 0.15 < z < 0.85:
        out.append((_ellipse(0.0, cy - b + anatomy.fat + 0.045, 0.05, 0.022), to_px, HU_BONE))  # sternum
    out.extend((pts, to_px, HU_BONE) for pts in _ribs(anatomy, z))
    return out


def _ribs(anatomy: Anatomy, z: float) -> list[np.ndarray]:
    """Rib cross-sections just inside the body wall; ribs are oblique, so they come and go with z."""
    a, b = anatomy.body_axes
    wall_a, wall_b = a - anatomy.fat - 0.06, b - anatomy.fat - 0.05
    ribs = []
    for angle0, phase in zip(anatomy.rib_angles, anatomy.rib_phase, strict=True):
        cycle = 2 * np.pi * (z * 5.0 + phase)
        if np.sin(cycle) < -0.3:
            continue
        t = angle0 + 0.12 * np.cos(cycle)  # 0 anterior midline, pi posterior midline
        for sign in (-1.0, 1.0):
            x, y = sign * wall_a * np.sin(t), anatomy.body_cy - wall_b * np.cos(t)
            tangent = np.arctan2(wall_b * np.sin(t), sign * wall_a * np.cos(t))
            ribs.append(_ellipse(x, y, 0.045, 0.02, tangent, n=20))
    return ribs


def _lung_density(anatomy: Anatomy, z: float, to_px: np.ndarray, size: int) -> np.ndarray:
    """Lung HU: patient baseline plus a posterior (dependent) density gradient, as rows of a column."""
    ay = anatomy.lung_axes[1] * lung_scale(z)
    y_front = _apply(to_px, np.array([[0.0, anatomy.lung_cy + 0.2 * ay]]))[0, 1]
    y_back = _apply(to_px, np.array([[0.0, anatomy.lung_cy + 1.0 * ay]]))[0, 1]
    rows = np.arange(size, dtype=np.float32)
    t = np.clip((rows - y_front) / max(y_back - y_front, 1.0), 0.0, 1.0)
    column = anatomy.lung_hu + anatomy.dependent_hu * t * t * (3 - 2 * t)
    return np.broadcast_to(column[:, None].astype(np.float32), (size, size))


def _draw_airways(hu: np.ndarray, to_px: np.ndarray, z: float) -> None:
    """Trachea above the carina, then the two main bronchi."""
    if z < 0.38:
        _fill(hu, to_px, _ellipse(0.0, -0.1, 0.045, 0.04), HU_AIR)
    elif z < 0.5:
        spread = 0.03 + 0.6 * (z - 0.38)
        for sign in (-1.0, 1.0):
            _fill(hu, to_px, _ellipse(sign * spread, -0.08, 0.028, 0.026), HU_AIR)


def _draw_vessels(
    hu: np.ndarray, lung: np.ndarray, anatomy: Anatomy, z: float, lung_px: list[np.ndarray], size: int
) -> None:
    """Vessel segments crossing this slice's slab: dots where steep, short branches where in-plane."""
    canvas = np.zeros((size, size), dtype=np.uint8)
    w = z * _Z_SCALE
    for side in (0, 1):
        tree = anatomy.vessels[side]
        px_per_unit = abs(lung_px[side][0, 0])
        segments = _slab_segments(tree, w - _VESSEL_SLAB, w + _VESSEL_SLAB)
        if segments is None:
            continue
        p0, p1, radius = segments
        thickness = np.maximum(1, np.round(2 * radius * px_per_unit)).astype(int)
        a, b = _fixed(lung_px[side], p0), _fixed(lung_px[side], p1)
        for t in np.unique(thickness):
            sel = thickness == t
            lines = list(np.stack([a[sel], b[sel]], axis=1))
            cv2.polylines(canvas, lines, False, 255, int(t), cv2.LINE_AA, _SHIFT)
    alpha = canvas.astype(np.float32) * (lung / 255.0)
    hu += alpha * (HU_VESSEL - hu)


def _slab_segments(
    tree: VesselTree, w_lo: float, w_hi: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The parts of the vessel segments inside the slab w_lo..w_hi, projected to (u, v)."""
    w0, w1 = tree.start[:, 2], tree.end[:, 2]
    dw = w1 - w0
    safe = np.where(np.abs(dw) < 1e-9, 1e-9, dw)
    ta, tb = (w_lo - w0) / safe, (w_hi - w0) / safe
    t_min = np.clip(np.minimum(ta, tb), 0.0, 1.0)
    t_max = np.clip(np.maximum(ta, tb), 0.0, 1.0)
    keep = t_max > t_min
    if not keep.any():
        return None
    d = (tree.end - tree.start)[keep, :2]
    p0 = tree.start[keep, :2] + t_min[keep, None] * d
    p1 = tree.start[keep, :2] + t_max[keep, None] * d
    return p0, p1, tree.radius[keep]


def _taper(finding: Finding, z: float) -> float:
    """In-plane size factor of a finding at height z (an ellipsoid in z); 0 outside its z-range."""
    t = (z - finding.z_center) / finding.z_half
    return float(np.sqrt(1.0 - t * t)) if abs(t) < 1.0 else 0.0


def _draw_findings(
    hu: np.ndarray,
    lung: np.ndarray,
    findings: tuple[Finding, ...],
    z: float,
    lung_px: list[np.ndarray],
    size: int,
) -> np.ndarray:
    """Apply GGO (additive) and consolidation (blend, air bronchograms); return the lesion mask."""
    lesion = np.zeros((size, size), dtype=bool)
    active = [(f, _taper(f, z)) for f in findings]
    active = [(f, k) for f, k in active if k > 0.0]
    if not active:
        return lesion
    low = max(64, size // 4)  # lesion fields are smooth: draw and blur them at low resolution
    to_low = _matrix(np.eye(2) * low / size, np.full(2, 0.5 * low / size - 0.5))
    ggo_hu = np.zeros((low, low), np.float32)
    ggo_cover = np.zeros((low, low), np.float32)
    cons_alpha = np.zeros((low, low), np.float32)
    cons_density = np.zeros((low, low), np.float32)
    cons_cover = np.zeros((low, low), np.float32)
    bronchi = np.zeros((size, size), np.uint8)
    for finding, k in active:
        m = to_low @ lung_px[finding.side]
        unit = abs(m[0, 0])  # low-res pixels per lung-local unit
        shape = np.zeros((low, low), np.float32)
        if isinstance(finding, GroundGlass):
            scale = 0.4 + 0.6 * k
            for u, v, la, lb, angle in finding.lobules:
                _fill(shape, m, _ellipse(u, v, la * scale, lb * scale, angle, n=28), 1.0)
            shape = cv2.GaussianBlur(shape, (0, 0), max(0.5, 0.1 * unit))
            np.maximum(ggo_hu, shape * finding.amplitude_hu, out=ggo_hu)
            np.maximum(ggo_cover, shape, out=ggo_cover)
        else:
            _fill(shape, m, _wedge_polygon(finding, k), 1.0)
            shape = cv2.GaussianBlur(shape, (0, 0), max(0.5, 0.03 * unit))
            alpha = shape * finding.strength
            cons_density[alpha > cons_alpha] = finding.density_hu
            np.maximum(cons_alpha, alpha, out=cons_alpha)
            np.maximum(cons_cover, shape, out=cons_cover)
            _draw_bronchi(bronchi, lung_px[finding.side], finding, k, size)
    up = _resizer(size)
    if ggo_cover.any():
        hu += up(ggo_hu) * lung
        lesion |= up(ggo_cover) >= 0.5
    if cons_cover.any():
        alpha = up(cons_alpha) * lung
        hu += alpha * (up(cons_density) - hu)
        air = bronchi.astype(np.float32) / 255.0 * alpha
        hu += air * (HU_BRONCHUS_AIR - hu)
        lesion |= up(cons_cover) >= 0.5
    return lesion


def _resizer(size: int) -> Callable[[np.ndarray], np.ndarray]:
    return lambda field: cv2.resize(field, (size, size), interpolation=cv2.INTER_LINEAR)


def _wedge_polygon(finding: Consolidation, k: float) -> np.ndarray:
    """Wedge outline in lung-local units; toward its z ends it narrows and retreats to the pleura."""
    direction = np.array([np.cos(finding.direction), np.sin(finding.direction)])
    apex = np.asarray(finding.apex) + (1.0 - k) * 0.6 * direction
    half = finding.half_angle * (0.35 + 0.65 * k)
    arc = finding.direction + np.linspace(-half, half, 12)
    far = apex + 2.5 * np.stack([np.cos(arc), np.sin(arc)], axis=1)
    return np.vstack([apex[None, :], far])


def _draw_bronchi(canvas: np.ndarray, m: np.ndarray, finding: Consolidation, k: float, size: int) -> None:
    direction = np.array([np.cos(finding.direction), np.sin(finding.direction)])
    shift = (1.0 - k) * 0.6 * direction
    lines = [_fixed(m, line + shift) for line in finding.bronchi]
    cv2.polylines(canvas, lines, False, 255, max(1, round(size / 300)), cv2.LINE_AA, _SHIFT)


def simulate_acquisition(
    hu: np.ndarray, rng: np.random.Generator, noise_hu: float, blur: float = 1.0
) -> np.ndarray:
    """Scanner blur (`blur` x the default kernel) and spatially correlated Gaussian noise (in HU), scaled to
    the image size."""
    size = hu.shape[0]
    sigma = 0.8 * size / 512 * blur
    out = cv2.GaussianBlur(hu, (0, 0), sigma) if sigma >= 0.3 else hu.copy()
    noise = rng.standard_normal(hu.shape, dtype=np.float32)
    if sigma >= 0.3:
        ksize = 2 * int(np.ceil(3 * sigma)) + 1
        kernel = cv2.getGaussianKernel(ksize, sigma, cv2.CV_64F)
        noise = cv2.GaussianBlur(noise, (ksize, ksize), sigma)
        noise /= np.float32((kernel**2).sum())  # separable blur scales the noise std by sum(k^2)
    out += noise * np.float32(noise_hu)
    return out


def lung_window(hu: np.ndarray, level: float = LUNG_WINDOW[0], width: float = LUNG_WINDOW[1]) -> np.ndarray:
    """Map HU through a display window to 0..255 uint8."""
    return np.rint(window_hu(hu, level, width) * np.float32(255.0)).astype(np.uint8)


def slice_heights(rng: np.random.Generator, count: int) -> np.ndarray:
    """z of `count` evenly spaced slices over a patient-specific scan range, apex first."""
    top, bottom = rng.uniform(0.0, 0.06), rng.uniform(0.92, 1.0)
    return top + (np.arange(count) + 0.5) * (bottom - top) / count


# ---------------------------------------------------------------------------------------------------------
# Validation and dataset writers


def _check_common(out: Path, patients: int, seed: int, difficulty: float) -> None:
    if isinstance(patients, bool) or not isinstance(patients, int | np.integer) or patients < 3:
        raise CovidlensError(f"patients={patients!r} is too few; use at least 3 so every class has a patient")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise CovidlensError(f"seed={seed!r} is not a non-negative integer; use e.g. --seed 0")
    if not isinstance(difficulty, int | float | np.number) or not 0.0 <= float(difficulty) <= 1.0:
        raise CovidlensError(f"difficulty={difficulty!r} is outside 0..1; use 0 (easy) to 1 (hard)")
    if out.exists() and not out.is_dir():
        raise CovidlensError(f"{out} exists and is not a folder; choose a new folder")
    if out.is_dir() and any(out.iterdir()):
        raise CovidlensError(f"{out} exists and is not empty; choose a new folder or remove it")


def _check_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or not 32 <= size <= 4096:
        raise CovidlensError(f"size={size!r} is not a pixel size from 32 to 4096; use e.g. 512")
    return int(size)


def _check_slices(slices: tuple[int, int]) -> tuple[int, int]:
    try:
        low, high = (int(s) for s in slices)
    except (TypeError, ValueError):
        raise CovidlensError(f"slices={slices!r} is not a (min, max) pair; use e.g. 10 30") from None
    if not 1 <= low <= high:
        raise CovidlensError(f"slices={slices!r} needs 1 <= min <= max; use e.g. 10 30")
    return low, high


def synthesize(
    kind: str, out: Path, patients: int, seed: int = 0, difficulty: float = 0.5, **options: object
) -> pd.DataFrame:
    """Write a synthetic dataset of `kind` into the new folder `out`; one row per written image."""
    generator = SYNTH_KINDS.get(kind)
    out = Path(out)
    _check_common(out, patients, seed, difficulty)
    accepted = set(inspect.signature(generator).parameters) - {"out", "patients", "seed", "difficulty"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise CovidlensError(
            f"synth kind {kind!r} has no option {', '.join(unknown)}; "
            f"it accepts {', '.join(sorted(accepted))}"
        )
    return generator(out, patients, seed=seed, difficulty=difficulty, **options)


@SYNTH_KINDS.register("ct-slices")
def synth_ct_slices(
    out: Path,
    patients: int,
    seed: int = 0,
    difficulty: float = 0.5,
    size: int = 512,
    slices: tuple[int, int] = DEFAULT_SLICES,
    progress: ProgressFn | None = None,
    site: int = 1,
    classes: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Write 2D CT slices as OUT/<class>/<patient>/slice_NNN.png, with lesion masks beside lesioned slices.

    `site` 2 is a second source (see SITES): other patients, seen through another scanner and protocol.
    `classes` writes only those classes, in their usual proportions (e.g. COVID only, as paper 004's
    Italian source).
    """
    out = Path(out)
    _check_common(out, patients, seed, difficulty)
    size = _check_size(size)
    low, high = _check_slices(slices)
    profile = _check_site(site)
    shares = _class_shares(classes)
    difficulty = float(difficulty)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, object]] = []
    labels = patient_labels(patients, shares)
    for index, label in enumerate(labels):
        anatomy_rng, findings_rng, scan_rng = patient_streams(int(seed), index, int(site))
        pid = profile.prefix + patient_id(label, index, patients)
        phantom = site_phantom(make_phantom(label, difficulty, anatomy_rng, findings_rng, pid), profile)
        rows.extend(_write_patient_slices(out, phantom, scan_rng, size, (low, high), profile))
        if progress is not None:
            progress(index + 1, patients)
    _write_record(
        out, "ct-slices", patients, seed, difficulty, shares, size=size, slices=[low, high], site=int(site)
    )
    return pd.DataFrame(rows, columns=ROW_COLUMNS)


def _class_shares(classes: Sequence[str] | None) -> dict[str, int]:
    """Paper 000's class shares, restricted to `classes` (all of them when None)."""
    if classes is None:
        return CLASS_SHARES
    unknown = [c for c in classes if c not in CLASS_SHARES]
    if unknown or not classes:
        raise CovidlensError(
            f"classes {list(classes)!r}: ct-slices writes {', '.join(CLASS_NAMES)}; name one or more of them"
        )
    return {c: CLASS_SHARES[c] for c in CLASS_NAMES if c in classes}


def _check_site(site: int) -> SiteProfile:
    if isinstance(site, bool) or site not in SITES:
        raise CovidlensError(f"site={site!r} is not a synthetic site; use one of {', '.join(map(str, SITES))}")
    return SITES[int(site)]


def site_phantom(phantom: Phantom, profile: SiteProfile) -> Phantom:
    """The phantom as a site's scanner sees it: body scaled by its field of view, noise by its noise factor."""
    anatomy = dataclasses.replace(phantom.anatomy, zoom=phantom.anatomy.zoom * profile.field_of_view)
    return dataclasses.replace(phantom, anatomy=anatomy, noise_hu=phantom.noise_hu * profile.noise)


def _write_patient_slices(
    out: Path,
    phantom: Phantom,
    rng: np.random.Generator,
    size: int,
    slices: tuple[int, int],
    profile: SiteProfile = SITES[1],
) -> list[dict[str, object]]:
    folder = out / phantom.label / phantom.patient_id
    count = int(rng.integers(slices[0], slices[1] + 1))
    acquired = acquire_stack(phantom, rng, slice_heights(rng, count), size, blur=profile.kernel)
    return _write_png_stack(folder, phantom, acquired, "slice_{:03d}", window=profile.window)


@dataclass(frozen=True, eq=False)
class AcquiredSlice:
    """One slice as the scanner gives it: HU after blur and noise, with the true lung and lesion masks."""

    hu: np.ndarray  # float32
    lung: np.ndarray  # bool
    lesion: np.ndarray  # bool


def acquire_stack(
    phantom: Phantom,
    rng: np.random.Generator,
    heights: np.ndarray,
    size: int,
    segmented: bool = False,
    blur: float = 1.0,
) -> Iterator[AcquiredSlice]:
    """Render and acquire one slice per height, in order; `segmented` sets everything outside the lungs to air."""
    for z in heights:
        render = render_hu_slice(phantom, float(z), size)
        hu = simulate_acquisition(render.hu, rng, phantom.noise_hu, blur)
        if segmented:
            hu[~render.lung] = HU_AIR
        yield AcquiredSlice(hu, render.lung, render.lesion)


def _write_png_stack(
    folder: Path,
    phantom: Phantom,
    slices: Iterable[AcquiredSlice],
    stem: str,
    segmented: bool = False,
    window: tuple[float, float] = LUNG_WINDOW,
) -> list[dict[str, object]]:
    """Write slices in the (lung) window as `stem.format(i)`.png (outside the lungs black when `segmented`)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for index, acquired in enumerate(slices):
        image = lung_window(acquired.hu, *window)
        if segmented:
            image[~acquired.lung] = 0  # as CC-CCII's lung-segmented images: black outside the lungs
        name = stem.format(index)
        path = folder / f"{name}.png"
        _imwrite(path, image)
        mask_path = ""
        if acquired.lesion.any():
            mask_file = folder / f"{name}{MASK_SUFFIX}"
            _imwrite(mask_file, acquired.lesion.astype(np.uint8) * 255)
            mask_path = str(mask_file)
        rows.append(
            {
                "path": str(path),
                "label": phantom.label,
                "patient_id": phantom.patient_id,
                "slice_index": index,
                "mask_path": mask_path,
            }
        )
    return rows


@SYNTH_KINDS.register("ct-volumes")
def synth_ct_volumes(
    out: Path,
    patients: int,
    seed: int = 0,
    difficulty: float = 0.5,
    size: int = 512,
    slices: tuple[int, int] = DEFAULT_VOLUME_SLICES,
    progress: ProgressFn | None = None,
    format: str = "png",
    segmented: bool = False,
) -> pd.DataFrame:
    """Write CC-CCII-like CT scans as OUT/<class>/<patient>/<scan>/NNNN.png (z order, contiguous slices).

    Classes NCP / CP / Normal in paper 002's Table 1 proportions; about a third of the patients get a
    follow-up scan of the same anatomy with findings slightly progressed or regressed. `slices` is the
    (min, max) number of slices per scan; lesion masks sit beside lesioned slices (PNG format only).

    `format` "dicom" writes OUT/<class>/<patient>/<scan>/<hash>.dcm (CT Image Storage, pixels HU + 1024
    with RescaleIntercept -1024, file names not in z order); "nifti" writes OUT/volumes/<scan>.nii.gz
    (int16 HU) and OUT/labels.csv. The same seed gives the same HU in every format (PNG = lung_window(HU)),
    rounded to whole HU; DICOM's 12-bit pixels clip it to -1024..3071 (noisy air below -1024 reads -1024).
    DICOM and NIfTI rows number slices inferior to superior (slice_index 0 = the lung base), as their
    adapters do; PNG slices are numbered apex first. `segmented` writes paper 002's lung-segmented variant:
    outside the true lung mask the HU is air (-1000) and the PNG is black.
    """
    out = Path(out)
    _check_common(out, patients, seed, difficulty)
    size = _check_size(size)
    low, high = _check_slices(slices)
    if low < 2:
        raise CovidlensError(f"slices={slices!r} needs at least 2 slices per scan for a volume; use e.g. 16 40")
    if format not in VOLUME_FORMATS:
        raise CovidlensError(f"format={format!r} is not one of {', '.join(VOLUME_FORMATS)}; use e.g. --format dicom")
    difficulty = float(difficulty)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, object]] = []
    table: list[dict[str, str]] = []  # labels.csv of the nifti format
    scans = 0
    for index, label in enumerate(patient_labels(patients, VOLUME_CLASS_SHARES)):
        anatomy_rng, findings_rng, scan_rng = patient_streams(int(seed), index)
        pid = patient_id(label, index, patients)
        phantom = make_phantom(VOLUME_PHANTOM_LABELS[label], difficulty, anatomy_rng, findings_rng, pid)
        phantom = dataclasses.replace(phantom, label=label)
        stacks = [(phantom, scan_rng)]
        if has_second_scan(int(seed), index):
            follow_rng = np.random.default_rng(np.random.SeedSequence([int(seed), index, 2]))
            stacks.append((follow_up_phantom(phantom, follow_rng), follow_rng))
        for number, (scan_phantom, rng) in enumerate(stacks, start=1):
            scan_id = f"{pid}_s{number}"
            count = int(rng.integers(low, high + 1))
            heights = slice_heights(rng, count)
            acquired = acquire_stack(scan_phantom, rng, heights, size, segmented)
            folder = out / label / pid / scan_id
            if format == "png":
                written = _write_png_stack(folder, scan_phantom, acquired, "{:04d}", segmented)
            elif format == "dicom":
                uid_source = f"covidlens synth ct-volumes seed={seed} patients={patients} difficulty={difficulty}"
                written = _write_dicom_scan(folder, scan_phantom, list(acquired), heights, f"{uid_source} {scan_id}")
            else:
                volume = out / "volumes" / f"{scan_id}.nii.gz"
                written = _write_nifti_scan(volume, scan_phantom, list(acquired), heights)
                table.append({"file": volume.relative_to(out).as_posix(), "label": label, "patient_id": pid,
                              "scan_id": scan_id})
            rows.extend({**row, "scan_id": scan_id} for row in written)
        scans += len(stacks)
        if progress is not None:
            progress(index + 1, patients)
    if table:
        pd.DataFrame(table).to_csv(out / "labels.csv", index=False, lineterminator="\n")
    variant = {"format": format} if format != "png" else {}
    if segmented:
        variant["segmented"] = True
    _write_record(
        out, "ct-volumes", patients, seed, difficulty, VOLUME_CLASS_SHARES, size=size, slices=[low, high], scans=scans,
        **variant,
    )
    return pd.DataFrame(rows, columns=VOLUME_ROW_COLUMNS)


def slice_positions_mm(heights: np.ndarray) -> np.ndarray:
    """Patient z (mm, superior positive) of slices at phantom heights (0 apex, 1 base): z = -h * LUNG_HEIGHT_MM."""
    return np.round(-np.asarray(heights, dtype=np.float64) * LUNG_HEIGHT_MM, 3)


def _volume_row(path: Path, phantom: Phantom, slice_index: int) -> dict[str, object]:
    return {"path": str(path), "label": phantom.label, "patient_id": phantom.patient_id,
            "slice_index": slice_index, "mask_path": ""}


def _write_dicom_scan(
    folder: Path, phantom: Phantom, slices: list[AcquiredSlice], heights: np.ndarray, uid_source: str
) -> list[dict[str, object]]:
    """One DICOM file per slice, named by a hash of its SOPInstanceUID; rows in z order (inferior first)."""
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    size = slices[0].hu.shape[0]
    spacing = round(FIELD_OF_VIEW_MM / size, 6)
    corner = -round((size - 1) / 2 * spacing, 4)
    z = slice_positions_mm(heights)
    thickness = float(abs(z[1] - z[0])) if len(z) > 1 else 1.0
    study_uid = generate_uid(entropy_srcs=[uid_source, "study"])
    series_uid = generate_uid(entropy_srcs=[uid_source, "series"])
    by_z: list[tuple[float, Path]] = []
    for index, acquired in enumerate(slices):
        sop_uid = generate_uid(entropy_srcs=[uid_source, "slice", str(index)])
        path = folder / f"{hashlib.sha256(sop_uid.encode()).hexdigest()[:16]}.dcm"
        medical_io.write_dicom_slice(
            path,
            acquired.hu,
            patient_id=phantom.patient_id,
            study_uid=study_uid,
            series_uid=series_uid,
            sop_uid=sop_uid,
            position=(corner, corner, float(z[index])),
            pixel_spacing=(spacing, spacing),
            slice_thickness=thickness,
            instance_number=index + 1,
        )
        by_z.append((float(z[index]), path))
    return [_volume_row(path, phantom, k) for k, (_, path) in enumerate(sorted(by_z))]


def _write_nifti_scan(
    path: Path, phantom: Phantom, slices: list[AcquiredSlice], heights: np.ndarray
) -> list[dict[str, object]]:
    """One .nii.gz volume (slices stored apex first, int16 HU); rows by slice inferior to superior."""
    path.parent.mkdir(parents=True, exist_ok=True)
    size = slices[0].hu.shape[0]
    spacing = round(FIELD_OF_VIEW_MM / size, 6)
    medical_io.write_nifti_volume(path, [s.hu for s in slices], (spacing, spacing), slice_positions_mm(heights))
    return [_volume_row(path, phantom, k) for k in range(len(slices))]


def has_second_scan(seed: int, index: int) -> bool:
    """Whether patient `index` gets a follow-up scan: a golden-ratio sequence, so about a third of any run
    of consecutive patients do, spread evenly and from (seed, index) only."""
    offset = (seed * np.sqrt(2.0)) % 1.0
    return bool((index * 0.6180339887498949 + offset) % 1.0 < SECOND_SCAN_SHARE)


def follow_up_phantom(phantom: Phantom, rng: np.random.Generator) -> Phantom:
    """The same patient days later: anatomy slightly repositioned, findings grown or shrunk by 10-35%."""
    factor = float(rng.uniform(1.1, 1.35) if rng.uniform() < 0.5 else rng.uniform(0.65, 0.9))
    anatomy = phantom.anatomy
    shift = (anatomy.shift[0] + float(rng.normal(0.0, 0.008)), anatomy.shift[1] + float(rng.normal(0.0, 0.008)))
    anatomy = dataclasses.replace(anatomy, shift=shift, rotation=anatomy.rotation + float(rng.normal(0.0, 0.01)))
    findings: list[Finding] = []
    for finding in phantom.findings:
        z_half = finding.z_half * float(np.sqrt(factor))
        if isinstance(finding, GroundGlass):
            lobules = finding.lobules.copy()
            lobules[:, 2:4] *= factor
            findings.append(
                dataclasses.replace(finding, z_half=z_half, lobules=lobules, amplitude_hu=finding.amplitude_hu * factor)
            )
        else:
            findings.append(
                dataclasses.replace(
                    finding,
                    z_half=z_half,
                    half_angle=min(finding.half_angle * factor, 1.2),
                    strength=min(finding.strength * factor, 1.0),
                )
            )
    noise = phantom.noise_hu * float(rng.uniform(0.9, 1.1))
    return dataclasses.replace(phantom, anatomy=anatomy, findings=tuple(findings), noise_hu=noise)


def _imwrite(path: Path, image: np.ndarray) -> None:
    if not cv2.imwrite(str(path), image):
        raise CovidlensError(f"could not write {path}; check the folder is writable and the disk is not full")


def _write_record(
    out: Path,
    kind: str,
    patients: int,
    seed: int,
    difficulty: float,
    shares: dict[str, int] = CLASS_SHARES,
    **options: object,
) -> None:
    record = {
        "kind": kind,
        "patients": int(patients),
        "seed": int(seed),
        "difficulty": float(difficulty),
        "classes": class_counts(patients, shares),
        "covidlens_version": __version__,
        **options,
    }
    write_json(out / "synth.json", record)


# The chest X-ray kind lives in its own module; importing it here registers "cxr" wherever SYNTH_KINDS is used.
from covidlens.data import synth_cxr as _synth_cxr  # noqa: E402, F401
