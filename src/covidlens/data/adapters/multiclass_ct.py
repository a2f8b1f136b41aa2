"""Paper 000's "A COVID multiclass dataset of CT scans": COVID / Healthy / Others, one folder per patient."""

from __future__ import annotations

from pathlib import Path

from covidlens.data.adapters.base import ADAPTERS, Adapter, IndexOptions, IndexResult
from covidlens.data.adapters.common import has_exactly_class_folders, index_named_class_folders

NAME = "multiclass-ct"
LABELS = {"covid": "COVID", "healthy": "Healthy", "others": "Others"}  # folder name (any case) -> label


def detect(path: Path) -> bool:
    """True when the folder (or its only sub-folder) holds exactly the folders COVID, Healthy, Others."""
    return has_exactly_class_folders(path, LABELS)


def index(path: Path, options: IndexOptions) -> IndexResult:
    """Index `<class>/<patient>/<slice>.png`; patient = scan = patient folder (`<class>/` added if shared)."""
    where = "an image must lie in a patient folder"
    return index_named_class_folders(path, options, NAME, LABELS, patient_source=where)


ADAPTERS.register(NAME)(
    Adapter(
        name=NAME,
        description="COVID / Healthy / Others folders, one sub-folder of PNG slices per patient (paper 000)",
        detect=detect,
        index=index,
        priority=20,
    )
)
