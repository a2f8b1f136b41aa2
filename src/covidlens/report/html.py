"""One self-contained HTML report per run, built only from the tables in the run directory."""

from __future__ import annotations

import base64
import html
import json
from importlib import resources
from pathlib import Path

import pandas as pd
import yaml

from covidlens import atomic
from covidlens.data.manifest import is_image_wise, read_manifest, summarize
from covidlens.errors import CovidlensError
from covidlens.evaluate.aggregate import (
    IMAGE_WISE_WARNING,
    METRIC_HEADERS,
    format_mean_ci,
    summary_caption,
    summary_rows,
)
from covidlens.report import figures


def _table(frame: pd.DataFrame) -> str:
    return frame.to_html(border=0, classes="grid", escape=True)


def _image(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def split_summary(manifest: pd.DataFrame, folds: pd.DataFrame) -> pd.DataFrame:
    """Images and patients per class in each role of each fold of the first round."""
    first = folds[folds["round"] == folds["round"].min()].merge(
        manifest[["sample_id", "label", "patient_id"]]
    )
    table = first.groupby(["fold", "role", "label"]).agg(
        images=("sample_id", "size"), patients=("patient_id", "nunique")
    )
    wide = table.unstack("label").fillna(0).astype(int)
    wide.columns = [f"{label} {what}" for what, label in wide.columns]
    wide.index = pd.MultiIndex.from_tuples([(f + 1, role) for f, role in wide.index], names=["fold", "role"])
    return wide


def metrics_table(summary: dict) -> pd.DataFrame:
    """The per-class table: mean ± CI half-width for each metric."""
    return pd.DataFrame(summary_rows(summary), columns=["Class", *METRIC_HEADERS.values()]).set_index("Class")


def validation_text(cv: dict) -> str:
    """How the run validated its models, in words."""
    if cv.get("split") == "fixed":
        return "the dataset's own fixed train / validation / test lists (one fold)"
    return (
        f"{cv['rounds']} round(s) x {cv['folds']} folds, patient-wise, "
        f"validation {cv['val_fraction']:.0%} of training patients, seed {cv['seed']}"
    )


def build_report(run_dir: Path) -> str:
    """The report's HTML text for a finished run directory."""
    needed = ["config.yaml", "manifest.csv", "folds.csv", "history.csv", "metrics.json"]
    missing = [name for name in needed if not (run_dir / name).is_file()]
    if missing:
        raise CovidlensError(
            f"{run_dir}: not a finished run (missing {', '.join(missing)}); run 'covidlens cv'"
        )
    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
        summary = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise CovidlensError(f"{run_dir}: config.yaml or metrics.json is damaged ({type(exc).__name__})") from None
    manifest = read_manifest(run_dir / "manifest.csv")
    folds = pd.read_csv(run_dir / "folds.csv", dtype={"sample_id": str})
    history = pd.read_csv(run_dir / "history.csv")
    classes = summary["classes"]
    overall = summary["overall"]
    warning = ""
    if is_image_wise(manifest):
        warning = f'<p class="warn">{html.escape(IMAGE_WISE_WARNING.strip())}</p>'
    template = (resources.files("covidlens") / "report" / "template.html").read_text(encoding="utf-8")
    fields = {
        "title": html.escape(f"covidlens run: {config['name']} / {config['model']['name']}"),
        "warning": warning,
        "recipe": html.escape(config["name"]),
        "model": html.escape(config["model"]["name"]),
        "cv": html.escape(validation_text(config["cv"])),
        "input": html.escape(f"{config['data']['image_size']} px, {config['data']['channels']} channel(s)"),
        "data_summary": _table(summarize(manifest)),
        "split_summary": _table(split_summary(manifest, folds)),
        "accuracy": html.escape(format_mean_ci(overall["accuracy"])),
        "auroc": html.escape(format_mean_ci(overall["macro_auroc"])),
        "caption": html.escape(summary_caption(summary)),
        "metrics_table": _table(metrics_table(summary)),
        "confusion": _image(
            figures.confusion_matrices(
                summary["confusion_matrix"], summary["confusion_matrix_normalized"], classes
            ),
            "confusion matrices",
        ),
        "curves": _image(figures.training_curves(history), "training curves"),
        "config": html.escape(yaml.safe_dump(config, sort_keys=False)),
    }
    return template.format(**fields)


def write_report(run_dir: str | Path) -> Path:
    """Write run_dir/report.html atomically and return its path."""
    run_dir = Path(run_dir)
    return atomic.write_text(run_dir / "report.html", build_report(run_dir))
