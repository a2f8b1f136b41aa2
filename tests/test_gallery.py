"""`covidlens gallery` (paper 000's Fig. 1 and its base-mask heatmap analysis across models) and the
Explanations section of report.html. Two fold models of one tiny run play two models."""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from cli_helpers import assert_one_line_error, covidlens
from covidlens.cli import app
from covidlens.data.preprocess import to_model_input
from covidlens.errors import CovidlensError
from covidlens.explain import heatmap_stats as hs
from covidlens.explain.cam import Explainer
from covidlens.explain.gallery import pick_examples, run_gallery, true_classes
from covidlens.explain.pipeline import ExplainItem, collect_images, explain_paths, explanation_folder, load_item
from covidlens.explain.render import DPI, gallery_size
from covidlens.report.html import build_report
from covidlens.train.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def fold_checkpoints(tiny_run: Path) -> list[Path]:
    found = sorted((tiny_run / "run" / "checkpoints").glob("*.pt"))
    assert [p.name for p in found] == ["r00-f0.pt", "r00-f1.pt"]
    return found


def direct_map(checkpoint: Path, image: Path) -> np.ndarray:
    """One image's Grad-CAM map computed without the gallery: the recipe's preprocessing, then the Explainer."""
    loaded = read_checkpoint(checkpoint)
    pixels = load_item(ExplainItem(image, image.stem, [image]), loaded.prep)[None]
    inputs = torch.from_numpy(to_model_input(pixels, loaded.recipe.data.channels))
    return Explainer(loaded.model, "gradcam", model_name=loaded.recipe.model.name).explain(inputs).maps[0]


def test_gallery_layout_choice_and_intensities(tiny_run, tmp_path):
    base, other = fold_checkpoints(tiny_run)
    result = run_gallery([base, other], [tiny_run / "data"], "covid", tmp_path / "g", per_class=2, show_progress=False)

    # layout: 2 positive + 2 negative rows; the image, then one overlay per model
    assert result.grid == (4, 3)
    width, height = gallery_size(4, 3)
    with Image.open(tmp_path / "g" / "gallery.png") as png:
        assert png.format == "PNG" and png.size == (round(width * DPI), round(height * DPI))
        assert png.size[0] / 3 >= 250  # at least 250 px per column: legible at a glance
    assert not (tmp_path / "g" / "gallery_positive.png").exists()  # two models read well in one figure

    # the choice: positives first, all COVID with a lesion mask; negatives one of each other class
    images = result.images
    assert list(images["group"]) == ["positive", "positive", "negative", "negative"]
    assert list(images["true_class"][:2]) == ["COVID", "COVID"] and images["lesion_mask"][:2].all()
    assert sorted(images["true_class"][2:]) == ["Healthy", "Others"]
    assert all(Path(p).parts[-3] == c for p, c in zip(images["path"], images["true_class"], strict=True))
    assert images["path"][:2].map(lambda p: Path(p).parent).nunique() == 2  # two different patients

    # paper 000's numbers, against a direct computation for the first image
    table = pd.read_csv(tmp_path / "g" / "heatmap_intensity.csv")
    assert len(table) == 4 * 2 and list(table["model"].unique()) == ["r00-f0", "r00-f1"]
    assert (table["base_model"] == "r00-f0").all() and (table["method"] == "gradcam").all()
    first = Path(images["path"][0])
    base_map, other_map = direct_map(base, first), direct_map(other, first)
    mask = hs.base_mask(base_map)
    rows = table[table["image"] == images["image"][0]].set_index("model")
    assert rows.loc["r00-f0", "mean_intensity"] == pytest.approx(hs.mean_intensity_in_mask(base_map, mask), abs=1e-5)
    assert rows.loc["r00-f1", "mean_intensity"] == pytest.approx(hs.mean_intensity_in_mask(other_map, mask), abs=1e-5)
    assert rows["mask_pixels"].tolist() == [int(mask.sum())] * 2
    assert 0 < mask.mean() < 0.5  # mean + 1 SD keeps a minority of the pixels
    assert rows.loc["r00-f0", "mean_intensity"] > base_map[~mask].max() - 1e-6  # the mask holds the base's top values

    # the summary: per model in the order given, all images then each group, mean and SD (ddof 1) of the table
    summary = pd.read_csv(tmp_path / "g" / "heatmap_intensity_summary.csv", keep_default_na=False)
    assert list(zip(summary["model"], summary["images_of"], strict=True)) == [
        (m, g) for m in ("r00-f0", "r00-f1") for g in ("all", "COVID", "not COVID")
    ]
    every = summary[summary["images_of"] == "all"].set_index("model")
    by_model = table.groupby("model")["mean_intensity"]
    assert np.allclose(every["mean"], by_model.mean()[every.index])
    assert np.allclose(every["sd"], by_model.std()[every.index])
    assert (every["images"] == 4).all()

    info = json.loads((tmp_path / "g" / "gallery.json").read_text())
    assert [m["name"] for m in info["models"]] == ["r00-f0", "r00-f1"] and info["base_model"] == "r00-f0"
    assert info["method"] == "gradcam" and info["positive"] == "COVID" and info["grid"] == [4, 3]
    assert [image["image"] for image in info["images"]] == list(images["image"])


def test_pick_examples_is_seeded_and_prefers_masks_patients_and_classes(tmp_path):
    items, labels = [], []
    for label, patients in (("COVID", 3), ("Healthy", 2), ("Others", 2)):
        for p in range(patients):
            for s in range(4):
                image = tmp_path / label / f"p{p}" / f"s{s}.png"
                image.parent.mkdir(parents=True, exist_ok=True)
                image.touch()
                if label == "COVID" and s == 3:  # one slice per positive patient has a lesion
                    image.with_name(f"s{s}.mask.png").touch()
                items.append(ExplainItem(image, f"{label}-{p}-{s}", [image]))
                labels.append(label)
    items.append(ExplainItem(tmp_path / "loose.png", "loose", [tmp_path / "loose.png"]))
    labels.append(None)  # no class known: never picked

    positives, negatives = pick_examples(items, labels, "COVID", per_class=3, seed=0)
    assert len(positives) == len(negatives) == 3 and len(items) - 1 not in positives + negatives
    assert all(items[i].path.name == "s3.png" for i in positives)  # the masked slice of each patient
    assert len({items[i].path.parent for i in positives}) == 3
    assert all(labels[i] != "COVID" for i in negatives)
    assert [labels[i] for i in negatives].count("Healthy") in (1, 2)  # both other classes, in turn
    assert len({items[i].path.parent for i in negatives}) == 3
    assert pick_examples(items, labels, "COVID", 3, seed=0) == (positives, negatives)
    assert any(pick_examples(items, labels, "COVID", 3, seed=s)[1] != negatives for s in range(1, 6))
    assert pick_examples(items, labels, "COVID", per_class=20, seed=0)[0].__len__() == 12  # all there are


def test_true_classes_from_the_index_or_folder_names(tiny_run, tmp_path):
    items, _ = collect_images([tiny_run / "data"])
    labels = true_classes(items, [tiny_run / "data"], ["COVID", "Healthy", "Others"])
    assert labels == [item.path.parts[-3] for item in items]  # class / patient / slice
    loose = tmp_path / "covid" / "x.png"  # not a known layout: the nearest folder named like a class, any case
    elsewhere = tmp_path / "misc" / "y.png"
    for path in (loose, elsewhere):
        path.parent.mkdir(parents=True)
        shutil.copy(items[0].path, path)
    found = true_classes([ExplainItem(loose, "x", [loose]), ExplainItem(elsewhere, "y", [elsewhere])],
                         [loose, elsewhere], ["COVID", "Healthy", "Others"])
    assert found == ["COVID", None]
    merged = {"Healthy": "NonCOVID", "Others": "NonCOVID"}  # a COVID vs not-COVID model (data.relabel)
    binary = true_classes(items, [tiny_run / "data"], ["COVID", "NonCOVID"], merged)
    assert binary == [merged.get(item.path.parts[-3], item.path.parts[-3]) for item in items]
    assert set(binary) == {"COVID", "NonCOVID"}
    healthy = tmp_path / "healthy" / "z.png"  # a folder name renamed too
    healthy.parent.mkdir()
    shutil.copy(items[0].path, healthy)
    assert true_classes([ExplainItem(healthy, "z", [healthy])], [healthy], ["COVID", "NonCOVID"], merged) == [
        "NonCOVID"
    ]


def test_refusals(tiny_run, tmp_path):
    base, _ = fold_checkpoints(tiny_run)
    model, recipe, _ = load_checkpoint(base)
    save_checkpoint(tmp_path / "other.pt", model, recipe, ["CP", "NCP", "Normal"])
    result = covidlens("gallery", base, tmp_path / "other.pt", "--data", tiny_run / "data", "--positive", "COVID",
                       "-o", tmp_path / "out")
    assert_one_line_error(result, "other.pt: classes CP, NCP, Normal differ from the base model's (COVID, Healthy")
    assert not (tmp_path / "out").exists()
    with pytest.raises(CovidlensError, match="--positive Sick: not a class of these models"):
        run_gallery([base], [tiny_run / "data"], "Sick", tmp_path / "x")
    with pytest.raises(CovidlensError, match="no image of a class other than COVID"):
        run_gallery([base], [tiny_run / "data" / "COVID"], "COVID", tmp_path / "x", show_progress=False)


def test_report_shows_explanations_only_when_made(tiny_run, tmp_path):
    run = shutil.copytree(tiny_run / "run", tmp_path / "run")
    assert "Explanations" not in build_report(run)

    checkpoint = run / "checkpoints" / "r00-f1.pt"
    assert explanation_folder(run, "gradcam", "explanations") == run / "explanations" / "gradcam"
    assert explanation_folder(checkpoint, "gradcam", "explanations") == Path("explanations")
    patient = next((tiny_run / "data" / "COVID").iterdir())
    explain_paths(run, [patient], evaluate=True, show_progress=False)  # default: <RUN>/explanations/<method>
    assert (run / "explanations" / "gradcam" / "evaluation.json").is_file()

    # in-process (the one-line error above runs the real command line): a second interpreter costs ~10 s here
    args = ["gallery", str(run), str(checkpoint), "--data", str(tiny_run / "data"), "--positive", "COVID",
            "--per-class", "1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    gallery = run / "explanations" / "gallery"  # default for a run directory
    assert (gallery / "gallery.png").is_file()
    assert "mean map intensity inside the base model's (run) mask" in result.stdout
    assert "not COVID" in result.stdout and "r00-f1" in result.stdout

    page = build_report(run)
    section = page[page.index("<h2>Explanations</h2>") : page.index("<h2>Resolved recipe</h2>")]
    for header in ("energy in lesion", "lesion area", "pointing hits", "Spearman t-vs-r", "randomized"):
        assert f">{header}<" in section
    assert "mean intensity in base mask (± SD)" in section and section.count("<table") == 2
    embedded = re.search(r'<img alt="gallery of class activation maps" src="data:image/png;base64,([^"]+)"', section)
    assert base64.b64decode(embedded.group(1)) == (gallery / "gallery.png").read_bytes()
