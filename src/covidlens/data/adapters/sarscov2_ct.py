"""The SARS-CoV-2 CT-scan set (Soares & Angelov): flat `COVID/` and `non-COVID/` folders, no patient ids."""

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

NAME = "sarscov2-ct"
LABELS = {"covid": "COVID", "non-covid": "non-COVID"}  # folder name (any case) -> label


def detect(path: Path) -> bool:
    """True when the folder (or its only sub-folder) holds exactly the folders COVID and non-COVID."""
    return class_folder_names(unwrap_enclosing_folder(path)) == set(LABELS)


def index(path: Path, options: IndexOptions) -> IndexResult:
    """Index `COVID/*.png` and `non-COVID/*.png`; needs --patient-regex or --no-patients (no ids ship)."""
    root = unwrap_enclosing_folder(path)
    class_dirs = match_class_folders(root, LABELS)
    missing = [label for label in LABELS.values() if label not in class_dirs]
    if missing:
        raise CovidlensError(
            f"{root}: class folder(s) {', '.join(missing)} not found; "
            f"the {NAME} layout needs COVID and non-COVID"
        )
    candidates, skipped = collect_class_folders(path, root, class_dirs)
    return build_result(path, candidates, NAME, options, skipped, patient_source="the dataset ships none")


ADAPTERS.register(NAME)(
    Adapter(
        name=NAME,
        description="SARS-CoV-2 CT-scan set: flat COVID / non-COVID folders, no patient ids "
        "(needs --patient-regex or --no-patients)",
        detect=detect,
        index=index,
        priority=20,
    )
)
