"""Paper 002's volume classifiers: 3D ResNet-18/34/50 and (2+1)D ResNet-18/34 (its Table 3).

The layout is Hara et al.'s 3D ResNet (ICCV workshops 2017, the paper's reference 26; CVPR 2018): conv1
7x7x7 with 64 filters, stride 1 in depth and 2 in height/width; a 3x3x3 max pool with stride 2; four stages
of basic (18, 34) or bottleneck (50) blocks with 64/128/256/512 filters, the first convolution of stages 3-5
striding by 2 in all three axes; global average pooling and one fully connected layer.

Shortcuts: basic blocks use identity shortcuts, zero-padded in channels where a stage widens (He et al.'s
option A, "to avoid increasing the number of parameters", paper 002 Section 2.4). The bottleneck net uses
identity shortcuts except where the dimensions grow, which are 1x1x1 projections with batch norm (option B,
paper 002 Section 2.5 and Hara et al.'s ResNet-50).

(2+1)D nets replace every t x d x d convolution, conv1 included, by a 1 x d x d spatial convolution, batch
norm, ReLU and a t x 1 x 1 temporal convolution, with Tran et al.'s intermediate width
M = floor(t d^2 N_in N_out / (d^2 N_in + t N_out)), so each factorised layer has about the 3D layer's
parameters. The spatial part takes the height/width stride, the temporal part the depth stride.

Any depth D >= 1 works: every stride-2 layer pads (3x3x3 kernels by 1, the 1x1x1 projection needs none), so
each one maps a depth of D to ceil(D / 2) >= 1, and the head pools adaptively to 1x1x1. A volume of depth 4
(paper 002's best) leaves stage 2 with depth 2 and stages 3-5 with depth 1.

Written here rather than wrapping a library: MONAI's `ResNet` has this layout (given conv1_t_stride=(1, 2, 2)),
but its option-A shortcut concatenates `out.data`, which cuts the gradient through every widening
shortcut; torchvision's `r2plus1d_18` has a different stem (1x7x7 to 45 channels, then 3x1x1, no max pool)
and projection shortcuts. Module names follow Hara et al.'s and MONAI's (conv1, bn1, layer1-4, fc, and
conv1/bn1/conv2/bn2/downsample inside blocks), so their 3D ResNet state dicts load by name.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from covidlens.errors import CovidlensError
from covidlens.models.registry import register_model

PAPER_002 = "002"
STAGE_WIDTHS = (64, 128, 256, 512)
STEM_WIDTH = 64
# Native input for `covidlens models` statistics: Hara et al.'s 16 x 112 x 112 clips (paper 002 feeds
# depth-4 volumes; any depth >= 1 works).
INPUT_SIZE = 112
INPUT_DEPTH = 16

Triple = tuple[int, int, int]
# conv(in_channels, out_channels, kernel, stride, padding) -> module without bias
ConvFactory = Callable[[int, int, Triple, Triple, Triple], nn.Module]


def conv3d(in_channels: int, out_channels: int, kernel: Triple, stride: Triple, padding: Triple) -> nn.Conv3d:
    """A plain 3D convolution without bias (batch norm follows)."""
    return nn.Conv3d(in_channels, out_channels, kernel, stride=stride, padding=padding, bias=False)


def tran_mid_channels(in_channels: int, out_channels: int, kernel: Triple) -> int:
    """Tran et al.'s (2+1)D width M = floor(t d^2 N_in N_out / (d^2 N_in + t N_out)) for a t x d x d kernel."""
    t, kh, kw = kernel
    spatial = kh * kw
    return (t * spatial * in_channels * out_channels) // (spatial * in_channels + t * out_channels)


class Conv2Plus1d(nn.Sequential):
    """A t x d x d convolution factorised into 1 x d x d, batch norm, ReLU, t x 1 x 1 (Tran et al., CVPR 2018)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: Triple, stride: Triple, padding: Triple) -> None:
        mid = tran_mid_channels(in_channels, out_channels, kernel)
        super().__init__(
            OrderedDict(
                spatial=nn.Conv3d(
                    in_channels, mid, (1, kernel[1], kernel[2]), stride=(1, stride[1], stride[2]),
                    padding=(0, padding[1], padding[2]), bias=False,
                ),
                bn=nn.BatchNorm3d(mid),
                relu=nn.ReLU(inplace=True),
                temporal=nn.Conv3d(
                    mid, out_channels, (kernel[0], 1, 1), stride=(stride[0], 1, 1), padding=(padding[0], 0, 0),
                    bias=False,
                ),
            )
        )


class ZeroPadShortcut(nn.Module):
    """He et al.'s option-A shortcut: subsample by `stride`, then append zero channels up to `out_channels`."""

    def __init__(self, out_channels: int, stride: int) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stride
        # Same sampling grid as a stride-s convolution with "same" padding: ceil(n / s) positions per axis.
        x = x[:, :, ::s, ::s, ::s]
        return F.pad(x, (0, 0, 0, 0, 0, 0, 0, self.out_channels - x.shape[1]))


class BasicBlock(nn.Module):
    """Two 3x3x3 convolutions (each with batch norm and ReLU) around a residual shortcut."""

    expansion = 1

    def __init__(
        self, in_channels: int, width: int, stride: int, shortcut: nn.Module | None, conv: ConvFactory
    ) -> None:
        super().__init__()
        self.conv1 = conv(in_channels, width, (3, 3, 3), (stride,) * 3, (1, 1, 1))
        self.bn1 = nn.BatchNorm3d(width)
        self.conv2 = conv(width, width, (3, 3, 3), (1, 1, 1), (1, 1, 1))
        self.bn2 = nn.BatchNorm3d(width)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + residual)


class Bottleneck(nn.Module):
    """1x1x1 reduce, 3x3x3 (carrying the stride), 1x1x1 expand by 4, around a residual shortcut."""

    expansion = 4

    def __init__(
        self, in_channels: int, width: int, stride: int, shortcut: nn.Module | None, conv: ConvFactory
    ) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = conv(in_channels, width, (1, 1, 1), (1, 1, 1), (0, 0, 0))
        self.bn1 = nn.BatchNorm3d(width)
        self.conv2 = conv(width, width, (3, 3, 3), (stride,) * 3, (1, 1, 1))
        self.bn2 = nn.BatchNorm3d(width)
        self.conv3 = conv(width, out_channels, (1, 1, 1), (1, 1, 1), (0, 0, 0))
        self.bn3 = nn.BatchNorm3d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + residual)


class ResNet3d(nn.Module):
    """Hara et al.'s 3D ResNet on (B, C, D, H, W) volumes, with 3D or (2+1)D convolutions."""

    feature_layers = ["layer1", "layer2", "layer3", "layer4"]

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        blocks_per_stage: Sequence[int],
        num_classes: int,
        in_chans: int = 3,
        shortcut_type: str = "A",
        conv: ConvFactory = conv3d,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if shortcut_type not in ("A", "B"):
            raise ValueError(f"shortcut_type must be 'A' or 'B', not {shortcut_type!r}")
        self.shortcut_type = shortcut_type
        self.conv1 = conv(in_chans, STEM_WIDTH, (7, 7, 7), (1, 2, 2), (3, 3, 3))
        self.bn1 = nn.BatchNorm3d(STEM_WIDTH)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d(kernel_size=3, stride=2, padding=1)
        channels = STEM_WIDTH
        stages = []
        for index, (width, count) in enumerate(zip(STAGE_WIDTHS, blocks_per_stage, strict=True)):
            stride = 1 if index == 0 else 2
            stage, channels = self._make_stage(block, channels, width, count, stride, conv)
            stages.append(stage)
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.dropout = nn.Dropout(drop_rate)
        self.fc = nn.Linear(channels, num_classes)
        self.num_features = channels
        self._init_weights()

    def _make_stage(
        self,
        block: type[BasicBlock | Bottleneck],
        in_channels: int,
        width: int,
        count: int,
        stride: int,
        conv: ConvFactory,
    ) -> tuple[nn.Sequential, int]:
        out_channels = width * block.expansion
        shortcut: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            if self.shortcut_type == "A":
                shortcut = ZeroPadShortcut(out_channels, stride)
            else:
                shortcut = nn.Sequential(
                    nn.Conv3d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                    nn.BatchNorm3d(out_channels),
                )
        layers = [block(in_channels, width, stride, shortcut, conv)]
        layers += [block(out_channels, width, 1, None, conv) for _ in range(count - 1)]
        return nn.Sequential(*layers), out_channels

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm3d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stage-5 feature maps, (B, num_features, D', H', W')."""
        if x.ndim != 5:
            raise ValueError(f"expected a (batch, channels, depth, height, width) volume, got shape {tuple(x.shape)}")
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits, (B, num_classes)."""
        features = self.avgpool(self.forward_features(x)).flatten(1)
        return self.fc(self.dropout(features))


# registered name -> (block, blocks per stage, shortcut type, convolution, family)
PAPER_002_MODELS: dict[str, tuple[type[BasicBlock | Bottleneck], tuple[int, ...], str, ConvFactory, str]] = {
    "ResNet3D-18": (BasicBlock, (2, 2, 2, 2), "A", conv3d, "resnet3d"),
    "ResNet3D-34": (BasicBlock, (3, 4, 6, 3), "A", conv3d, "resnet3d"),
    "ResNet3D-50": (Bottleneck, (3, 4, 6, 3), "B", conv3d, "resnet3d"),
    "R(2+1)D-18": (BasicBlock, (2, 2, 2, 2), "A", Conv2Plus1d, "r2plus1d"),
    "R(2+1)D-34": (BasicBlock, (3, 4, 6, 3), "A", Conv2Plus1d, "r2plus1d"),
}


def resnet3d_builder(name: str) -> Callable[..., nn.Module]:
    """A builder for one of paper 002's networks with covidlens' builder signature."""
    block, counts, shortcut_type, conv, _ = PAPER_002_MODELS[name]

    def build(
        num_classes: int, in_chans: int = 3, pretrained: bool = False, drop_rate: float | None = None
    ) -> nn.Module:
        if pretrained:
            raise CovidlensError(
                f"no downloadable pretrained weights for {name!r}; set model.pretrained=false, or "
                "model.weights=PATH to a local state dict with Hara et al.'s / MONAI's layer names"
            )
        # None means the architecture's default: Hara et al.'s nets have no dropout.
        return ResNet3d(block, counts, num_classes, in_chans, shortcut_type, conv, drop_rate or 0.0)

    build.__doc__ = f"Paper 002's {name}."
    return build


def _last_convolution_name(name: str) -> str:
    block, counts, _, conv, _ = PAPER_002_MODELS[name]
    last = f"layer4.{counts[-1] - 1}.conv{3 if block is Bottleneck else 2}"
    return f"{last}.temporal" if conv is Conv2Plus1d else last


for _name, (_block, _counts, _shortcut, _conv, _family) in PAPER_002_MODELS.items():
    register_model(
        _name,
        family=_family,
        paper=PAPER_002,
        input_size=INPUT_SIZE,
        input_depth=INPUT_DEPTH,
        spatial_dims=3,
        cam_layer=_last_convolution_name(_name),
        description=(
            f"{_block.__name__.lower()} blocks {'-'.join(map(str, _counts))}, shortcut {_shortcut}"
            + (", (2+1)D convolutions" if _conv is Conv2Plus1d else "")
        ),
    )(resnet3d_builder(_name))
