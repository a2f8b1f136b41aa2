"""Intermediate activation maps: hooks capture the right tensors, layer choice, grids, 3D, CLI."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cli_helpers import assert_one_line_error, covidlens
from covidlens.config import load_recipe
from covidlens.data.preprocess import preprocessing_of
from covidlens.data.synth import synthesize
from covidlens.errors import CovidlensError
from covidlens.explain import activations as act
from covidlens.models import create_model
from covidlens.train.checkpoint import save_checkpoint
from covidlens.train.cv import run_cv


class TinyNet(nn.Module):
    """conv (fixed weights), changed in place afterwards -> ReLU -> pool -> linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1, bias=True)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, 0, 1, 1] = 2.0  # channel 0: 2 x the input, minus 1
            self.conv.weight[1, 0, 1, 2] = 1.0  # channel 1: the input shifted one pixel left
            self.conv.bias.copy_(torch.tensor([-1.0, 0.0]))
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        y += 10.0  # an in-place change after the conv: the captured copy must not see it
        return self.fc(self.pool(self.act(y)).flatten(1))


def image_batch() -> torch.Tensor:
    return torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4) / 16.0


def test_captured_conv_output_is_exactly_the_expected_tensor():
    net = TinyNet()
    x = image_batch()
    captured = act.capture_activations(net, x, ["conv", "act"])
    expected = torch.stack([2 * x[0, 0] - 1, torch.nn.functional.pad(x[0, 0, :, 1:], (0, 1))])
    torch.testing.assert_close(captured["conv"][0], expected)  # before the in-place += 10
    torch.testing.assert_close(captured["act"][0], torch.relu(expected + 10.0))
    assert not net.conv._forward_hooks and not net.act._forward_hooks  # hooks removed


def test_hooks_are_removed_and_mode_restored_when_the_forward_pass_fails():
    net = TinyNet().train()
    with pytest.raises(RuntimeError):
        act.capture_activations(net, torch.zeros(1, 3, 4, 4), ["conv"])  # 3 channels into a 1-channel conv
    assert not net.conv._forward_hooks
    assert net.training


def test_a_module_called_twice_keeps_its_last_output():
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 1, bias=False)
            self.act = nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.act(self.conv(self.act(x - 0.5)) + 1.0)

    net = Twice()
    x = image_batch()
    captured = act.capture_activations(net, x, ["act"])["act"]
    torch.testing.assert_close(captured, torch.relu(net.conv(torch.relu(x - 0.5)) + 1.0).detach())


def test_layer_maps_indices_are_positions_among_named_modules():
    net = TinyNet()
    assert act.layer_indices(net) == {"conv": 1, "act": 2, "pool": 3, "fc": 4}
    (conv,) = act.layer_maps(net, image_batch(), ["conv"])
    assert conv.index == 1 and conv.maps.shape == (2, 4, 4)
    assert conv.title() == "layer 1: conv (2 filters, 4x4)"


def test_a_layer_without_feature_maps_is_refused():
    with pytest.raises(CovidlensError, match="'fc' outputs shape \\(1, 3\\)"):
        act.layer_maps(TinyNet(), image_batch(), ["fc"])


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    return create_model("resnet18", num_classes=3, in_chans=1)


def test_default_layers_are_the_feature_layers(resnet18):
    assert act.select_layers(resnet18) == ["act1", "layer1", "layer2", "layer3", "layer4"]


def test_named_layers_come_back_shallow_to_deep_without_repeats(resnet18):
    chosen = act.select_layers(resnet18, ["layer3", "conv1", "layer1.0.conv2", "conv1"])
    assert chosen == ["conv1", "layer1.0.conv2", "layer3"]


def test_every_nth_convolution_starts_at_the_first_and_ends_at_the_last(resnet18):
    convolutions = act.convolution_names(resnet18)
    assert len(convolutions) == 20 and convolutions[0] == "conv1" and convolutions[-1] == "layer4.1.conv2"
    assert act.select_layers(resnet18, every=5) == [
        "conv1", "layer2.0.conv1", "layer3.0.conv1", "layer4.0.conv1", "layer4.1.conv2"
    ]
    assert act.select_layers(resnet18, every=1) == convolutions
    with pytest.raises(CovidlensError, match="--every 0"):
        act.select_layers(resnet18, every=0)
    with pytest.raises(CovidlensError, match="not both"):
        act.select_layers(resnet18, ["conv1"], every=2)


def test_an_unknown_layer_is_named_with_close_matches(resnet18):
    with pytest.raises(CovidlensError) as error:
        act.select_layers(resnet18, ["conv1", "layer1.0.conv"])
    message = str(error.value)
    assert "'layer1.0.conv'" in message and "did you mean" in message and "layer1.0.conv1" in message
    assert "\n" not in message


def test_models_without_convolutions_are_refused():
    svm = create_model("LinearSVM", num_classes=3, in_chans=1)
    with pytest.raises(CovidlensError, match="no convolution layers"):
        act.select_layers(svm)


def test_filter_choice_first_or_most_active():
    maps = np.stack([np.full((2, 2), v, dtype=np.float32) for v in (0.1, 3.0, -1.0, 2.0)])
    assert act.choose_filters(maps, 3) == [0, 1, 2]
    assert act.choose_filters(maps, 3, most_active=True) == [1, 3, 0]
    assert act.choose_filters(maps, 10) == [0, 1, 2, 3]
    np.testing.assert_array_equal(act.normalize_map(np.array([[2.0, 4.0], [3.0, 2.0]])), [[0, 1], [0.5, 0]])
    assert not act.normalize_map(np.ones((3, 3))).any()


@pytest.mark.parametrize(("filters", "channels", "layout"), [(16, 64, (4, 4)), (10, 64, (3, 4)), (16, 3, (2, 2))])
def test_grid_has_one_tile_per_filter(tmp_path, filters, channels, layout):
    layer = act.LayerMaps(7, "block.conv", np.random.default_rng(0).random((channels, 8, 8), dtype=np.float32))
    path = tmp_path / "grid.png"
    assert act.save_filter_grid(path, layer, filters) == layout
    rows, columns = layout
    width, height = Image.open(path).size
    assert width == round(columns * act.TILE_INCHES * act.DPI)
    assert height == round((rows * act.TILE_INCHES + act.HEADER_INCHES) * act.DPI)


def test_overview_has_the_input_row_and_one_row_per_layer(tmp_path, resnet18):
    maps = act.layer_maps(resnet18, torch.rand(1, 1, 32, 32), act.select_layers(resnet18))
    path = tmp_path / "overview.png"
    rows, columns = act.save_overview(path, np.zeros((32, 32), np.uint8), maps)
    assert (rows, columns) == (len(maps) + 1, act.OVERVIEW_FILTERS + 1)
    assert Image.open(path).size[1] == round((rows * act.TILE_INCHES + act.HEADER_INCHES) * act.DPI)


def test_3d_model_shows_the_middle_depth_of_each_layer():
    model = create_model("ResNet3D-18", num_classes=3, in_chans=1)
    maps = act.layer_maps(model, torch.rand(1, 1, 4, 32, 32), act.select_layers(model))
    assert [m.name for m in maps] == ["layer1", "layer2", "layer3", "layer4"]
    first = maps[0]
    # conv1 keeps depth 4 (stride 1), the max pool halves it: layer1 has depth 2, shown at index 0
    assert first.maps.shape == (64, 8, 8) and (first.depth_index, first.depth) == (0, 2)
    assert "middle depth 1 of 2" in first.title()
    full = act.capture_activations(model, torch.rand(1, 1, 4, 32, 32), ["layer1"])["layer1"]
    assert full.shape == (1, 64, 2, 8, 8)


def test_volume_checkpoint_on_a_scan_folder(tmp_path):
    recipe = load_recipe("li2021", ["data.image_size=16", "data.channels=1"])
    model = create_model("ResNet3D-18", num_classes=3, in_chans=1)
    checkpoint = save_checkpoint(tmp_path / "model.pt", model, recipe, ["NCP", "CP", "Normal"])
    scan = tmp_path / "scan7"
    scan.mkdir()
    for number in (1, 2, 10, 3, 20):  # natural order 1, 2, 3, 10: the first depth=4 slices
        cv2.imwrite(str(scan / f"{number}.png"), np.full((16, 16), number * 10, np.uint8))
    batch, shown = act.load_model_input(scan, recipe, preprocessing_of(recipe.data))
    assert batch.shape == (1, 1, 4, 16, 16)
    np.testing.assert_allclose(batch[0, 0, :, 0, 0].numpy(), np.array([10, 20, 30, 100]) / 255.0, rtol=1e-6)
    assert shown[0, 0] == 20  # the middle (second of four) slice
    written = act.write_activation_maps(checkpoint, scan, tmp_path / "out", layers=["layer1"], filters=4)
    assert [p.name for p in written] == ["scan7_05_layer1.png", "scan7_overview.png"]
    assert all(p.is_file() for p in written)
    with pytest.raises(CovidlensError, match="takes a scan folder"):
        act.load_model_input(scan / "1.png", recipe, preprocessing_of(recipe.data))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("activations")
    data = root / "data"
    synthesize("ct-slices", data, patients=9, seed=0, size=64, slices=(3, 4))  # 6 leaves a fold too few
    recipe = load_recipe("demo", ["data.image_size=32", "train.epochs=1", "cv.folds=2", "train.threads=1"])
    run_cv(recipe, data, root / "run", show_progress=False)
    image = sorted(data.glob("COVID/*/slice_*.png"))
    image = next(p for p in image if not p.name.endswith(".mask.png"))
    return root / "run", image


def test_cli_writes_a_grid_per_layer_and_an_overview(tiny_run, tmp_path):
    run, image = tiny_run
    out = tmp_path / "maps"
    result = covidlens("activations", run, image, "--every", "4", "--filters", "9", "--fold-model", "1", "-o", out)
    assert result.returncode == 0, result.stderr
    assert "fold model 1 of 2" in result.stderr and "r00-f1.pt" in result.stderr
    grids = sorted(p.name for p in out.glob("*.png") if not p.name.endswith("_overview.png"))
    stem = image.stem
    # test_resnet has 15 convolutions: the 1st, 5th, 9th, 13th and the last
    assert len(grids) == 5 and all(name.startswith(f"{stem}_") for name in grids)
    assert grids[0] == f"{stem}_02_conv1-0.png" and grids[-1].endswith("_layer4-0-downsample-1.png")
    assert (out / f"{stem}_overview.png").is_file()
    width, height = Image.open(out / grids[0]).size
    assert (width, height) == (round(3 * act.TILE_INCHES * act.DPI), round((3 * act.TILE_INCHES + 0.45) * act.DPI))


def test_cli_one_line_error_for_a_missing_image(tiny_run, tmp_path):
    run, _ = tiny_run
    assert_one_line_error(covidlens("activations", run, tmp_path / "missing.png"), "missing.png", "no such")


def test_bad_layer_or_fold_model_is_a_user_error_before_anything_is_written(tiny_run, tmp_path):
    run, image = tiny_run
    with pytest.raises(CovidlensError, match="'layer9'"):
        act.write_activation_maps(run, image, tmp_path / "out", layers=["layer9"])
    with pytest.raises(CovidlensError, match="--fold-model 5: .* has 2 fold models, numbered 0 to 1"):
        act.write_activation_maps(run, image, tmp_path / "out", fold_model=5)
    with pytest.raises(CovidlensError, match="is one checkpoint"):
        act.write_activation_maps(run / "checkpoints" / "r00-f0.pt", image, tmp_path / "out", fold_model=1)
    with pytest.raises(CovidlensError, match="takes one image file"):
        act.write_activation_maps(run, image.parent, tmp_path / "out")
    assert not (tmp_path / "out").exists()
