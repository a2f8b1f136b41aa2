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


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A folder with `data/` (9 synthetic patients of 3-4 64x64 slices, lesion masks beside them) and `run/`, a
    finished 1-epoch 2-fold run of the demo recipe: two fold models (r00-f0.pt, r00-f1.pt) sharing one class list."""
    from covidlens.config import load_recipe
    from covidlens.train.cv import run_cv

    root = tmp_path_factory.mktemp("tiny_run")
    synthesize("ct-slices", root / "data", patients=9, seed=0, size=64, slices=(3, 4))
    recipe = load_recipe("demo", ["data.image_size=64", "train.epochs=1", "cv.folds=2", "train.threads=1"])
    run_cv(recipe, root / "data", root / "run", show_progress=False)
    return root


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: one thread is faster than two competing ones on a shared 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
