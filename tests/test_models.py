import pytest
import torch

from covidlens.errors import CovidlensError
from covidlens.models import create_model
from covidlens.models.registry import load_weights


@pytest.mark.parametrize(
    ("name", "in_chans", "classes"),
    [("efficientnet_b0", 1, 3), ("resnet18", 3, 2), ("mobilenetv3_small_050", 1, 5)],
)
def test_any_timm_name_with_channels_and_classes(name, in_chans, classes):
    model = create_model(name, num_classes=classes, in_chans=in_chans).eval()
    with torch.no_grad():
        out = model(torch.rand(2, in_chans, 64, 64))
    assert out.shape == (2, classes)


def test_unknown_model_suggests_names():
    with pytest.raises(CovidlensError, match="Did you mean efficientnet_b"):
        create_model("efficientnet_bo", num_classes=3)


def test_local_weights_load_and_skip_a_different_head(tmp_path):
    source = create_model("resnet18", num_classes=1000, in_chans=3)
    path = tmp_path / "w.pt"
    torch.save(source.state_dict(), path)
    target = create_model("resnet18", num_classes=3, in_chans=3, weights=path)
    assert torch.equal(target.conv1.weight, source.conv1.weight)
    report = load_weights(create_model("resnet18", num_classes=3), path)
    assert report.mismatched == ["fc.bias", "fc.weight"] and not report.missing and not report.unexpected
    assert report.loaded == len(source.state_dict()) - 2
    assert "2 shape-mismatched (fc.bias, fc.weight)" in report.summary()
    assert target.fc.weight.shape == (3, 512)
    assert sum(p.numel() for p in target.parameters()) < sum(p.numel() for p in source.parameters())


def test_bad_weights_files(tmp_path):
    model = create_model("resnet18", num_classes=3)
    with pytest.raises(CovidlensError, match="not found"):
        load_weights(model, tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_text("junk")
    with pytest.raises(CovidlensError, match="not a readable PyTorch weights file"):
        load_weights(model, junk)
    other = tmp_path / "other.pt"
    torch.save({"x.weight": torch.zeros(2)}, other)
    with pytest.raises(CovidlensError, match="no tensor matches"):
        load_weights(model, other)
