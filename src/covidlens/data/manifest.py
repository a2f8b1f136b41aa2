"""The manifest: one row per image or volume, the table every later stage reads."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from covidlens import atomic
from covidlens.errors import CovidlensError

MANIFEST_COLUMNS = [
    "sample_id",
    "path",
    "label",
    "patient_id",
    "scan_id",
    "slice_index",
    "modality",
    "source",
]
# Optional columns an adapter may add:
#   patient_id_from  where patient_id came from: layout, regex, csv, or none (image-wise run)
#   split            a fixed train / val / test assignment shipped with the dataset
#   mask_path        a lesion mask for the image (synthetic data), used by explanation checks
#   original_label   the label as the data names it, where the recipe's data.relabel renamed it
OPTIONAL_COLUMNS = ["patient_id_from", "split", "mask_path"]
IMAGE_WISE = "none"
MASK_SUFFIX = ".mask.png"  # a lesion mask beside its image: slice_007.png -> slice_007.mask.png


def make_manifest(rows: list[dict]) -> pd.DataFrame:
    """Build a manifest from row dicts, filling defaults and checking it."""
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=MANIFEST_COLUMNS)
    defaults = {"scan_id": "", "slice_index": -1, "modality": "ct", "source": "", "patient_id_from": "layout"}
    for column, value in defaults.items():
        if column not in frame:
            frame[column] = value
    if "scan_id" in frame:
        frame["scan_id"] = frame["scan_id"].fillna("").astype(str)
        empty = frame["scan_id"] == ""
        frame.loc[empty, "scan_id"] = frame.loc[empty, "patient_id"].astype(str)
    ordered = MANIFEST_COLUMNS + [c for c in frame.columns if c not in MANIFEST_COLUMNS]
    frame = frame[ordered].sort_values("sample_id", kind="stable").reset_index(drop=True)
    validate_manifest(frame, "the indexed data")
    return frame


def validate_manifest(frame: pd.DataFrame, where: str) -> None:
    """Raise CovidlensError if required columns are missing, empty or duplicated."""
    missing = [c for c in ("sample_id", "path", "label", "patient_id") if c not in frame.columns]
    if missing:
        raise CovidlensError(f"{where}: manifest lacks column(s) {', '.join(missing)}; see README 'Manifest'")
    if frame.empty:
        raise CovidlensError(f"{where}: the manifest has no rows; check the data folder")
    for column in ("sample_id", "path", "label", "patient_id"):
        blank = frame[column].isna() | (frame[column].astype(str).str.strip() == "")
        if blank.any():
            first = frame.loc[blank].index[0]
            raise CovidlensError(f"{where}: column {column!r} is empty in row {first + 2}; fill it in")
    duplicated = frame["sample_id"].duplicated()
    if duplicated.any():
        first = frame.loc[duplicated, "sample_id"].iloc[0]
        raise CovidlensError(f"{where}: sample_id {first!r} occurs twice; ids must be unique")
    labels_per_patient = frame.groupby("patient_id")["label"].nunique()
    if (labels_per_patient > 1).any():
        patient = labels_per_patient[labels_per_patient > 1].index[0]
        raise CovidlensError(
            f"{where}: patient {patient!r} has images of more than one class; "
            "patient-wise splitting needs one class per patient (check the patient ids)"
        )


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read and check a manifest CSV written by `covidlens index` (or by hand)."""
    path = Path(path)
    if not path.is_file():
        raise CovidlensError(f"{path}: manifest not found; run 'covidlens index DATA -o {path}' first")
    try:
        # Every column as text with no NA guessing: a patient "NA" or a blank split must stay a string.
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise CovidlensError(f"{path}: not a readable CSV manifest ({exc})") from None
    validate_manifest(frame, str(path))
    for column, value in {"scan_id": "", "slice_index": "-1", "modality": "ct", "source": ""}.items():
        if column not in frame:
            frame[column] = value
    slice_index = pd.to_numeric(frame["slice_index"].replace("", "-1"), errors="coerce")
    if slice_index.isna().any():
        bad = frame.loc[slice_index.isna(), "slice_index"].iloc[0]
        raise CovidlensError(f"{path}: slice_index {bad!r} is not a whole number; fix or blank it")
    frame["slice_index"] = slice_index.astype(int)
    return frame


def write_manifest(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write a manifest atomically."""
    return atomic.write_csv(path, frame)


def relabel_manifest(frame: pd.DataFrame, mapping: dict[str, str]) -> pd.DataFrame:
    """The manifest with labels renamed by `mapping` (classes merged); the data's own label stays in
    `original_label`."""
    if not mapping:
        return frame
    frame = frame.copy()
    if "original_label" not in frame:
        frame["original_label"] = frame["label"]
    frame["label"] = frame["label"].astype(str).replace(mapping)
    return frame


def class_names(frame: pd.DataFrame) -> list[str]:
    """The sorted class labels of a manifest; index i is the model's output i."""
    return sorted(frame["label"].astype(str).unique())


def is_image_wise(frame: pd.DataFrame) -> bool:
    """True when the data has no patient IDs, so splits are image-wise and may leak."""
    return "patient_id_from" in frame and bool((frame["patient_id_from"] == IMAGE_WISE).any())


def summarize(frame: pd.DataFrame) -> pd.DataFrame:
    """Images and patients per class, with a total row."""
    table = frame.groupby("label").agg(images=("sample_id", "size"), patients=("patient_id", "nunique"))
    table.loc["total"] = [len(frame), frame["patient_id"].nunique()]
    return table.astype(int)
