"""Any `<root>/<class>/...` tree: flat class folders, or one sub-folder per patient (deeper = scans)."""

from __future__ import annotations

from pathlib import Path

from covidlens.data.adapters.base import ADAPTERS, Adapter, IndexOptions, IndexResult
from covidlens.data.adapters.common import (
    build_result,
    collect_class_folders,
    has_images,
    subfolders,
    unwrap_enclosing_folder,
)
from covidlens.errors import CovidlensError

NAME = "class-folders"


def class_dirs_of(root: Path) -> dict[str, Path]:
    """Label (the folder name as written) -> folder, for the folders of `root` that hold images."""
    return {folder.name: folder for folder in subfolders(root) if has_images(folder)}


def detect(path: Path) -> bool:
    """True when at least two folders of the root (or of its only sub-folder) hold images."""
    return len(class_dirs_of(unwrap_enclosing_folder(path))) >= 2


def index(path: Path, options: IndexOptions) -> IndexResult:
    """Index `<class>/*.img` (needs --patient-regex / --no-patients) or `<class>/<patient>/[<scan>/]*.img`."""
    root = unwrap_enclosing_folder(path)
    class_dirs = class_dirs_of(root)
    if not class_dirs:
        raise CovidlensError(
            f"{root}: no folder here holds images; the {NAME} layout is <root>/<class>/<images>"
        )
    candidates, skipped = collect_class_folders(path, root, class_dirs)
    where = "images directly in a class folder have none"
    return build_result(path, candidates, NAME, options, skipped, patient_source=where)


ADAPTERS.register(NAME)(
    Adapter(
        name=NAME,
        description="generic <class>/<images> or <class>/<patient>/<images> folders (tried last)",
        detect=detect,
        index=index,
        priority=90,
    )
)
