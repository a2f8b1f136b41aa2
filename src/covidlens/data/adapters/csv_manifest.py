"""A CSV table as the data path: at least `path,label`; a manifest from `covidlens index` reads back as is.

Paths (and `mask_path`) may be relative to the CSV's folder or absolute. Optional columns: `patient_id`
(else --patient-regex or --no-patients is needed), `sample_id` (default: the path relative to the
CSV's folder), `scan_id`, `slice_index`, `patient_id_from` (default "csv"), `split`, `mask_path`,
`modality`, `source`; any other column is carried into the manifest unchanged. Image files are checked
like any other layout's; other paths (volumes, DICOM folders) only need to exist.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from covidlens.data.adapters.base import ADAPTERS, Adapter, IndexOptions, IndexResult
from covidlens.data.adapters.common import Candidate, build_result, read_table
from covidlens.errors import CovidlensError

NAME = "csv"
REQUIRED = ("path", "label")
# Columns the row builder computes itself; every other column is passed through.
COMPUTED = {"sample_id", "path", "label", "patient_id", "scan_id", "slice_index", "patient_id_from", "split",
            "mask_path"}
DEFAULTED = ("modality", "source")  # left to the row builder's default when blank


def detect(path: Path) -> bool:
    """True for a .csv file."""
    return path.is_file() and path.suffix.lower() == ".csv"


def resolve(value: str, folder: Path) -> Path:
    """An absolute path for a cell that is absolute or relative to the CSV's folder."""
    path = Path(value).expanduser()
    return Path(os.path.abspath(path if path.is_absolute() else folder / path))


def parse_slice_index(value: str, where: str) -> int:
    """The slice_index cell as an int; blank is -1 (not a slice of a scan)."""
    if not value.strip():
        return -1
    try:
        return int(float(value))
    except ValueError:
        raise CovidlensError(f"{where}: slice_index {value!r} is not a whole number") from None


def candidate_from_row(row: dict[str, str], where: str, folder: Path) -> Candidate:
    """One CSV row as a candidate image (or volume)."""
    for column in REQUIRED:
        if not row[column].strip():
            raise CovidlensError(f"{where}: column {column!r} is empty; fill it in or drop the row")
    mask = row.get("mask_path")
    extra = {k: v for k, v in row.items() if k not in COMPUTED and not (k in DEFAULTED and not v.strip())}
    return Candidate(
        path=resolve(row["path"].strip(), folder),
        label=row["label"].strip(),
        patient_id=row.get("patient_id", "").strip(),
        scan_id=row.get("scan_id", "").strip(),
        slice_index=parse_slice_index(row.get("slice_index", ""), where),
        split=row["split"].strip() if "split" in row else None,
        sample_id=row.get("sample_id", "").strip(),
        patient_id_from=row.get("patient_id_from", "").strip() or "csv",
        mask_path=None if mask is None else (str(resolve(mask.strip(), folder)) if mask.strip() else ""),
        extra=extra,
    )


def read_rows(path: Path) -> list[dict[str, str]]:
    """The CSV's rows as dicts with stripped header names, checking the required columns."""
    table: pd.DataFrame = read_table(path)
    table.columns = [str(column).strip() for column in table.columns]
    missing = [column for column in REQUIRED if column not in table.columns]
    if missing:
        found = ", ".join(repr(c) for c in table.columns)
        raise CovidlensError(
            f"{path}: no column(s) {', '.join(missing)} (found {found}); a CSV needs path,label"
        )
    if table.empty:
        raise CovidlensError(f"{path}: the table has no rows")
    return table.to_dict("records")


def index(path: Path, options: IndexOptions) -> IndexResult:
    """Index the rows of a CSV table; rows whose file is missing or unreadable are skipped."""
    rows = read_rows(path)
    folder = path.parent
    candidates = [
        candidate_from_row(row, f"{path} row {number}", folder) for number, row in enumerate(rows, start=2)
    ]
    source = "it has no patient_id column" if "patient_id" not in rows[0] else "blank patient_id cells"
    return build_result(folder, candidates, NAME, options, patient_source=f"{path.name}: {source}")


ADAPTERS.register(NAME)(
    Adapter(
        name=NAME,
        description="a CSV table with path,label[,patient_id,...] columns, e.g. from 'covidlens index'",
        detect=detect,
        index=index,
        priority=10,
    )
)
