"""SqueezeNet 1.0 and paper 004's light CNN."""

import pytest
import torch
import torchvision
from torch import nn

from covidlens.models import MODELS, create_model
from covidlens.models.describe import cam_layer, feature_layers
from covidlens.models.registry import load_weights
from covidlens.models.squeezenet import Fire

# Iandola et al. 2016, Table 1: SqueezeNet 1.0 has 1,248,424 parameters (1000 classes), as torchvision's too.
SQUEEZENET_1_0_PARAMETERS = 1_248_424
# Polsinelli et al. 2020 (paper 004), Table 7: the proposed CNN has 1.26 M parameters (2 classes). The paper
# does not give the transposed convolution's width; with 64 filters ours has 1,285,378 (2.0 % more).
LIGHT_CNN_PARAMETERS = 1.26e6

PAPER_004 = ["LightCNN", "SqueezeNet1.0", "SqueezeNet1.0-bypass", "SqueezeNet1.0-customfire"]


def n_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_paper_004_models_are_registered():
    assert PAPER_004 == sorted(n for n in MODELS.names() if MODELS.get(n).paper == "004")


@pytest.mark.parametrize("name", ["SqueezeNet1.0", "SqueezeNet1.0-bypass"])
def test_squeezenet_has_the_published_parameter_count(name):
    model = create_model(name, num_classes=1000)
    assert n_parameters(model) == SQUEEZENET_1_0_PARAMETERS
    assert n_parameters(model) == n_parameters(torchvision.models.squeezenet1_0(num_classes=1000))


def test_squeezenet_without_bypass_computes_what_torchvision_computes():
    ours = create_model("SqueezeNet1.0", num_classes=10).eval()
    reference = torchvision.models.squeezenet1_0(num_classes=10).eval()
    with torch.no_grad():
        for (name, mine), theirs in zip(ours.named_parameters(), reference.parameters(), strict=True):
            assert mine.shape == theirs.shape, name
            mine.copy_(theirs)
        x = torch.rand(2, 3, 224, 224)
        torch.testing.assert_close(ours(x), reference(x))


@pytest.mark.parametrize("name", ["SqueezeNet1.0", "SqueezeNet1.0-bypass"])
def test_torchvision_imagenet_file_transfers_every_layer_but_the_head(tmp_path, name):
    reference = torchvision.models.squeezenet1_0(num_classes=1000).eval()
    weights = tmp_path / "squeezenet1_0.pth"  # the layout of torchvision's squeezenet1_0-b66bff10.pth
    torch.save(reference.state_dict(), weights)
    model = create_model(name, num_classes=2)
    report = load_weights(model, weights)
    assert (report.loaded, report.missing, report.unexpected) == (50, [], [])  # stem + 8 Fires x 3 convs
    assert report.mismatched == ["classifier.1.bias", "classifier.1.weight"]  # the 1000-class head
    torch.testing.assert_close(model.fires["fire9"].expand3[0].weight, reference.features[12].expand3x3.weight)
    torch.testing.assert_close(model.stem[0].bias, reference.features[0].bias)
    if name == "SqueezeNet1.0":  # with a 1000-class head too, it computes what torchvision computes
        full = create_model(name, num_classes=1000, weights=weights).eval()
        x = torch.rand(2, 3, 224, 224)
        with torch.no_grad():
            torch.testing.assert_close(full(x), reference(x))


def test_bypass_adds_the_input_of_fires_3_5_7_9():
    model = create_model("SqueezeNet1.0-bypass", num_classes=3).eval()
    seen = {}

    def keep(name):
        def hook(module, inputs, output):
            seen[name] = (inputs[0], output)

        return hook

    for number in range(2, 10):
        model.fires[f"fire{number}"].register_forward_hook(keep(number))
    with torch.no_grad():
        model(torch.rand(1, 3, 128, 128))
    for bypassed, following in ((3, 4), (5, 6), (7, 8)):
        fire_in, fire_out = seen[bypassed]
        torch.testing.assert_close(seen[following][0], fire_in + fire_out)
    fire_in, fire_out = seen[2]  # Fire 2 is not bypassed: Fire 3 gets its output alone
    torch.testing.assert_close(seen[3][0], fire_out)


def test_custom_fire_has_batch_norm_before_elu():
    fire = Fire(96, 16, 64, 64, custom=True)
    kinds = [type(m) for m in fire.squeeze]
    assert kinds == [nn.Conv2d, nn.BatchNorm2d, nn.ELU]
    assert not any(isinstance(m, nn.ReLU) for m in create_model("SqueezeNet1.0-customfire", 2).modules())
    extra = n_parameters(create_model("SqueezeNet1.0-customfire", 1000)) - SQUEEZENET_1_0_PARAMETERS
    assert extra == 2 * sum((16, 16, 32, 32, 48, 48, 64, 64))  # one BN scale and shift per squeeze channel


def test_light_cnn_parameters_and_class_maps():
    model = create_model("LightCNN", num_classes=2)
    assert n_parameters(model) == pytest.approx(LIGHT_CNN_PARAMETERS, rel=0.021)
    layer = cam_layer(model, MODELS.get("LightCNN"))
    modules = dict(model.named_modules())
    assert isinstance(modules[layer], nn.Conv2d) and modules[layer].out_channels == 2
    assert all(name in modules for name in feature_layers(model))


@pytest.mark.parametrize("name", PAPER_004)
@pytest.mark.parametrize("size", [96, 224, 227])
def test_forward_backward_any_size_channels_classes(name, size):
    model = create_model(name, num_classes=3, in_chans=1)
    out = model(torch.rand(2, 1, size, size))
    assert out.shape == (2, 3)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
