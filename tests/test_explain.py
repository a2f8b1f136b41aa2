"""Class activation maps: hand-computed CAM / Grad-CAM / Grad-CAM++, every model family in 2D and 3D, heads,
hooks and modes, heatmap statistics with known answers, the randomization check, rendering and the CLI."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from scipy import stats
from torch import nn

from cli_helpers import assert_one_line_error, covidlens
from covidlens.config import load_recipe
from covidlens.data.preprocess import Preprocessing
from covidlens.data.synth import synthesize
from covidlens.data.xray_prep import Threshold
from covidlens.errors import CovidlensError
from covidlens.explain import heatmap_stats as hs
from covidlens.explain.cam import CAM_METHODS, Explainer, explain_batch, find_cam_head
from covidlens.explain.pipeline import (
    ExplainItem,
    explain_paths,
    load_item,
    load_lesion_mask,
    parse_target,
    pointing_tolerance,
    unique_names,
)
from covidlens.explain.render import draw_overlay, save_montage, save_overlay
from covidlens.models import create_model
from covidlens.train.checkpoint import save_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class PooledNet(nn.Module):
    """conv -> ReLU (the CAM layer, full resolution) -> global average pool -> linear."""

    def __init__(self, classes: int = 3, channels: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, channels, 3, padding=1)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.act(self.conv(x))).flatten(1))


class DeepNet(nn.Module):
    """A non-linear path after the target layer `conv2`, so Grad-CAM's weights differ from CAM's."""

    def __init__(self, dims: int = 2, classes: int = 3) -> None:
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        pool = nn.AdaptiveAvgPool2d if dims == 2 else nn.AdaptiveAvgPool3d
        self.conv1 = conv(1, 4, 3, padding=1)
        self.conv2 = conv(4, 6, 3, padding=1, stride=2)
        self.mix = conv(6, 5, 1)
        self.squash = nn.Tanh()
        self.pool = pool(1)
        self.fc = nn.Linear(5, classes)

    def after_conv2(self, a: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.squash(self.mix(torch.relu(a)))).flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.after_conv2(self.conv2(torch.relu(self.conv1(x))))


def hand_normalize(values: torch.Tensor) -> np.ndarray:
    values = values.double().numpy()
    return (values - values.min()) / (values.max() - values.min())


def no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks for m in model.modules())


# --- acceptance 1: CAM and Grad-CAM against hand computations -------------------------------------------------------


def test_cam_equals_the_classic_formula():
    torch.manual_seed(0)
    net = PooledNet()
    x = torch.rand(2, 1, 9, 9)
    explained = explain_batch(net, x, "cam", target=[2, 0])
    assert explained.layer == "act" and find_cam_head(net, x).fc_layer == "fc"
    features = torch.relu(net.conv(x)).detach()
    for i, target in enumerate([2, 0]):
        by_hand = torch.einsum("k,khw->hw", net.fc.weight[target].detach(), features[i])  # sum_k w_ck A_k
        np.testing.assert_allclose(explained.raw[i], by_hand.numpy(), rtol=1e-5, atol=1e-6)
        # the layer keeps the input's 9x9 grid, so upsampling is the identity and only the scaling remains
        np.testing.assert_allclose(explained.maps[i], hand_normalize(by_hand), atol=1e-5)
    assert explained.targets.tolist() == [2, 0]


def test_gradcam_matches_the_hand_computation():
    torch.manual_seed(1)
    net = DeepNet()
    x = torch.rand(2, 1, 12, 12)
    explained = explain_batch(net, x, "gradcam", layer="conv2", target="predicted")
    activations = net.conv2(torch.relu(net.conv1(x))).detach().requires_grad_(True)
    scores = net.after_conv2(activations)
    assert explained.predicted.tolist() == scores.argmax(1).tolist()
    for i, target in enumerate(explained.targets):
        (gradient,) = torch.autograd.grad(scores[i, target], activations, retain_graph=True)
        weights = gradient[i].mean(dim=(1, 2))  # spatial mean of dY_c / dA_k
        by_hand = torch.relu(torch.einsum("k,khw->hw", weights, activations[i].detach()))
        np.testing.assert_allclose(explained.raw[i], by_hand.numpy(), rtol=1e-4, atol=1e-7)
    assert explained.raw.shape == (2, 6, 6) and explained.maps.shape == (2, 12, 12)


def test_gradcampp_uses_the_published_alpha():
    torch.manual_seed(2)
    net = DeepNet()
    x = torch.rand(1, 1, 12, 12)
    explained = explain_batch(net, x, "gradcampp", layer="conv2", target=1)
    activations = net.conv2(torch.relu(net.conv1(x))).detach().requires_grad_(True)
    (g,) = torch.autograd.grad(net.after_conv2(activations)[0, 1], activations)
    a = activations.detach()[0]
    g = g[0]
    # Chattopadhay et al. Eq. 19: alpha = g^2 / (2 g^2 + sum_ab A_ab * g^3), zero where the gradient is zero
    alpha = torch.where(g != 0, g**2 / (2 * g**2 + a.sum(dim=(1, 2), keepdim=True) * g**3), torch.zeros_like(g))
    weights = (alpha * torch.relu(g)).sum(dim=(1, 2))
    by_hand = torch.relu(torch.einsum("k,khw->hw", weights, a))
    np.testing.assert_allclose(explained.raw[0], by_hand.numpy(), rtol=1e-4, atol=1e-9)


def test_smooth_gradcampp_without_noise_is_gradcampp():
    torch.manual_seed(3)
    net = DeepNet()
    x = torch.rand(2, 1, 12, 12)
    plain = explain_batch(net, x, "gradcampp", layer="conv2")
    smooth = Explainer(net, "smoothgradcampp", "conv2", std=1e-9, num_samples=3).explain(x)
    np.testing.assert_allclose(smooth.raw, plain.raw, rtol=1e-4, atol=1e-9)
    noisy_a = Explainer(net, "smoothgradcampp", "conv2", seed=5, std=0.5).explain(x)
    noisy_b = Explainer(net, "smoothgradcampp", "conv2", seed=5, std=0.5).explain(x)
    np.testing.assert_array_equal(noisy_a.maps, noisy_b.maps)  # the seed fixes the noise
    assert not np.allclose(noisy_a.raw, plain.raw)


# --- heads, modes, hooks, layers --------------------------------------------------------------------------------------


def test_single_logit_head_explains_both_classes():
    torch.manual_seed(4)
    net = PooledNet(classes=1)
    x = torch.rand(2, 1, 8, 8)
    cam = explain_batch(net, x, "cam", target=[1, 0])
    logit = net(x).detach()[:, 0]
    np.testing.assert_allclose(cam.probabilities[:, 1], torch.sigmoid(logit).numpy(), rtol=1e-6)
    np.testing.assert_allclose(cam.probabilities.sum(1), 1.0, rtol=1e-6)
    features = torch.relu(net.conv(x)).detach()
    positive = torch.einsum("k,nkhw->nhw", net.fc.weight[0].detach(), features)
    np.testing.assert_allclose(cam.raw[0], positive[0].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cam.raw[1], -positive[1].numpy(), rtol=1e-5, atol=1e-6)  # class 0: the negated logit
    grad = explain_batch(net, x, "gradcam", layer="conv", target=0)
    activations = net.conv(x).detach().requires_grad_(True)
    negated = -net.fc(net.pool(torch.relu(activations)).flatten(1))[:, 0]  # class 0's score
    (gradient,) = torch.autograd.grad(negated.sum(), activations)
    by_hand = torch.relu(torch.einsum("nk,nkhw->nhw", gradient.mean(dim=(2, 3)), activations.detach()))
    np.testing.assert_allclose(grad.raw, by_hand.numpy(), rtol=1e-4, atol=1e-8)


def test_two_class_head_and_predicted_target():
    torch.manual_seed(5)
    net = PooledNet(classes=2)
    x = torch.rand(3, 1, 8, 8)
    explained = explain_batch(net, x, "gradcam")
    assert explained.targets.tolist() == explained.predicted.tolist() == net(x).argmax(1).tolist()
    np.testing.assert_allclose(explained.probabilities, torch.softmax(net(x), 1).detach().numpy(), rtol=1e-5)


def test_eval_mode_during_and_mode_and_hooks_restored_after_errors():
    torch.manual_seed(6)
    net = DeepNet().train()
    net.dropout_probe = nn.Dropout(0.9)  # unused in forward; its mode must come back too
    seen = []
    net.conv2.register_forward_pre_hook(lambda module, args: seen.append(module.training))
    hooks_before = dict(net.conv2._forward_pre_hooks)
    x = torch.rand(1, 1, 12, 12)
    explain_batch(net, x, "gradcam", layer="conv2")
    assert seen and not any(seen)  # every forward pass ran in eval mode
    assert net.training and net.conv2.training and net.dropout_probe.training
    with pytest.raises(CovidlensError, match="target class 7 does not exist"):
        explain_batch(net, x, "gradcampp", layer="conv2", target=7)  # fails inside the extractor's block
    assert net.training and dict(net.conv2._forward_pre_hooks) == hooks_before
    net.conv2._forward_pre_hooks.clear()
    assert no_hooks(net)


def test_bad_layers_are_named_with_valid_ones():
    net = create_model("resnet18", num_classes=3, in_chans=1)
    x = torch.rand(1, 1, 64, 64)
    with pytest.raises(CovidlensError, match=r"no layer 'layer9'.*layer4"):
        explain_batch(net, x, "gradcam", layer="layer9")
    with pytest.raises(CovidlensError, match=r"'fc' of .* gives shape \(1, 3\), not 2D feature maps"):
        explain_batch(net, x, "gradcam", layer="fc")
    with pytest.raises(CovidlensError, match=r"layer 'layer3' is not it \(use --layer layer4"):
        explain_batch(net, x, "cam", layer="layer3")
    with pytest.raises(CovidlensError, match="unknown CAM method 'gradcan'. Did you mean gradcam"):
        explain_batch(net, x, "gradcan")
    assert no_hooks(net)


def test_cam_refuses_a_classifier_that_is_not_global_pooling():
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 8 * 8, 3))
    with pytest.raises(CovidlensError, match=r"CAM is undefined for model 'Flat'.*use --method gradcam"):
        explain_batch(net, torch.rand(1, 1, 8, 8), "cam", model_name="Flat")
    maps = explain_batch(net, torch.rand(1, 1, 8, 8), "gradcam", layer="1").maps  # Grad-CAM needs no pooling
    assert maps.shape == (1, 8, 8)


def test_registry_lists_the_four_methods():
    assert CAM_METHODS.names() == ["cam", "gradcam", "gradcampp", "smoothgradcampp"]
    assert [CAM_METHODS.get(n).gradient for n in CAM_METHODS.names()] == [False, True, True, True]


# --- acceptance 2: every model family, 2D and 3D --------------------------------------------------------------------

FAMILIES = [  # (model, input side, depth, CAM: None = works, else the error it gives)
    ("EfficientNetB0", 64, None, None),
    ("DenseNet121", 64, None, None),
    ("ResNet50", 64, None, None),
    ("Xception", 64, None, None),
    ("VGG16", 64, None, "CAM is undefined"),  # timm's VGG pools fc7's 1x1 maps; Grad-CAM takes features.28
    ("SqueezeNet1.0", 64, None, None),
    ("LightCNN", 64, None, None),
    ("CORONet", 200, None, "CAM is undefined"),  # a dense layer over 9x9x1024 features, no global pooling
    ("resnet18", 64, None, None),  # any timm name
    ("ResNet3D-18", 64, 4, None),
    ("R(2+1)D-18", 64, 4, None),
]


def check_maps(explained, shape):
    assert explained.maps.shape == shape
    assert np.isfinite(explained.maps).all() and explained.maps.min() >= 0 and explained.maps.max() <= 1
    assert explained.raw.ndim == len(shape) and np.isfinite(explained.raw).all()


@pytest.mark.parametrize(("name", "side", "depth", "cam_error"), FAMILIES, ids=[f[0] for f in FAMILIES])
def test_every_model_family(name, side, depth, cam_error):
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, in_chans=1)
    shape = (side, side) if depth is None else (depth, side, side)
    x = torch.rand(1, 1, *shape)
    explainer = Explainer(model, "gradcam", model_name=name)
    check_maps(explainer.explain(x), (1, *shape))
    if name == "VGG16":
        assert explainer.layer == "features.28"
    if depth is not None:
        assert explainer.layer.startswith("layer4.1.conv2")  # the declared layer: paper 002's last convolution
    if cam_error is None:
        check_maps(explain_batch(model, x, "cam", model_name=name), (1, *shape))
    else:
        with pytest.raises(CovidlensError, match=cam_error):
            explain_batch(model, x, "cam", model_name=name)
    assert no_hooks(model)


@pytest.mark.parametrize("name", ["LinearSVM", "MLP"])
def test_classical_models_are_refused(name):
    model = create_model(name, num_classes=3, in_chans=1)
    for method in CAM_METHODS.names():
        with pytest.raises(CovidlensError, match=f"model '{name}' has no convolution"):
            explain_batch(model, torch.rand(1, 1, 88, 88), method, model_name=name)


@pytest.mark.parametrize("method", ["cam", "gradcam", "gradcampp", "smoothgradcampp"])
@pytest.mark.parametrize("dims", [2, 3])
def test_every_method_in_2d_and_3d(method, dims):
    torch.manual_seed(7)
    net = DeepNet(dims=dims)
    shape = (10, 10) if dims == 2 else (4, 10, 10)
    explained = explain_batch(net, torch.rand(2, 1, *shape), method)
    check_maps(explained, (2, *shape))
    assert explained.raw.shape[1:] == ((5, 5) if dims == 2 else (2, 5, 5))  # the stride-2 layer's grid


# --- heatmap statistics with known answers ----------------------------------------------------------------------------


def test_base_mask_is_above_mean_plus_one_sd():
    heatmap = np.array([0, 0, 0, 0, 0, 0, 0, 0, 10, 10], dtype=float)  # mean 2, population SD 4: threshold 6
    np.testing.assert_array_equal(hs.base_mask(heatmap), [False] * 8 + [True] * 2)
    other = np.linspace(0, 0.9, 10)
    assert hs.mean_intensity_in_mask(other, hs.base_mask(heatmap)) == pytest.approx((0.8 + 0.9) / 2)
    assert np.isnan(hs.mean_intensity_in_mask(other, np.zeros(10, bool)))


def test_base_mask_intensity_table_and_summary():
    base = np.array([[[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 1.0]]])  # masks: top-left, bottom-right
    other = np.array([[[0.5, 1.0], [1.0, 1.0]], [[1.0, 1.0], [1.0, 0.25]]])
    table = hs.base_mask_intensities({"B5": base, "B0": other}, "B5", ["a.png", "b.png"], "gradcam")
    assert table["mask_pixels"].tolist() == [1, 1, 1, 1]
    assert table.set_index(["image", "model"])["mean_intensity"].to_dict() == {
        ("a.png", "B5"): 1.0, ("a.png", "B0"): 0.5, ("b.png", "B5"): 1.0, ("b.png", "B0"): 0.25,
    }
    summary = hs.summarize_intensities(table).set_index("model")
    assert summary.loc["B0", "mean"] == pytest.approx(0.375)
    assert summary.loc["B0", "sd"] == pytest.approx(np.std([0.5, 0.25], ddof=1))
    assert summary.loc["B5", "mean ± SD"] == "1.000 ± 0.000"
    with pytest.raises(CovidlensError, match="base model 'B7' has no maps"):
        hs.base_mask_intensities({"B5": base}, "B7", ["a", "b"], "gradcam")


def test_lesion_energy_share():
    heatmap = np.ones((4, 4))
    lesion = np.zeros((4, 4), bool)
    lesion[:2, :2] = True
    assert hs.lesion_energy_share(heatmap, lesion) == pytest.approx(4 / 16)  # a uniform map: the lesion's area
    heatmap[:2, :2] = 3.0
    assert hs.lesion_energy_share(heatmap, lesion) == pytest.approx(12 / 24)
    assert np.isnan(hs.lesion_energy_share(np.zeros((4, 4)), lesion))
    with pytest.raises(ValueError, match="shape"):
        hs.lesion_energy_share(np.ones((3, 3)), lesion)


def test_pointing_game_with_tolerance_in_2d_and_3d():
    heatmap = np.zeros((8, 8))
    heatmap[0, 0] = 1.0
    lesion = np.zeros((8, 8), bool)
    lesion[0, 3] = True  # 3 px from the peak
    assert hs.pointing_game_hit(heatmap, lesion, tolerance_px=3)
    assert not hs.pointing_game_hit(heatmap, lesion, tolerance_px=2.9)
    assert not hs.pointing_game_hit(np.full((8, 8), 0.5), lesion, tolerance_px=100)  # a flat map points nowhere
    volume, lesion3 = np.zeros((3, 8, 8)), np.zeros((3, 8, 8), bool)
    volume[2, 4, 4], lesion3[0, 4, 4] = 1.0, True  # 2 slices away
    assert hs.pointing_game_hit(volume, lesion3, 2) and not hs.pointing_game_hit(volume, lesion3, 1)
    with pytest.raises(ValueError, match="empty"):
        hs.pointing_game_hit(heatmap, np.zeros((8, 8), bool))


def test_rank_correlation_is_spearman():
    rng = np.random.default_rng(0)
    a = rng.random((6, 6))
    assert hs.rank_correlation(a, a**3) == pytest.approx(1.0)  # any monotone transform
    assert hs.rank_correlation(a, -a) == pytest.approx(-1.0)
    b = rng.random((6, 6))
    assert hs.rank_correlation(a, b) == pytest.approx(stats.spearmanr(a.ravel(), b.ravel()).statistic)
    assert np.isnan(hs.rank_correlation(a, np.zeros((6, 6))))


def test_randomized_model_reinitializes_every_layer_reproducibly():
    torch.manual_seed(8)
    model = create_model("test_resnet", num_classes=3, in_chans=1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)  # "trained": far from any initialization
    original = {k: v.clone() for k, v in model.state_dict().items()}
    first, second, other = hs.randomized_model(model, 0), hs.randomized_model(model, 0), hs.randomized_model(model, 1)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, original[key])  # the original is untouched
    for name, p in first.named_parameters():
        assert not torch.equal(p, dict(model.named_parameters())[name]), name
        torch.testing.assert_close(p, dict(second.named_parameters())[name])
    conv = next(n for n, _ in first.named_parameters() if n.endswith("conv.weight") or n.endswith("conv1.0.weight"))
    assert not torch.equal(dict(first.named_parameters())[conv], dict(other.named_parameters())[conv])


def blob_images(n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """16x16 noise; class 1 has a bright 4x4 square somewhere. Returns images, labels, the squares' masks."""
    images = rng.normal(0.3, 0.1, (n, 1, 16, 16)).astype(np.float32)
    labels = rng.integers(0, 2, n)
    masks = np.zeros((n, 16, 16), bool)
    for i in np.flatnonzero(labels):
        r, c = rng.integers(1, 11, 2)
        images[i, 0, r : r + 4, c : c + 4] += 0.8
        masks[i, r : r + 4, c : c + 4] = True
    return torch.from_numpy(images), torch.from_numpy(labels), masks


def test_randomization_check_on_a_trained_model():
    torch.manual_seed(9)
    rng = np.random.default_rng(9)
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2),
    )
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(60):
        images, labels, _ = blob_images(32, rng)
        optimizer.zero_grad()
        nn.functional.cross_entropy(net(images), labels).backward()
        optimizer.step()
    images, labels, masks = blob_images(40, rng)
    assert (net(images).argmax(1) == labels).float().mean() > 0.9  # it learned the task
    keep = labels.numpy() == 1
    trained = explain_batch(net, images[keep], "gradcam", layer="3", target=1)
    randomized = explain_batch(hs.randomized_model(net, 0), images[keep], "gradcam", layer="3", target=1)
    lesions = masks[keep]
    pairs = [list(zip(e.maps, lesions, strict=True)) for e in (trained, randomized)]
    share = [np.nanmean([hs.lesion_energy_share(m, k) for m, k in pair]) for pair in pairs]
    hits = np.mean([hs.pointing_game_hit(m, k, 1) for m, k in pairs[0]])
    correlation = np.nanmean([hs.rank_correlation(a, b) for a, b in zip(trained.maps, randomized.maps, strict=True)])
    assert share[0] > 5 * lesions.mean() and share[0] > 2 * share[1]  # trained maps concentrate on the squares
    assert hits >= 0.8
    assert correlation < 0.9  # the maps depend on the learned weights


# --- rendering ------------------------------------------------------------------------------------------------------


def test_overlay_colours_follow_the_heatmap():
    figure = Figure(figsize=(2, 2), dpi=50)
    ax = figure.add_axes([0, 0, 1, 1])
    heatmap = np.zeros((4, 4))
    heatmap[:, :2] = 1.0  # hot left half
    draw_overlay(ax, np.zeros((40, 40), np.uint8), heatmap, alpha=1.0)
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    pixels = np.asarray(canvas.buffer_rgba())[..., :3].astype(int)
    left, right = pixels[40:60, 5:30].reshape(-1, 3).mean(0), pixels[40:60, 70:95].reshape(-1, 3).mean(0)
    assert left[0] > 2 * left[2] and right[2] > 2 * right[0]  # jet: red where important, blue where not


def test_overlay_and_montage_files(tmp_path):
    image = np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1))
    outline = np.zeros((64, 64), bool)
    outline[20:30, 20:30] = True
    single = save_overlay(tmp_path / "one.png", image, np.random.default_rng(0).random((8, 8)), "title", outline)
    montage = save_montage(tmp_path / "vol.png", np.stack([image] * 4), np.random.default_rng(1).random((4, 8, 8)), "t")
    with Image.open(single) as one, Image.open(montage) as many:
        assert one.size == (682, 682)  # 6.2 in at 110 dpi: legible at a glance
        assert many.size[0] > 2 * one.size[0] * 0.9 and many.size[1] < one.size[1]  # four tiles side by side


# --- the pipeline and the CLI -------------------------------------------------------------------------------------


def test_target_parsing_and_unique_names():
    classes = ["COVID", "Healthy", "Others"]
    assert parse_target("predicted", classes) == "predicted"
    assert parse_target("healthy", classes) == 1 and parse_target("2", classes) == 2
    with pytest.raises(CovidlensError, match="--target 3: not 'predicted'"):
        parse_target("3", classes)
    assert unique_names(["a", "b", "a", "a"]) == ["a", "b", "a-2", "a-3"]


@pytest.mark.parametrize("method", ["square", "A", "B", "C", "D"])
def test_lesion_mask_is_padded_stretched_or_cropped_with_its_image(tmp_path, method):
    image = np.zeros((60, 100), np.uint8)  # wide: A pads above and below, C crops rows, D crops the sides
    image[20:35, 55:80] = 255
    cv2.imwrite(str(tmp_path / "x.png"), image)
    cv2.imwrite(str(tmp_path / "x.mask.png"), image)  # the lesion is the bright rectangle
    threshold = None if method == "square" else Threshold("max", width=80, height=40, size=80)
    prep = Preprocessing(32, resize=method, threshold=threshold)
    item = ExplainItem(tmp_path / "x.png", "x", [tmp_path / "x.png"])
    for shown in (prep, prep.enlarged(384)):  # the model's input, and the overlays' larger copy of it
        pixels, mask = load_item(item, shown), load_lesion_mask(item, shown)
        assert pixels.shape == mask.shape == shown.shape
        bright = pixels >= 128
        assert mask.any() and (mask & bright).sum() / (mask | bright).sum() > 0.95
    assert max(prep.enlarged(384).shape) == 384 and prep.enlarged(16) == prep
    if method == "A":
        assert not mask[:40].any() and not mask[-40:].any()  # 100 x 60 fits 384 x 230: 77 rows of padding each


def test_pointing_tolerance_scales_with_the_longer_side():
    assert pointing_tolerance((224, 224)) == hs.POINTING_TOLERANCE_PX
    assert pointing_tolerance((48, 93)) == pointing_tolerance((93, 48)) == pytest.approx(15 * 93 / 224)


def test_cli_writes_overlays_maps_table_and_evaluation(tiny_run, tmp_path):
    patient = next((tiny_run / "data" / "COVID").iterdir())
    images = sorted(p for p in patient.glob("*.png") if not p.name.endswith(".mask.png"))
    out = tmp_path / "out"
    result = covidlens("explain", tiny_run / "run", patient, "-o", out, "--evaluate", "--method", "gradcampp")
    assert result.returncode == 0, result.stderr
    assert "fold model 0 of 2 (r00-f0.pt)" in result.stderr
    table = pd.read_csv(out / "explanations.csv")
    assert list(table.columns[:6]) == ["path", "output", "predicted", "probability", "target", "target_probability"]
    assert sorted(table["path"]) == sorted(map(str, images)) and set(table["method"]) == {"gradcampp"}
    assert set(table["layer"]) == {"layer4"} and (table["target"] == table["predicted"]).all()
    for name in table["output"]:
        heatmap = np.load(out / f"{name}.npy")
        assert heatmap.shape == (64, 64) and heatmap.dtype == np.float32 and 0 <= heatmap.min() <= heatmap.max() <= 1
        with Image.open(out / f"{name}.png") as png:
            assert png.format == "PNG"
    evaluation = pd.read_csv(out / "evaluation.csv")
    lesioned = [p for p in images if p.with_name(p.stem + ".mask.png").exists()]
    assert sorted(set(evaluation["path"])) == sorted(map(str, lesioned))
    assert evaluation.groupby("model").size().to_dict() == {"randomized": len(lesioned), "trained": len(lesioned)}
    assert evaluation["lesion_fraction"].between(0, 1).all() and evaluation["pointing_hit"].isin([0, 1]).all()
    summary = json.loads((out / "evaluation.json").read_text())["summary"]
    assert [row["model"] for row in summary] == ["trained", "randomized"]
    assert "pointing hits" in result.stdout and "randomized" in result.stdout


def test_cli_one_line_errors(tiny_run, tmp_path):
    image = next((tiny_run / "data" / "Healthy").rglob("slice_000.png"))
    result = covidlens("explain", tiny_run / "run", image, "--layer", "layer9.conv", "-o", tmp_path / "o")
    assert_one_line_error(result, "no layer 'layer9.conv'", "layer4")
    assert not (tmp_path / "o").exists()  # nothing written before the layer is checked


def test_run_fold_model_choice_and_bad_options(tiny_run, tmp_path):
    image = next((tiny_run / "data" / "Healthy").rglob("slice_000.png"))
    result = explain_paths(tiny_run / "run", [image], tmp_path / "o", method="cam", fold_model=1, show_progress=False)
    assert result.checkpoint.name == "r00-f1.pt" and result.layer == "layer4"
    with pytest.raises(CovidlensError, match="--fold-model 2: .* has 2 fold models"):
        explain_paths(tiny_run / "run", [image], tmp_path / "p", fold_model=2)
    with pytest.raises(CovidlensError, match="--target Sick"):
        explain_paths(tiny_run / "run", [image], tmp_path / "p", target="Sick")


def test_volume_checkpoint_on_scan_folders(tmp_path):
    data = tmp_path / "volumes"
    synthesize("ct-volumes", data, patients=3, seed=0, size=64, slices=(5, 6))
    recipe = load_recipe("li2021", ["data.image_size=64", "data.depth=4", "data.channels=1"])
    torch.manual_seed(0)
    model = create_model(recipe.model.name, num_classes=3, in_chans=1)
    save_checkpoint(tmp_path / "vol.pt", model, recipe, ["CP", "NCP", "Normal"])
    scan = next(p for p in sorted(data.rglob("*_s1")) if p.is_dir() and "NCP" in p.parts)
    result = explain_paths(tmp_path / "vol.pt", [scan], tmp_path / "out", method="cam", start=1, evaluate=True,
                           show_progress=False)
    name = result.explanations["output"].item()
    assert np.load(tmp_path / "out" / f"{name}.npy").shape == (4, 64, 64)
    assert sorted(p.name for p in (tmp_path / "out" / name).iterdir()) == [
        "00_0001.png", "01_0002.png", "02_0003.png", "03_0004.png"  # slices 1-4: --start 1
    ]
    assert (tmp_path / "out" / f"{name}.png").is_file() and result.layer == "layer4"
    assert set(result.evaluation["model"]) == {"trained", "randomized"}
    with pytest.raises(CovidlensError, match="--start 9, but the scan has"):
        explain_paths(tmp_path / "vol.pt", [scan], tmp_path / "x", start=9)
