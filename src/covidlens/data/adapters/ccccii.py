"""Paper 002's CC-CCII set: NCP / CP / Normal class folders, then patient, scan and numbered slice files."""

from __future__ import annotations

from pathlib import Path

from covidlens.data.adapters.base import ADAPTERS, Adapter, IndexOptions, IndexResult
from covidlens.data.adapters.common import has_exactly_class_folders, index_named_class_folders

NAME = "cc-ccii"
# folder name (any case) -> label: NCP is COVID-19 (novel coronavirus pneumonia), CP common pneumonia
LABELS = {"ncp": "NCP", "cp": "CP", "normal": "Normal"}


def detect(path: Path) -> bool:
    """True when the folder (or its only sub-folder) holds exactly the folders NCP, CP and Normal."""
    return has_exactly_class_folders(path, LABELS)


def index(path: Path, options: IndexOptions) -> IndexResult:
    """Index `<class>/<patient>/<scan>/<slice>.png|jpg`; the lung-segmented download has the same layout.

    patient_id is the patient folder (`<class>/` added to every id when a patient folder name occurs in
    two classes); scan_id is `<patient>/<scan>`, so a patient's scans stay apart and one patient.
    Images directly in a patient folder (no scan level) are one scan named after the patient.
    slice_index is the number a slice file is named by (`0007.png` -> 7), which is its z position; in a
    folder where some name is not a plain number (or two names give the same number) every slice gets
    its natural-sort position instead (`img2` before `img10`). Lesion masks `<slice>.mask.png` beside
    a slice go to mask_path; unreadable or non-image files are listed as skipped.
    """
    where = "an image must lie in a patient folder"
    return index_named_class_folders(path, options, NAME, LABELS, patient_source=where, numbered=True)


ADAPTERS.register(NAME)(
    Adapter(
        name=NAME,
        description="CC-CCII: NCP / CP / Normal folders of patient / scan / numbered slice images (paper 002)",
        detect=detect,
        index=index,
        priority=20,
    )
)
