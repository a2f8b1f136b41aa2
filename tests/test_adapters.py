"""Each dataset layout is detected and indexed as downloaded: labels, patient ids, slices, splits, skips."""

from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd
import pytest

from covidlens.data.adapters import IndexOptions
from covidlens.data.adapters.common import IndexWarning, check_image, mask_path_for, natural_key
from covidlens.data.index import detect_layout, index_dataset
from covidlens.data.manifest import IMAGE_WISE, MANIFEST_COLUMNS, read_manifest, write_manifest
from covidlens.errors import CovidlensError
from dataset_trees import (
    covid_ct_tree,
    multiclass_tree,
    sarscov2_tree,
    write_image,
    write_text,
    write_truncated_png,
)

NO_PATIENTS = IndexOptions(no_patients=True)
CLASSES = ("COVID", "Healthy", "Others")
PATIENT_FOLDERS = {f"{c}/patient{p}" for c in CLASSES for p in (1, 2)}


# --- shared helpers --------------------------------------------------------------------------------


def test_natural_key_orders_numbers_by_value():
    names = ["slice_10.png", "slice_2.png", "Slice_1.png", "slice_2a.png"]
    assert sorted(names, key=natural_key) == ["Slice_1.png", "slice_2.png", "slice_2a.png", "slice_10.png"]


def test_check_image_reasons(tmp_path):
    assert check_image(write_image(tmp_path / "ok.png")) is None
    assert check_image(write_image(tmp_path / "ok.jpg")) is None
    assert check_image(write_image(tmp_path / "ok.tif")) is None
    assert "not an image" in check_image(write_text(tmp_path / "text.png"))
    assert "truncated" in check_image(write_truncated_png(tmp_path / "cut.png")).lower()
    jpeg = write_image(tmp_path / "cut.jpg", size=64)
    jpeg.write_bytes(jpeg.read_bytes()[:-200])
    assert "truncated" in check_image(jpeg)
    (tmp_path / "empty.png").touch()
    assert "0 bytes" in check_image(tmp_path / "empty.png")
    assert check_image(tmp_path / "absent.png") == "no such file"


# --- multiclass CT (paper 000) ---------------------------------------------------------------------


def test_multiclass_labels_patients_and_natural_slice_order(tmp_path):
    root = multiclass_tree(tmp_path / "data", folder_names=("covid", "HEALTHY", "Others"))
    result = index_dataset(root)
    manifest = result.manifest
    assert result.layout == "multiclass-ct" and result.skipped == []
    assert list(manifest.columns[: len(MANIFEST_COLUMNS)]) == MANIFEST_COLUMNS
    assert manifest.groupby("label").size().to_dict() == {"COVID": 6, "Healthy": 6, "Others": 6}
    assert manifest.groupby("label")["patient_id"].nunique().to_dict() == dict.fromkeys(CLASSES, 2)
    assert set(manifest["patient_id"]) == PATIENT_FOLDERS  # one folder name in two classes: two patients
    assert (manifest["scan_id"] == manifest["patient_id"]).all()
    assert (manifest["patient_id_from"] == "layout").all()
    one_patient = manifest[manifest["patient_id"] == "COVID/patient1"].sort_values("slice_index")
    assert [Path(p).name for p in one_patient["path"]] == ["slice_1.png", "slice_2.png", "slice_10.png"]
    assert one_patient["slice_index"].tolist() == [0, 1, 2]
    assert "covid/patient1/slice_10.png" in set(manifest["sample_id"])
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in manifest["path"])
    assert "mask_path" not in manifest and "split" not in manifest


def test_multiclass_unique_patient_folders_are_the_ids(tmp_path):
    root = tmp_path / "data"
    for label, patient in [("COVID", "covid_p001"), ("Healthy", "healthy_p002"), ("Others", "others_p003")]:
        write_image(root / label / patient / "slice_000.png")
    manifest = index_dataset(root).manifest
    assert manifest.set_index("label")["patient_id"].to_dict() == {
        "COVID": "covid_p001", "Healthy": "healthy_p002", "Others": "others_p003"
    }


def test_multiclass_inside_an_enclosing_folder(tmp_path):
    multiclass_tree(tmp_path / "download" / "multiclass", patients=1, slices=(1,))
    write_text(tmp_path / "download" / "__MACOSX" / "multiclass" / "._COVID")  # zip debris: ignored
    result = index_dataset(tmp_path / "download")
    assert result.layout == "multiclass-ct"
    assert sorted(result.manifest["sample_id"])[0] == "multiclass/COVID/patient1/slice_1.png"


def test_bad_files_are_skipped_with_a_reason_never_indexed(tmp_path):
    root = multiclass_tree(tmp_path / "data", patients=1, slices=(1, 2))
    write_text(root / "COVID" / "patient1" / "notes.txt")
    write_text(root / "Healthy" / "patient1" / "slice_3.png")  # a text file renamed .png
    write_truncated_png(root / "Others" / "patient1" / "slice_3.png")
    (root / "Others" / "patient1" / "slice_4.png").touch()
    write_text(root / "COVID" / ".DS_Store")  # hidden: ignored
    result = index_dataset(root)
    reasons = dict(result.skipped)
    assert set(reasons) == {
        "COVID/patient1/notes.txt",
        "Healthy/patient1/slice_3.png",
        "Others/patient1/slice_3.png",
        "Others/patient1/slice_4.png",
    }
    assert "not an image file" in reasons["COVID/patient1/notes.txt"]
    assert "not an image" in reasons["Healthy/patient1/slice_3.png"]
    assert "truncated" in reasons["Others/patient1/slice_3.png"].lower()
    assert "0 bytes" in reasons["Others/patient1/slice_4.png"]
    assert len(result.manifest) == 6
    assert not set(reasons) & set(result.manifest["sample_id"])


def test_masks_land_in_mask_path_not_as_images(tmp_path):
    root = multiclass_tree(tmp_path / "data", patients=1, slices=(1, 2))
    image = root / "COVID" / "patient1" / "slice_2.png"
    mask = write_image(mask_path_for(image))
    assert mask.name == "slice_2.mask.png"
    manifest = index_dataset(root).manifest
    assert len(manifest) == 6 and not manifest["sample_id"].str.contains("mask").any()
    by_id = manifest.set_index("sample_id")["mask_path"]
    assert by_id["COVID/patient1/slice_2.png"] == str(mask)
    assert (by_id.drop("COVID/patient1/slice_2.png") == "").all()


# --- SARS-CoV-2 CT ----------------------------------------------------------------------------------


def test_sarscov2_without_patient_options_says_so(tmp_path):
    root = sarscov2_tree(tmp_path / "sars")
    assert detect_layout(root) == "sarscov2-ct"
    with pytest.raises(CovidlensError, match="no patient ids can be found") as error:
        index_dataset(root)
    assert "--no-patients" in str(error.value) and "--patient-regex" in str(error.value)


def test_sarscov2_image_wise(tmp_path):
    manifest = index_dataset(sarscov2_tree(tmp_path / "sars"), options=NO_PATIENTS).manifest
    assert manifest.groupby("label").size().to_dict() == {"COVID": 3, "non-COVID": 3}
    assert (manifest["patient_id_from"] == IMAGE_WISE).all()
    assert (manifest["patient_id"] == manifest["sample_id"]).all()
    assert "COVID/Covid (2).png" in set(manifest["sample_id"])


# --- COVID-CT (UCSD) --------------------------------------------------------------------------------


def test_covid_ct_patients_and_official_split(tmp_path):
    root = covid_ct_tree(tmp_path / "COVID-CT")
    assert detect_layout(root) == "covid-ct"
    with warnings.catch_warnings():
        warnings.simplefilter("error", IndexWarning)  # every image is in a split list and has a patient
        result = index_dataset(root)
    manifest = result.manifest
    assert result.skipped == []
    assert manifest.groupby("label").size().to_dict() == {"COVID": 349, "NonCOVID": 397}
    assert manifest.groupby(["label", "split"]).size().to_dict() == {
        ("COVID", "test"): 98, ("COVID", "train"): 191, ("COVID", "val"): 60,
        ("NonCOVID", "test"): 105, ("NonCOVID", "train"): 234, ("NonCOVID", "val"): 58,
    }
    patient_of = manifest.set_index("sample_id")["patient_id"]
    assert patient_of["Images-processed/CT_COVID/2020.01.24.919183-p27-132.png"] == "Patient 1"
    assert patient_of["Images-processed/CT_NonCOVID/1%2.jpg"] == "crawled_patient_1"  # a %-name
    stray_space = (
        "Images-processed/CT_COVID/"
        "2019-novel-Coronavirus-severe-adult-respiratory-dist_2020_International-Jour-p3-91.png"
    )
    assert patient_of[stray_space] == "Patient 180"  # "Patient 180 " in the table
    assert manifest.groupby("label")["patient_id"].nunique().to_dict() == {"COVID": 213, "NonCOVID": 171}
    splits_per_patient = manifest.groupby("patient_id")["split"].nunique()
    assert (splits_per_patient == 1).all(), "the official split must be patient-disjoint as read"


def test_covid_ct_tolerates_images_folder_and_letter_case(tmp_path):
    root = covid_ct_tree(tmp_path / "cc", image_parent="images", folders=("ct_covid", "CT_NONCOVID"))
    result = index_dataset(root, layout="covid-ct")
    assert len(result.manifest) == 746
    assert result.manifest["sample_id"].str.startswith("images/").all()


def test_covid_ct_image_without_patient_id_is_named(tmp_path):
    root = covid_ct_tree(tmp_path / "cc")
    write_image(root / "Images-processed" / "CT_COVID" / "extra figure.png")
    with pytest.warns(IndexWarning, match="extra figure.png"), pytest.raises(CovidlensError) as error:
        index_dataset(root)
    message = str(error.value)
    assert "1 image(s) have no patient id" in message and "extra figure.png" in message
    assert "COVID-CT-MetaInfo.csv" in message and "--no-patients" in message


def test_covid_ct_image_in_no_split_is_kept_with_blank_split_and_a_warning(tmp_path):
    root = covid_ct_tree(tmp_path / "cc")
    extra = write_image(root / "Images-processed" / "CT_COVID" / "extra figure.png")
    gone = root / "Images-processed" / "CT_NonCOVID" / "1%0.jpg"
    gone.unlink()
    with pytest.warns(IndexWarning) as caught:
        manifest = index_dataset(root, options=IndexOptions(no_patients=True)).manifest
    messages = " | ".join(str(w.message) for w in caught)
    assert "in no Data-split list" in messages and "not on disk" in messages and "1%0.jpg" in messages
    row = manifest.set_index("path").loc[str(extra)]
    assert row["split"] == "" and row["patient_id_from"] == IMAGE_WISE
    assert len(manifest) == 746


def test_covid_ct_matches_names_loosely_and_reports_missing_tables(tmp_path):
    root = tmp_path / "cc"
    write_image(root / "CT_COVID" / "fig 1  a%0.png")
    write_image(root / "CT_NonCOVID" / "7.JPG")
    write_text(root / "COVID-CT-MetaInfo.csv", "File name ;Patient_ID\n Fig 1 a%0.png ;Patient 9\n")
    manifest_error = pytest.raises(CovidlensError, match="NonCOVID-CT-MetaInfo.csv not found")
    with pytest.warns(IndexWarning, match="no Data-split folder"), manifest_error:
        index_dataset(root)
    write_text(root / "NonCOVID-CT-MetaInfo.csv", ",image name,patient id\r\n0,7.jpg,crawled_patient_7\r\n")
    with pytest.warns(IndexWarning, match="no Data-split folder"):
        manifest = index_dataset(root).manifest
    assert manifest.set_index("sample_id")["patient_id"].to_dict() == {
        "CT_COVID/fig 1  a%0.png": "Patient 9",
        "CT_NonCOVID/7.JPG": "crawled_patient_7",
    }
    assert "split" not in manifest


def test_covid_ct_zipped_images_say_unzip(tmp_path):
    root = tmp_path / "cc"
    write_image(root / "Images-processed" / "CT_COVID" / "a.png")
    write_text(root / "Images-processed" / "CT_NonCOVID.zip", "zip")
    with pytest.raises(CovidlensError, match="unzip .*CT_NonCOVID.zip"):
        index_dataset(root)


# --- generic class folders --------------------------------------------------------------------------


def test_class_folders_with_patient_and_scan_folders(tmp_path):
    root = tmp_path / "ccii"
    for cls, patient, scan in [("NCP", "p1", "s1"), ("NCP", "p1", "s2"), ("Normal", "p7", "s1")]:
        for z in (0, 1, 2):
            write_image(root / cls / patient / scan / f"{z:04d}.png")
    result = index_dataset(root)
    manifest = result.manifest
    assert result.layout == "class-folders"
    patients = manifest.groupby("label")["patient_id"].unique().map(list).to_dict()
    assert patients == {"NCP": ["p1"], "Normal": ["p7"]}
    assert sorted(manifest["scan_id"].unique()) == ["p1/s1", "p1/s2", "p7/s1"]
    assert manifest.groupby("scan_id")["slice_index"].apply(sorted).map(list).tolist() == [[0, 1, 2]] * 3


def test_class_folders_flat_need_patient_options(tmp_path):
    root = tmp_path / "flat"
    for cls in ("cat", "dog"):
        write_image(root / cls / f"{cls}_pat01_1.png")
        write_image(root / cls / f"{cls}_pat02_1.jpg")
    assert detect_layout(root) == "class-folders"
    with pytest.raises(CovidlensError, match="--no-patients"):
        index_dataset(root)
    manifest = index_dataset(root, options=IndexOptions(patient_regex=r"/(\w+_pat\d+)_")).manifest
    assert sorted(manifest["patient_id"]) == ["cat_pat01", "cat_pat02", "dog_pat01", "dog_pat02"]
    assert (manifest["patient_id_from"] == "regex").all()


def test_patient_regex_that_misses_a_file_names_it(tmp_path):
    root = tmp_path / "flat"
    for cls in ("cat", "dog"):
        write_image(root / cls / f"pat01_{cls}.png")
    write_image(root / "dog" / "oddly named.png")
    with pytest.raises(CovidlensError, match="does not match 1 file.*dog/oddly named.png"):
        index_dataset(root, options=IndexOptions(patient_regex=r"(pat\d+)_"))
    with pytest.raises(CovidlensError, match="no capture group"):
        index_dataset(root, options=IndexOptions(patient_regex=r"pat\d+"))


def test_patient_regex_overrides_layout_ids(tmp_path):
    root = multiclass_tree(tmp_path / "data", patients=2, slices=(1,))
    manifest = index_dataset(root, options=IndexOptions(patient_regex=r"^(\w+/patient\d+)/")).manifest
    assert (manifest["patient_id_from"] == "regex").all()
    assert set(manifest["patient_id"]) == PATIENT_FOLDERS
    assert set(manifest["scan_id"]) == PATIENT_FOLDERS  # the layout's scans are kept


# --- CSV manifests ----------------------------------------------------------------------------------


def test_index_manifest_round_trips_through_csv(tmp_path):
    root = multiclass_tree(tmp_path / "data", patients=2, slices=(1, 2))
    write_image(mask_path_for(root / "Others" / "patient2" / "slice_1.png"))
    original = index_dataset(root).manifest
    csv_path = write_manifest(original, tmp_path / "out" / "manifest.csv")
    again = index_dataset(csv_path)
    assert again.layout == "csv" and again.skipped == []
    pd.testing.assert_frame_equal(again.manifest, original)
    pd.testing.assert_frame_equal(read_manifest(csv_path), original)  # blanks stay "" (not NaN)


def test_covid_ct_manifest_round_trips_with_split_and_image_wise_ids(tmp_path):
    root = covid_ct_tree(tmp_path / "cc")
    original = index_dataset(root, options=NO_PATIENTS).manifest
    csv_path = write_manifest(original, tmp_path / "m.csv")
    pd.testing.assert_frame_equal(index_dataset(csv_path).manifest, original)
    pd.testing.assert_frame_equal(read_manifest(csv_path), original)


def test_csv_with_relative_paths_extra_columns_and_missing_files(tmp_path):
    write_image(tmp_path / "imgs" / "a.png")
    write_image(tmp_path / "imgs" / "b.png")
    table = tmp_path / "labels.csv"
    table.write_text(
        " path ,label,patient_id,site\n"
        "imgs/a.png,COVID,p1,north\n"
        "imgs/b.png,normal,NA,south\n"
        "imgs/gone.png,normal,p3,south\n"
    )
    result = index_dataset(table)
    manifest = result.manifest.set_index("sample_id")
    assert result.skipped == [("imgs/gone.png", "no such file")]
    assert manifest.loc["imgs/a.png", "path"] == str(tmp_path / "imgs" / "a.png")
    assert manifest["patient_id_from"].eq("csv").all() and manifest["site"].tolist() == ["north", "south"]
    assert manifest["source"].eq("csv").all() and manifest["modality"].eq("ct").all()
    assert manifest.loc["imgs/b.png", "patient_id"] == "NA"  # a string, never a missing value


def test_csv_without_patient_ids_needs_options(tmp_path):
    write_image(tmp_path / "a.png")
    table = write_text(tmp_path / "t.csv", "path,label\na.png,COVID\n")
    with pytest.raises(CovidlensError, match="no patient_id column.*--no-patients"):
        index_dataset(table)
    assert index_dataset(table, options=NO_PATIENTS).manifest["patient_id"].tolist() == ["a.png"]
    with pytest.raises(CovidlensError, match="no column.*label"):
        index_dataset(write_text(tmp_path / "bad.csv", "path,class\na.png,COVID\n"))
