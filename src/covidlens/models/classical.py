"""Paper 003's two classical classifiers over flattened pixels (Krivonos 2020, Sections III.A-B).

Both take (B, C, H, W) batches, flatten them, and give one score per class, so they train and predict
through the same trainer as the CNNs: each brings its own `training_loss`, and prediction takes the
argmax of the softmax of its outputs (for the SVM the argmax of its raw scores, as the paper does).
Their first layer is sized for `in_chans x input_size x input_size` pixels (88 px registered); a batch
of another size is refused with a clear error rather than resampled.
"""

from __future__ import annotations

import torch
from torch import nn

from covidlens.errors import CovidlensError
from covidlens.models.registry import register_model

PAPER_003 = "003"
# III.B: Method A resizes to 88 x 88 (7,744 inputs); III.A flattens the same images and gives no other size.
INPUT_SIZE = 88
# III.A.4: "C = 0.01 and epsilon = 0.0001 were appropriate values for SVM w/ SGD".
PAPER_C = 0.01
PAPER_EPSILON = 0.0001
# III.A.4: C and epsilon were tuned with "epochs = 100"; the rule's penalty is w / epochs.
PAPER_TUNING_EPOCHS = 100
HIDDEN_UNITS = 512  # III.B: two hidden layers of "a customary 512 neurons each", sigmoid


def _flatten(x: torch.Tensor, in_features: int, name: str) -> torch.Tensor:
    flat = x.flatten(1)
    if flat.shape[1] != in_features:
        raise ValueError(
            f"{name} takes {in_features} inputs per image, but a {tuple(x.shape[1:])} image has {flat.shape[1]}"
        )
    return flat


def _no_weights(name: str, pretrained: bool) -> None:
    if pretrained:
        raise CovidlensError(f"{name} has no pretrained weights; set model.pretrained=false (or model.weights=FILE)")


def _require_positive(name: str, **options: float) -> None:
    """Every option (a size, a count, a rate) must be above 0."""
    for key, value in options.items():
        if value <= 0:
            raise CovidlensError(f"model.options.{key}: {value} must be above 0 for {name}")


class OneVsAllHingeLoss(nn.Module):
    """Paper 003's SVM objective, scaled so that plain SGD with lr = 1 makes exactly its update rule.

    For an image x, each class k has a one-vs-all label y_k = +1 (its class) or -1 (any other) and a score
    s_k = w_k.x + b_k. The loss of one image is

        J = epsilon * sum_k [ |w_k|^2 / (2 epochs) + C * max(0, 1 - y_k s_k) ],

    averaged over the batch. Its gradient in w_k is epsilon * (w_k / epochs - C y_k x) when 1 - y_k s_k > 0
    and epsilon * w_k / epochs otherwise, so one SGD step with lr = 1 (momentum 0, weight decay 0) is

        w = w - epsilon * (w / epochs - C y x)   if 1 - y s > 0     (paper's Eq. 3.1)
        w = w - epsilon * w / epochs             otherwise          (Eq. 3.3)

    for every class at once. A batch of B images takes the mean of the B per-image steps (all computed at
    the same w); B = 1 is the paper's per-row loop. Readings of the text as printed:
    - the margin test "1 - y w^T x + b > 0" is read as the hinge's 1 - y (w^T x + b) > 0;
    - Eq. 3.2, "b = b - epsilon w / epochs", subtracts a vector from a scalar; the bias instead follows the
      hinge's own gradient, b = b + epsilon C y when the margin is violated, and is not penalised;
    - step 4, "epsilon = epsilon_original / epochs", is a step-size schedule: with this loss it is the
      optimiser's lr (lr = 1 / epochs gives the text read literally), so epsilon here is epsilon_original.
    The regulariser's `epochs` is the paper's training length; the SVM holds it as an attribute.
    """

    def __init__(self, svm: LinearSVM) -> None:
        super().__init__()
        self.svm = svm

    def forward(self, scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The batch mean of the per-image objective; `target` holds class indices."""
        signs = 2.0 * nn.functional.one_hot(target, scores.shape[1]).to(scores.dtype) - 1.0
        # relu's gradient is 0 at 0, so a sample exactly on the margin takes the "otherwise" branch (strict >).
        hinge = torch.relu(1.0 - signs * scores).sum(dim=1).mean()
        penalty = self.svm.linear.weight.pow(2).sum() / (2.0 * self.svm.epochs)
        return self.svm.epsilon * (penalty + self.svm.c * hinge)


class LinearSVM(nn.Module):
    """One-vs-all linear SVM over flattened pixels (paper 003, III.A), weights and bias started at zero.

    `c` (misclassification weight), `epsilon` (step size) and `epochs` (the rule's w / epochs penalty) are
    plain attributes: `make_linear_svm` sets them, and a recipe sets them as `model.options` (the registered
    builder's defaults are the paper's C, epsilon and 100 epochs; a recipe training for another number of
    epochs should set `model.options.epochs` to it).
    """

    def __init__(
        self,
        num_classes: int,
        in_features: int,
        c: float = PAPER_C,
        epsilon: float = PAPER_EPSILON,
        epochs: int = PAPER_TUNING_EPOCHS,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.c, self.epsilon, self.epochs = c, epsilon, epochs
        self.linear = nn.Linear(in_features, num_classes)
        nn.init.zeros_(self.linear.weight)  # III.A.2: "Initialize the weights w -> 0 and bias b -> 0"
        nn.init.zeros_(self.linear.bias)

    @property
    def training_loss(self) -> OneVsAllHingeLoss:
        """The paper's objective bound to this SVM's current weights (a new, stateless module each time)."""
        return OneVsAllHingeLoss(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raw one-vs-all scores w_k.x + b_k, one per class."""
        return self.linear(_flatten(x, self.in_features, "LinearSVM"))


class SoftmaxMSELoss(nn.Module):
    """Paper 003's Eq. 3.6: (1 / 2N) * sum over images of |softmax(outputs) - one_hot(target)|^2."""

    def forward(self, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Half the per-image squared error, summed over classes and averaged over the batch."""
        one_hot = nn.functional.one_hot(target, outputs.shape[1]).to(outputs.dtype)
        return 0.5 * (torch.softmax(outputs, dim=1) - one_hot).pow(2).sum(dim=1).mean()


class MLP(nn.Module):
    """Paper 003's network (III.B): flatten, two sigmoid hidden layers, a linear output read through softmax."""

    def __init__(self, num_classes: int, in_features: int, hidden: int = HIDDEN_UNITS, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.in_features = in_features
        self.hidden1 = nn.Sequential(nn.Linear(in_features, hidden), nn.Sigmoid())
        self.hidden2 = nn.Sequential(nn.Linear(hidden, hidden), nn.Sigmoid())
        self.dropout = nn.Dropout(drop_rate)  # not in the paper (rate 0 by default); here for recipes that ask
        self.output = nn.Linear(hidden, num_classes)
        self.training_loss = SoftmaxMSELoss()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits; the paper's softmax output layer is applied by the loss and at prediction."""
        h = self.hidden2(self.hidden1(_flatten(x, self.in_features, "MLP")))
        return self.output(self.dropout(h))


def make_linear_svm(
    num_classes: int,
    in_features: int,
    c: float = PAPER_C,
    epsilon: float = PAPER_EPSILON,
    epochs: int = PAPER_TUNING_EPOCHS,
) -> LinearSVM:
    """A one-vs-all linear SVM for `in_features` pixels with the given C, epsilon and regulariser epochs."""
    return LinearSVM(num_classes, in_features, c=c, epsilon=epsilon, epochs=epochs)


def make_mlp(num_classes: int, in_features: int, hidden: int = HIDDEN_UNITS, drop_rate: float = 0.0) -> MLP:
    """Paper 003's two-hidden-layer sigmoid network for `in_features` inputs."""
    return MLP(num_classes, in_features, hidden=hidden, drop_rate=drop_rate)


@register_model(
    "LinearSVM",
    family="classical",
    paper=PAPER_003,
    input_size=INPUT_SIZE,
    description="paper 003's one-vs-all linear SVM trained by SGD (C 0.01, epsilon 1e-4)",
)
def linear_svm(
    num_classes: int,
    in_chans: int = 3,
    pretrained: bool = False,
    drop_rate: float | None = None,
    c: float = PAPER_C,
    epsilon: float = PAPER_EPSILON,
    epochs: int = PAPER_TUNING_EPOCHS,
    height: int = INPUT_SIZE,
    width: int = INPUT_SIZE,
) -> nn.Module:
    """The SVM over height x width x in_chans pixels (a run passes its input size); c, epsilon, epochs are
    model.options; drop_rate does not apply."""
    _no_weights("LinearSVM", pretrained)
    _require_positive("LinearSVM", c=c, epsilon=epsilon, epochs=epochs, height=height, width=width)
    return make_linear_svm(num_classes, in_chans * height * width, c=c, epsilon=epsilon, epochs=epochs)


@register_model(
    "MLP",
    family="classical",
    paper=PAPER_003,
    input_size=INPUT_SIZE,
    description="paper 003's MLP: 2 x 512 sigmoid, softmax output, MSE loss",
)
def mlp(
    num_classes: int,
    in_chans: int = 3,
    pretrained: bool = False,
    drop_rate: float | None = None,
    hidden: int = HIDDEN_UNITS,
    height: int = INPUT_SIZE,
    width: int = INPUT_SIZE,
) -> nn.Module:
    """The MLP over height x width x in_chans pixels (a run passes its input size); hidden (model.options) units
    per layer; drop_rate (default none) drops hidden units before the output."""
    _no_weights("MLP", pretrained)
    _require_positive("MLP", hidden=hidden, height=height, width=width)
    return make_mlp(num_classes, in_chans * height * width, hidden=hidden, drop_rate=drop_rate or 0.0)
