"""Paper 000's 20 CNNs: every one builds, trains a step, and has the published size."""

import json
import subprocess
import sys

import pytest
import torch

from covidlens.models import MODELS, create_model
from covidlens.models.describe import keras_style_parameter_count, model_stats

# Parameters with the 1000-class ImageNet top, as the Keras Applications table gives them
# (https://keras.io/api/applications/; exact counts where Keras' model.summary() prints them, else the
# table's rounded millions). Keras counts batch-norm moving mean and variance as parameters too.
KERAS_APPLICATIONS_PARAMETERS = {
    "Xception": 22_910_480,
    "VGG16": 138_357_544,
    "VGG19": 143_667_240,
    "ResNet50": 25_636_712,
    "ResNet50V2": 25_613_800,
    "ResNet101V2": 44_675_560,
    "ResNet152V2": 60_380_648,
    "InceptionV3": 23_851_784,
    "InceptionResNetV2": 55_873_736,
    "DenseNet121": 8_062_504,
    "DenseNet169": 14_307_880,
    "DenseNet201": 20_242_984,
    "EfficientNetB0": 5.3e6,
    "EfficientNetB1": 7.9e6,
    "EfficientNetB2": 9.2e6,
    "EfficientNetB3": 12.3e6,
    "EfficientNetB4": 19.5e6,
    "EfficientNetB5": 30.6e6,
    "EfficientNetB6": 43.3e6,
    "EfficientNetB7": 66.7e6,
}
KERAS_INPUT_SIZES = {"Xception": 299, "InceptionV3": 299, "InceptionResNetV2": 299, "EfficientNetB1": 240,
                     "EfficientNetB2": 260, "EfficientNetB3": 300, "EfficientNetB4": 380, "EfficientNetB5": 456,
                     "EfficientNetB6": 528, "EfficientNetB7": 600}
PAPER_000 = sorted(KERAS_APPLICATIONS_PARAMETERS)


def test_the_twenty_networks_of_paper_000_are_registered():
    assert PAPER_000 == sorted(n for n in MODELS.names() if MODELS.get(n).paper == "000")
    for name in PAPER_000:
        assert MODELS.get(name).input_size == KERAS_INPUT_SIZES.get(name, 224), name


@pytest.mark.parametrize("name", PAPER_000)
def test_parameter_count_matches_keras_applications_within_two_percent(name):
    with torch.device("meta"):
        model = create_model(name, num_classes=1000, in_chans=3)
    reference = KERAS_APPLICATIONS_PARAMETERS[name]
    assert keras_style_parameter_count(model) == pytest.approx(reference, rel=0.02)


def test_flops_match_a_published_figure():
    # VGG16 at 224 px: 15.47 G multiply-adds (Simonyan & Zisserman's configuration D, as torchvision lists it).
    stats = model_stats("VGG16", num_classes=1000)
    assert stats["gflops"] / 2 == pytest.approx(15.47, rel=0.01)
    assert stats["parameters_m"] == pytest.approx(138.36, rel=0.001)
    assert stats["size_mb"] == pytest.approx(138_357_544 * 4 / 2**20, rel=0.001)


def test_a_plain_timm_name_still_works_and_has_stats():
    stats = model_stats("resnet18", num_classes=2)
    assert stats["family"] == "timm" and stats["input_size"] == 224
    assert stats["gflops"] / 2 == pytest.approx(1.82, rel=0.01)


def test_models_command_lists_a_family_as_json():
    result = subprocess.run(
        [sys.executable, "-m", "covidlens.cli", "models", "--family", "densenet", "--json"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [r["name"] for r in rows] == ["DenseNet121", "DenseNet169", "DenseNet201"]
    assert all(r["paper"] == "000" and r["input_size"] == 224 and r["gflops"] > 1 for r in rows)
