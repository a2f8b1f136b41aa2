"""Paper 003's chest X-ray competition: `train/<class>/*` (normal, bacterial, viral, covid) and `test/*` unlabelled.

The competition gives no patient ids, so every training image is its own patient (image-wise rows,
`patient_id_from` = "none", flagged in every report) without the user passing --no-patients; a
--patient-regex, where the file names do carry a patient, is honoured instead. The unlabelled images of
`test/` are no manifest rows (a row needs a label): `competition_test_images` lists them for a submission,
and `competition_test_labels` reads a `test_labels.csv` (Id, label) kept beside `test/` to score one.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd

from covidlens.data.adapters.base import ADAPTERS, Adapter, IndexOptions, IndexResult
from covidlens.data.adapters.common import (
    Candidate,
    IndexWarning,
    build_result,
    class_folder_candidates,
    find_child,
    images_outside,
    list_images,
    list_some,
    match_class_folders,
    not_image_reasons,
    pick_column,
    read_table,
    subfolders,
    unwrap_enclosing_folder,
)
from covidlens.errors import CovidlensError

NAME = "cxr-competition"
CLASSES = ("normal", "bacterial", "viral", "covid")
# folder name (any case) -> label; the spellings other X-ray sets use for the same classes are accepted
LABELS = {
    "normal": "normal",
    "bacterial": "bacterial",
    "bacteria": "bacterial",
    "viral": "viral",
    "virus": "viral",
    "covid": "covid",
    "covid-19": "covid",
    "covid19": "covid",
}
TRAIN, TEST = "train", "test"
TEST_LABELS = "test_labels.csv"


def _train_folder(root: Path) -> Path | None:
    return find_child(root, TRAIN)


def detect(path: Path) -> bool:
    """True when the folder (or its only sub-folder) has `train/` holding at least two of the four class folders."""
    train = _train_folder(unwrap_enclosing_folder(path))
    if train is None:
        return False
    return len({LABELS[f.name.casefold()] for f in subfolders(train) if f.name.casefold() in LABELS}) >= 2


def class_folders(root: Path) -> dict[str, Path]:
    """Label -> folder of `root/train/`; an unknown, missing or doubled class folder is an error."""
    train = _train_folder(root)
    if train is None:
        raise CovidlensError(f"{root}: no train/ folder; the {NAME} layout is train/<class>/<images> + test/<images>")
    unknown = (
        f"one of {', '.join(CLASSES)} (any letter case); rename or remove it, or index the folder with "
        "--format class-folders"
    )
    found = match_class_folders(train, LABELS, unknown)
    missing = [label for label in CLASSES if label not in found]
    if missing:
        raise CovidlensError(
            f"{train}: class folder(s) {', '.join(missing)} not found; the {NAME} layout needs "
            f"{', '.join(CLASSES)} (any letter case), or index the folder with --format class-folders"
        )
    return {label: found[label] for label in CLASSES}


def competition_test_images(root: Path) -> list[Path]:
    """The unlabelled images of `root/test/` in natural order (none when there is no test folder)."""
    test = find_child(unwrap_enclosing_folder(Path(root)), TEST)
    return [] if test is None else list_images(test).images


def competition_test_labels(root: Path) -> pd.DataFrame | None:
    """The `test_labels.csv` beside `test/` as (Id, label) strings, checked against the test images; None if absent."""
    root = unwrap_enclosing_folder(Path(root))
    path = find_child(root, TEST_LABELS, want_dir=False)
    if path is None:
        return None
    table = read_table(path)
    id_column = pick_column(table, ("id", "image", "file"), path, "Id")
    label_column = pick_column(table, ("label", "class"), path, "label")
    labels = pd.DataFrame({"Id": table[id_column].str.strip(), "label": table[label_column].str.strip()})
    labels["label"] = [LABELS.get(value.casefold(), value) for value in labels["label"]]
    unknown = sorted(set(labels["label"]) - set(CLASSES))
    if unknown:
        raise CovidlensError(f"{path}: unknown label(s) {list_some(unknown)}; use {', '.join(CLASSES)}")
    stems = {image.name[: -len(image.suffix)] for image in competition_test_images(root)}
    absent = sorted(set(labels["Id"]) - stems)
    if absent:
        raise CovidlensError(f"{path}: Id(s) {list_some(absent)} name no image in {TEST}/; check the table")
    if labels["Id"].duplicated().any():
        raise CovidlensError(f"{path}: Id {labels.loc[labels['Id'].duplicated(), 'Id'].iloc[0]!r} occurs twice")
    return labels


def index(path: Path, options: IndexOptions) -> IndexResult:
    """Index `train/<class>/*` image-wise (no --no-patients needed); `test/` images are counted, not indexed.

    Images directly in train/ or elsewhere outside train/<class>/ and test/ are listed as skipped, as are
    non-image files; `<name>.mask.png` beside an image is its lesion mask (synthetic data).
    """
    root = unwrap_enclosing_folder(path)
    class_dirs = class_folders(root)
    candidates: list[Candidate] = []
    skipped: list[tuple[str, str]] = []
    for label, folder in class_dirs.items():
        found, not_images = class_folder_candidates(folder, label)
        for candidate in found:  # sub-folders are no patients here: image-wise, as the competition ships it
            candidate.patient_id = candidate.scan_id = ""
            candidate.slice_index = -1
            candidate.extra = {"modality": "xray"}
        candidates += found
        skipped += not_image_reasons(not_images, path)
    test = find_child(root, TEST)
    skipped += images_outside(root, [*class_dirs.values(), *([test] if test is not None else [])], path)
    tests = competition_test_images(root)
    if tests:
        warnings.warn(
            f"{test}: {len(tests)} unlabelled test image(s) are not indexed (a manifest row needs a label); "
            "classify them with `covidlens predict`",
            IndexWarning,
            stacklevel=2,
        )
    image_wise = IndexOptions(patient_regex=options.patient_regex, no_patients=not options.patient_regex)
    return build_result(path, candidates, NAME, image_wise, skipped, patient_source="the competition ships none")


ADAPTERS.register(NAME)(
    Adapter(
        name=NAME,
        description="chest X-ray competition (paper 003): train/{normal,bacterial,viral,covid}/ + unlabelled test/; "
        "no patient ids, so rows are image-wise without --no-patients (reports flag it)",
        detect=detect,
        index=index,
        priority=20,
    )
)
