"""UCSD-AI4H COVID-CT: CT_COVID / CT_NonCOVID images, its Data-split lists and its patient tables.

Where each thing is looked for (folder and file names in any letter case):
- images: `CT_COVID/` and `CT_NonCOVID/` under `Images-processed/`, `Images/` or the root itself;
- the official split: `.txt` files under `Data-split/` named `{train,val,test}CT_{COVID,NonCOVID}.txt`
  (one image name per line), giving the manifest column `split`;
- patient ids: `COVID-CT-MetaInfo` (columns "File name", "Patient ID") and `NonCOVID-CT-MetaInfo`
  ("image name", "patient id"), as `.csv` (or `.xlsx` when openpyxl is installed), in the root or
  `Data-split/`.
Names are matched exactly, then ignoring letter case and runs of whitespace (the tables hold names
with `%` and stray spaces; ids like "Patient 180 " are trimmed). An image with no patient id in the
tables is an error that lists it (unless --no-patients or --patient-regex). An image named in no split
file is kept with split "" and an `IndexWarning` names it; so does a split entry with no image.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from covidlens.data.adapters.base import ADAPTERS, Adapter, IndexOptions, IndexResult
from covidlens.data.adapters.common import (
    Candidate,
    IndexWarning,
    build_result,
    find_child,
    list_images,
    list_some,
    name_key,
    not_image_reasons,
    pick_column,
    read_table,
    relative_id,
    unwrap_enclosing_folder,
    walk_files,
)
from covidlens.errors import CovidlensError

NAME = "covid-ct"
IMAGE_FOLDERS = {"COVID": "CT_COVID", "NonCOVID": "CT_NonCOVID"}  # label -> image folder
IMAGE_PARENTS = ("Images-processed", "Images", "")
METADATA_STEMS = {"COVID": "COVID-CT-MetaInfo", "NonCOVID": "NonCOVID-CT-MetaInfo"}
SPLIT_FOLDER = "Data-split"
SPLITS = ("train", "val", "test")
NAME_COLUMNS = ("file name", "image name", "filename", "imagename", "image", "file")
PATIENT_COLUMNS = ("patient id", "patientid", "patient")


class NameTable:
    """Values keyed by image file name, looked up exactly, then by `name_key`."""

    def __init__(self) -> None:
        self.exact: dict[str, str] = {}
        self.loose: dict[str, str] = {}

    def add(self, name: str, value: str) -> None:
        """Record `value` for the image called `name`."""
        self.exact[name] = value
        self.loose[name_key(name)] = value

    def get(self, name: str) -> str | None:
        """The value recorded for `name`, or None."""
        return self.exact.get(name, self.loose.get(name_key(name)))


def image_parent(root: Path) -> Path | None:
    """The first of Images-processed/, Images/ or the root that holds a CT_COVID or CT_NonCOVID entry."""
    for parent_name in IMAGE_PARENTS:
        parent = find_child(root, parent_name) if parent_name else root
        if parent is None:
            continue
        for folder in IMAGE_FOLDERS.values():
            if find_child(parent, folder) or find_child(parent, folder + ".zip", want_dir=False):
                return parent
    return None


def detect(path: Path) -> bool:
    """True when CT_COVID / CT_NonCOVID folders (or their zips) sit where COVID-CT puts them."""
    return image_parent(unwrap_enclosing_folder(path)) is not None


def image_folders(root: Path) -> dict[str, Path]:
    """Label -> image folder; a missing folder is an error that says what to unzip."""
    parent = image_parent(root)
    if parent is None:
        raise CovidlensError(
            f"{root}: no CT_COVID / CT_NonCOVID folder found under Images-processed/, Images/ or here"
        )
    folders: dict[str, Path] = {}
    for label, folder_name in IMAGE_FOLDERS.items():
        folder = find_child(parent, folder_name)
        if folder is None:
            zipped = find_child(parent, folder_name + ".zip", want_dir=False)
            hint = f"unzip {zipped} there" if zipped else f"put the {label} images in {parent / folder_name}"
            raise CovidlensError(f"{parent / folder_name}: no such folder; {hint}")
        folders[label] = folder
    return folders


def find_metadata(root: Path, stem: str) -> Path | None:
    """The patient table called `stem` (.csv preferred, else .xlsx) in the root or Data-split/."""
    places = [root, find_child(root, SPLIT_FOLDER)]
    for suffix in (".csv", ".xlsx"):
        for place in places:
            found = find_child(place, stem + suffix, want_dir=False) if place else None
            if found:
                return found
    return None


def read_patient_table(path: Path) -> NameTable:
    """Image name -> patient id from one COVID-CT metadata table."""
    table = read_table(path)
    name_column = pick_column(table, NAME_COLUMNS, path, "image name")
    patient_column = pick_column(table, PATIENT_COLUMNS, path, "patient id")
    patients = NameTable()
    for name, patient in zip(table[name_column], table[patient_column], strict=True):
        name, patient = name.strip(), " ".join(patient.split())
        if name and patient:
            patients.add(name, patient)
    return patients


def split_of_file(path: Path) -> tuple[str, str] | None:
    """(label, split) from a split file name such as trainCT_NonCOVID.txt, or None if it is not one."""
    name = path.name.casefold()
    split = next((s for s in SPLITS if name.startswith(s)), None)
    if split is None:
        return None
    for hint in (name, path.parent.name.casefold()):
        if "noncovid" in hint.replace("-", "").replace("_", ""):
            return "NonCOVID", split
        if "covid" in hint:
            return "COVID", split
    return None


def read_splits(root: Path) -> dict[str, NameTable] | None:
    """Label -> (image name -> split) from Data-split/, or None when there is no split folder."""
    folder = find_child(root, SPLIT_FOLDER)
    if folder is None:
        return None
    splits = {label: NameTable() for label in IMAGE_FOLDERS}
    for path in walk_files(folder):
        parsed = split_of_file(path) if path.suffix.lower() == ".txt" else None
        if parsed is None:
            continue
        label, split = parsed
        for line in path.read_text(encoding="utf-8-sig", errors="replace").splitlines():
            name = line.strip()
            if not name:
                continue
            earlier = splits[label].get(name)
            if earlier is not None and earlier != split:
                raise CovidlensError(
                    f"{path}: {name!r} is also in the {earlier} list; an image belongs to one split"
                )
            splits[label].add(name, split)
    return splits


def warn_split_mismatches(root: Path, candidates: list[Candidate], splits: dict[str, NameTable]) -> None:
    """Warn about images in no split list and split entries with no image."""
    unsplit = [relative_id(c.path, root) for c in candidates if not c.split]
    if unsplit:
        warnings.warn(
            f"{root}: {len(unsplit)} image(s) are in no {SPLIT_FOLDER} list and get split '': "
            f"{list_some(unsplit)}",
            IndexWarning,
            stacklevel=3,
        )
    for label, table in splits.items():
        present = {name_key(c.path.name) for c in candidates if c.label == label}
        absent = [name for name in table.exact if name_key(name) not in present]
        if absent:
            warnings.warn(
                f"{root}: {len(absent)} {label} image(s) named in {SPLIT_FOLDER} are not on disk: "
                f"{list_some(absent)}",
                IndexWarning,
                stacklevel=3,
            )


def index(path: Path, options: IndexOptions) -> IndexResult:
    """Index COVID-CT with its official split and the patient ids of its metadata tables."""
    root = unwrap_enclosing_folder(path)
    folders = image_folders(root)
    tables = {label: find_metadata(root, stem) for label, stem in METADATA_STEMS.items()}
    patients = {label: read_patient_table(table) if table else NameTable() for label, table in tables.items()}
    splits = read_splits(root)
    candidates: list[Candidate] = []
    skipped: list[tuple[str, str]] = []
    for label, folder in folders.items():
        listing = list_images(folder)
        skipped += not_image_reasons(listing.not_images, path)
        for image in listing.images:
            split = (splits[label].get(image.name) or "") if splits is not None else None
            patient = patients[label].get(image.name) or ""
            candidates.append(Candidate(path=image, label=label, patient_id=patient, split=split))
    if splits is None:
        warnings.warn(f"{root}: no {SPLIT_FOLDER} folder, so no official split", IndexWarning, stacklevel=2)
    else:
        warn_split_mismatches(path, candidates, splits)
    return build_result(path, candidates, NAME, options, skipped, patient_source=describe_tables(tables))


def describe_tables(tables: dict[str, Path | None]) -> str:
    """Where the patient ids were looked up, for error messages."""
    return "; ".join(
        f"looked up in {table.name}" if table else f"{METADATA_STEMS[label]}.csv not found"
        for label, table in tables.items()
    )


ADAPTERS.register(NAME)(
    Adapter(
        name=NAME,
        description="UCSD COVID-CT: CT_COVID / CT_NonCOVID images, Data-split lists, patient ids from its "
        "MetaInfo tables (paper 004)",
        detect=detect,
        index=index,
        priority=20,
    )
)
