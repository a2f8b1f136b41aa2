"""Paper 002's 3D and (2+1)D ResNets: they build, train a step on thin volumes, and have the published size."""

import pytest
import torch
from torch import nn

from covidlens.errors import CovidlensError
from covidlens.models import MODELS, create_model
from covidlens.models.describe import cam_layer, feature_layers, last_convolution, model_stats
from covidlens.models.resnet3d import ZeroPadShortcut, tran_mid_channels

RESNET3D = ["ResNet3D-18", "ResNet3D-34", "ResNet3D-50"]
R2PLUS1D = ["R(2+1)D-18", "R(2+1)D-34"]
ALL = RESNET3D + R2PLUS1D

# Hara, Kataoka & Satoh, "Can spatiotemporal 3D CNNs retrace the history of 2D CNNs and ImageNet?" (CVPR 2018),
# parameters of their 3D ResNets for Kinetics: 400 classes, 3 input channels (RGB clips). Shortcuts: type A
# (zero-padded identity) for ResNet-18/34, type B (projection where dimensions grow) for ResNet-50.
HARA_KINETICS_CLASSES = 400
HARA_PARAMETERS = {"ResNet3D-18": 33.2e6, "ResNet3D-34": 63.5e6, "ResNet3D-50": 46.4e6}
COUNTERPART_3D = {"R(2+1)D-18": "ResNet3D-18", "R(2+1)D-34": "ResNet3D-34"}
BLOCKS = {"ResNet3D-18": (2, 2, 2, 2), "ResNet3D-34": (3, 4, 6, 3), "ResNet3D-50": (3, 4, 6, 3)}


def meta_model(name: str, num_classes: int = 3, in_chans: int = 1) -> nn.Module:
    """The network without memory or initialisation, for checks that need no forward pass."""
    with torch.device("meta"):
        return create_model(name, num_classes=num_classes, in_chans=in_chans)


def parameter_count(name: str, num_classes: int = HARA_KINETICS_CLASSES, in_chans: int = 3) -> int:
    return sum(p.numel() for p in meta_model(name, num_classes, in_chans).parameters())


def closed_form_parameters(name: str, num_classes: int, in_chans: int) -> int:
    """Table 3's layers counted by hand: bias-free convolutions, 2 parameters per batch-norm channel."""
    total = 7**3 * in_chans * 64 + 2 * 64
    channels = 64
    for width, blocks in zip((64, 128, 256, 512), BLOCKS[name], strict=True):
        for index in range(blocks):
            if name == "ResNet3D-50":
                out = 4 * width
                total += channels * width + 27 * width * width + width * out + 2 * (width + width + out)
                if index == 0:  # type B: 1x1x1 projection + batch norm
                    total += channels * out + 2 * out
                channels = out
            else:  # type A shortcuts have no parameters
                total += 27 * channels * width + 27 * width * width + 4 * width
                channels = width
    return total + channels * num_classes + num_classes


def test_paper_002_networks_are_registered_as_volume_models():
    assert sorted(n for n in MODELS.names() if MODELS.get(n).paper == "002") == sorted(ALL)
    for name in ALL:
        spec = MODELS.get(name)
        assert spec.spatial_dims == 3
        assert spec.family == ("resnet3d" if name in RESNET3D else "r2plus1d")


@pytest.mark.parametrize("name", ALL)
def test_forward_and_backward_on_thin_one_channel_volumes(name):
    torch.manual_seed(0)
    for depth, num_classes in ((2, 3), (8, 2)):
        model = create_model(name, num_classes=num_classes, in_chans=1)
        out = model(torch.rand(2, 1, depth, 32, 32))
        assert out.shape == (2, num_classes) and torch.isfinite(out).all()
        nn.functional.cross_entropy(out, torch.tensor([0, 1])).backward()
        assert not [n for n, p in model.named_parameters() if p.grad is None]
        stem = model.conv1 if name in RESNET3D else model.conv1.spatial
        assert stem.weight.grad.abs().sum() > 0  # the gradient reaches the stem through every stage


@pytest.mark.parametrize("name", ["ResNet3D-18", "R(2+1)D-18"])
def test_three_channel_volumes(name):
    model = create_model(name, num_classes=3, in_chans=3).eval()
    stem = model.conv1 if name == "ResNet3D-18" else model.conv1.spatial
    assert stem.weight.shape[1] == 3
    with torch.no_grad():
        assert model(torch.rand(1, 3, 4, 32, 48)).shape == (1, 3)


@pytest.mark.parametrize("name", RESNET3D)
def test_parameter_count_matches_hara_et_al_within_two_percent(name):
    assert parameter_count(name) == pytest.approx(HARA_PARAMETERS[name], rel=0.02)


@pytest.mark.parametrize("name", RESNET3D)
@pytest.mark.parametrize(("num_classes", "in_chans"), [(400, 3), (3, 1)])
def test_parameter_count_equals_table_3_counted_by_hand(name, num_classes, in_chans):
    assert parameter_count(name, num_classes, in_chans) == closed_form_parameters(name, num_classes, in_chans)


@pytest.mark.parametrize("name", R2PLUS1D)
def test_2plus1d_net_has_about_the_parameters_of_its_3d_counterpart(name):
    ours, counterpart = parameter_count(name), parameter_count(COUNTERPART_3D[name])
    # Tran et al.'s width rounds down (fewer weights) and adds a batch norm per factorised layer (more).
    assert ours != counterpart
    assert ours == pytest.approx(counterpart, rel=0.005)


@pytest.mark.parametrize("name", R2PLUS1D)
def test_2plus1d_net_has_no_full_3d_kernel(name):
    model = meta_model(name)
    kernels = {m.kernel_size for m in model.modules() if isinstance(m, nn.Conv3d)}
    assert kernels == {(1, 7, 7), (7, 1, 1), (1, 3, 3), (3, 1, 1)}
    assert (model.conv1.spatial.stride, model.conv1.temporal.stride) == ((1, 2, 2), (1, 1, 1))
    first = model.layer2[0].conv1
    assert (first.spatial.stride, first.temporal.stride) == ((1, 2, 2), (2, 1, 1))


def test_tran_mid_channels_match_torchvision_r2plus1d():
    # torchvision's r2plus1d_18 computes each block's width with the same formula (its stem differs).
    from torchvision.models.video import r2plus1d_18

    with torch.device("meta"):
        reference = r2plus1d_18(num_classes=3)
    ours = meta_model("R(2+1)D-18")
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        theirs = getattr(reference, stage)[0].conv1[0][0].out_channels
        assert getattr(ours, stage)[0].conv1.spatial.out_channels == theirs
    assert tran_mid_channels(64, 64, (3, 3, 3)) == 144  # Tran et al.'s M for a 64 -> 64 layer
    assert tran_mid_channels(3, 64, (7, 7, 7)) == 65856 // 595


@pytest.mark.parametrize("name", ["ResNet3D-18", "R(2+1)D-18"])
def test_stem_and_stage_geometry_follow_table_3(name):
    model = create_model(name, num_classes=3, in_chans=1).eval()
    if name == "ResNet3D-18":
        assert (model.conv1.kernel_size, model.conv1.stride) == ((7, 7, 7), (1, 2, 2))
    assert (model.maxpool.kernel_size, model.maxpool.stride) == (3, 2)
    shapes = {}
    for stage in feature_layers(model):
        getattr(model, stage).register_forward_hook(lambda _m, _i, out, s=stage: shapes.__setitem__(s, out.shape))
    with torch.no_grad():
        model(torch.rand(1, 1, 4, 64, 64))
    # Depth 4 (paper 002's best): 4 after conv1, 2 after the pool, then halved with padding, never below 1.
    assert shapes == {
        "layer1": (1, 64, 2, 16, 16),
        "layer2": (1, 128, 1, 8, 8),
        "layer3": (1, 256, 1, 4, 4),
        "layer4": (1, 512, 1, 2, 2),
    }


def test_basic_nets_use_zero_padded_identity_shortcuts_and_resnet50_projections():
    for name in ("ResNet3D-18", "ResNet3D-34", "R(2+1)D-34"):
        model = meta_model(name)
        shortcuts = [m.downsample for m in model.modules() if getattr(m, "downsample", None) is not None]
        assert len(shortcuts) == 3 and all(isinstance(s, ZeroPadShortcut) for s in shortcuts)
        assert not any("downsample" in n for n, _ in model.named_parameters())
    model = meta_model("ResNet3D-50")
    projections = [m.downsample for m in model.modules() if getattr(m, "downsample", None) is not None]
    assert len(projections) == 4 and all(isinstance(p[0], nn.Conv3d) for p in projections)


def test_zero_pad_shortcut_keeps_the_gradient():
    x = torch.rand(2, 4, 3, 5, 5, requires_grad=True)
    out = ZeroPadShortcut(8, stride=2)(x)
    assert out.shape == (2, 8, 2, 3, 3)
    assert torch.equal(out[:, :4], x[:, :, ::2, ::2, ::2]) and not out[:, 4:].any()
    out.sum().backward()
    assert x.grad[:, :, ::2, ::2, ::2].eq(1).all() and x.grad.sum() == 2 * 4 * 2 * 3 * 3


@pytest.mark.parametrize("name", ALL)
def test_default_cam_layer_is_the_last_convolution_and_feature_layers_are_the_stages(name):
    model = meta_model(name)
    target = cam_layer(model, MODELS.get(name))
    assert target == last_convolution(model)
    assert target.startswith("layer4.") and isinstance(dict(model.named_modules())[target], nn.Conv3d)
    assert feature_layers(model) == ["layer1", "layer2", "layer3", "layer4"]


@pytest.mark.parametrize("name", ALL)
def test_model_stats_measure_the_network(name):
    stats = model_stats(name, num_classes=HARA_KINETICS_CLASSES)
    assert stats["parameters_m"] * 1e6 == pytest.approx(parameter_count(name))
    assert stats["gflops"] > 1


@pytest.mark.parametrize("name", ["ResNet3D-18", "ResNet3D-50"])  # basic + type A, bottleneck + type B
def test_same_function_as_monai_resnet_with_hara_settings(name):
    from monai.networks import nets as monai_nets
    block = "bottleneck" if name == "ResNet3D-50" else "basic"
    reference = monai_nets.ResNet(
        block, list(BLOCKS[name]), [64, 128, 256, 512], spatial_dims=3, n_input_channels=1, conv1_t_size=7,
        conv1_t_stride=(1, 2, 2), shortcut_type="B" if name == "ResNet3D-50" else "A", num_classes=2,
        bias_downsample=False,
    ).eval()
    model = create_model(name, num_classes=2, in_chans=1).eval()
    model.load_state_dict(reference.state_dict())  # strict: same names and shapes
    volumes = torch.rand(2, 1, 3, 40, 40)
    with torch.no_grad():
        assert torch.allclose(model(volumes), reference(volumes), atol=1e-5)


def test_dropout_and_pretrained_options():
    assert meta_model("ResNet3D-18").dropout.p == 0.0
    with torch.device("meta"):
        assert create_model("ResNet3D-18", num_classes=3, drop_rate=0.5).dropout.p == 0.5
    with pytest.raises(CovidlensError, match="weights"):
        create_model("R(2+1)D-18", num_classes=3, pretrained=True)
    with pytest.raises(ValueError, match="depth"):
        meta_model("ResNet3D-18")(torch.rand(1, 1, 32, 32, device="meta"))
