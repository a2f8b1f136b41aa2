"""The SARS-CoV-2 CT-scan set (Soares & Angelov): flat `COVID/` and `non-COVID/` folders, no patient ids."""

from __future__ import annotations

from pathlib import Path

from covidlens.data.adapters.base import ADAPTERS, Adapter, IndexOptions, IndexResult
from covidlens.data.adapters.common import has_exactly_class_folders, index_named_class_folders

NAME = "sarscov2-ct"
LABELS = {"covid": "COVID", "non-covid": "non-COVID"}  # folder name (any case) -> label


def detect(path: Path) -> bool:
    """True when the folder (or its only sub-folder) holds exactly the folders COVID and non-COVID."""
    return has_exactly_class_folders(path, LABELS)


def index(path: Path, options: IndexOptions) -> IndexResult:
    """Index `COVID/*.png` and `non-COVID/*.png`; needs --patient-regex or --no-patients (no ids ship)."""
    return index_named_class_folders(path, options, NAME, LABELS, patient_source="the dataset ships none")


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
