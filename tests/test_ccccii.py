"""CC-CCII (paper 002): <class>/<patient>/<scan>/<numbered slice> trees are detected and indexed."""

from __future__ import annotations

from pathlib import Path

import pytest

from covidlens.data.adapters.common import mask_path_for
from covidlens.data.index import detect_layout, index_dataset
from covidlens.data.manifest import MANIFEST_COLUMNS
from covidlens.data.splits import patient_wise_folds
from covidlens.errors import CovidlensError
from dataset_trees import multiclass_tree, write_image, write_text, write_truncated_png

CLASSES = ("NCP", "CP", "Normal")


def ccccii_tree(root: Path, folder_names: tuple[str, str, str] = CLASSES, patients: int = 1,
                scans: tuple[str, ...] = ("0",), slices: int = 3, extension: str = "png") -> Path:
    """CC-CCII's layout: <class>/<patient>/<scan>/<0000..>.png, patient folders unique across classes."""
    for class_name in folder_names:
        for patient in range(patients):
            for scan in scans:
                for number in range(slices):
                    name = f"{number:04d}.{extension}"
                    write_image(root / class_name / f"{class_name.lower()}_{patient}" / scan / name, value=number)
    return root


def by_sample(manifest, column: str) -> dict:
    return manifest.set_index("sample_id")[column].to_dict()


def test_detection_picks_ccccii_and_not_the_other_class_folder_layouts(tmp_path):
    assert detect_layout(ccccii_tree(tmp_path / "cc")) == "cc-ccii"
    assert detect_layout(ccccii_tree(tmp_path / "cased", ("ncp", "CP", "NORMAL"))) == "cc-ccii"
    assert detect_layout(ccccii_tree(tmp_path / "zip" / "CC-CCII")) == "cc-ccii"  # one enclosing folder
    assert detect_layout(multiclass_tree(tmp_path / "multi", patients=1, slices=(1,))) == "multiclass-ct"
    assert detect_layout(ccccii_tree(tmp_path / "two", ("NCP", "Normal", "Other"))) == "class-folders"


def test_labels_patients_scans_and_slices(tmp_path):
    root = ccccii_tree(tmp_path / "data", patients=2, slices=3)
    result = index_dataset(root)
    manifest = result.manifest
    assert result.layout == "cc-ccii" and result.skipped == []
    assert list(manifest.columns[: len(MANIFEST_COLUMNS)]) == MANIFEST_COLUMNS
    assert manifest.groupby("label").size().to_dict() == {"CP": 6, "NCP": 6, "Normal": 6}
    assert set(manifest["patient_id"]) == {f"{c.lower()}_{p}" for c in CLASSES for p in range(2)}
    assert set(manifest["scan_id"]) == {f"{c.lower()}_{p}/0" for c in CLASSES for p in range(2)}
    assert (manifest["modality"] == "ct").all() and (manifest["source"] == "cc-ccii").all()
    assert (manifest["patient_id_from"] == "layout").all()
    row = manifest.set_index("sample_id").loc["NCP/ncp_1/0/0002.png"]
    assert (row["label"], row["patient_id"], row["scan_id"], row["slice_index"]) == ("NCP", "ncp_1", "ncp_1/0", 2)
    assert "mask_path" not in manifest


def test_slice_index_is_the_number_in_the_name(tmp_path):
    root = ccccii_tree(tmp_path / "data")
    scan = root / "NCP" / "ncp_0" / "0"
    for number in (9, 10):  # unpadded names: 10 after 9, not after 1
        write_image(scan.parent / "unpadded" / f"{number}.png")
    write_image(scan.parent / "unpadded" / "1.jpg")
    write_image(scan.parent / "gap" / "0005.png")  # the number is kept, not renumbered from 0
    write_image(scan.parent / "gap" / "0012.png")
    manifest = index_dataset(root).manifest
    index_of = by_sample(manifest, "slice_index")
    assert [index_of[f"NCP/ncp_0/0/{n:04d}.png"] for n in range(3)] == [0, 1, 2]
    assert [index_of[f"NCP/ncp_0/unpadded/{name}"] for name in ("1.jpg", "9.png", "10.png")] == [1, 9, 10]
    assert [index_of[f"NCP/ncp_0/gap/{name}"] for name in ("0005.png", "0012.png")] == [5, 12]


def test_non_numeric_names_fall_back_to_natural_order(tmp_path):
    root = ccccii_tree(tmp_path / "data")
    folder = root / "CP" / "cp_0" / "named"
    for name in ("IMG10.png", "IMG2.png", "IMG1.png", "0003.png"):  # one non-numeric name: whole folder
        write_image(folder / name)
    duplicate = root / "CP" / "cp_0" / "same_number"
    for name in ("1.png", "01.png"):  # two names, one number: natural order, no clash
        write_image(duplicate / name)
    index_of = by_sample(index_dataset(root).manifest, "slice_index")
    named = [index_of[f"CP/cp_0/named/{name}"] for name in ("0003.png", "IMG1.png", "IMG2.png", "IMG10.png")]
    assert named == [0, 1, 2, 3]
    assert sorted(index_of[f"CP/cp_0/same_number/{name}"] for name in ("1.png", "01.png")) == [0, 1]


def test_two_scans_of_one_patient(tmp_path):
    root = ccccii_tree(tmp_path / "data", scans=("1001", "1002"), slices=2)
    manifest = index_dataset(root).manifest
    ncp = manifest[manifest["label"] == "NCP"]
    assert set(ncp["patient_id"]) == {"ncp_0"}
    assert set(ncp["scan_id"]) == {"ncp_0/1001", "ncp_0/1002"}
    assert ncp.groupby("scan_id")["slice_index"].apply(sorted).to_dict() == {
        "ncp_0/1001": [0, 1], "ncp_0/1002": [0, 1]
    }


def test_images_directly_in_a_patient_folder_are_one_scan(tmp_path):
    root = ccccii_tree(tmp_path / "data")
    for number in range(2):
        write_image(root / "Normal" / "flat_patient" / f"{number:04d}.png")
    manifest = index_dataset(root).manifest
    flat = manifest[manifest["patient_id"] == "flat_patient"]
    assert set(flat["scan_id"]) == {"flat_patient"} and sorted(flat["slice_index"]) == [0, 1]


def test_shared_patient_names_get_the_class_prefix(tmp_path):
    root = tmp_path / "data"
    for class_name in CLASSES:
        write_image(root / class_name / "1" / "5" / "0000.png")
    manifest = index_dataset(root).manifest
    assert by_sample(manifest, "patient_id")["CP/1/5/0000.png"] == "CP/1"
    assert by_sample(manifest, "scan_id")["CP/1/5/0000.png"] == "CP/1/5"
    assert manifest["patient_id"].nunique() == 3


def test_case_insensitive_class_folders_give_canonical_labels(tmp_path):
    root = ccccii_tree(tmp_path / "data", ("ncp", "Cp", "NORMAL"))
    manifest = index_dataset(root).manifest
    assert set(manifest["label"]) == set(CLASSES)
    assert by_sample(manifest, "label")["NORMAL/normal_0/0/0000.png"] == "Normal"


def test_bad_files_in_a_scan_are_skipped_with_reasons(tmp_path):
    root = ccccii_tree(tmp_path / "data", slices=2)
    scan = root / "NCP" / "ncp_0" / "0"
    write_text(scan / "notes.txt")
    write_truncated_png(scan / "0002.png")
    write_image(root / "stray.png")
    result = index_dataset(root)
    reasons = dict(result.skipped)
    assert set(reasons) == {"NCP/ncp_0/0/notes.txt", "NCP/ncp_0/0/0002.png", "stray.png"}
    assert "not an image file" in reasons["NCP/ncp_0/0/notes.txt"]
    assert "truncated" in reasons["NCP/ncp_0/0/0002.png"]
    assert "outside the class folders" in reasons["stray.png"]
    assert "NCP/ncp_0/0/0002.png" not in set(result.manifest["sample_id"])
    assert len(result.manifest) == 6


def test_masks_go_to_mask_path(tmp_path):
    root = ccccii_tree(tmp_path / "data", slices=2)
    image = root / "CP" / "cp_0" / "0" / "0001.png"
    mask = write_image(mask_path_for(image))
    manifest = index_dataset(root).manifest
    assert len(manifest) == 6 and not manifest["path"].str.endswith(".mask.png").any()
    masks = by_sample(manifest, "mask_path")
    assert masks["CP/cp_0/0/0001.png"] == str(mask)
    assert masks["CP/cp_0/0/0000.png"] == ""


def test_missing_class_folder_is_refused_when_named(tmp_path):
    root = ccccii_tree(tmp_path / "data", ("NCP", "Normal", "Other"))
    with pytest.raises(CovidlensError, match="class folder.*CP not found.*cc-ccii"):
        index_dataset(root, layout="cc-ccii")


def test_patient_wise_folds_keep_a_patients_scans_together(tmp_path):
    root = ccccii_tree(tmp_path / "data", patients=4, scans=("a", "b"), slices=2)
    manifest = index_dataset(root).manifest
    assert manifest.groupby("patient_id")["scan_id"].nunique().eq(2).all()
    folds = patient_wise_folds(manifest, folds=3, rounds=2, seed=0, val_fraction=0.25)
    roles = folds.merge(manifest[["sample_id", "patient_id", "scan_id"]], on="sample_id")
    per_patient = roles.groupby(["round", "fold", "patient_id"])["role"].nunique()
    assert (per_patient == 1).all()  # both scans of a patient always in the same role
    assert set(roles["role"]) == {"train", "val", "test"}
