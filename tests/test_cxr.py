"""Synthetic chest radiographs in paper 003's layout (`synth cxr`) and the two X-ray adapters."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from covidlens.data.adapters import IndexOptions
from covidlens.data.adapters.common import IndexWarning
from covidlens.data.adapters.cxr_competition import competition_test_images, competition_test_labels
from covidlens.data.index import detect_layout, index_dataset
from covidlens.data.manifest import IMAGE_WISE, MASK_SUFFIX
from covidlens.data.splits import folds_from_split_column
from covidlens.data.synth import SYNTH_KINDS, class_counts, synthesize
from covidlens.data.synth_cxr import (
    CXR_CLASS_SHARES,
    CXR_CLASSES,
    draw_cxr_anatomy,
    image_shape,
    image_streams,
    render_cxr,
    synth_cxr,
    unlabelled_image_count,
)
from covidlens.errors import CovidlensError
from dataset_trees import write_image

N_TRAIN = 30
SIZE = 128


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in (".png", ".jpeg")
                  and not p.name.endswith(MASK_SUFFIX))


def _digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def cxr(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    out = tmp_path_factory.mktemp("cxr") / "data"
    return out, synthesize("cxr", out, patients=N_TRAIN, seed=4, size=SIZE)


# --- synth cxr ---------------------------------------------------------------------------------------


def test_registered_and_counts_follow_the_paper() -> None:
    assert SYNTH_KINDS.get("cxr") is synth_cxr
    assert class_counts(1127, CXR_CLASS_SHARES) == {"normal": 350, "bacterial": 350, "viral": 350, "covid": 77}
    assert unlabelled_image_count(1127) == 484
    test_counts = class_counts(484, CXR_CLASS_SHARES)
    assert sum(test_counts.values()) == 484 and test_counts["covid"] == 33
    assert class_counts(4, CXR_CLASS_SHARES) == dict.fromkeys(CXR_CLASSES, 1)
    assert unlabelled_image_count(4) == 4 and unlabelled_image_count(60) == 26


def test_layout_counts_masks_and_record(cxr: tuple[Path, pd.DataFrame]) -> None:
    out, rows = cxr
    assert sorted(p.name for p in out.iterdir()) == ["synth.json", "test", "test_labels.csv", "train"]
    assert sorted(p.name for p in (out / "train").iterdir()) == sorted(CXR_CLASSES)
    counts = {label: len(_images(out / "train" / label)) for label in CXR_CLASSES}
    assert counts == class_counts(N_TRAIN, CXR_CLASS_SHARES) == {"normal": 10, "bacterial": 9, "viral": 9, "covid": 2}
    train = rows[rows.split == "train"]
    assert sorted(Path(p) for p in train.path) == _images(out / "train")
    for row in train.itertuples():
        path = Path(row.path)
        assert path.parent.name == row.label and path.stem == row.patient_id
        mask = path.with_name(path.stem + MASK_SUFFIX)
        assert mask.is_file() == (row.label != "normal") and row.mask_path == (str(mask) if mask.is_file() else "")
        if mask.is_file():
            lesion = cv2.imread(str(mask), cv2.IMREAD_UNCHANGED)
            assert lesion.shape == cv2.imread(str(path), cv2.IMREAD_UNCHANGED).shape
            assert set(np.unique(lesion)) == {0, 255}
    assert {Path(p).suffix for p in rows.path} == {".png", ".jpeg"}, "PNG and JPEG mixed, as the real data"
    record = json.loads((out / "synth.json").read_text())
    assert record["kind"] == "cxr" and record["patients"] == N_TRAIN and record["size"] == SIZE
    assert record["classes"] == counts and record["test_images"] == unlabelled_image_count(N_TRAIN) == 13


def test_test_folder_is_unlabelled_with_the_labels_beside_it(cxr: tuple[Path, pd.DataFrame]) -> None:
    out, rows = cxr
    test_images = _images(out / "test")
    assert [p.parent for p in test_images] == [out / "test"] * 13
    assert not any(p.name.endswith(MASK_SUFFIX) for p in (out / "test").iterdir()), "no mask may give a label away"
    assert sorted(int(p.stem) for p in test_images) == list(range(13))
    labels = pd.read_csv(out / "test_labels.csv")
    assert list(labels.columns) == ["Id", "label"] and list(labels.Id) == list(range(13))
    assert labels.label.value_counts().to_dict() == class_counts(13, CXR_CLASS_SHARES)
    test_rows = rows[rows.split == "test"].assign(Id=lambda f: [int(Path(p).stem) for p in f.path])
    assert dict(zip(test_rows.Id, test_rows.label, strict=True)) == dict(zip(labels.Id, labels.label, strict=True))
    assert labels.label.tolist() != sorted(labels.label.tolist()), "test ids must not be grouped by class"


def test_sizes_and_aspect_ratios_vary(cxr: tuple[Path, pd.DataFrame]) -> None:
    out, _ = cxr
    shapes = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED).shape for p in _images(out)]
    assert all(len(s) == 2 for s in shapes), "8-bit grayscale"
    assert all(0.5 * SIZE <= side <= SIZE for s in shapes for side in s)
    ratios = {round(w / h, 1) for h, w in shapes}
    assert len(ratios) >= 3 and min(ratios) <= 0.8 and max(ratios) >= 1.25
    drawn = [image_shape(np.random.default_rng(i), 512) for i in range(400)]
    extremes = [h / w for h, w in drawn if max(h / w, w / h) > 1.45]
    assert 0.05 < len(extremes) / len(drawn) < 0.25 and min(extremes) < 1 < max(extremes)


def test_same_seed_gives_identical_bytes(cxr: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    out, _ = cxr
    again = tmp_path / "again"
    synthesize("cxr", again, patients=N_TRAIN, seed=4, size=SIZE)
    first = _digest(out)
    assert _digest(again) == first
    other = tmp_path / "other"
    synthesize("cxr", other, patients=N_TRAIN, seed=5, size=SIZE)
    changed = _digest(other)
    common = [name for name in first.keys() & changed.keys() if name.endswith(".png")]
    assert len(common) > 10 and all(first[name] != changed[name] for name in common)


def test_bad_options_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CovidlensError, match="at least 4"):
        synthesize("cxr", tmp_path / "a", patients=3)
    with pytest.raises(CovidlensError, match="too small"):
        synthesize("cxr", tmp_path / "b", patients=8, size=40)
    with pytest.raises(CovidlensError, match="no option slices"):
        synthesize("cxr", tmp_path / "c", patients=8, slices=(2, 3))


# --- class appearance: the same chest rendered with each class's findings ---------------------------


def _render(label: str, index: int, difficulty: float = 0.5, size: int = 160):
    frame_rng, anatomy_rng, findings_rng, acquisition_rng = image_streams(11, 0, index)
    shape = image_shape(frame_rng, size)
    return render_cxr(label, draw_cxr_anatomy(anatomy_rng), shape, findings_rng, acquisition_rng, difficulty)


def _renders(index: int, difficulty: float = 0.5, size: int = 160) -> dict:
    """The same chest, frame and acquisition with each class's findings."""
    return {label: _render(label, index, difficulty, size) for label in CXR_CLASSES}


def _lungs(lung: np.ndarray) -> list[np.ndarray]:
    count, components = cv2.connectedComponents(lung.astype(np.uint8))
    sides = [components == k for k in range(1, count)]
    assert len(sides) == 2, "two lung fields"
    return sorted(sides, key=lambda m: np.nonzero(m)[1].mean())


def _lower_lateral_zone(lung: np.ndarray) -> np.ndarray:
    """The lower third of each lung field, lateral half."""
    zone = np.zeros_like(lung)
    for k, side in enumerate(_lungs(lung)):
        rows, cols = np.nonzero(side)
        low = rows >= rows.min() + 2 * (rows.max() - rows.min()) / 3
        middle = np.median(cols)
        lateral = cols <= middle if k == 0 else cols >= middle
        zone[rows[low & lateral], cols[low & lateral]] = True
    return zone


def test_findings_change_only_the_lungs_and_brighten_them() -> None:
    for index in range(6):
        r = _renders(index)
        assert not r["normal"].lesion.any()
        for label in CXR_CLASSES[1:]:
            assert (r[label].lung == r["normal"].lung).all()
            changed = r[label].image.astype(int) != r["normal"].image.astype(int)
            near_lung = cv2.dilate(r[label].lung.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0  # edge blur
            assert changed.any() and not (changed & ~near_lung).any(), label
            lesion = r[label].lesion
            assert lesion.any() and not (lesion & ~r[label].lung).any()
            gain = r[label].image[lesion].mean() - r["normal"].image[lesion].mean()
            assert gain > (12 if label == "bacterial" else 4), (label, gain)


def test_covid_is_bilateral_lower_and_peripheral() -> None:
    for index in range(6):
        r = _renders(index)
        zone = _lower_lateral_zone(r["normal"].lung)
        assert r["covid"].image[zone].mean() > r["normal"].image[zone].mean() + 5
        assert all((r["covid"].lesion & side).sum() > 0.02 * side.sum() for side in _lungs(r["covid"].lung))
        rows = np.nonzero(r["covid"].lesion)[0]
        lung_rows = np.nonzero(r["covid"].lung)[0]
        assert np.median(rows) > lung_rows.min() + 0.55 * (lung_rows.max() - lung_rows.min())
        upper = np.zeros_like(zone)
        upper[: lung_rows.min() + (lung_rows.max() - lung_rows.min()) // 3] = True
        upper &= r["normal"].lung
        assert r["covid"].image[zone].mean() - r["normal"].image[zone].mean() > (
            r["covid"].image[upper].mean() - r["normal"].image[upper].mean()
        )


def test_bacterial_is_one_sided_and_often_upper_viral_bilateral_and_central() -> None:
    for index in range(8):
        r = _renders(index, size=96)
        sides = _lungs(r["bacterial"].lung)
        touched = [int((r["bacterial"].lesion & side).sum()) for side in sides]
        assert min(touched) == 0 < max(touched), "a lobar consolidation lies in one lung"
        viral = r["viral"].lesion
        assert all((viral & side).sum() > 0.1 * side.sum() for side in _lungs(r["viral"].lung))
        for k, side in enumerate(_lungs(r["viral"].lung)):  # perihilar: more of the medial half is hazy
            rows, cols = np.nonzero(side)
            medial = cols >= np.median(cols) if k == 0 else cols <= np.median(cols)
            hazy = viral[rows, cols]
            assert hazy[medial].mean() > hazy[~medial].mean()
    upper = []
    for index in range(60):
        render = _render("bacterial", index, size=64)
        lung_rows = np.nonzero(render.lung)[0]
        upper.append(np.median(np.nonzero(render.lesion)[0]) < (lung_rows.min() + lung_rows.max()) / 2)
    assert 0.45 <= np.mean(upper) <= 0.8, np.mean(upper)


def test_difficulty_lowers_finding_contrast() -> None:
    gains = []
    for difficulty in (0.0, 0.5, 1.0):
        r = _renders(2, difficulty)
        lesion = r["covid"].lesion
        gains.append(r["covid"].image[lesion].mean() - r["normal"].image[lesion].mean())
    assert gains[0] > gains[1] > gains[2] > 0


# --- cxr-competition adapter -------------------------------------------------------------------------


def test_competition_layout_indexes_the_training_images_image_wise(cxr: tuple[Path, pd.DataFrame]) -> None:
    out, rows = cxr
    assert detect_layout(out) == "cxr-competition"
    with pytest.warns(IndexWarning, match="13 unlabelled test image"):
        result = index_dataset(out)
    manifest = result.manifest
    train = rows[rows.split == "train"]
    assert result.layout == "cxr-competition" and result.skipped == []
    assert len(manifest) == N_TRAIN and not manifest.sample_id.str.startswith("test").any()
    assert dict(zip(manifest.path, manifest.label, strict=True)) == dict(zip(train.path, train.label, strict=True))
    assert (manifest.patient_id == manifest.sample_id).all() and (manifest.patient_id_from == IMAGE_WISE).all()
    assert (manifest.modality == "xray").all() and (manifest.source == "cxr-competition").all()
    assert dict(zip(manifest.path, manifest.mask_path, strict=True)) == dict(
        zip(train.path, train.mask_path, strict=True)
    )
    assert competition_test_images(out) == sorted((out / "test").iterdir(), key=lambda p: int(p.stem))
    labels = competition_test_labels(out)
    assert labels is not None and list(labels.columns) == ["Id", "label"]
    truth = rows[rows.split == "test"]
    expected = {Path(path).stem: label for path, label in zip(truth.path, truth.label, strict=True)}
    assert dict(zip(labels.Id, labels.label, strict=True)) == expected


def test_competition_honours_a_patient_regex_and_refuses_unknown_classes(tmp_path: Path) -> None:
    root = tmp_path / "comp"
    for label in ("Normal", "BACTERIAL", "viral", "COVID"):
        for number in (1, 2):
            write_image(root / "train" / label / f"p{number}{label.lower()}_{number}.jpeg")
    write_image(root / "test" / "0.jpeg")
    write_image(root / "stray.png")
    with pytest.warns(IndexWarning):
        result = index_dataset(root, options=IndexOptions(patient_regex=r"^train/[^/]+/(p\d\w+?)_"))
    manifest = result.manifest
    assert sorted(manifest.label.unique()) == sorted(CXR_CLASSES) and (manifest.patient_id_from == "regex").all()
    assert result.skipped == [("stray.png", "image outside the class folders; not indexed")]
    assert competition_test_labels(root) is None
    write_image(root / "train" / "tuberculosis" / "x.png")
    with pytest.raises(CovidlensError, match="'tuberculosis' is not one of normal, bacterial, viral, covid"):
        index_dataset(root, layout="cxr-competition")
    shutil.rmtree(root / "train" / "tuberculosis")
    shutil.rmtree(root / "train" / "COVID")
    with pytest.raises(CovidlensError, match="class folder.s. covid not found"):
        index_dataset(root, layout="cxr-competition")


def test_competition_test_labels_are_checked(cxr: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    out, _ = cxr
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "test_labels.csv").write_text("Id,label\n0,normal\n99,covid\n")
    with pytest.raises(CovidlensError, match="'99' name no image"):
        competition_test_labels(copy)
    (copy / "test_labels.csv").write_text("Id,label\n0,pneumonia\n")
    with pytest.raises(CovidlensError, match="unknown label"):
        competition_test_labels(copy)


# --- kermany adapter ---------------------------------------------------------------------------------

KERMANY = {
    "train/NORMAL/IM-0115-0001.jpeg": ("normal", "IM-0115"),
    "train/NORMAL/IM-0115-0002.jpeg": ("normal", "IM-0115"),
    "train/NORMAL/NORMAL2-IM-0381-0001.jpeg": ("normal", "NORMAL2-IM-0381"),
    "train/PNEUMONIA/person1_bacteria_1.jpeg": ("bacterial", "person1"),
    "train/PNEUMONIA/person1_bacteria_2.jpeg": ("bacterial", "person1"),
    "train/PNEUMONIA/person3_virus_6.jpeg": ("viral", "person3"),
    "val/NORMAL/NORMAL2-IM-1427-0001.jpeg": ("normal", "NORMAL2-IM-1427"),
    "val/PNEUMONIA/person1946_bacteria_4874.jpeg": ("bacterial", "person1946"),
    "test/NORMAL/IM-0001-0001.jpeg": ("normal", "IM-0001"),
    "test/PNEUMONIA/person100_virus_184.jpeg": ("viral", "person100"),
}


def _kermany_tree(root: Path) -> Path:
    for name in KERMANY:
        write_image(root / "chest_xray" / name)
    write_image(root / "chest_xray" / "train" / "PNEUMONIA" / "person5_pneumonia.jpeg")
    return root


def test_kermany_labels_patients_and_fixed_split(tmp_path: Path) -> None:
    root = _kermany_tree(tmp_path / "kermany")
    assert detect_layout(root) == "kermany"
    result = index_dataset(root)
    manifest = result.manifest.set_index("sample_id")
    assert result.layout == "kermany" and len(manifest) == len(KERMANY)
    for name, (label, patient) in KERMANY.items():
        row = manifest.loc[f"chest_xray/{name}"]
        assert (row.label, row.patient_id, row.split) == (label, patient, name.split("/")[0])
    assert (manifest.modality == "xray").all() and (manifest.patient_id_from == "layout").all()
    assert result.skipped == [("chest_xray/train/PNEUMONIA/person5_pneumonia.jpeg",
                               "PNEUMONIA image whose name says neither 'bacteria' nor 'virus' (or both); no label")]
    folds = folds_from_split_column(result.manifest)
    assert folds.groupby("role").size().to_dict() == {"test": 2, "train": 6, "val": 2}


def test_kermany_patient_in_two_classes_and_names_without_patients(tmp_path: Path) -> None:
    root = _kermany_tree(tmp_path / "kermany")
    write_image(root / "chest_xray" / "train" / "PNEUMONIA" / "person1_virus_9.jpeg")
    with pytest.warns(IndexWarning, match="1 patient.s. have both bacterial and viral"):
        manifest = index_dataset(root).manifest
    assert set(manifest.loc[manifest.patient_id.str.endswith("/person1"), "patient_id"]) == {
        "bacterial/person1", "viral/person1"}
    write_image(root / "chest_xray" / "test" / "NORMAL" / "scan.jpeg")
    with pytest.raises(CovidlensError, match="1 image.s. have no patient id.*scan.jpeg"), pytest.warns(IndexWarning):
        index_dataset(root)
    with pytest.warns(IndexWarning):
        image_wise = index_dataset(root, options=IndexOptions(no_patients=True)).manifest
    assert (image_wise.patient_id_from == IMAGE_WISE).all()


def test_kermany_unknown_class_folder_is_an_error(tmp_path: Path) -> None:
    root = _kermany_tree(tmp_path / "kermany")
    write_image(root / "chest_xray" / "train" / "COVID" / "x.jpeg")
    with pytest.raises(CovidlensError, match="'COVID' is not NORMAL or PNEUMONIA"):
        index_dataset(root, layout="kermany")
