"""The covidlens command line: each command is a thin call into the package."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from covidlens.errors import CovidlensError
from covidlens.progress import console

if TYPE_CHECKING:
    import pandas as pd

app = typer.Typer(
    help="Reproduce, compare, explain and deploy COVID-19 classifiers of chest CT on one honest pipeline.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out_console = Console() if sys.stdout.isatty() else Console(width=160)  # stdout: tables a user may pipe
# Options several commands share.
DataLayout = Annotated[str | None, typer.Option("--format", help="dataset layout when DATA is a folder")]
Quiet = Annotated[bool, typer.Option("--quiet", help="no progress bars")]


@app.command()
def synth(
    kind: Annotated[
        str, typer.Argument(help="ct-slices (paper 000's layout), ct-volumes (CC-CCII's) or cxr (paper 003's X-rays)")
    ],
    out: Annotated[Path, typer.Argument(help="new folder to write the dataset into")],
    patients: Annotated[
        int, typer.Option(help="number of patients (cxr: training images), in the layout's class proportions")
    ] = 60,
    seed: Annotated[int, typer.Option(help="random seed; the same seed gives byte-identical files")] = 0,
    difficulty: Annotated[float, typer.Option(help="0 = obvious findings, 1 = very subtle")] = 0.5,
    size: Annotated[int, typer.Option(help="slice side in pixels (cxr: the largest image side)")] = 512,
    min_slices: Annotated[int | None, typer.Option(help="fewest slices per patient (per scan for volumes)")] = None,
    max_slices: Annotated[int | None, typer.Option(help="most slices per patient (per scan for volumes)")] = None,
    image_format: Annotated[
        str, typer.Option("--format", help="ct-volumes only: png, nifti (volumes + labels.csv) or dicom series")
    ] = "png",
    segmented: Annotated[
        bool, typer.Option("--segmented", help="ct-volumes only: lung-segmented variant (air / black outside)")
    ] = False,
    site: Annotated[
        int,
        typer.Option(
            help="ct-slices only: 2 = a second source (other patients, s2_ ids; another window, more noise, a wider "
            "field of view, a smoother kernel) for an external test set"
        ),
    ] = 1,
    classes: Annotated[
        str | None,
        typer.Option(help="ct-slices only: write only these classes, comma-separated (e.g. COVID for a COVID-only "
                     "source)"),
    ] = None,
) -> None:
    """Write synthetic chest CT: class / patient / (scan /) slice PNGs with lesion masks beside them."""
    from covidlens.data.synth import synthesize
    from covidlens.progress import progress_bar

    options = {}
    if min_slices is not None or max_slices is not None:
        if min_slices is None or max_slices is None:
            raise CovidlensError("give both --min-slices and --max-slices, or neither for the kind's default")
        options["slices"] = (min_slices, max_slices)
    if image_format != "png":  # only non-defaults, so kinds without these options still work
        options["format"] = image_format
    if segmented:
        options["segmented"] = True
    if site != 1:
        options["site"] = site
    if classes is not None:
        options["classes"] = _comma_list(classes)
    with progress_bar(f"synth {kind}", patients) as update:
        rows = synthesize(
            kind, out, patients, seed=seed, difficulty=difficulty, size=size, progress=update, **options
        )
    console.print(f"wrote {len(rows)} images of {rows['patient_id'].nunique()} patients to {out}")


@app.command()
def layouts() -> None:
    """List the dataset layouts `covidlens index` understands."""
    from covidlens.data.index import list_layouts

    for name, description in list_layouts():
        out_console.print(f"[bold]{name}[/]  {description}")


@app.command()
def index(
    data: Annotated[
        Path, typer.Argument(help="dataset folder, or a CSV with path,label[,patient_id] columns")
    ],
    output: Annotated[Path, typer.Option("-o", "--output", help="manifest CSV to write")] = Path(
        "manifest.csv"
    ),
    format: Annotated[
        str | None, typer.Option("--format", help="layout name (see `covidlens layouts`)")
    ] = None,
    patient_regex: Annotated[
        str | None, typer.Option(help="regex whose first group takes the patient id from each relative path")
    ] = None,
    no_patients: Annotated[
        bool, typer.Option("--no-patients", help="no patient ids: split image-wise (reports will say so)")
    ] = False,
) -> None:
    """Index a dataset folder into a manifest: one row per image with its label and patient."""
    from covidlens.data.adapters.base import IndexOptions
    from covidlens.data.index import index_dataset
    from covidlens.data.manifest import is_image_wise, summarize, write_manifest

    result = index_dataset(data, layout=format, options=IndexOptions(patient_regex, no_patients))
    write_manifest(result.manifest, output)
    out_console.print(f"layout: {result.layout}")
    out_console.print(summarize(result.manifest).to_string())
    if is_image_wise(result.manifest):
        console.print("[yellow]no patient ids: splits will be image-wise and may leak; reports say so[/]")
    if result.skipped:
        console.print(f"[yellow]skipped {len(result.skipped)} unreadable file(s):[/]")
        for path, reason in result.skipped:
            console.print(f"  {path}: {reason}")
    console.print(f"wrote {output} ({len(result.manifest)} rows)")


@app.command()
def cv(
    recipe: Annotated[
        str, typer.Argument(help="built-in recipe name (see `covidlens recipes`) or a YAML file")
    ],
    data: Annotated[str, typer.Option(help="dataset folder or manifest CSV")],
    out: Annotated[Path | None, typer.Option(help="run directory; default runs/<recipe name>")] = None,
    rounds: Annotated[int | None, typer.Option(help="CV rounds (overrides cv.rounds)")] = None,
    folds: Annotated[int | None, typer.Option(help="folds per round (overrides cv.folds)")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="override a recipe field, e.g. --set train.epochs=5")
    ] = None,
    format: DataLayout = None,
    patient_regex: Annotated[str | None, typer.Option(help="see `covidlens index --help`")] = None,
    no_patients: Annotated[bool, typer.Option("--no-patients", help="see `covidlens index --help`")] = False,
    quiet: Quiet = False,
    external_test: Annotated[
        str | None,
        typer.Option(
            help="an external test set (dataset folder or manifest CSV of other patients, e.g. a second site) that "
            "every fold model also predicts; scored apart in metrics.json and the report"
        ),
    ] = None,
) -> None:
    """Patient-wise repeated k-fold cross-validation; writes (or resumes) a run directory and its report."""
    from covidlens.config import load_recipe
    from covidlens.data.adapters.base import IndexOptions
    from covidlens.evaluate.aggregate import format_summary_table
    from covidlens.report.html import write_report
    from covidlens.train.cv import run_cv

    overrides = list(set_ or [])
    overrides += [f"cv.rounds={rounds}"] if rounds is not None else []
    overrides += [f"cv.folds={folds}"] if folds is not None else []
    loaded = load_recipe(recipe, overrides)
    run_dir = out or Path("runs") / loaded.name
    summary = run_cv(
        loaded, data, run_dir, format, IndexOptions(patient_regex, no_patients), not quiet, external_test=external_test
    )
    report = write_report(run_dir)
    out_console.print(format_summary_table(summary))
    if "external" in summary:
        out_console.print(f"external test set {summary['external']['data']}:")
        out_console.print(format_summary_table(summary["external"]))
    console.print(f"run directory: {run_dir}  report: {report}")


@app.command()
def sweep(
    recipe: Annotated[
        str, typer.Argument(help="built-in recipe name (see `covidlens recipes`) or a YAML file")
    ],
    data: Annotated[str, typer.Option(help="dataset folder or manifest CSV")],
    grid: Annotated[
        list[str],
        typer.Option(
            help="a recipe field and its values, e.g. --grid depth=2,4,8 --grid batch_size=8,32 or "
            "--grid model=ResNet3D-18,ResNet3D-34 or --grid model.options.c=0.1,0.01 (a model option); a short "
            "name works when it is unique"
        ),
    ],
    out: Annotated[Path | None, typer.Option(help="sweep directory; default runs/<recipe name>-sweep")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="override a recipe field in every run, e.g. --set train.epochs=5")
    ] = None,
    format: DataLayout = None,
    quiet: Quiet = False,
) -> None:
    """Run a recipe over a grid of values (resumable) and compare the settings as paper 002's Tables 5-7.

    Each combination is an ordinary run directory under OUT/runs/; the table (bootstrap CIs, Fisher's
    exact stars against the first row, McNemar's test for paired predictions) goes to OUT/sweep.csv,
    OUT/results.json and OUT/report.html.
    """
    from covidlens.config import load_recipe
    from covidlens.evaluate.tables import comparison_frame
    from covidlens.report.html import write_report, write_sweep_report
    from covidlens.train.sweep import Sweep, parse_grid, run_sweep

    overrides = list(set_ or [])
    sweep_dir = out or Path("runs") / f"{load_recipe(recipe, overrides).name}-sweep"
    rows = run_sweep(recipe, grid, data, sweep_dir, overrides, format, show_progress=not quiet)
    for name in Sweep(sweep_dir, recipe, overrides, parse_grid(grid)).names:
        write_report(sweep_dir / "runs" / name)
    report_path = write_sweep_report(sweep_dir)
    out_console.print(comparison_frame(rows).to_string(index=False))
    console.print(f"sweep directory: {sweep_dir}  report: {report_path}")


@app.command()
def tune(
    recipe: Annotated[
        str, typer.Argument(help="built-in recipe name or a YAML file; its optimizer must be sgd (paper 004)")
    ],
    data: Annotated[str, typer.Option(help="dataset folder or manifest CSV")],
    trials: Annotated[int, typer.Option(help="complete trials the study should reach (paper 004: 30)")] = 30,
    epochs: Annotated[int, typer.Option(help="training epochs per trial (paper 004: 20); sets train.epochs")] = 20,
    storage: Annotated[
        str | None,
        typer.Option(help="optuna storage URL, e.g. postgresql://USER:PASSWORD@HOST/DB to share the study between "
                     "machines; default sqlite:///OUT/study.db"),
    ] = None,
    study: Annotated[str | None, typer.Option(help="study name; default the recipe's name")] = None,
    out: Annotated[Path | None, typer.Option(help="output folder; default runs/<recipe name>-tune")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="override a recipe field, e.g. --set model.name=LightCNN")
    ] = None,
    seed: Annotated[int, typer.Option(help="sampler seed (give each machine sharing a study its own)")] = 0,
    startup_trials: Annotated[
        int | None, typer.Option(help="random trials before the Gaussian process proposes; default optuna's 10")
    ] = None,
    format: DataLayout = None,
    quiet: Quiet = False,
) -> None:
    """Bayesian search of SGD's initial learning rate, momentum and L2 (paper 004, Tables 3-4); resumable.

    Each trial trains on the first fold of the recipe's patient-wise split and scores its best validation
    accuracy. Writes OUT/trials.csv, OUT/best.json and OUT/table.csv (observed and estimated accuracy).
    """
    import pandas as pd

    from covidlens.config import load_recipe
    from covidlens.train.hpo import format_tuning_table, run_tuning

    loaded = load_recipe(recipe, [*(set_ or []), f"train.epochs={epochs}"])
    tune_dir = out or Path("runs") / f"{loaded.name}-tune"
    run_tuning(
        loaded, data, tune_dir, trials, storage=storage, study_name=study, seed=seed,
        startup_trials=startup_trials, layout=format, show_progress=not quiet,
    )
    _print_frame(format_tuning_table(pd.read_csv(tune_dir / "table.csv")), "Bayesian optimization (paper 004)")
    console.print(f"tuning folder: {tune_dir}  best hyper-parameters: {tune_dir / 'best.json'}")


@app.command()
def study(
    name: Annotated[str, typer.Argument(help="built-in study (see `covidlens studies`) or a study YAML file")],
    data: Annotated[str, typer.Option(help="the first source: dataset folder or manifest CSV")],
    second_source: Annotated[
        str, typer.Option(help="the second source (paper 004: the Italian COVID-only set): folder or manifest CSV")
    ],
    out: Annotated[Path | None, typer.Option(help="output folder; default runs/<study name>")] = None,
    weights: Annotated[
        Path | None,
        typer.Option(help="ImageNet SqueezeNet 1.0 weights (e.g. torchvision's squeezenet1_0-b66bff10.pth) for the "
                     "transfer-learning experiment; without it that experiment is skipped"),
    ] = None,
    trials: Annotated[
        int | None, typer.Option(help="complete tuning trials per experiment; default the study's (paper 004: 30)")
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="training epochs per tuning trial; default the recipe's")] = None,
    arrangements: Annotated[
        str | None, typer.Option(help="comma-separated arrangements to run, e.g. 2; default all")
    ] = None,
    experiments: Annotated[
        str | None, typer.Option(help="comma-separated experiments to run, e.g. 1,4; default all")
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="override a recipe field of every cell, e.g. data.image_size=64")
    ] = None,
    images: Annotated[int, typer.Option(help="test images timed per model for the efficiency table")] = 20,
    threads: Annotated[str, typer.Option(help="torch CPU thread settings to time, e.g. 1,all")] = "1,all",
    format: DataLayout = None,
    second_format: Annotated[
        str | None,
        typer.Option(help="the second source's layout (default: detected; a one-class folder needs class-folders)"),
    ] = None,
    quiet: Quiet = False,
) -> None:
    """Paper 004's four experiments on its two dataset arrangements: tune, train, test; Tables 3-5 and 7.

    Each experiment is tuned (Bayesian search of SGD's learning rate, momentum and L2), trained with the best point
    and tested on Test-1 and, where the sources stay separate, Test-2. Resumable: rerun the same command.
    Writes OUT/tuning.csv, OUT/performance.csv, OUT/efficiency.csv, OUT/results.json and OUT/report.html.
    """
    from covidlens.evaluate.efficiency import parse_threads
    from covidlens.report.study import write_study_report
    from covidlens.train.study import StudyInputs, load_study, run_study

    loaded = load_study(name)
    inputs = StudyInputs(
        data=data, second_source=second_source, weights=None if weights is None else str(weights),
        overrides=list(set_ or []), epochs=epochs, layout=format, second_layout=second_format,
    )
    study_dir = out or Path("runs") / loaded.name
    run_study(
        loaded, inputs, study_dir, arrangements=_comma_list(arrangements), experiments=_comma_list(experiments),
        trials=trials, efficiency_images=images, threads=parse_threads(threads), show_progress=not quiet,
    )
    console.print(f"study folder: {study_dir}  report: {write_study_report(study_dir)}")


def _comma_list(text: str | None) -> list[str] | None:
    """'a, b,' -> ['a', 'b']; None stays None (the option was not given)."""
    return None if text is None else [part.strip() for part in text.split(",") if part.strip()]


@app.command()
def studies() -> None:
    """List the built-in studies (several recipes' experiments run as one command)."""
    from covidlens.train.study import builtin_studies, load_study

    for name in builtin_studies():
        out_console.print(f"[bold]{name}[/]  {load_study(name).description}")


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="a finished run, sweep or study directory")],
) -> None:
    """(Re)write report.html of a run, a sweep or a study from the tables on disk."""
    from covidlens.report.html import write_report, write_sweep_report
    from covidlens.report.study import write_study_report

    writer = write_report
    if (run_dir / "sweep.json").is_file():
        writer = write_sweep_report
    elif (run_dir / "study.json").is_file():
        writer = write_study_report
    console.print(f"wrote {writer(run_dir)}")


@app.command()
def predict(
    model: Annotated[
        Path, typer.Argument(help="run directory (averages its fold models) or a checkpoint .pt")
    ],
    paths: Annotated[list[Path], typer.Argument(help="image files and/or folders")],
    output: Annotated[Path, typer.Option("-o", "--output", help="CSV to write")] = Path("predictions.csv"),
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
    format: Annotated[
        str,
        typer.Option(
            help="table: path, predicted class, p_<class>...; submission: paper 003's competition file "
            "(Id = file name without extension, label = predicted class), sorted by Id"
        ),
    ] = "table",
) -> None:
    """Classify images with class probabilities, or write a competition submission."""
    from covidlens import atomic
    from covidlens.deploy.predict import collect_inputs, predict_files, submission_table

    if format not in ("table", "submission"):
        raise CovidlensError(f"--format {format!r}: use table or submission")
    files, skipped = collect_inputs(paths)
    for path, reason in skipped:
        console.print(f"[yellow]skipped {path}: {reason}[/]")
    table = predict_files(model, files, device=device)
    if format == "submission":
        table = submission_table(table)
    atomic.write_csv(output, table)
    console.print(f"wrote {output} ({len(table)} images)")


@app.command()
def efficiency(
    runs: Annotated[list[Path], typer.Argument(help="finished run directories, one table row each")],
    images: Annotated[int, typer.Option(help="test images timed per run (one at a time, after one warm-up)")] = 20,
    threads: Annotated[str, typer.Option(help="torch CPU thread settings to time, e.g. 1,all")] = "1,all",
    output: Annotated[Path, typer.Option("-o", "--output", help="CSV to write")] = Path("efficiency.csv"),
) -> None:
    """Paper 004's Table 7: sensitivity, parameters (M), sensitivity / parameters and CPU ms per image."""
    from covidlens import atomic
    from covidlens.evaluate.efficiency import efficiency_rich_table, efficiency_table, parse_threads

    table = efficiency_table(runs, images=images, threads=parse_threads(threads))
    out_console.print(efficiency_rich_table(table))
    atomic.write_csv(output, table)
    console.print(f"wrote {output} ({len(table)} runs)")


@app.command()
def explain(
    model: Annotated[Path, typer.Argument(help="run directory (fold model 0; see --fold-model) or a checkpoint .pt")],
    paths: Annotated[
        list[Path],
        typer.Argument(help="image files and/or folders; for a volume model (data.depth), scan folders of slices"),
    ],
    method: Annotated[str, typer.Option(help="cam, gradcam, gradcampp or smoothgradcampp")] = "gradcam",
    layer: Annotated[str | None, typer.Option(help="target module name (default: the model's CAM layer)")] = None,
    target: Annotated[str, typer.Option(help="class to explain: predicted, a class name or index")] = "predicted",
    output: Annotated[
        Path | None,
        typer.Option(
            "-o", "--output",
            help="folder for PNG, NPY and CSV (default: RUN/explanations/<method> for a run, else explanations)",
        ),
    ] = None,
    evaluate: Annotated[
        bool, typer.Option("--evaluate", help="score maps against lesion masks, trained vs randomized weights")
    ] = False,
    fold_model: Annotated[int, typer.Option(help="which fold model of a run directory, from 0")] = 0,
    start: Annotated[int, typer.Option(help="volume models: first slice of each scan to take")] = 0,
    batch_size: Annotated[int, typer.Option(help="inputs per forward pass")] = 8,
    seed: Annotated[int, typer.Option(help="seed of Smooth Grad-CAM++'s noise and of the randomized weights")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "cpu",
) -> None:
    """Class activation maps (CAM, Grad-CAM, Grad-CAM++, Smooth Grad-CAM++) as overlays and arrays."""
    from covidlens.explain.heatmap_stats import LOCALIZATION_NOTE, localization_frame
    from covidlens.explain.pipeline import explain_paths

    result = explain_paths(
        model, paths, output, method=method, layer=layer, target=target, evaluate=evaluate,
        fold_model=fold_model, start=start, batch_size=batch_size, device=device, seed=seed,
    )
    if result.summary is None:
        return
    _print_frame(localization_frame(result.summary), "lesion localization: trained vs randomized weights")
    out_console.print(LOCALIZATION_NOTE)


@app.command()
def gallery(
    models: Annotated[
        list[Path], typer.Argument(help="run directories (fold model 0) or checkpoints .pt; the first is the base")
    ],
    data: Annotated[list[Path], typer.Option(help="image files and/or folders to pick from (repeat --data)")],
    positive: Annotated[str, typer.Option(help="the positive class, e.g. COVID")],
    per_class: Annotated[int, typer.Option(help="images of the positive class, and as many of the others")] = 3,
    method: Annotated[str, typer.Option(help="cam, gradcam, gradcampp or smoothgradcampp")] = "gradcam",
    target: Annotated[str, typer.Option(help="class to explain: predicted, a class name or index")] = "predicted",
    output: Annotated[
        Path | None,
        typer.Option("-o", "--output", help="folder (default: RUN/explanations/gallery for a run, else gallery)"),
    ] = None,
    seed: Annotated[int, typer.Option(help="seed of the image choice (and of Smooth Grad-CAM++'s noise)")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "cpu",
) -> None:
    """Paper 000's Fig. 1: positive and negative images with every model's map, and its heatmap-intensity analysis."""
    from covidlens.explain.gallery import run_gallery
    from covidlens.explain.heatmap_stats import INTENSITY_NOTE, intensity_frame

    result = run_gallery(
        models, data, positive, output, per_class=per_class, method=method, target=target, seed=seed, device=device
    )
    base = result.intensities["base_model"].iloc[0]
    _print_frame(intensity_frame(result.summary), f"mean map intensity inside the base model's ({base}) mask")
    out_console.print(INTENSITY_NOTE.format(base=base))


def _print_frame(frame: pd.DataFrame, title: str) -> None:
    """Print a table of strings: text columns left-aligned, numbers right-aligned."""
    from rich.table import Table

    table = Table(title=title)
    for column in frame.columns:
        numeric = frame[column].str.match(r"^[-+]?(\d|nan)").all()
        table.add_column(str(column), justify="right" if numeric else "left")
    for row in frame.itertuples(index=False):
        table.add_row(*map(str, row))
    out_console.print(table)


@app.command()
def activations(
    model: Annotated[Path, typer.Argument(help="run directory (fold model 0; see --fold-model) or a checkpoint .pt")],
    image: Annotated[
        Path, typer.Argument(help="an image file; for a volume model (data.depth), a scan folder of numbered slices")
    ],
    layers: Annotated[
        str | None, typer.Option(help="comma-separated module names, e.g. layer1.0.conv1,layer3 (default: features)")
    ] = None,
    every: Annotated[
        int | None, typer.Option(help="every N-th convolution, from the first; the last one is always shown")
    ] = None,
    filters: Annotated[int, typer.Option(help="filter maps per layer grid")] = 16,
    top: Annotated[
        bool, typer.Option("--top", help="show the most active filters (highest mean activation), not the first")
    ] = False,
    output: Annotated[Path, typer.Option("-o", "--output", help="folder for the PNGs")] = Path("activations"),
    fold_model: Annotated[int, typer.Option(help="which fold model of a run directory, from 0")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "cpu",
) -> None:
    """Intermediate activation maps (paper 000, Fig. 2): a grid of filter outputs per layer, and an overview."""
    if not image.exists():  # before importing torch: a typo is answered at once
        raise CovidlensError(f"{image}: no such image file or scan folder")
    from covidlens.explain.activations import write_activation_maps

    names = _comma_list(layers)
    if layers is not None and not names:
        raise CovidlensError("--layers is empty; give module names separated by commas")
    write_activation_maps(
        model, image, output, layers=names, every=every, filters=filters, most_active=top,
        fold_model=fold_model, device=device,
    )


@app.command()
def models(
    family: Annotated[str | None, typer.Option(help="only this family (e.g. efficientnet, densenet, resnet)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
    classes: Annotated[int, typer.Option(help="output classes the counts are taken with")] = 3,
    channels: Annotated[int, typer.Option(help="input channels the counts are taken with")] = 3,
) -> None:
    """List covidlens' models: family, paper, native input, parameters, fp32 size and GFLOPs.

    Any timm architecture name also works in a recipe (e.g. efficientnet_b0, resnet18).
    """
    import json

    from rich.table import Table

    from covidlens.models import MODELS
    from covidlens.models.describe import model_stats

    names = [n for n in MODELS.names() if family is None or MODELS.get(n).family == family]
    if not names:
        families = sorted({MODELS.get(n).family for n in MODELS.names()})
        raise CovidlensError(f"no model of family {family!r}; families: {', '.join(families)}")
    rows = [model_stats(name, num_classes=classes, in_chans=channels) for name in names]
    if as_json:
        out_console.print_json(json.dumps(rows))
        return
    table = Table(title=f"covidlens models ({classes} classes, {channels} input channels)")
    for header in ("name", "family", "paper", "input", "params (M)", "fp32 MiB", "GFLOPs"):
        table.add_column(header, justify="left" if header in ("name", "family") else "right")
    for row in rows:
        table.add_row(
            row["name"], row["family"], row["paper"], _input_shape(row), f"{row['parameters_m']:.2f}",
            f"{row['size_mb']:.1f}", f"{row['gflops']:.2f}",
        )
    out_console.print(table)
    out_console.print("GFLOPs count 2 operations per multiply-add, for one image at the native input size.")


@app.command()
def recipes() -> None:
    """List the built-in recipes."""
    from covidlens.config import builtin_recipes, load_recipe

    for name in builtin_recipes():
        out_console.print(f"[bold]{name}[/]  {load_recipe(name).description}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="folder for the synthetic data and the run")] = Path("demo-run"),
    patients: Annotated[int, typer.Option(help="synthetic patients")] = 60,
    difficulty: Annotated[float, typer.Option(help="0 = obvious findings, 1 = very subtle")] = 0.5,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
) -> None:
    """synth -> index -> 5-fold patient-wise CV of a small CNN -> report, on synthetic CT, in minutes."""
    from covidlens.demo import run_demo

    run_demo(out, patients=patients, difficulty=difficulty, seed=seed)


def _input_shape(row: dict) -> str:
    side = row["input_size"]
    return f"{row['input_depth']}x{side}x{side}" if row.get("input_depth") else f"{side}x{side}"


def main() -> None:
    """Entry point: user errors print one line and exit 2; no traceback."""
    warnings.formatwarning = lambda message, *args, **kwargs: f"warning: {message}\n"
    try:
        app(standalone_mode=False)
    except CovidlensError as exc:
        console.print(f"[red]error:[/] {exc}", soft_wrap=True, markup=True, highlight=False)
        sys.exit(2)
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        console.print(f"[red]error:[/] {where}{exc.strerror or exc}", soft_wrap=True, highlight=False)
        sys.exit(2)
    except typer.TyperException as exc:  # a usage error: unknown option, missing argument, bad value
        show = getattr(exc, "show", None)
        if show is not None:
            show()
        else:
            console.print(f"[red]error:[/] {exc.format_message()}", soft_wrap=True, highlight=False)
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        console.print("interrupted; rerun the same command to resume")
        sys.exit(130)


if __name__ == "__main__":
    main()
