"""Tests of the synthetic chest CT phantom generator (covidlens.data.synth)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from covidlens import __version__
from covidlens.data import synth
from covidlens.data.synth import SYNTH_KINDS, synth_ct_slices, synth_ct_volumes, synthesize
from covidlens.errors import CovidlensError

SMALL = {"size": 128, "slices": (3, 8)}


def _read(path: Path | str) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert image is not None, path
    return image


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _mask_rows(frame: pd.DataFrame, label: str) -> pd.DataFrame:
    return frame[(frame.label == label) & (frame.mask_path != "")]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    out = tmp_path_factory.mktemp("synth") / "ct"
    return out, synthesize("ct-slices", out, patients=9, seed=3, **SMALL)


def test_registry_holds_only_implemented_kinds() -> None:
    assert SYNTH_KINDS.names() == ["ct-slices", "ct-volumes", "cxr"]  # cxr: tests/test_cxr.py
    assert SYNTH_KINDS.get("ct-slices") is synth_ct_slices
    assert SYNTH_KINDS.get("ct-volumes") is synth_ct_volumes


def test_class_counts_follow_paper_proportions() -> None:
    assert synth.class_counts(210) == {"COVID": 80, "Healthy": 50, "Others": 80}
    assert synth.class_counts(3) == {"COVID": 1, "Healthy": 1, "Others": 1}
    for n in range(3, 40):
        counts = synth.class_counts(n)
        assert sum(counts.values()) == n and min(counts.values()) >= 1
    assert synth.patient_labels(3) == ["COVID", "Healthy", "Others"]


def test_layout_ids_and_images(dataset: tuple[Path, pd.DataFrame]) -> None:
    out, frame = dataset
    assert sorted(p.name for p in out.iterdir()) == ["COVID", "Healthy", "Others", "synth.json"]
    assert list(frame.columns) == ["path", "label", "patient_id", "slice_index", "mask_path"]
    assert frame.patient_id.nunique() == 9
    assert (frame.groupby("patient_id").label.nunique() == 1).all()
    written = sorted(p for p in out.rglob("*.png") if not p.name.endswith(".mask.png"))
    assert sorted(Path(p) for p in frame.path) == written
    for pid, rows in frame.groupby("patient_id"):
        label = rows.label.iloc[0]
        assert re.fullmatch(rf"{label.lower()}_p\d{{3}}", pid)
        folder = out / label / pid
        names = sorted(p.name for p in folder.glob("slice_*.png") if not p.name.endswith(".mask.png"))
        assert names == [f"slice_{i:03d}.png" for i in range(len(rows))]
        assert sorted(rows.slice_index) == list(range(len(rows)))
        assert 3 <= len(rows) <= 8
    assert frame.groupby("patient_id").size().nunique() > 1, "slice counts should vary between patients"
    for path in frame.path.iloc[::7]:
        image = _read(path)
        assert image.shape == (128, 128) and image.dtype == np.uint8
    record = json.loads((out / "synth.json").read_text())
    assert record["kind"] == "ct-slices" and record["patients"] == 9 and record["seed"] == 3
    assert record["size"] == 128 and record["slices"] == [3, 8] and record["difficulty"] == 0.5
    assert record["covidlens_version"] == __version__


def test_default_size_is_512_grayscale(tmp_path: Path) -> None:
    frame = synthesize("ct-slices", tmp_path / "ct", patients=3, slices=(1, 1))
    assert len(frame) == 3
    image = _read(frame.path.iloc[0])
    assert image.shape == (512, 512) and image.dtype == np.uint8


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    args = {"patients": 6, "size": 128, "slices": (3, 5)}
    first = _digest_run(tmp_path / "a", seed=11, **args)
    second = _digest_run(tmp_path / "b", seed=11, **args)
    other = _digest_run(tmp_path / "c", seed=12, **args)
    assert first == second
    shared = set(first) & set(other) - {"synth.json"}
    assert any(first[name] != other[name] for name in shared)


def _digest_run(out: Path, **kwargs: object) -> dict[str, str]:
    synthesize("ct-slices", out, **kwargs)
    return _digest(out)


def test_patient_depends_only_on_seed_and_index(tmp_path: Path) -> None:
    args = {"seed": 5, "size": 64, "slices": (2, 4)}
    small = _digest_run(tmp_path / "three", patients=3, **args)
    large = _digest_run(tmp_path / "six", patients=6, **args)
    first = {k: v for k, v in small.items() if k.startswith("COVID/covid_p001/")}
    assert first and all(large[k] == v for k, v in first.items())


def test_masks_sit_only_beside_lesioned_slices(dataset: tuple[Path, pd.DataFrame]) -> None:
    out, frame = dataset
    masks = sorted(out.rglob("*.mask.png"))
    assert sorted(Path(p) for p in frame.mask_path if p) == masks
    assert not list((out / "Healthy").rglob("*.mask.png"))
    for row in frame[frame.mask_path != ""].itertuples():
        assert row.mask_path == row.path[: -len(".png")] + ".mask.png"
        mask = _read(row.mask_path)
        assert mask.shape == (128, 128) and set(np.unique(mask)) == {0, 255}
    for label in ("COVID", "Others"):
        ill = frame[frame.label == label]
        assert (ill.groupby("patient_id").mask_path.apply(lambda m: (m != "").any())).all()


def test_not_every_ill_slice_has_a_lesion(tmp_path: Path) -> None:
    frame = synthesize(
        "ct-slices", tmp_path / "ct", patients=6, seed=2, difficulty=1.0, size=64, slices=(12, 12)
    )
    ill = frame[frame.label != "Healthy"]
    assert 0.2 < (ill.mask_path != "").mean() < 0.9


def test_covid_masks_are_bilateral(dataset: tuple[Path, pd.DataFrame]) -> None:
    _, frame = dataset
    both = []
    for path in _mask_rows(frame, "COVID").mask_path:
        mask = _read(path) > 0
        both.append(mask[:, :64].any() and mask[:, 64:].any())
    assert len(both) >= 5 and np.mean(both) >= 0.8


def test_others_masks_are_mostly_unilateral(dataset: tuple[Path, pd.DataFrame]) -> None:
    _, frame = dataset
    shares = []
    for path in _mask_rows(frame, "Others").mask_path:
        mask = _read(path) > 0
        left, right = mask[:, :64].sum(), mask[:, 64:].sum()
        shares.append(max(left, right) / (left + right))
    assert len(shares) >= 5 and np.mean(shares) >= 0.85


def test_covid_lesions_are_peripheral() -> None:
    ratios = []
    for index in range(4):
        anatomy_rng, findings_rng, _ = synth.patient_streams(21, index)
        phantom = synth.make_phantom("COVID", 0.5, anatomy_rng, findings_rng)
        band = phantom.findings[0]
        render = synth.render_hu_slice(phantom, band.z_center, 128)
        lung = render.lung.astype(np.uint8)
        to_border = cv2.distanceTransform(lung, cv2.DIST_L2, 5)
        count, labels, _, centroids = cv2.connectedComponentsWithStats(lung)
        ys, xs = np.nonzero(render.lesion)
        assert len(ys) > 20
        to_centre = np.hypot(xs - centroids[labels[ys, xs], 0], ys - centroids[labels[ys, xs], 1])
        ratios.append(to_border[ys, xs].mean() / to_centre.mean())
    assert max(ratios) < 1.0 and np.mean(ratios) < 0.6


def _lesion_contrast(frame: pd.DataFrame, label: str) -> float:
    """Mean gray level inside masks minus that of the dark (lung) ring just around them."""
    kernel = np.ones((7, 7), np.uint8)
    inside, ring = [], []
    for row in _mask_rows(frame, label).itertuples():
        image, mask = _read(row.path).astype(float), _read(row.mask_path) > 0
        around = (cv2.dilate(mask.astype(np.uint8), kernel) > 0) & ~mask & (image < 140)
        inside.append(image[mask])
        ring.append(image[around])
    return float(np.concatenate(inside).mean() - np.concatenate(ring).mean())


def test_lesions_get_subtler_as_difficulty_rises(tmp_path: Path) -> None:
    contrast: dict[str, list[float]] = {"COVID": [], "Others": []}
    lesioned = []
    for difficulty in (0.0, 0.5, 1.0):
        out = tmp_path / f"d{difficulty}"
        frame = synthesize(
            "ct-slices", out, patients=6, seed=4, difficulty=difficulty, size=128, slices=(8, 8)
        )
        for label, values in contrast.items():
            values.append(_lesion_contrast(frame, label))
        lesioned.append((frame[frame.label != "Healthy"].mask_path != "").mean())
    for label, values in contrast.items():
        assert values[0] > values[1] > values[2], (label, values)
        assert values[2] > 4.0, f"{label} lesions at difficulty 1 should still be there: {values}"
    assert lesioned[0] > lesioned[2]


@pytest.mark.parametrize(("label", "floor"), [("COVID", 60.0), ("Others", 200.0)])
def test_finding_density_falls_with_difficulty(label: str, floor: float) -> None:
    """Median HU rise inside the lesion (clean render) falls with difficulty, whatever the lesion size."""
    rises = []
    for difficulty in (0.0, 0.5, 1.0):
        anatomy_rng, findings_rng, _ = synth.patient_streams(8, 0)
        phantom = synth.make_phantom(label, difficulty, anatomy_rng, findings_rng)
        render = synth.render_hu_slice(phantom, phantom.findings[0].z_center, 128)
        healthy = synth.render_hu_slice(synth.Phantom("", "Healthy", phantom.anatomy, (), 0.0), 0.5, 128)
        baseline = np.median(healthy.hu[healthy.lung])
        rises.append(float(np.median(render.hu[render.lesion]) - baseline))
    assert rises[0] > rises[1] > rises[2] > floor, rises
    assert rises[2] < 0.55 * rises[0], f"lesion density, not only size, should fall: {rises}"


def test_anatomy_lungs_dark_body_bright_air_darkest() -> None:
    anatomy_rng, findings_rng, scan_rng = synth.patient_streams(0, 1)
    phantom = synth.make_phantom("Healthy", 0.5, anatomy_rng, findings_rng)
    render = synth.render_hu_slice(phantom, 0.5, 256)
    image = synth.lung_window(synth.simulate_acquisition(render.hu, scan_rng, phantom.noise_hu))
    assert not render.lesion.any()
    lung_fraction = render.lung.mean()
    assert 0.08 < lung_fraction < 0.4
    body = (render.hu > -500) & ~render.lung
    body[:, :] &= cv2.erode((render.hu > -500).astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
    lung_mean, body_mean, air_mean = image[render.lung].mean(), image[body].mean(), image[:20, :20].mean()
    assert air_mean < lung_mean < 120 < 180 < body_mean
    assert render.lung[:, :128].any() and render.lung[:, 128:].any(), "two lungs, one each side"
    assert image[render.hu > 500].min() > 240, "bone is white in the lung window"


@pytest.mark.parametrize("size", [64, 256, 512])
def test_acquisition_noise_has_the_nominal_std(size: int) -> None:
    flat = np.zeros((size, size), np.float32)
    noisy = synth.simulate_acquisition(flat, np.random.default_rng(0), 30.0)
    assert noisy.std() == pytest.approx(30.0, rel=0.05)


def test_lung_window_maps_hounsfield_units() -> None:
    hu = np.array([[-1400.0, -1350.0, -600.0, 150.0, 900.0]], np.float32)
    assert synth.lung_window(hu).tolist() == [[0, 0, 128, 255, 255]]


def test_progress_is_called_after_each_patient(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    synth_ct_slices(tmp_path / "ct", 4, size=32, slices=(1, 2), progress=lambda d, t: calls.append((d, t)))
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_empty_existing_folder_is_used(tmp_path: Path) -> None:
    out = tmp_path / "empty"
    out.mkdir()
    assert len(synthesize("ct-slices", out, patients=3, size=32, slices=(1, 1))) == 3


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"patients": 2}, "patients=2"),
        ({"patients": 0}, "patients=0"),
        ({"difficulty": -0.1}, "difficulty=-0.1"),
        ({"difficulty": 1.5}, "difficulty=1.5"),
        ({"seed": -1}, "seed=-1"),
        ({"size": 16}, "size=16"),
        ({"slices": (5, 3)}, "slices=(5, 3)"),
        ({"slices": (0, 2)}, "slices=(0, 2)"),
        ({"slices": "many"}, "slices='many'"),
        ({"kind": "ct-volume"}, "ct-volume"),
        ({"depth": 3}, "depth"),
        ({"site": 3}, "site=3"),
    ],
)
def test_bad_arguments_raise_one_line_errors(tmp_path: Path, kwargs: dict[str, object], named: str) -> None:
    args: dict[str, object] = {"kind": "ct-slices", "patients": 3, "size": 32, "slices": (1, 1), **kwargs}
    out = tmp_path / "ct"
    with pytest.raises(CovidlensError) as error:
        synthesize(args.pop("kind"), out, **args)  # type: ignore[arg-type]
    message = str(error.value)
    assert named in message and "\n" not in message
    assert not out.exists(), "nothing is written when the arguments are bad"


def test_non_empty_folder_is_refused_and_untouched(tmp_path: Path) -> None:
    out = tmp_path / "data"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    before = _digest(out)
    with pytest.raises(CovidlensError, match="exists and is not empty"):
        synthesize("ct-slices", out, patients=3, size=32, slices=(1, 1))
    with pytest.raises(CovidlensError, match="exists and is not empty"):
        synth_ct_slices(out, 3, size=32, slices=(1, 1))
    assert _digest(out) == before
    a_file = tmp_path / "file.png"
    a_file.write_bytes(b"x")
    with pytest.raises(CovidlensError, match="not a folder"):
        synthesize("ct-slices", a_file, patients=3)
    assert a_file.read_bytes() == b"x"


# ---------------------------------------------------------------------------------------------------------
# ct-volumes: CC-CCII layout <class>/<patient>/<scan>/NNNN.png

VOLUMES = {"size": 64, "slices": (6, 10)}


@pytest.fixture(scope="module")
def volumes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    out = tmp_path_factory.mktemp("synth") / "ccii"
    return out, synthesize("ct-volumes", out, patients=9, seed=1, **VOLUMES)


def _slices(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.png") if not p.name.endswith(".mask.png"))


def test_volume_class_counts_follow_paper_002_table_1() -> None:
    shares = synth.VOLUME_CLASS_SHARES
    assert synth.class_counts(691, shares) == {"NCP": 246, "CP": 201, "Normal": 244}
    assert synth.class_counts(3, shares) == {"NCP": 1, "CP": 1, "Normal": 1}
    assert synth.patient_labels(3, shares) == ["NCP", "CP", "Normal"]


def test_volume_layout_scans_and_slice_names(volumes: tuple[Path, pd.DataFrame]) -> None:
    out, frame = volumes
    assert sorted(p.name for p in out.iterdir()) == ["CP", "NCP", "Normal", "synth.json"]
    assert list(frame.columns) == ["path", "label", "patient_id", "scan_id", "slice_index", "mask_path"]
    assert frame.patient_id.nunique() == 9
    assert frame.groupby("label").patient_id.nunique().to_dict() == {"CP": 3, "NCP": 3, "Normal": 3}
    written = sorted(p for p in out.rglob("*.png") if not p.name.endswith(".mask.png"))
    assert sorted(Path(p) for p in frame.path) == written
    scans_per_patient = frame.groupby("patient_id").scan_id.nunique()
    assert set(scans_per_patient) == {1, 2} and 2 <= (scans_per_patient == 2).sum() <= 4
    for (label, pid, scan_id), rows in frame.groupby(["label", "patient_id", "scan_id"]):
        assert re.fullmatch(rf"{label.lower()}_p\d{{3}}", pid) and re.fullmatch(rf"{pid}_s[12]", scan_id)
        names = [p.name for p in _slices(out / label / pid / scan_id)]
        assert names == [f"{i:04d}.png" for i in range(len(rows))]
        assert list(rows.slice_index) == list(range(len(rows)))
        assert 6 <= len(rows) <= 10
    image = _read(frame.path.iloc[0])
    assert image.shape == (64, 64) and image.dtype == np.uint8
    record = json.loads((out / "synth.json").read_text())
    assert record["kind"] == "ct-volumes" and record["patients"] == 9 and record["seed"] == 1
    assert record["classes"] == {"NCP": 3, "CP": 3, "Normal": 3} and record["slices"] == [6, 10]
    assert record["size"] == 64 and record["scans"] == frame.scan_id.nunique()


def test_about_a_third_of_patients_get_a_second_scan() -> None:
    for seed in (0, 1, 7):
        flags = [synth.has_second_scan(seed, i) for i in range(300)]
        assert 0.3 < np.mean(flags) < 0.37
        assert all(any(flags[i : i + 5]) for i in range(295)), "follow-ups are spread over the patients"


def test_volume_masks_only_for_ncp_and_cp(volumes: tuple[Path, pd.DataFrame]) -> None:
    out, frame = volumes
    masks = sorted(out.rglob("*.mask.png"))
    assert sorted(Path(p) for p in frame.mask_path if p) == masks
    assert not list((out / "Normal").rglob("*.mask.png"))
    for row in frame[frame.mask_path != ""].itertuples():
        assert row.mask_path == row.path[: -len(".png")] + synth.MASK_SUFFIX
    for label in ("NCP", "CP"):
        ill = frame[frame.label == label]
        assert (ill.groupby("scan_id").mask_path.apply(lambda m: (m != "").any())).all()


def test_volume_reruns_are_byte_identical_and_other_seed_differs(tmp_path: Path) -> None:
    args = {"patients": 4, "size": 64, "slices": (3, 5)}
    first = _digest_volumes(tmp_path / "a", seed=11, **args)
    second = _digest_volumes(tmp_path / "b", seed=11, **args)
    other = _digest_volumes(tmp_path / "c", seed=12, **args)
    assert first == second
    shared = set(first) & set(other) - {"synth.json"}
    assert any(first[name] != other[name] for name in shared)


def _digest_volumes(out: Path, **kwargs: object) -> dict[str, str]:
    synthesize("ct-volumes", out, **kwargs)
    return _digest(out)


def test_adjacent_slices_are_more_alike_than_distant_ones(volumes: tuple[Path, pd.DataFrame]) -> None:
    _, frame = volumes
    for _, rows in frame.groupby("scan_id"):
        stack = np.stack([_read(p).astype(float) for p in rows.sort_values("slice_index").path])
        neighbours = np.abs(np.diff(stack, axis=0)).mean()
        ends = np.abs(stack[-1] - stack[0]).mean()
        assert neighbours < 0.7 * ends, (rows.scan_id.iloc[0], neighbours, ends)


def test_second_scan_shares_anatomy_but_differs(volumes: tuple[Path, pd.DataFrame]) -> None:
    out, frame = volumes
    twice = [pid for pid, n in frame.groupby("patient_id").scan_id.nunique().items() if n == 2]
    assert twice
    for pid in twice:
        rows = frame[frame.patient_id == pid]
        first, second = (rows[rows.scan_id == f"{pid}_s{n}"].sort_values("slice_index") for n in (1, 2))
        assert [_read(p).tobytes() for p in first.path] != [_read(p).tobytes() for p in second.path]
        # body wall, mediastinum and bones (brighter than lung and air), averaged over z
        body = [np.mean([_read(p) > 150 for p in s.path], axis=0).ravel() for s in (first, second)]
        same = np.corrcoef(body[0], body[1])[0, 1]
        others = frame[(frame.patient_id != pid) & (frame.scan_id.str.endswith("_s1"))]
        other_bodies = [
            np.mean([_read(p) > 150 for p in s.path], axis=0).ravel() for _, s in others.groupby("scan_id")
        ]
        other = max(np.corrcoef(body[0], b)[0, 1] for b in other_bodies)
        assert same > 0.9 and same > other + 0.02, (pid, same, other)


def test_follow_up_changes_findings_not_anatomy() -> None:
    anatomy_rng, findings_rng, _ = synth.patient_streams(3, 0)
    phantom = synth.make_phantom("COVID", 0.5, anatomy_rng, findings_rng)
    later = synth.follow_up_phantom(phantom, np.random.default_rng(0))
    assert later.anatomy.lung_axes == phantom.anatomy.lung_axes and later.anatomy.vessels is phantom.anatomy.vessels
    sizes = [np.mean([f.lobules[:, 2].mean() for f in p.findings]) for p in (phantom, later)]
    assert sizes[0] != pytest.approx(sizes[1]) and 0.6 < sizes[1] / sizes[0] < 1.4


def test_volume_defaults_and_progress(tmp_path: Path) -> None:
    assert synth.DEFAULT_VOLUME_SLICES == (16, 40)
    calls: list[tuple[int, int]] = []
    frame = synth_ct_volumes(tmp_path / "v", 3, size=32, slices=(2, 3), progress=lambda d, t: calls.append((d, t)))
    assert calls == [(1, 3), (2, 3), (3, 3)] and len(frame) >= 6


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"patients": 2}, "patients=2"),
        ({"difficulty": 1.5}, "difficulty=1.5"),
        ({"seed": -1}, "seed=-1"),
        ({"size": 16}, "size=16"),
        ({"slices": (5, 3)}, "slices=(5, 3)"),
        ({"slices": (1, 4)}, "slices=(1, 4)"),
        ({"slices": "many"}, "slices='many'"),
        ({"depth": 3}, "depth"),
        ({"site": 2}, "site"),
    ],
)
def test_volume_bad_arguments_raise(tmp_path: Path, kwargs: dict[str, object], named: str) -> None:
    args: dict[str, object] = {"patients": 3, "size": 32, "slices": (2, 2), **kwargs}
    out = tmp_path / "v"
    with pytest.raises(CovidlensError) as error:
        synthesize("ct-volumes", out, **args)  # type: ignore[arg-type]
    assert named in str(error.value) and "\n" not in str(error.value)
    assert not out.exists()


def test_volumes_refuse_a_non_empty_folder(tmp_path: Path) -> None:
    out = tmp_path / "data"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(CovidlensError, match="exists and is not empty"):
        synthesize("ct-volumes", out, patients=3, size=32, slices=(2, 2))
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


# ---------------------------------------------------------------------------------------------------------
# A second site: other patients through another scanner (external test sets)

SITE_ARGS = {"patients": 6, "seed": 0, "size": 128, "slices": (2, 3)}


@pytest.fixture(scope="module")
def two_sites(tmp_path_factory: pytest.TempPathFactory) -> dict[int, tuple[Path, pd.DataFrame]]:
    root = tmp_path_factory.mktemp("sites")
    folders = {site: root / f"s{site}" for site in (1, 2)}
    return {site: (out, synthesize("ct-slices", out, site=site, **SITE_ARGS)) for site, out in folders.items()}


def _site_measures(frame: pd.DataFrame, site: int) -> dict[str, float]:
    """Mean gray level, noise SD in HU (an air corner) and body width in pixels, from the written PNGs."""
    level, width = synth.SITES[site].window
    images = np.stack([_read(p) for p in frame.path]).astype(np.float64)
    noise_hu = images[:, :12, :12].std(axis=(1, 2)).mean() * width / 255.0
    tissue = synth.lung_window(np.array([-550.0], np.float32), level, width)[0]  # between air and fat
    rows = images[:, 48:80, :] > tissue
    body = [max(np.ptp(np.flatnonzero(r)) for r in image if r.any()) for image in rows]
    return {"mean": images.mean(), "noise_hu": noise_hu, "body": float(np.mean(body))}


def test_site_two_is_another_scanner_with_other_patients(two_sites) -> None:
    (out1, first), (out2, second) = two_sites[1], two_sites[2]
    assert set(first.patient_id).isdisjoint(second.patient_id)
    assert second.patient_id.str.startswith("s2_").all() and not first.patient_id.str.startswith("s2_").any()
    assert sorted(set(second.label)) == sorted(set(first.label)) == ["COVID", "Healthy", "Others"]
    one, two = _site_measures(first, 1), _site_measures(second, 2)
    assert two["noise_hu"] > 1.3 * one["noise_hu"]  # 1.6x the noise
    assert two["mean"] < one["mean"] - 20  # a lower, narrower window: darker images
    assert two["body"] < 0.93 * one["body"]  # a wider field of view: a smaller body
    assert json.loads((out1 / "synth.json").read_text())["site"] == 1
    assert json.loads((out2 / "synth.json").read_text())["site"] == 2


def test_site_one_is_the_default_byte_for_byte(two_sites, tmp_path: Path) -> None:
    out1, _ = two_sites[1]
    default = _digest_run(tmp_path / "default", **SITE_ARGS)
    assert default == _digest(out1)


def test_site_phantom_changes_only_size_and_noise() -> None:
    rngs = synth.patient_streams(0, 0)
    phantom = synth.make_phantom("COVID", 0.5, rngs[0], rngs[1], "covid_p001")
    assert synth.site_phantom(phantom, synth.SITES[1]).anatomy.zoom == phantom.anatomy.zoom
    seen = synth.site_phantom(phantom, synth.SITES[2])
    assert seen.anatomy.zoom == pytest.approx(0.85 * phantom.anatomy.zoom)
    assert seen.noise_hu == pytest.approx(1.6 * phantom.noise_hu) and seen.findings is phantom.findings


def test_cli_writes_a_second_site(tmp_path: Path) -> None:
    from cli_helpers import covidlens

    out = tmp_path / "site2"
    result = covidlens(
        "synth", "ct-slices", out, "--site", "2", "--patients", 3, "--size", 32, "--min-slices", 1, "--max-slices", 1
    )
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "synth.json").read_text())["site"] == 2
    assert sorted(p.name for p in (out / "COVID").iterdir()) == ["s2_covid_p001"]


def test_classes_writes_only_the_named_classes(tmp_path: Path) -> None:
    rows = synth.synth_ct_slices(tmp_path / "covid", 4, size=32, slices=(1, 1), site=2, classes=["COVID"])
    assert set(rows.label) == {"COVID"} and rows.patient_id.nunique() == 4
    assert json.loads((tmp_path / "covid" / "synth.json").read_text())["classes"] == {"COVID": 4}
    with pytest.raises(CovidlensError, match="'Pneumonia'.*COVID, Healthy, Others"):
        synth.synth_ct_slices(tmp_path / "bad", 4, size=32, classes=["Pneumonia"])
