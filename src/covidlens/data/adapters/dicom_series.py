"""DICOM series in class folders: `<class>/<patient>/<series>/*.dcm`, one manifest row per slice file."""

from __future__ import annotations

from pathlib import Path

from covidlens.data.adapters.base import ADAPTERS, Adapter, IndexOptions, IndexResult
from covidlens.data.adapters.common import (
    Candidate,
    build_result,
    images_outside,
    prefix_shared_patient_names,
    relative_id,
    subfolders,
    unwrap_enclosing_folder,
    walk_files,
)
from covidlens.data.medical_io import DICOM_SUFFIX, read_dicom_series
from covidlens.errors import CovidlensError

NAME = "dicom"


def is_dicom_name(path: Path) -> bool:
    """True for a file named `*.dcm` (any letter case)."""
    return path.suffix.lower() == DICOM_SUFFIX


def has_dicom_files(folder: Path) -> bool:
    """True when a `.dcm` file lies anywhere below `folder`."""
    return any(is_dicom_name(path) for path in walk_files(folder))


def class_dirs_of(root: Path) -> dict[str, Path]:
    """Label (the folder name as written) -> folder, for the folders of `root` that hold .dcm files."""
    return {folder.name: folder for folder in subfolders(root) if has_dicom_files(folder)}


def detect(path: Path) -> bool:
    """True when at least two folders of the root (or of its only sub-folder) hold .dcm files below them."""
    return len(class_dirs_of(unwrap_enclosing_folder(path))) >= 2


def series_folders(class_dir: Path) -> tuple[list[Path], list[Path]]:
    """The folders below `class_dir` that directly hold .dcm files, and the files lying outside them."""
    by_folder: dict[Path, list[Path]] = {}
    for path in walk_files(class_dir):
        by_folder.setdefault(path.parent, []).append(path)
    series = [folder for folder, files in by_folder.items() if any(is_dicom_name(f) for f in files)]
    stray = [f for folder, files in by_folder.items() if folder not in series for f in files]
    return series, stray


def series_candidates(
    series_dir: Path, class_dir: Path, label: str, dataset_root: Path
) -> tuple[list[Candidate], list[tuple[str, str]]]:
    """One candidate per slice of a series folder, in z order; other files of the folder as skipped."""
    try:
        series = read_dicom_series(series_dir)
    except CovidlensError as exc:
        raise CovidlensError(f"{exc} (series of class {label!r}; fix or remove this series folder)") from None
    skipped = [(relative_id(path, dataset_root), f"{reason}; not indexed") for path, reason in series.ignored]
    parts = series_dir.relative_to(class_dir).parts
    patient = parts[0] if parts else ""
    scan = "/".join(parts)
    candidates: list[Candidate] = []
    for slice_index, path in enumerate(series.files):
        if not is_dicom_name(path):
            reason = "DICOM slice without the .dcm extension; rename it to *.dcm to use it"
            skipped.append((relative_id(path, dataset_root), reason))
            continue
        candidates.append(Candidate(path, label, patient_id=patient, scan_id=scan, slice_index=slice_index))
    return candidates, skipped


def index(path: Path, options: IndexOptions) -> IndexResult:
    """Index `<class>/<patient>/<series>/*.dcm`: every folder holding .dcm files is one series.

    patient_id is the patient folder (`<class>/` added when a name occurs in two classes); scan_id is
    `<patient>/<series>` (the patient alone when the .dcm files lie in the patient folder). Each series is
    read with `read_dicom_series`: slice_index is the position in z order (0 = lowest along the slice
    normal, the most inferior slice of an axial series), and a series with mixed orientations, a missing
    slice, a duplicate position or two SeriesInstanceUIDs stops indexing with an error naming its folder.
    Files that are not DICOM slices are listed as skipped.
    """
    root = unwrap_enclosing_folder(path)
    class_dirs = class_dirs_of(root)
    if not class_dirs:
        raise CovidlensError(
            f"{root}: no folder here holds .dcm files; the {NAME} layout is <root>/<class>/<patient>/<series>/*.dcm"
        )
    candidates: list[Candidate] = []
    skipped: list[tuple[str, str]] = []
    for label, class_dir in class_dirs.items():
        folders, stray = series_folders(class_dir)
        skipped += [(relative_id(f, path), "not in a DICOM series folder; not indexed") for f in stray]
        for folder in folders:
            found, left_out = series_candidates(folder, class_dir, label, path)
            candidates += found
            skipped += left_out
    prefix_shared_patient_names(candidates)
    skipped += images_outside(root, class_dirs.values(), path)
    where = ".dcm files directly in a class folder have none"
    return build_result(path, candidates, NAME, options, skipped, patient_source=where)


ADAPTERS.register(NAME)(
    Adapter(
        name=NAME,
        description="DICOM series: <class>/<patient>/<series>/*.dcm, slices ordered by position along the normal",
        detect=detect,
        index=index,
        priority=15,
    )
)
