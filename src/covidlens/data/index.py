"""Index a dataset folder (or CSV) into a manifest, detecting its layout unless one is named."""

from __future__ import annotations

import os
from pathlib import Path

from covidlens.data.adapters import ADAPTERS, Adapter, IndexOptions, IndexResult
from covidlens.data.adapters.common import check_options, has_files, list_some
from covidlens.errors import CovidlensError


def list_layouts() -> list[tuple[str, str]]:
    """(name, description) of every known layout, in the order detection tries them."""
    return [(adapter.name, adapter.description) for adapter in adapters_by_priority()]


def adapters_by_priority() -> list[Adapter]:
    """Every registered adapter, lowest priority number (tried first) first."""
    return sorted((ADAPTERS.get(name) for name in ADAPTERS.names()), key=lambda a: (a.priority, a.name))


def detect_layout(path: Path) -> str:
    """The name of the first layout (by priority) that recognises `path`, or a CovidlensError."""
    for adapter in adapters_by_priority():
        try:
            if adapter.detect(path):
                return adapter.name
        except (OSError, CovidlensError):
            continue  # an adapter that cannot even look here is not this layout
    known = "; ".join(f"{name} ({description})" for name, description in list_layouts())
    raise CovidlensError(f"{path}: cannot tell the dataset layout; pass --format NAME, one of: {known}")


def checked_path(path: str | Path) -> Path:
    """The absolute data path, after checking it exists and (for a folder) is not empty."""
    absolute = Path(os.path.abspath(Path(path).expanduser()))  # abspath keeps symlinked data folders as named
    if not absolute.exists():
        raise CovidlensError(f"{absolute}: no such file or folder")
    if absolute.is_dir() and not has_files(absolute):
        raise CovidlensError(f"{absolute}: folder is empty (no files below it); point to the unpacked data")
    return absolute


def index_dataset(
    path: str | Path, layout: str | None = None, options: IndexOptions | None = None
) -> IndexResult:
    """Index the dataset at `path` as `layout` (detected when None) into a manifest plus skipped files."""
    options = options or IndexOptions()
    check_options(options)
    root = checked_path(path)
    adapter = ADAPTERS.get(layout or detect_layout(root))
    result = adapter.index(root, options)
    if result.manifest.empty:
        reasons = [f"{name}: {reason}" for name, reason in result.skipped]
        detail = f": {list_some(reasons)}" if reasons else ""
        raise CovidlensError(
            f"{root}: no usable image found as layout {adapter.name} ({len(reasons)} skipped){detail}"
        )
    return result
