"""The HTML report of a study (paper 004): Tables 3-4 per arrangement, Table 5 per test set, Table 7."""

from __future__ import annotations

import html
import json
from pathlib import Path
from urllib.parse import quote

import pandas as pd

from covidlens import atomic
from covidlens.errors import CovidlensError
from covidlens.evaluate.efficiency import efficiency_cells, thread_setting
from covidlens.report.html import render_page, write_report
from covidlens.train.hpo import format_tuning_table

TABLE5_METRICS = ("accuracy", "sensitivity", "specificity", "precision", "f1")
TABLE5_HEADERS = {
    "test_set": "Test set", "images": "Images", "accuracy": "Acc.", "sensitivity": "Sens.",
    "specificity": "Spec.", "precision": "Prec.", "f1": "F1Score",
}


def _cell(value: object) -> str:
    return "" if value is None or (isinstance(value, float) and value != value) else html.escape(str(value))


def _html_table(headers: list[str], rows: list[list[str]], bold: list[bool] | None = None) -> str:
    """A grid table of already-escaped cells; rows flagged in `bold` are shown bold."""
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        cells = "".join(f"<td><b>{c}</b></td>" if bold and bold[i] and c else f"<td>{c}</td>" for c in row)
        body.append(f"<tr>{cells}</tr>")
    return f'<table class="grid"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def best_experiments(tuning: list[dict]) -> dict[str, str]:
    """Arrangement -> the experiment with the best observed validation accuracy (the one paper 004 carries on)."""
    best: dict[str, tuple[float, str]] = {}
    for row in tuning:
        accuracy = row.get("observed_accuracy")
        if accuracy is None or accuracy != accuracy:
            continue
        if row["arrangement"] not in best or accuracy > best[row["arrangement"]][0]:
            best[row["arrangement"]] = (accuracy, row["experiment"])
    return {arrangement: experiment for arrangement, (_, experiment) in best.items()}


def tuning_section(results: dict, arrangement: str) -> str:
    """Table 3 / 4 of one arrangement: observed and estimated accuracy and the best hyper-parameters."""
    rows = pd.DataFrame([r for r in results["tuning"] if str(r["arrangement"]) == arrangement])
    tuned = rows["observed_accuracy"].notna()
    shown = pd.DataFrame({"Exp.": rows["experiment"].astype(str)})
    shown = shown.join(format_tuning_table(rows[tuned]).drop(columns="Exp.")).fillna("")
    shown = shown.assign(Note=rows["note"].fillna(""))
    return _html_table(list(shown.columns), [[html.escape(str(v)) for v in row] for row in shown.to_numpy()])


def performance_section(results: dict, best: dict[str, str]) -> str:
    """Table 5: accuracy and the positive class's sensitivity, specificity, precision and F1 on each test set."""
    headers = ["Arr.", "Exp.", "Model", *TABLE5_HEADERS.values(), "Note"]
    rows, bold = [], []
    for row in results["performance"]:
        arrangement, experiment = str(row["arrangement"]), str(row["experiment"])
        done = row.get("accuracy") is not None
        rows.append(
            [
                _cell(arrangement), _cell(experiment), _cell(row.get("model")), _cell(row.get("test_set")),
                f"{int(row['images'])}" if done else "",
                *(f"{row[k]:.4f}" if done else "" for k in TABLE5_METRICS),
                _cell(row.get("note")),
            ]
        )
        bold.append(best.get(arrangement) == experiment)
    return _html_table(headers, rows, bold)


def efficiency_section(results: dict) -> str:
    """Table 7: sensitivity, parameters (M), their ratio, and CPU ms per image per thread setting."""
    rows_in = results["efficiency"]
    timing = sorted({k for row in rows_in for k in row if k.startswith("ms_per_image_") and row[k] is not None})
    headers = ["Arr.", "Exp.", "Works", "Sensitivity (%)", "#Parameters (Millions)", "Sens. ÷ #Param."]
    headers += [f"CPU ms/image, {thread_setting(k)}" for k in timing]
    rows = []
    for row in rows_in:
        cells = efficiency_cells(row, timing) if row.get("sensitivity") is not None else [row.get("note") or ""]
        rows.append([_cell(row["arrangement"]), _cell(row["experiment"]), *(html.escape(c) for c in cells)])
    return _html_table(headers, rows)


def run_folders(study_dir: Path, results: dict) -> list[Path]:
    """The run directories of the study's cells, as its efficiency table lists them."""
    return [study_dir / row["run"] for row in results["efficiency"] if row.get("run")]


def build_study_report(study_dir: Path) -> str:
    """The study's report page from its results.json and study.json."""
    results_file, inputs_file = study_dir / "results.json", study_dir / "study.json"
    if not results_file.is_file() or not inputs_file.is_file():
        raise CovidlensError(f"{study_dir}: not a finished study (no results.json); run 'covidlens study'")
    results = json.loads(results_file.read_text(encoding="utf-8"))
    inputs = json.loads(inputs_file.read_text(encoding="utf-8"))
    best = best_experiments(results["tuning"])
    ran = list(dict.fromkeys(str(r["arrangement"]) for r in results["tuning"]))
    sections = []
    for arrangement in ran:
        about = results["arrangements"][arrangement]
        sections.append(
            f"<h3>Dataset arrangement {html.escape(arrangement)}: {html.escape(about['title'])}</h3>"
            + tuning_section(results, arrangement)
        )
    experiments = "".join(
        f"<li>{html.escape(name)}: {html.escape(title)}</li>" for name, title in results["experiments"].items()
    )
    cells = [
        f'<li><a href="{html.escape(quote((run / "report.html").relative_to(study_dir).as_posix()))}">'
        f"{html.escape(run.relative_to(study_dir).as_posix())}</a></li>"
        for run in run_folders(study_dir, results)
    ]
    fields = {
        "paper": html.escape(results.get("paper") or ""),
        "data": html.escape(str(inputs["data"])),
        "second": html.escape(str(inputs["second_source"])),
        "weights": html.escape(str(inputs["weights"] or "none (the transfer-learning experiment is skipped)")),
        "overrides": html.escape(" ".join(f"--set {o}" for o in inputs["overrides"]) or "none"),
        "experiments": experiments,
        "tuning": "\n".join(sections),
        "performance": performance_section(results, best),
        "efficiency": efficiency_section(results),
        "runs": "".join(cells),
    }
    return render_page("study_body.html", html.escape(f"covidlens study: {results['study']}"), "", fields)


def write_study_report(study_dir: str | Path) -> Path:
    """Write each trained run's report.html, then study_dir/report.html linking them; return its path."""
    study_dir = Path(study_dir)
    results_file = study_dir / "results.json"
    if results_file.is_file():
        for run in run_folders(study_dir, json.loads(results_file.read_text(encoding="utf-8"))):
            write_report(run)
    return atomic.write_text(study_dir / "report.html", build_study_report(study_dir))

