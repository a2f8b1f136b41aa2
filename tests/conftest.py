"""Shared fixtures: small synthetic CT datasets made once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from covidlens.data.synth import synthesize

TINY = {"patients": 15, "seed": 0, "difficulty": 0.3, "size": 64, "slices": (3, 5)}


@pytest.fixture(scope="session")
def tiny_ct(tmp_path_factory) -> Path:
    """15 patients of 3-5 synthetic 64x64 slices in paper 000's layout."""
    out = tmp_path_factory.mktemp("tiny") / "ct"
    synthesize("ct-slices", out, **TINY)
    return out


TINY_VOLUMES = {"patients": 9, "seed": 0, "difficulty": 0.3, "size": 32, "slices": (4, 7)}


@pytest.fixture(scope="session")
def tiny_volumes(tmp_path_factory) -> Path:
    """9 patients (some with two scans) of 4-7 synthetic 32x32 slices per scan in CC-CCII's layout."""
    out = tmp_path_factory.mktemp("tiny") / "volumes"
    synthesize("ct-volumes", out, **TINY_VOLUMES)
    return out
