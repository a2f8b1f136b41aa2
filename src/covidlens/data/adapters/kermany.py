"""Kermany et al.'s pediatric chest X-ray release: `chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg`.

- label: NORMAL -> normal; a PNEUMONIA file is bacterial or viral as its name says
  (`person1_bacteria_1.jpeg`, `person1_virus_6.jpeg`); a PNEUMONIA name with neither word is skipped.
- patient_id: `personN` for pneumonia images; for normal images the study number of `IM-0115-0001.jpeg`
  (patient `IM-0115`, the last number counts that patient's images) and, for the second batch,
  `NORMAL2-IM-0381-0001.jpeg` -> `NORMAL2-IM-0381` (its numbers restart, so the prefix stays). A name
  that gives no patient is an error unless --patient-regex or --no-patients says what to do. The same
  `personN` with both bacterial and viral images would be one patient of two classes, which a
  patient-wise split cannot hold: those images become `bacterial/personN` and `viral/personN`, with a warning.
- split: the release's train / val / test folder, so `cv.split: fixed` reproduces its split. Patient ids
  are global across the three folders, so a patient in two of them stops a fixed split (it would leak).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

from covidlens.data.adapters.base import ADAPTERS, Adapter, IndexOptions, IndexResult
from covidlens.data.adapters.common import (
    Candidate,
    IndexWarning,
    build_result,
    class_folder_names,
    find_child,
    images_outside,
    list_images,
    list_some,
    match_class_folders,
    not_image_reasons,
    relative_id,
    unwrap_enclosing_folder,
)
from covidlens.errors import CovidlensError

NAME = "kermany"
SPLITS = ("train", "val", "test")
FOLDERS = ("normal", "pneumonia")
NORMAL_PATIENT = re.compile(r"^((?:[a-z]+\d*-)?IM-\d+)-\d+", re.IGNORECASE)  # IM-0115-0001, NORMAL2-IM-0381-0001
PERSON = re.compile(r"(person\d+)", re.IGNORECASE)
KIND = re.compile(r"(bacteri|virus|viral)", re.IGNORECASE)


def split_folders(root: Path) -> dict[str, Path]:
    """Split name -> folder for the train / val / test folders (any letter case) of `root`."""
    found = {split: find_child(root, split) for split in SPLITS}
    return {split: folder for split, folder in found.items() if folder is not None}


def detect(path: Path) -> bool:
    """True when a train, val or test folder of the root (or its only sub-folder) holds NORMAL and PNEUMONIA."""
    folders = split_folders(unwrap_enclosing_folder(path))
    return any(class_folder_names(folder) == set(FOLDERS) for folder in folders.values())


def pneumonia_label(name: str) -> str | None:
    """bacterial or viral from a PNEUMONIA file name, or None when it says neither (or both)."""
    kinds = {"viral" if m.casefold() in ("virus", "viral") else "bacterial" for m in KIND.findall(name)}
    return kinds.pop() if len(kinds) == 1 else None


def normal_patient(name: str) -> str:
    """`IM-0115` from `IM-0115-0001.jpeg`, `NORMAL2-IM-0381` from `NORMAL2-IM-0381-0001.jpeg`; "" otherwise."""
    found = NORMAL_PATIENT.match(name)
    return found.group(1).upper() if found else ""


def _split_candidates(
    dataset_root: Path, split: str, folder: Path
) -> tuple[list[Candidate], list[tuple[str, str]], list[Path]]:
    """Candidates of one split folder, the files skipped there, and its class folders."""
    unknown = (
        f"NORMAL or PNEUMONIA (any letter case); the {NAME} layout is {{train,val,test}}/{{NORMAL,PNEUMONIA}}/; "
        "move it out, or index with --format class-folders"
    )
    class_dirs = match_class_folders(folder, {key: key for key in FOLDERS}, unknown)
    candidates: list[Candidate] = []
    skipped: list[tuple[str, str]] = []
    for key, class_dir in class_dirs.items():
        listing = list_images(class_dir)
        skipped += not_image_reasons(listing.not_images, dataset_root)
        for image in listing.images:
            if key == "normal":
                label, patient = "normal", normal_patient(image.name)
            else:
                label = pneumonia_label(image.name)
                if label is None:
                    reason = "PNEUMONIA image whose name says neither 'bacteria' nor 'virus' (or both); no label"
                    skipped.append((relative_id(image, dataset_root), reason))
                    continue
                person = PERSON.search(image.name)
                patient = person.group(1).lower() if person else ""
            candidates.append(
                Candidate(image, label, patient_id=patient, split=split, extra={"modality": "xray"})
            )
    return candidates, skipped, list(class_dirs.values())


def _separate_two_class_patients(root: Path, candidates: list[Candidate]) -> None:
    """Give a patient with images of two classes one id per class (`viral/person1`), and warn."""
    labels: dict[str, set[str]] = {}
    for candidate in candidates:
        if candidate.patient_id:
            labels.setdefault(candidate.patient_id, set()).add(candidate.label)
    mixed = sorted(patient for patient, found in labels.items() if len(found) > 1)
    if not mixed:
        return
    for candidate in candidates:
        if candidate.patient_id in mixed:
            candidate.patient_id = f"{candidate.label}/{candidate.patient_id}"
    warnings.warn(
        f"{root}: {len(mixed)} patient(s) have both bacterial and viral images ({list_some(mixed)}); each class "
        "of such a patient is indexed as its own patient (e.g. viral/person1), so one person may fall on both "
        "sides of a split",
        IndexWarning,
        stacklevel=3,
    )


def index(path: Path, options: IndexOptions) -> IndexResult:
    """Index `{train,val,test}/{NORMAL,PNEUMONIA}/*`: labels normal / bacterial / viral, patients, split column."""
    root = unwrap_enclosing_folder(path)
    folders = split_folders(root)
    if not folders:
        raise CovidlensError(
            f"{root}: no train, val or test folder; the {NAME} layout is "
            "chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/"
        )
    candidates: list[Candidate] = []
    skipped: list[tuple[str, str]] = []
    class_dirs: list[Path] = []
    for split, folder in folders.items():
        found, skipped_here, dirs = _split_candidates(path, split, folder)
        candidates += found
        skipped += skipped_here
        class_dirs += dirs
    skipped += images_outside(root, class_dirs, path)
    _separate_two_class_patients(root, candidates)
    where = "normal images are named IM-<patient>-<image>, pneumonia images person<N>_<kind>_<image>"
    return build_result(path, candidates, NAME, options, skipped, patient_source=where)


ADAPTERS.register(NAME)(
    Adapter(
        name=NAME,
        description="Kermany's chest X-rays: {train,val,test}/{NORMAL,PNEUMONIA}/; bacterial / viral from the file "
        "name, patient from personN / IM-NNNN, the release's folders as the split column",
        detect=detect,
        index=index,
        priority=20,
    )
)
