from collections import Counter

import pytest
import torch
from torch import nn

from covidlens.errors import CovidlensError
from covidlens.models import MODELS, create_model
from covidlens.models.coronet import CORONet
from covidlens.models.describe import cam_layer, feature_layers, keras_style_parameter_count

# Paper 003, Fig. 14 (the Keras summary of CORONet): the non-zero "Param #" entries, in the table's order.
# Conv2D = k*k*in*out + out (all with bias), BatchNormalization = 4*C (gamma, beta, moving mean, moving var).
FIG14_PARAMS = [
    2624, 128,  # stem conv 9x9, BN
    1056, 128, 9248, 128, 4224, 4224, 512, 512,  # stage 1 convolutional block (main + shortcut)
    *[4128, 128, 9248, 128, 4224, 512] * 2,  # stage 1, 2 bottlenecks
    8256, 256, 36928, 256, 16640, 33024, 1024, 1024,  # stage 2 convolutional block
    *[16448, 256, 36928, 256, 16640, 1024] * 2,
    32896, 512, 147584, 512, 66048, 131584, 2048, 2048,  # stage 3 convolutional block
    *[65664, 512, 147584, 512, 66048, 2048] * 5,
    131328, 1024, 590080, 1024, 263168, 525312, 4096, 4096,  # stage 4 convolutional block
    *[262400, 1024, 590080, 1024, 263168, 4096] * 2,
    16778240, 4100,  # dense 1024 (16,384 flattened inputs), dense 4
]  # fmt: skip
# The sum of Fig. 14's Param # column; Keras counts BN moving mean / variance (25,792 values) in it.
FIG14_TOTAL = 22_641_156
FIG14_BN_STATISTICS = 25_792


def test_fig14_table_transcription_adds_up():
    assert len(FIG14_PARAMS) == 102 and sum(FIG14_PARAMS) == FIG14_TOTAL


def test_forward_and_backward_at_200_px_one_channel_four_classes():
    torch.manual_seed(0)
    model = create_model("CORONet", num_classes=4, in_chans=1).train()
    out = model(torch.rand(2, 1, 200, 200))
    assert out.shape == (2, 4) and torch.isfinite(out).all()
    nn.functional.cross_entropy(out, torch.tensor([0, 3])).backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_parameter_total_equals_fig14_exactly():
    with torch.device("meta"):
        model = create_model("CORONet", num_classes=4, in_chans=1)
    assert keras_style_parameter_count(model) == FIG14_TOTAL
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == FIG14_TOTAL - FIG14_BN_STATISTICS == 22_615_364
    per_layer = [
        sum(p.numel() for p in m.parameters()) + (2 * m.num_features if isinstance(m, nn.BatchNorm2d) else 0)
        for m in model.modules()
        if isinstance(m, nn.Conv2d | nn.Linear | nn.BatchNorm2d)
    ]
    assert Counter(per_layer) == Counter(FIG14_PARAMS)


def feature_shapes(model: nn.Module, x: torch.Tensor) -> dict[str, tuple[int, ...]]:
    modules, shapes = dict(model.named_modules()), {}
    hooks = [
        modules[name].register_forward_hook(lambda _m, _i, out, name=name: shapes.__setitem__(name, out.shape[1:]))
        for name in feature_layers(model)
    ]
    model(x)
    for hook in hooks:
        hook.remove()
    return shapes


def test_block_outputs_match_fig14_shapes_and_cam_is_the_last_convolution():
    with torch.device("meta"):
        model = create_model("CORONet", num_classes=4, in_chans=1)
        shapes = feature_shapes(model, torch.empty(1, 1, 200, 200))
    # Fig. 14: max_pooling2d_2 (68, 68, 32), add_19 (68, 68, 128), add_22 (34, 34, 256), add_28 (17, 17, 512),
    # add_31 (9, 9, 1024); 1 + 3 + 3 + 6 + 3 blocks.
    assert len(shapes) == 16
    assert shapes["stem"] == (32, 68, 68) and shapes["stage1.2"] == (128, 68, 68)
    assert shapes["stage2.2"] == (256, 34, 34) and shapes["stage3.5"] == (512, 17, 17)
    assert shapes["stage4.2"] == (1024, 9, 9)
    spec = MODELS.get("CORONet")
    assert (spec.family, spec.paper, spec.input_size) == ("coronet", "003", 200)
    assert cam_layer(model, spec) == "stage4.2.conv3"


@pytest.mark.parametrize(("classes", "in_chans"), [(2, 3), (3, 1), (7, 3)])
def test_any_class_count_and_three_channels(classes, in_chans):
    with torch.device("meta"):
        model = create_model("CORONet", num_classes=classes, in_chans=in_chans)
        out = model(torch.empty(5, in_chans, 200, 200))
    assert out.shape == (5, classes)
    assert model.stem[1].in_channels == in_chans


def test_dropout_is_the_papers_unless_set_and_no_pretrained_weights():
    with torch.device("meta"):
        assert create_model("CORONet", num_classes=4).dropout.p == 0.5
        assert create_model("CORONet", num_classes=4, drop_rate=0.2).dropout.p == 0.2
    with pytest.raises(CovidlensError, match="no published weights"):
        create_model("CORONet", num_classes=4, pretrained=True)


def test_another_input_size_is_refused_clearly_unless_built_for_it():
    with torch.device("meta"):
        model = create_model("CORONet", num_classes=4, in_chans=1)
        with pytest.raises(ValueError, match="built for 200x200 input"):
            model(torch.empty(1, 1, 224, 224))
        out = CORONet(num_classes=3, in_chans=1, input_size=224)(torch.empty(1, 1, 224, 224))
    assert out.shape == (1, 3)


def block_io(block: nn.Module) -> dict[str, torch.Tensor]:
    """Run one block on a random input; return its input, its output and its third BN's output."""
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        block.bn3.register_forward_hook(lambda _m, _i, out: seen.__setitem__("main", out)),
        block.register_forward_hook(lambda _m, inputs, out: seen.update(x=inputs[0], out=out)),
    ]
    with torch.no_grad():
        block(torch.randn(1, block.conv1.in_channels, 6, 6))
    for hook in hooks:
        hook.remove()
    return seen


def test_block_wiring_follows_fig14():
    """Conv block: BN -> add -> act (add_17 takes two BN outputs); bottleneck: BN -> act -> add -> act (add_18)."""
    torch.manual_seed(0)
    model = CORONet(num_classes=4, in_chans=1).eval()
    act = nn.LeakyReLU(0.3)
    conv_block, bottleneck = model.get_submodule("stage2.0"), model.get_submodule("stage2.1")
    seen = block_io(conv_block)
    with torch.no_grad():
        shortcut = conv_block.shortcut(seen["x"])
    torch.testing.assert_close(seen["out"], act(seen["main"] + shortcut))
    seen = block_io(bottleneck)
    torch.testing.assert_close(seen["out"], act(act(seen["main"]) + seen["x"]))
