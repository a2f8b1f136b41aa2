"""One self-contained HTML report per run, built only from the tables in the run directory."""

from __future__ import annotations

import base64
import html
import json
from collections import Counter
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
from covidlens.evaluate.compare import format_bootstrap_ci
from covidlens.report import figures


def _table(frame: pd.DataFrame, index: bool = True) -> str:
    return frame.to_html(border=0, classes="grid", escape=True, index=index)


def _image(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def split_summary(manifest: pd.DataFrame, folds: pd.DataFrame, unit: str = "images") -> pd.DataFrame:
    """Samples (images or volumes) and patients per class in each role of each fold of the first round."""
    first = folds[folds["round"] == folds["round"].min()].merge(
        manifest[["sample_id", "label", "patient_id"]]
    )
    table = first.groupby(["fold", "role", "label"]).agg(
        **{unit: ("sample_id", "size")}, patients=("patient_id", "nunique")
    )
    wide = table.unstack("label").fillna(0).astype(int)
    wide.columns = [f"{label} {what}" for what, label in wide.columns]
    wide.index = pd.MultiIndex.from_tuples([(f + 1, role) for f, role in wide.index], names=["fold", "role"])
    return wide


def metrics_table(summary: dict) -> pd.DataFrame:
    """The per-class table: mean ± CI half-width for each metric."""
    return pd.DataFrame(summary_rows(summary), columns=["Class", *METRIC_HEADERS.values()]).set_index("Class")


def input_text(data: dict) -> str:
    """The model input in words: size, channels and, for volumes, depth and stride."""
    text = f"{data['image_size']} px, {data['channels']} channel(s)"
    if data.get("depth"):
        stride = data.get("stride") or data["depth"]
        text += f"; volumes of {data['depth']} adjacent slices, a new volume every {stride} slices"
    if data.get("lung_mask"):
        text += "; lungs only (classical lung masking)"
    return text


def data_summary(manifest: pd.DataFrame, volumes: pd.DataFrame | None) -> pd.DataFrame:
    """Images and patients per class, with scans and volumes when the run stacks volumes."""
    table = summarize(manifest)
    if volumes is not None:
        table["scans"] = manifest.groupby("label")["scan_id"].nunique()
        table.loc["total", "scans"] = manifest["scan_id"].nunique()
        table["volumes"] = volumes.groupby("label").size()
        table.loc["total", "volumes"] = len(volumes)
        table = table.astype(int)
    return table


def bootstrap_section(summary: dict) -> str:
    """Paper 002's statistics of the test predictions with percentile bootstrap CIs, if computed."""
    boot = summary.get("bootstrap")
    if not boot:
        return ""
    names = {
        "accuracy": "Accuracy (3-way)",
        "macro_auroc": "Macro-AUROC",
        "positive_accuracy": f"Accuracy ({boot['positive']} vs rest)",
        "precision": f"Precision ({boot['positive']})",
        "recall": f"Recall ({boot['positive']})",
        "f1": f"F1-score ({boot['positive']})",
    }
    rows = [
        {
            "Metric": names.get(key, key),
            "Estimate (95% CI)": format_bootstrap_ci(ci),
            "Bootstrap mean": f"{ci['bootstrap_mean']:.4f}",
        }
        for key, ci in boot["metrics"].items()
    ]
    return (
        f"<h3>Bootstrap confidence intervals</h3><p>{html.escape(boot['method'])}, {boot['n_resamples']} resamples "
        f"of the {boot['n']} test predictions of round {boot['round'] + 1}; {boot['confidence']:.0%} percentile "
        "intervals around the full-data estimate.</p>" + _table(pd.DataFrame(rows).set_index("Metric"))
    )


def levels_section(summary: dict) -> str:
    """Accuracy and macro-AUROC with predictions aggregated per scan and per patient, if asked for."""
    levels = summary.get("levels")
    if not levels:
        return ""
    rows = [
        {
            "Level": level,
            "Aggregation": part["aggregation"],
            "Test rows": part["n_rows"],
            "Accuracy": format_mean_ci(part["overall"]["accuracy"]),
            "Macro-AUROC": format_mean_ci(part["overall"]["macro_auroc"]),
        }
        for level, part in levels.items()
    ]
    return (
        "<h3>Scan and patient level</h3><p>Each sample's class probabilities averaged (or voted) over the "
        "samples of one scan or one patient in the same test fold, then scored as above.</p>"
        + _table(pd.DataFrame(rows).set_index("Level"))
    )


def external_section(summary: dict) -> str:
    """The external test set's results (per-class table, confusion matrix), if the run has one."""
    external = summary.get("external")
    if not external:
        return ""
    overall = external["overall"]
    confusion = figures.confusion_matrices(
        external["confusion_matrix"], external["confusion_matrix_normalized"], external["classes"]
    )
    return (
        f"<h2>External test set</h2><p>{html.escape(str(external['data']))}: {external['n_samples']} samples of "
        f"{external['n_patients']} patients, none of them in the training data (as paper 004's Test-2). Every fold "
        f"model predicts the whole set and is one unit: values are {html.escape(external['ci_method'])}.</p>"
        f"<p>Overall accuracy <b>{html.escape(format_mean_ci(overall['accuracy']))}</b>; macro-AUROC "
        f"<b>{html.escape(format_mean_ci(overall['macro_auroc']))}</b>.</p>"
        + _table(metrics_table(external))
        + levels_section(external)
        + "<p>Confusion matrix pooled over the fold models (each image counts once per model).</p>"
        + _image(confusion, "confusion matrices of the external test set")
    )


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CovidlensError(f"{path}: damaged ({type(exc).__name__}); rerun the command that wrote it") from None


def explanations_section(run_dir: Path) -> str:
    """Lesion localization of `<run>/explanations/<method>/evaluation.json` and the gallery, if any were made."""
    folder = run_dir / "explanations"
    evaluations = sorted(folder.glob("*/evaluation.json"))
    gallery = folder / "gallery"
    has_gallery = (gallery / "gallery.json").is_file() and (gallery / "gallery.png").is_file()
    if not evaluations and not has_gallery:
        return ""
    from covidlens.explain.heatmap_stats import (  # torch-free runs' reports need none of this
        INTENSITY_NOTE,
        LOCALIZATION_NOTE,
        intensity_frame,
        localization_frame,
    )

    parts = ["<h2>Explanations</h2>"]
    if evaluations:
        parts.append(
            "<h3>Lesion localization</h3><p>Maps of the inputs with a lesion mask, from the trained model and from "
            "a copy with re-initialized weights (Adebayo et al.'s randomization test). "
            f"{html.escape(LOCALIZATION_NOTE[0].upper() + LOCALIZATION_NOTE[1:])}</p>"
        )
    for path in evaluations:
        info = _read_json(path)
        parts.append(
            f"<p>{html.escape(path.parent.name)}/: {html.escape(info['model'])}, layer "
            f"{html.escape(info['layer'])}, {info['inputs_with_lesion']} of {info['inputs']} inputs with a lesion.</p>"
            + _table(localization_frame(pd.DataFrame(info["summary"])), index=False)
        )
    if has_gallery:
        info = _read_json(gallery / "gallery.json")
        models = ", ".join(f"{m['name']} ({m['architecture']})" for m in info["models"])
        groups = Counter(image["group"] for image in info["images"])
        parts.append(
            f"<h3>Gallery: {html.escape(info['method_title'])} of {len(info['models'])} model(s)</h3>"
            f"<p>Models: {html.escape(models)}; the first is the base model. Rows: {groups['positive']} "
            f"{html.escape(info['positive'])} images, then {groups['negative']} of other classes; columns: the "
            "image, then each model's map with its prediction (paper 000's Fig. 1).</p>"
            + _image((gallery / "gallery.png").read_bytes(), "gallery of class activation maps")
        )
        summary = gallery / "heatmap_intensity_summary.csv"
        if summary.is_file():
            parts.append(
                f"<p>{html.escape(INTENSITY_NOTE.format(base=info['base_model']))}</p>"
                + _table(intensity_frame(pd.read_csv(summary, keep_default_na=False)), index=False)
            )
    return "\n".join(parts)


def validation_text(cv: dict) -> str:
    """How the run validated its models, in words."""
    if cv.get("split") == "fixed":
        return "the dataset's own fixed train / validation / test lists (one fold)"
    if cv.get("split") == "holdout":
        return (
            f"{cv['rounds']} patient-wise holdout split(s): test {cv['test_fraction']:.0%} of patients, "
            f"validation {cv['val_fraction']:.0%} of the rest, seed {cv['seed']}"
        )
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
    volumes = run_dir / "volumes.csv"
    samples = pd.read_csv(volumes, dtype=str, keep_default_na=False) if volumes.is_file() else manifest
    folds = pd.read_csv(run_dir / "folds.csv", dtype={"sample_id": str})
    history = pd.read_csv(run_dir / "history.csv")
    classes = summary["classes"]
    overall = summary["overall"]
    warning = ""
    if is_image_wise(manifest):
        warning = f'<p class="warn">{html.escape(IMAGE_WISE_WARNING.strip())}</p>'
    title = html.escape(f"covidlens run: {config['name']} / {config['model']['name']}")
    fields = {
        "recipe": html.escape(config["name"]),
        "model": html.escape(config["model"]["name"]),
        "cv": html.escape(validation_text(config["cv"])),
        "input": html.escape(input_text(config["data"])),
        "data_summary": _table(data_summary(manifest, samples if volumes.is_file() else None)),
        "split_summary": _table(split_summary(samples, folds, "volumes" if volumes.is_file() else "images")),
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
        "explanations": explanations_section(run_dir),
        "extra_results": bootstrap_section(summary) + levels_section(summary),
        "external": external_section(summary),
        "config": html.escape(yaml.safe_dump(config, sort_keys=False)),
    }
    return render_page("run_body.html", title, warning, fields)


def render_page(template: str, title: str, warning: str, fields: dict[str, str]) -> str:
    """A self-contained HTML page: the shared head and style, then `template` filled with `fields`."""
    folder = resources.files("covidlens") / "report"
    body = (folder / template).read_text(encoding="utf-8").format(**fields)
    page = (folder / "page.html").read_text(encoding="utf-8")
    style = (folder / "style.css").read_text(encoding="utf-8")
    return page.format(title=title, warning=warning, body=body, style=style)


def sweep_caption(results: dict) -> str:
    """How the comparison table was computed, in paper 002's words."""
    rows = results["rows"]
    first = rows[0]["metrics"]["accuracy"]
    return (
        f"Accuracy is for {len(results['classes'])}-way classification; F1-score, precision and recall are for "
        f"{results['positive']} against the other classes. Each value is the average over "
        f"{first['n_resamples']} nonparametric, unstratified bootstrap resamples of the first round's test "
        f"predictions, with its {first['confidence']:.0%} percentile interval. Stars: two-sided Fisher's exact "
        "test of each row against the first (* p<0.05, ** p<0.01, *** p<0.001); F1 is not a proportion of "
        "counts, so it has no Fisher test. McNemar's exact test compares paired predictions where both rows "
        "were tested on the same samples. Bold: the best value of each column."
    )


def accuracy_bars(rows: list[dict], settings: list[str]) -> bytes:
    """The comparison's accuracy (bootstrap mean and percentile interval) per setting as a bar chart."""
    accuracy = [row["metrics"]["accuracy"] for row in rows]
    return figures.comparison_bars(
        [" / ".join(str(row["settings"][key]) for key in settings) for row in rows],
        [ci["bootstrap_mean"] for ci in accuracy],
        [ci["low"] for ci in accuracy],
        [ci["high"] for ci in accuracy],
        "accuracy",
    )


def build_sweep_report(sweep_dir: Path) -> str:
    """The HTML report of a finished sweep: the comparison table, then each cell's confusion and curves."""
    from covidlens.evaluate.tables import comparison_frame

    results_file = sweep_dir / "results.json"
    if not results_file.is_file():
        raise CovidlensError(f"{sweep_dir}: not a finished sweep (no results.json); run 'covidlens sweep'")
    results = json.loads(results_file.read_text(encoding="utf-8"))
    cells, warning, config = [], "", None
    for row in results["rows"]:
        run_dir = sweep_dir / "runs" / row["group"]
        config = config or yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
        summary = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
        if summary.get("image_wise"):
            warning = f'<p class="warn">{html.escape(IMAGE_WISE_WARNING.strip())}</p>'
        confusion = figures.confusion_matrices(
            summary["confusion_matrix"], summary["confusion_matrix_normalized"], summary["classes"]
        )
        curves = figures.training_curves(pd.read_csv(run_dir / "history.csv"))
        cells.append(
            f"<h3>{html.escape(row['group'])}</h3>"
            + _image(confusion, f"confusion matrices of {row['group']}")
            + _image(curves, f"training curves of {row['group']}")
        )
    grid = "; ".join(f"{axis['key']} = {', '.join(map(str, axis['values']))}" for axis in results["grid"])
    labels = [axis["label"] for axis in results["grid"]]
    fields = {
        "recipe": html.escape(" ".join([results["recipe"], *(f"--set {o}" for o in results["overrides"])])),
        "grid": html.escape(grid),
        "cv": html.escape(validation_text(config["cv"])),
        "caption": html.escape(sweep_caption(results)),
        "grid_labels": html.escape(" / ".join(labels)),
        "bars": _image(accuracy_bars(results["rows"], labels), "accuracy of each setting with its 95% interval"),
        "table": comparison_frame(results["rows"], html=True, settings=labels).to_html(
            border=0, classes="grid", escape=False, index=False
        ),
        "cells": "\n".join(cells),
    }
    return render_page("sweep_body.html", html.escape(f"covidlens sweep: {results['recipe']}"), warning, fields)


def write_sweep_report(sweep_dir: str | Path) -> Path:
    """Write sweep_dir/report.html atomically and return its path."""
    sweep_dir = Path(sweep_dir)
    return atomic.write_text(sweep_dir / "report.html", build_sweep_report(sweep_dir))


def write_report(run_dir: str | Path) -> Path:
    """Write run_dir/report.html atomically and return its path."""
    run_dir = Path(run_dir)
    return atomic.write_text(run_dir / "report.html", build_report(run_dir))
