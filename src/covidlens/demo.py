"""`covidlens demo`: the whole pipeline on synthetic CT in a few minutes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from covidlens.config import load_recipe
from covidlens.data.manifest import read_manifest, summarize
from covidlens.data.synth import synthesize
from covidlens.errors import CovidlensError
from covidlens.evaluate.aggregate import format_summary_table
from covidlens.progress import console, progress_bar
from covidlens.report.html import write_report
from covidlens.train.cv import run_cv


def _synth_once(data: Path, patients: int, difficulty: float, seed: int) -> None:
    """Generate the demo data unless data of the same settings is already there."""
    record = data / "synth.json"
    if record.is_file():
        saved = json.loads(record.read_text(encoding="utf-8"))
        if (saved.get("patients"), saved.get("difficulty"), saved.get("seed")) == (patients, difficulty, seed):
            console.print(f"reusing synthetic data in {data}")
            return
    if data.exists():
        raise CovidlensError(f"{data}: holds other data than this demo asks for; remove it or use another --out")
    # Generate beside the target and rename when complete, so an interrupted demo starts the data afresh.
    partial = data.with_name(data.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    with progress_bar("synth ct-slices", patients) as update:
        synthesize("ct-slices", partial, patients, seed=seed, difficulty=difficulty, progress=update)
    partial.rename(data)


def run_demo(out: Path, patients: int = 60, difficulty: float = 0.5, seed: int = 0) -> dict:
    """synth -> patient-wise 5-fold CV (which indexes the data) with the demo recipe -> report."""
    data, run_dir = out / "data", out / "run"
    _synth_once(data, patients, difficulty, seed)
    recipe = load_recipe("demo", [f"cv.seed={seed}"])
    summary = run_cv(recipe, data, run_dir)  # indexes the data once, into run/manifest.csv
    report = write_report(run_dir)
    console.print(summarize(read_manifest(run_dir / "manifest.csv")).to_string())
    console.print(format_summary_table(summary))
    console.print(f"report: {report}")
    return summary
