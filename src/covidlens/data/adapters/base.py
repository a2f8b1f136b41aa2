"""What every dataset adapter provides, and the registry that holds them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from covidlens.registry import Registry


@dataclass
class IndexOptions:
    """User choices that apply to every layout."""

    patient_regex: str | None = None  # a regex whose first group captures the patient from the relative path
    no_patients: bool = False  # image-wise: each image is its own patient, and reports say so


@dataclass
class IndexResult:
    """A manifest plus the files that could not be used, each with a reason."""

    manifest: pd.DataFrame
    layout: str
    skipped: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class Adapter:
    """A dataset layout: how to recognise it and how to index it."""

    name: str
    description: str
    detect: Callable[[Path], bool]
    index: Callable[[Path, IndexOptions], IndexResult]
    priority: int = 50  # lower is tried first when detecting


ADAPTERS: Registry[Adapter] = Registry("dataset layout")
