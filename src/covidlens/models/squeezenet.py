"""SqueezeNet 1.0 and paper 004's light CNN built on it (Polsinelli, Cinque, Placidi 2020).

- SqueezeNet 1.0 (Iandola et al. 2016, Table 1), without bypass or with the simple bypass: identity
  skips around Fire 3, 5, 7 and 9, the modules whose input and output widths match.
- Paper 004's custom Fire module (its Fig. 2b): batch norm between the squeeze convolution and its
  activation, and ELU in place of every ReLU.
- Paper 004's proposed CNN (its Fig. 3): SqueezeNet 1.0 without bypass made of custom Fire modules; the
  last Fire module's maps are expanded x4 by a transposed convolution, concatenated in depth with the
  second Fire module's maps, mixed by a 1x1 convolution with 128 filters, and classified by a 1x1
  convolution and global average pooling, so its last convolution gives class activation maps directly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from covidlens.models.registry import register_model

PAPER_004 = "004"
# (squeeze, expand 1x1, expand 3x3) of Fire 2-9, and where SqueezeNet 1.0 max-pools (after these Fires).
FIRE_WIDTHS = [
    (16, 64, 64),
    (16, 64, 64),
    (32, 128, 128),
    (32, 128, 128),
    (48, 192, 192),
    (48, 192, 192),
    (64, 256, 256),
    (64, 256, 256),
]
POOL_AFTER = {4, 8}  # Fire numbers
# torchvision's squeezenet1_0 (the ImageNet weights paper 004 transfers): its `features` index of each of our
# layers, and its names of a Fire module's convolutions.
TORCHVISION_STEM = "features.0"
TORCHVISION_FIRES = {2: 3, 3: 4, 4: 5, 5: 7, 6: 8, 7: 9, 8: 10, 9: 12}
TORCHVISION_FIRE_CONVS = {"squeeze": "squeeze.0", "expand1x1": "expand1.0", "expand3x3": "expand3.0"}
BYPASSED = {3, 5, 7, 9}  # Fire numbers whose input is added to their output in the simple-bypass variant
ARCHITECTURE_DROPOUT = 0.5  # SqueezeNet's dropout before its classifier convolution
UPSAMPLE_CHANNELS = 64  # the paper does not give it; 64 makes the model 1.29 M parameters (paper: 1.26 M)


def _dropout(drop_rate: float | None) -> nn.Dropout:
    return nn.Dropout(ARCHITECTURE_DROPOUT if drop_rate is None else drop_rate)


class Fire(nn.Module):
    """Squeeze 1x1, then expand 1x1 and 3x3 in parallel, concatenated; custom=True adds BN and uses ELU."""

    def __init__(self, in_channels: int, squeeze: int, expand1: int, expand3: int, custom: bool = False) -> None:
        super().__init__()
        activation = nn.ELU if custom else nn.ReLU
        layers = [nn.Conv2d(in_channels, squeeze, 1)]
        layers += [nn.BatchNorm2d(squeeze)] if custom else []
        self.squeeze = nn.Sequential(*layers, activation(inplace=True))
        self.expand1 = nn.Sequential(nn.Conv2d(squeeze, expand1, 1), activation(inplace=True))
        self.expand3 = nn.Sequential(nn.Conv2d(squeeze, expand3, 3, padding=1), activation(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.squeeze(x)
        return torch.cat([self.expand1(s), self.expand3(s)], dim=1)


def _stem(in_chans: int, custom: bool) -> nn.Sequential:
    activation = nn.ELU if custom else nn.ReLU
    return nn.Sequential(
        nn.Conv2d(in_chans, 96, 7, stride=2), activation(inplace=True), nn.MaxPool2d(3, 2, ceil_mode=True)
    )


def _fires(custom: bool) -> nn.ModuleDict:
    fires, width = {}, 96
    for number, (squeeze, e1, e3) in enumerate(FIRE_WIDTHS, start=2):
        fires[f"fire{number}"] = Fire(width, squeeze, e1, e3, custom)
        width = e1 + e3
    return nn.ModuleDict(fires)


class SqueezeNet(nn.Module):
    """SqueezeNet 1.0 with optional simple bypass and optional custom Fire modules."""

    def __init__(
        self,
        num_classes: int,
        in_chans: int = 3,
        bypass: bool = False,
        custom_fire: bool = False,
        drop_rate: float | None = None,
    ) -> None:
        super().__init__()
        self.bypass = bypass
        self.stem = _stem(in_chans, custom_fire)
        self.fires = _fires(custom_fire)
        self.pool = nn.MaxPool2d(3, 2, ceil_mode=True)
        activation = nn.ELU if custom_fire else nn.ReLU
        self.classifier = nn.Sequential(_dropout(drop_rate), nn.Conv2d(512, num_classes, 1), activation(inplace=True))
        self.feature_layers = ["stem", "fires.fire4", "fires.fire8", "fires.fire9"]

    @staticmethod
    def translate_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A torchvision squeezenet1_0 state dict under this model's names (other keys unchanged)."""
        names = {f"{TORCHVISION_STEM}.{p}": f"stem.0.{p}" for p in ("weight", "bias")}
        for number, index in TORCHVISION_FIRES.items():
            for theirs, ours in TORCHVISION_FIRE_CONVS.items():
                for p in ("weight", "bias"):
                    names[f"features.{index}.{theirs}.{p}"] = f"fires.fire{number}.{ours}.{p}"
        return {names.get(key, key): value for key, value in state.items()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for name, fire in self.fires.items():
            number = int(name.removeprefix("fire"))
            x = x + fire(x) if self.bypass and number in BYPASSED else fire(x)
            if number in POOL_AFTER:
                x = self.pool(x)
        return self.classifier(x).mean(dim=(2, 3))


class LightCNN(nn.Module):
    """Paper 004's proposed CNN: custom-Fire SqueezeNet whose last maps, upsampled x4, meet Fire 3's."""

    def __init__(self, num_classes: int, in_chans: int = 3, drop_rate: float | None = None) -> None:
        super().__init__()
        self.stem = _stem(in_chans, custom=True)
        self.fires = _fires(custom=True)
        self.pool = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.upsample = nn.Sequential(nn.ConvTranspose2d(512, UPSAMPLE_CHANNELS, 4, stride=4), nn.ELU(inplace=True))
        self.mix = nn.Sequential(nn.Conv2d(128 + UPSAMPLE_CHANNELS, 128, 1), nn.ELU(inplace=True))
        self.classifier = nn.Sequential(_dropout(drop_rate), nn.Conv2d(128, num_classes, 1))
        self.feature_layers = ["stem", "fires.fire3", "fires.fire9", "upsample", "mix"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        early = None
        for name, fire in self.fires.items():
            number = int(name.removeprefix("fire"))
            x = fire(x)
            if number == 3:  # the second Fire module
                early = x
            if number in POOL_AFTER:
                x = self.pool(x)
        wide = self.upsample(x)
        if wide.shape[-2:] != early.shape[-2:]:
            # x4 of the pooled size misses the early size by the pools' rounding (52 vs 54 at 224 px)
            wide = F.interpolate(wide, size=early.shape[-2:], mode="bilinear", align_corners=False)
        fused = self.mix(torch.cat([early, wide], dim=1))
        return self.classifier(fused).mean(dim=(2, 3))


@register_model(
    "SqueezeNet1.0", family="squeezenet", paper=PAPER_004, input_size=224, description="SqueezeNet 1.0 without bypass"
)
def squeezenet(
    num_classes: int, in_chans: int = 3, pretrained: bool = False, drop_rate: float | None = None
) -> nn.Module:
    """SqueezeNet 1.0 without bypass (paper 004, experiment 1)."""
    return SqueezeNet(num_classes, in_chans, drop_rate=drop_rate)


@register_model(
    "SqueezeNet1.0-bypass",
    family="squeezenet",
    paper=PAPER_004,
    input_size=224,
    description="SqueezeNet 1.0 with simple bypass",
)
def squeezenet_bypass(
    num_classes: int, in_chans: int = 3, pretrained: bool = False, drop_rate: float | None = None
) -> nn.Module:
    """SqueezeNet 1.0 with simple bypass (paper 004, experiments 2-3)."""
    return SqueezeNet(num_classes, in_chans, bypass=True, drop_rate=drop_rate)


@register_model(
    "SqueezeNet1.0-customfire",
    family="squeezenet",
    paper=PAPER_004,
    input_size=224,
    description="SqueezeNet 1.0, paper 004's custom Fire modules (BN + ELU)",
)
def squeezenet_custom_fire(
    num_classes: int, in_chans: int = 3, pretrained: bool = False, drop_rate: float | None = None
) -> nn.Module:
    """SqueezeNet 1.0 without bypass, built of paper 004's custom Fire modules."""
    return SqueezeNet(num_classes, in_chans, custom_fire=True, drop_rate=drop_rate)


@register_model(
    "LightCNN",
    family="squeezenet",
    paper=PAPER_004,
    input_size=224,
    cam_layer="classifier.1",
    description="paper 004's proposed CNN (Fig. 3)",
)
def light_cnn(
    num_classes: int, in_chans: int = 3, pretrained: bool = False, drop_rate: float | None = None
) -> nn.Module:
    """Paper 004's proposed light CNN."""
    return LightCNN(num_classes, in_chans, drop_rate=drop_rate)
