"""Output folders that resume: each keeps a JSON record of the inputs it was made with."""

from __future__ import annotations

import json
from pathlib import Path

from covidlens.errors import CovidlensError


def folder_record(out: Path, record_name: str, kind: str) -> dict | None:
    """The record `out/record_name` of a folder to resume, or None when `out` is new or empty.

    A file, a damaged record or a non-empty folder without a record (someone else's) is a user error.
    """
    if out.exists() and not out.is_dir():
        raise CovidlensError(f"{out}: is a file; --out must name a folder")
    path = out / record_name
    if path.is_file():
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            raise CovidlensError(f"{path}: damaged; write the {kind} into a new --out") from None
    if out.is_dir() and any(out.iterdir()):
        raise CovidlensError(f"{out}: exists and is not a covidlens {kind} folder; choose another --out")
    return None
