"""index_dataset: path checks, layout detection order, explicit layouts, and its refusals."""

from __future__ import annotations

import pytest

from covidlens.data.adapters import ADAPTERS, IndexOptions
from covidlens.data.index import detect_layout, index_dataset, list_layouts
from covidlens.errors import CovidlensError
from dataset_trees import covid_ct_tree, multiclass_tree, sarscov2_tree, write_image, write_text

LAYOUTS = {"multiclass-ct", "sarscov2-ct", "covid-ct", "class-folders", "csv"}


def test_list_layouts_names_every_adapter_in_detection_order():
    layouts = list_layouts()
    names = [name for name, _ in layouts]
    assert LAYOUTS <= set(names) and set(names) == set(ADAPTERS.names())
    assert all(description for _, description in layouts)
    assert names[-1] == "class-folders"  # the generic fallback is tried last


def test_detection_picks_each_layout(tmp_path):
    write_image(tmp_path / "a.png")
    trees = {
        "multiclass-ct": multiclass_tree(tmp_path / "multi", patients=1, slices=(1,)),
        "sarscov2-ct": sarscov2_tree(tmp_path / "sars", per_class=1),
        "covid-ct": covid_ct_tree(tmp_path / "covidct"),
        "csv": write_text(tmp_path / "m.csv", "path,label,patient_id\na.png,COVID,p1\n"),
    }
    write_image(tmp_path / "generic" / "NCP" / "p1" / "0.png")
    write_image(tmp_path / "generic" / "Normal" / "p2" / "0.png")
    trees["class-folders"] = tmp_path / "generic"
    detected = {layout: detect_layout(path) for layout, path in trees.items()}
    assert detected == {layout: layout for layout in trees}


def test_missing_path(tmp_path):
    with pytest.raises(CovidlensError, match="nowhere: no such file or folder"):
        index_dataset(tmp_path / "nowhere")


def test_empty_folder(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    write_text(tmp_path / "empty" / ".DS_Store")
    with pytest.raises(CovidlensError, match="empty: folder is empty"):
        index_dataset(tmp_path / "empty")


def test_undetectable_folder_lists_layouts_and_suggests_format(tmp_path):
    write_text(tmp_path / "data" / "readme.txt")
    with pytest.raises(CovidlensError, match="cannot tell the dataset layout") as error:
        index_dataset(tmp_path / "data")
    assert "--format" in str(error.value) and all(name in str(error.value) for name in LAYOUTS)


def test_unknown_layout_name(tmp_path):
    root = multiclass_tree(tmp_path / "data", patients=1, slices=(1,))
    with pytest.raises(CovidlensError, match="unknown dataset layout 'multiclass'.*multiclass-ct"):
        index_dataset(root, layout="multiclass")


def test_explicit_layout_overrides_detection(tmp_path):
    root = multiclass_tree(tmp_path / "data", ("covid", "healthy", "others"), patients=1, slices=(1,))
    result = index_dataset(root, layout="class-folders")
    assert result.layout == "class-folders"
    assert sorted(result.manifest["label"]) == ["covid", "healthy", "others"]


def test_explicit_layout_that_does_not_fit_says_what_is_missing(tmp_path):
    root = sarscov2_tree(tmp_path / "sars", per_class=1)
    with pytest.raises(CovidlensError, match="Healthy, Others not found"):
        index_dataset(root, layout="multiclass-ct")


def test_every_image_unreadable_is_an_error(tmp_path):
    for cls in ("COVID", "non-COVID"):
        write_text(tmp_path / "sars" / cls / "1.png")
    with pytest.raises(CovidlensError, match="no usable image.*2 skipped.*not an image"):
        index_dataset(tmp_path / "sars", options=IndexOptions(no_patients=True))


def test_stray_images_outside_class_folders_are_reported(tmp_path):
    root = multiclass_tree(tmp_path / "data", patients=1, slices=(1,))
    write_image(root / "extras" / "loose.png")
    write_text(root / "README.md")
    result = index_dataset(root, layout="multiclass-ct")
    assert result.skipped == [("extras/loose.png", "image outside the class folders; not indexed")]
    assert len(result.manifest) == 3


def test_contradictory_patient_options(tmp_path):
    root = sarscov2_tree(tmp_path / "sars", per_class=1)
    with pytest.raises(CovidlensError, match="either --patient-regex or --no-patients"):
        index_dataset(root, options=IndexOptions(patient_regex="(.*)", no_patients=True))
