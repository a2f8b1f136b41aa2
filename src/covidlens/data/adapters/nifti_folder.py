"""NIfTI volumes with a label table: `*.nii` / `*.nii.gz` files (any sub-folder) and `labels.csv`.

`labels.csv` columns: `file` (or `name`): the volume's path relative to the folder, or its file name, or
its name without `.nii` / `.nii.gz`; `label`; optional `patient_id` and `scan_id`, both defaulting to
the file's stem. One manifest row per axial slice: sample_id `<stem>/<k:04d>`, slice_index k (0 = the
most inferior slice once the volume is reoriented to RAS+), path the NIfTI file.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from covidlens.data.adapters.base import ADAPTERS, Adapter, IndexOptions, IndexResult
from covidlens.data.adapters.common import (
    Candidate,
    build_result,
    find_child,
    name_key,
    pick_column,
    read_table,
    relative_id,
    unwrap_enclosing_folder,
    walk_files,
)
from covidlens.data.medical_io import NIFTI_SUFFIXES, nifti_slice_count
from covidlens.errors import CovidlensError

NAME = "nifti"
LABEL_TABLE = "labels.csv"


def is_nifti(path: Path) -> bool:
    """True for a `.nii` or `.nii.gz` file name (any letter case)."""
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def nifti_stem(path: Path) -> str:
    """The file name without `.nii` / `.nii.gz`."""
    name = path.name
    return name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else name[: -len(".nii")]


def detect(path: Path) -> bool:
    """True when the folder (or its only sub-folder) holds labels.csv and NIfTI files below it."""
    root = unwrap_enclosing_folder(path)
    if find_child(root, LABEL_TABLE, want_dir=False) is None:
        return False
    return any(is_nifti(file) for file in walk_files(root))


def optional_column(table: pd.DataFrame, wanted: tuple[str, ...], path: Path, what: str) -> str | None:
    """The column named as one of `wanted`, or None when the table has none of them."""
    try:
        return pick_column(table, wanted, path, what)
    except CovidlensError:
        return None


def resolve_file(cell: str, root: Path, volumes: list[Path], where: str) -> Path:
    """The NIfTI file a table cell names: a path relative to `root`, else a file name or stem found below it."""
    direct = root / cell
    if direct.is_file() and is_nifti(direct):
        return Path(os.path.abspath(direct))
    key = name_key(Path(cell).name)
    matches = [v for v in volumes if key in (name_key(v.name), name_key(nifti_stem(v)))]
    if len(matches) > 1:
        names = ", ".join(relative_id(m, root) for m in matches)
        raise CovidlensError(f"{where}: {cell!r} matches several NIfTI files ({names}); give the relative path")
    if not matches:
        raise CovidlensError(
            f"{where}: file {cell!r} not found under {root}; fix the row or add the .nii / .nii.gz file"
        )
    return matches[0]


def index(path: Path, options: IndexOptions) -> IndexResult:
    """Index NIfTI volumes named in labels.csv, one row per axial slice; unlisted or unreadable volumes are
    skipped with the reason, and a row naming a missing file is an error."""
    root = unwrap_enclosing_folder(path)
    table_path = find_child(root, LABEL_TABLE, want_dir=False)
    if table_path is None:
        raise CovidlensError(f"{root}: no {LABEL_TABLE}; the {NAME} layout needs one (columns file, label)")
    table = read_table(table_path)
    file_column = pick_column(table, ("file", "name", "filename", "path"), table_path, "file")
    label_column = pick_column(table, ("label", "class"), table_path, "label")
    patient_column = optional_column(table, ("patient id", "patient"), table_path, "patient")
    scan_column = optional_column(table, ("scan id", "scan"), table_path, "scan")
    volumes = [Path(os.path.abspath(f)) for f in walk_files(root) if is_nifti(f)]
    listed: dict[Path, int] = {}
    stems: dict[str, Path] = {}
    candidates: list[Candidate] = []
    skipped: list[tuple[str, str]] = []
    for number, row in enumerate(table.to_dict("records"), start=2):
        where = f"{table_path} row {number}"
        cell, label = str(row[file_column]).strip(), str(row[label_column]).strip()
        if not cell or not label:
            raise CovidlensError(f"{where}: empty {'file' if not cell else 'label'} cell; fill it in or drop the row")
        volume = resolve_file(cell, root, volumes, where)
        if volume in listed:
            raise CovidlensError(f"{where}: {cell!r} is already listed in row {listed[volume]}; keep one row")
        listed[volume] = number
        stem = nifti_stem(volume)
        if stem in stems:
            raise CovidlensError(
                f"{where}: {relative_id(volume, root)} and {relative_id(stems[stem], root)} share the name {stem!r}; "
                "rename one (sample ids are <name>/<slice>)"
            )
        stems[stem] = volume
        try:
            count = nifti_slice_count(volume)
        except CovidlensError as exc:
            skipped.append((relative_id(volume, path), str(exc).removeprefix(f"{volume}: ")))
            continue
        patient = str(row[patient_column]).strip() if patient_column else ""
        scan = str(row[scan_column]).strip() if scan_column else ""
        candidates += [
            Candidate(
                volume,
                label,
                patient_id=patient or stem,
                scan_id=scan or stem,
                slice_index=k,
                sample_id=f"{stem}/{k:04d}",
                patient_id_from="csv" if patient else "layout",
            )
            for k in range(count)
        ]
    skipped += [
        (relative_id(v, path), f"not in {LABEL_TABLE}; add a row (file, label) to use it")
        for v in volumes
        if v not in listed
    ]
    return build_result(path, candidates, NAME, options, skipped, patient_source=f"{LABEL_TABLE}")


ADAPTERS.register(NAME)(
    Adapter(
        name=NAME,
        description="NIfTI volumes (*.nii, *.nii.gz) with labels.csv (file, label[, patient_id, scan_id]); "
        "one row per axial slice",
        detect=detect,
        index=index,
        priority=15,
    )
)
