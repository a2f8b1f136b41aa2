"""CORONet, paper 003's residual CNN (Krivonos 2020), layer for layer as its Keras summary (Fig. 14).

What the table fixes (the Param # column decides bias / no bias and every width):
- input 200x200x1, ZeroPadding2D(3) -> 206, Conv2D 32 9x9 "same" with bias (2,624), BN, LeakyReLU(0.3),
  MaxPooling2D 3x3 with Keras' default stride = pool size (206 -> 68);
- four stages, each a convolutional block then identity ("Bottleneck") blocks: widths (32, 128), (64, 256),
  (128, 512), (256, 1024); 2, 2, 5 and 2 identity blocks; the first 1x1 convolution of stages 2-4 and their
  shortcut convolution have stride 2 (68 -> 34 -> 17 -> 9); every convolution has a bias;
- convolutional block: 1x1 -> BN -> act, 3x3 -> BN -> act, 1x1 -> BN; shortcut 1x1 -> BN; add; act;
- identity block: 1x1 -> BN -> act, 3x3 -> BN -> act, 1x1 -> BN -> act (an activation *before* the add:
  leaky_re_lu_7 feeds add_18); add the block input; act;
- AveragePooling2D 9 -> 4, flatten (16,384), Dense 1024, LeakyReLU, Dropout 0.5, Dense 4.

The table does not give the average pool's window: 2x2 with stride 2 (Keras' default) is taken; 3x3 with
stride 2 would give 4x4 too. Keras counts BN moving mean / variance as parameters, so the table's total
(22,641,156) equals this model's trainable parameters plus its BN running statistics.
"""

from __future__ import annotations

import torch
from torch import nn

from covidlens.errors import CovidlensError
from covidlens.models.registry import register_model

PAPER_003 = "003"
INPUT_SIZE = 200  # Fig. 14: input (200, 200, 1)
LEAK = 0.3  # III.C: "All instances of leaky RELU in this paper use a leak constant of 0.3"
STEM_PADDING = 3  # Fig. 14: zero padding 200 -> 206
STEM_FILTERS, STEM_KERNEL, STEM_POOL = 32, 9, 3  # III.C: 32 filters, 9x9 kernel, 3x3 max pool
# (bottleneck width, output channels, stride, identity blocks after the convolutional block), from Fig. 14
STAGES: tuple[tuple[int, int, int, int], ...] = ((32, 128, 1, 2), (64, 256, 2, 2), (128, 512, 2, 5), (256, 1024, 2, 2))
HEAD_POOL = 2  # not in the table: Keras' default AveragePooling2D window, which gives its 9 -> 4
DENSE_UNITS = 1024  # Fig. 14: dense_3
DROPOUT = 0.5  # III.C: "a Dropout layer disconnected 50% of the weights"


def _act() -> nn.LeakyReLU:
    return nn.LeakyReLU(LEAK)


class ConvBlock(nn.Module):
    """Convolutional block: 1x1 (stride) -> 3x3 -> 1x1, with a 1x1 convolution + BN on the shortcut."""

    def __init__(self, in_channels: int, width: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 1, stride=stride)
        self.bn1 = nn.BatchNorm2d(width)
        self.act1 = _act()
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(width)
        self.act2 = _act()
        self.conv3 = nn.Conv2d(width, out_channels, 1)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, stride=stride), nn.BatchNorm2d(out_channels)
        )
        self.act = _act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.bn1(self.conv1(x)))
        y = self.act2(self.bn2(self.conv2(y)))
        return self.act(self.bn3(self.conv3(y)) + self.shortcut(x))


class IdentityBlock(nn.Module):
    """The paper's "Bottleneck" block: 1x1 -> 3x3 -> 1x1, each with BN and leaky ReLU, plus the input."""

    def __init__(self, channels: int, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, width, 1)
        self.bn1 = nn.BatchNorm2d(width)
        self.act1 = _act()
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(width)
        self.act2 = _act()
        self.conv3 = nn.Conv2d(width, channels, 1)
        self.bn3 = nn.BatchNorm2d(channels)
        self.act3 = _act()
        self.act = _act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.bn1(self.conv1(x)))
        y = self.act2(self.bn2(self.conv2(y)))
        return self.act(self.act3(self.bn3(self.conv3(y))) + x)


def feature_side(input_size: int) -> int:
    """Side of the pooled map that CORONet flattens, for a square input of `input_size` pixels."""
    side = (input_size + 2 * STEM_PADDING - STEM_POOL) // STEM_POOL + 1
    for _, _, stride, _ in STAGES:
        side = (side - 1) // stride + 1
    return (side - HEAD_POOL) // HEAD_POOL + 1


class CORONet(nn.Module):
    """Paper 003's CORONet; `input_size` fixes the flattened width of its first dense layer (200 in the paper)."""

    def __init__(
        self, num_classes: int = 4, in_chans: int = 1, input_size: int = INPUT_SIZE, drop_rate: float = DROPOUT
    ) -> None:
        super().__init__()
        self.input_size = input_size
        self.stem = nn.Sequential(
            nn.ZeroPad2d(STEM_PADDING),
            nn.Conv2d(in_chans, STEM_FILTERS, STEM_KERNEL, padding=STEM_KERNEL // 2),
            nn.BatchNorm2d(STEM_FILTERS),
            _act(),
            nn.MaxPool2d(STEM_POOL),
        )
        channels = STEM_FILTERS
        self.feature_layers = ["stem"]
        for index, (width, out_channels, stride, identities) in enumerate(STAGES, start=1):
            blocks = [ConvBlock(channels, width, out_channels, stride)]
            blocks += [IdentityBlock(out_channels, width) for _ in range(identities)]
            self.add_module(f"stage{index}", nn.Sequential(*blocks))
            self.feature_layers += [f"stage{index}.{block}" for block in range(len(blocks))]
            channels = out_channels
        side = feature_side(input_size)
        if side < 1:
            raise CovidlensError(f"CORONet cannot be built for {input_size} px input; its native size is {INPUT_SIZE}")
        self.pool = nn.AvgPool2d(HEAD_POOL)
        self.fc = nn.Linear(channels * side * side, DENSE_UNITS)
        self.fc_act = _act()
        self.dropout = nn.Dropout(drop_rate)
        self.classifier = nn.Linear(DENSE_UNITS, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last block's feature maps (B, 1024, 9, 9 at 200 px)."""
        x = self.stem(x)
        return self.stage4(self.stage3(self.stage2(self.stage1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (the paper's softmax is applied by the loss and at prediction)."""
        flat = self.pool(self.forward_features(x)).flatten(1)
        if flat.shape[1] != self.fc.in_features:
            raise ValueError(
                f"CORONet built for {self.input_size}x{self.input_size} input got {tuple(x.shape[-2:])}: "
                f"its dense layer takes {self.fc.in_features} features, not {flat.shape[1]}"
            )
        return self.classifier(self.dropout(self.fc_act(self.fc(flat))))


@register_model(
    "CORONet",
    family="coronet",
    paper=PAPER_003,
    input_size=INPUT_SIZE,
    description="paper 003's residual CNN (Fig. 14), leaky ReLU 0.3",
)
def coronet(num_classes: int, in_chans: int = 3, pretrained: bool = False, drop_rate: float | None = None) -> nn.Module:
    """CORONet at 200 px; drop_rate None keeps the paper's dropout of 0.5."""
    if pretrained:
        raise CovidlensError("CORONet has no published weights; set model.pretrained=false (or model.weights=FILE)")
    return CORONet(num_classes, in_chans, INPUT_SIZE, DROPOUT if drop_rate is None else drop_rate)
