"""Every registered model builds, runs forward and backward, and names its CAM and feature layers."""

import pytest
import torch

from covidlens.models import MODELS, create_model
from covidlens.models.describe import CONVOLUTIONS, cam_layer, feature_layers

SMALL_SIDE = 96  # small enough to be quick, large enough for Inception's stem


def small_input(name: str, model: torch.nn.Module, channels: int) -> torch.Tensor:
    """A batch of 2 at a small size the model takes (its native size where it only takes that one)."""
    spec = MODELS.get(name)
    if spec.spatial_dims == 3:
        return torch.rand(2, channels, 4, 32, 32)
    for side in (SMALL_SIDE, spec.input_size):
        try:
            with torch.no_grad():
                model.eval()(torch.rand(2, channels, side, side))
            return torch.rand(2, channels, side, side)
        except (RuntimeError, ValueError):
            continue
    raise AssertionError(f"{name} takes neither {SMALL_SIDE} nor {spec.input_size} px")


@pytest.mark.parametrize("name", MODELS.names())
def test_every_registered_model_trains_a_step(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, in_chans=1)
    batch = small_input(name, model, channels=1)
    model.train()
    out = model(batch)
    assert out.shape == (2, 3)
    out.logsumexp(1).sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads), "a parameter got no gradient"
    modules = dict(model.named_modules())
    if any(isinstance(m, CONVOLUTIONS) for m in modules.values()):
        assert isinstance(modules[cam_layer(model, MODELS.get(name))], CONVOLUTIONS)
        assert all(layer in modules for layer in feature_layers(model))
