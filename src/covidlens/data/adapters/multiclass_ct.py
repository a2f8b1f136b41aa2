"""Paper 000's "A COVID multiclass dataset of CT scans": COVID / Healthy / Others, one folder per patient."""

from __future__ import annotations

from pathlib import Path

from covidlens.data.adapters.base import ADAPTERS, Adapter, IndexOptions, IndexResult
from covidlens.data.adapters.common import (
    build_result,
    class_folder_names,
    collect_class_folders,
    match_class_folders,
    unwrap_enclosing_folder,
)
from covidlens.errors import CovidlensError

NAME = "multiclass-ct"
LABELS = {"covid": "COVID", "healthy": "Healthy", "others": "Others"}  # folder name (any case) -> label


def detect(path: Path) -> bool:
    """True when the folder (or its only sub-folder) holds exactly the folders COVID, Healthy, Others."""
    return class_folder_names(unwrap_enclosing_folder(path)) == set(LABELS)


def index(path: Path, options: IndexOptions) -> IndexResult:
    """Index `<class>/<patient>/<slice>.png`; patient = scan = patient folder (`<class>/` added if shared)."""
    root = unwrap_enclosing_folder(path)
    class_dirs = match_class_folders(root, LABELS)
    missing = [label for label in LABELS.values() if label not in class_dirs]
    if missing:
        raise CovidlensError(
            f"{root}: class folder(s) {', '.join(missing)} not found; the {NAME} layout needs "
            "COVID, Healthy and Others (any letter case)"
        )
    candidates, skipped = collect_class_folders(path, root, class_dirs)
    where = "an image must lie in a patient folder"
    return build_result(path, candidates, NAME, options, skipped, patient_source=where)


ADAPTERS.register(NAME)(
    Adapter(
        name=NAME,
        description="COVID / Healthy / Others folders, one sub-folder of PNG slices per patient (paper 000)",
        detect=detect,
        index=index,
        priority=20,
    )
)
