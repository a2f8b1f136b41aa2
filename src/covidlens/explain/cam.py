"""Class activation maps for any registered model, 2D or 3D: CAM, Grad-CAM, Grad-CAM++, Smooth Grad-CAM++.

The extractors are torchcam's (hooks, d-dimensional maps); this module adds what a pipeline over many
architectures needs: a registry of methods, the target layer each model gets by default, a check that CAM's
assumption holds (the layer's maps are globally average-pooled into a linear classifier, or are themselves
the class maps averaged into the logits), binary single-logit heads, eval mode and hook removal whatever
happens, and maps upsampled to the input (bilinear in 2D, trilinear in 3D) and scaled to [0, 1] with high
meaning important.

torchcam 0.5.0's Grad-CAM++ divides a copy of its alpha coefficients (boolean indexing copies), so its
alpha is the squared gradient, and it sums A * grad^3 over positions where Chattopadhay et al.'s
Eq. 19 multiplies the third derivative at (i, j) by the sum of A. `GradCAMppExact` and
`SmoothGradCAMppExact` compute alpha as published; the smooth variant also averages the first derivative
over the noisy samples (Omeiza et al. 2019, Eq. 6-8) and builds its map from the clean input's activations,
not the last noisy sample's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchcam.methods import CAM, GradCAM, GradCAMpp, SmoothGradCAMpp
from torchcam.methods.core import _CAM

from covidlens.errors import CovidlensError
from covidlens.explain.activations import convolution_names, layer_indices, normalize_map, unknown_layer_message
from covidlens.models.describe import cam_layer
from covidlens.models.registry import MODELS
from covidlens.registry import Registry

Target = str | int | Sequence[int]  # "predicted", one class index for all inputs, or one per input


@dataclass(frozen=True)
class CamMethod:
    """A registered CAM method: its torchcam extractor and whether it needs gradients."""

    name: str
    title: str
    extractor: type[_CAM]
    gradient: bool
    description: str
    options: dict[str, Any] = field(default_factory=dict)  # extractor keyword defaults


CAM_METHODS: Registry[CamMethod] = Registry("CAM method")


def register_cam_method(
    name: str, title: str, gradient: bool, description: str, **options: Any
) -> Callable[[type[_CAM]], type[_CAM]]:
    """Class decorator: register a torchcam extractor class as CAM method `name`."""

    def add(extractor: type[_CAM]) -> type[_CAM]:
        CAM_METHODS.register(name)(CamMethod(name, title, extractor, gradient, description, dict(options)))
        return extractor

    return add


@register_cam_method(
    "cam", "CAM", gradient=False, description="Zhou et al. 2016: the classifier's weights times the pooled maps"
)
class HeadCAM(CAM):
    """torchcam's CAM, also for class-map heads (a class convolution averaged into the logits: LightCNN).

    `fc_layer=None` means the target layer's channels are the class maps themselves, so class c's map is
    channel c (one-hot weights).
    """

    def __init__(self, model: nn.Module, target_layer: str, fc_layer: str | None, num_classes: int) -> None:
        if fc_layer is not None:
            super().__init__(model, target_layer, fc_layer)
            return
        _CAM.__init__(self, model, target_layer)
        self._fc_weights = torch.eye(num_classes, device=next(model.parameters()).device)


register_cam_method("gradcam", "Grad-CAM", gradient=True, description="Selvaraju et al. 2017")(GradCAM)


def gradcampp_weights(activations: Tensor, grad: Tensor, grad2: Tensor, grad3: Tensor, eps: float = 1e-8) -> Tensor:
    """Grad-CAM++ channel weights (N, K): sum over positions of alpha * ReLU(dY/dA), alpha as in Eq. 19.

    alpha_k(i, j) = g2(i, j) / (2 g2(i, j) + sum_ab A_k(a, b) * g3(i, j)), 0 where g2 = 0; with the
    exponential-score trick g2 and g3 are the squared and cubed first derivatives (or their noisy means).
    """
    spatial = tuple(range(2, activations.ndim))
    denominator = 2 * grad2 + activations.sum(dim=spatial, keepdim=True) * grad3
    safe = torch.where(denominator.abs() > eps, denominator, torch.full_like(denominator, eps))
    alpha = torch.where(grad2 > 0, grad2 / safe, torch.zeros_like(grad2))
    return (alpha * torch.relu(grad)).flatten(2).sum(-1)


@register_cam_method("gradcampp", "Grad-CAM++", gradient=True, description="Chattopadhay et al. 2018")
class GradCAMppExact(GradCAMpp):
    """torchcam's Grad-CAM++ hooks with the published alpha coefficients."""

    def _get_weights(
        self, class_idx: int | list[int], scores: Tensor, eps: float = 1e-8, **kwargs: Any
    ) -> list[Tensor]:
        self._backprop(scores, class_idx, **kwargs)
        return [
            gradcampp_weights(act, grad, grad.pow(2), grad.pow(3), eps)
            for act, grad in zip(self.hook_a, self.hook_g, strict=True)
        ]


@register_cam_method(
    "smoothgradcampp",
    "Smooth Grad-CAM++",
    gradient=True,
    description="Omeiza et al. 2019 (paper 002): Grad-CAM++ on derivatives averaged over noisy inputs",
    num_samples=4,
    std=0.3,
)
class SmoothGradCAMppExact(SmoothGradCAMpp):
    """torchcam's Smooth Grad-CAM++ noise loop with the published alpha, the mean first derivative, clean maps."""

    def _compute_smoothgrad_weights(self, class_idx: int | list[int], eps: float, **kwargs: Any) -> list[Tensor]:
        clean = [act.clone() for act in self.hook_a]
        sums = [[torch.zeros_like(act) for act in clean] for _ in range(3)]  # sums of g, g^2, g^3
        for _ in range(self.num_samples):
            noisy = self._input + self._distrib.sample(self._input.size()).to(self._input.device)
            self._backprop(self.model(noisy.requires_grad_(True)), class_idx, **kwargs)
            for power, totals in enumerate(sums, start=1):
                for total, grad in zip(totals, self.hook_g, strict=True):
                    total.add_(grad.pow(power))
        self.hook_a = clean  # the map combines the clean input's activations, not the last noisy ones
        means = [[total / self.num_samples for total in totals] for totals in sums]
        return [gradcampp_weights(act, g1, g2, g3, eps) for act, g1, g2, g3 in zip(clean, *means, strict=True)]


@dataclass
class Explanation:
    """Maps for a batch: normalized at input resolution, raw at the layer's, with the prediction explained."""

    method: str
    layer: str
    maps: np.ndarray  # (N, *input spatial) float32 in [0, 1], high = important
    raw: np.ndarray  # (N, *layer spatial) float32, before upsampling and normalization
    probabilities: np.ndarray  # (N, classes)
    predicted: np.ndarray  # (N,) class index
    targets: np.ndarray  # (N,) class index each map explains


@dataclass(frozen=True)
class CamHead:
    """Where CAM applies: `layer`'s maps, averaged over space, feed `fc_layer` (None: they are the logits)."""

    layer: str
    fc_layer: str | None


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every module in eval mode and restore each one's own mode afterwards."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
)


@contextmanager
def no_leftover_hooks(model: nn.Module) -> Iterator[None]:
    """Remove, on exit, every hook added to the model's modules inside the block, even if a constructor failed."""
    before = {(id(m), name): set(getattr(m, name, {})) for m in model.modules() for name in HOOK_DICTS}
    try:
        yield
    finally:
        for module in model.modules():
            for name in HOOK_DICTS:
                hooks = getattr(module, name, None)
                if hooks is None:
                    continue
                for key in set(hooks) - before.get((id(module), name), set()):
                    del hooks[key]


@dataclass
class ForwardTrace:
    """What one forward pass shows about a model's layers, for choosing and checking a target layer."""

    logits: Tensor
    shapes: dict[str, tuple[int, ...] | None]  # each named module's output shape (None: not a tensor)
    spatial_means: dict[str, Tensor]  # outputs shaped like the input (N, C, ...): their mean over space
    linear_io: dict[str, tuple[Tensor, Tensor]]  # nn.Linear modules: (flattened input, output)
    # every dict is in the order the modules returned; a module called twice keeps its last call

    def cam_heads(self) -> list[CamHead]:
        """Every layer CAM applies to: its spatial mean is the input of the linear layer giving the logits
        (global average pooling, then a linear classifier), or is the logits (class maps), in return order."""
        heads = [name for name, mean in self.spatial_means.items() if _same(mean, self.logits)]
        found = {name: CamHead(name, None) for name in heads}
        feeding = [name for name, (_, out) in self.linear_io.items() if _same(out, self.logits)]
        if feeding:
            pooled = self.linear_io[feeding[-1]][0]
            for name, mean in self.spatial_means.items():
                if _same(mean, pooled):
                    found[name] = CamHead(name, feeding[-1])
        return [found[name] for name in self.spatial_means if name in found]


def trace_forward(model: nn.Module, inputs: Tensor) -> ForwardTrace:
    """Run `inputs` through the model once (eval mode, no gradients) and record its layers' outputs."""
    trace = ForwardTrace(torch.empty(0), {}, {}, {})

    def record(name: str, module: nn.Module) -> Callable[..., None]:
        def hook(_module: nn.Module, args: tuple, output: object) -> None:
            is_tensor = isinstance(output, Tensor)
            for table in (trace.shapes, trace.spatial_means, trace.linear_io):
                table.pop(name, None)
            trace.shapes[name] = tuple(output.shape) if is_tensor else None
            if is_tensor and isinstance(module, nn.Linear):
                trace.linear_io[name] = (args[0].detach().flatten(1).clone(), output.detach().clone())
            if is_tensor and output.ndim == inputs.ndim:
                trace.spatial_means[name] = output.detach().flatten(2).mean(-1)

        return hook

    handles = [m.register_forward_hook(record(n, m)) for n, m in model.named_modules() if n]
    try:
        with eval_mode(model), torch.no_grad():
            trace.logits = model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    return trace


def find_cam_head(model: nn.Module, inputs: Tensor, layer: str | None = None) -> CamHead | None:
    """The layer CAM can explain (`layer` if it qualifies, see `ForwardTrace.cam_heads`), or None.

    Without a given layer the last qualifying layer whose maps are larger than 1 x 1 is taken (a pooling
    layer's own 1 x 1 output qualifies trivially and localizes nothing).
    """
    return _pick_head(trace_forward(model, inputs), layer)


def _pick_head(trace: ForwardTrace, layer: str | None = None) -> CamHead | None:
    heads = trace.cam_heads()
    if layer is not None:
        return next((head for head in heads if head.layer == layer), None)
    extended = [head for head in heads if _has_extent(trace.shapes.get(head.layer))]
    return extended[-1] if extended else None


def _has_extent(shape: tuple[int, ...] | None) -> bool:
    return shape is not None and any(side > 1 for side in shape[2:])


def _same(a: Tensor, b: Tensor) -> bool:
    if a.shape != b.shape:
        return False
    scale = float(b.abs().max()) if b.numel() else 0.0
    return bool(torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-5 * (1.0 + scale)))


class Explainer:
    """Explains batches with one method at one layer of one model; the layer is resolved on the first batch."""

    def __init__(
        self,
        model: nn.Module,
        method: str,
        layer: str | None = None,
        model_name: str | None = None,
        seed: int = 0,
        **options: Any,
    ) -> None:
        self.model = model
        self.method = CAM_METHODS.get(method)
        self.model_name = model_name or type(model).__name__
        self.seed = seed
        self.options = {**self.method.options, **options}
        if not convolution_names(model):
            raise CovidlensError(
                f"model {self.model_name!r} has no convolution, so no spatial feature maps for a class activation "
                "map; CAM methods explain CNNs (the classical LinearSVM / MLP weigh raw pixels: their weights are "
                "their explanation)"
            )
        if layer is not None and layer not in layer_indices(model):
            raise CovidlensError(unknown_layer_message(model, layer, layer_indices(model)))
        self.requested_layer = layer
        self.layer: str | None = None
        self.head: CamHead | None = None
        self.num_outputs = 0

    def resolve_layer(self, inputs: Tensor) -> str:
        """The target layer: the requested one, checked, or the model's default for this method."""
        if self.layer is not None:
            return self.layer
        trace = trace_forward(self.model, inputs[:1])
        self.num_outputs = int(trace.logits.shape[-1])
        if self.method.name == "cam":
            self.head = self._cam_head(trace)
            layer = self.head.layer
        else:
            layer = self.requested_layer or self.default_layer(trace)
        self._check_feature_maps(trace.shapes.get(layer), layer, inputs)
        self.layer = layer
        return layer

    def _declared_layer(self) -> str | None:
        spec = MODELS.get(self.model_name) if self.model_name in MODELS else None
        return cam_layer(self.model, spec) if spec is not None and spec.cam_layer else None

    def default_layer(self, trace: ForwardTrace) -> str:
        """The CAM layer the model's registration declares; else the maps its classifier globally pools
        (a ResNet's `layer4`, an EfficientNet's `bn2`); else its last convolution whose maps are larger
        than 1 x 1 at the traced input.

        Not simply the last convolution: in a residual block that is often the shortcut's 1 x 1 projection,
        and timm's VGG ends in fc6 / fc7 convolutions on 1 x 1 maps.
        """
        declared = self._declared_layer()
        if declared is not None:
            return declared
        head = _pick_head(trace)
        if head is not None:
            return head.layer
        convolutions = convolution_names(self.model)
        extended = [name for name in convolutions if _has_extent(trace.shapes.get(name))]
        return extended[-1] if extended else convolutions[-1]

    def _cam_head(self, trace: ForwardTrace) -> CamHead:
        wanted = self.requested_layer
        declared = self._declared_layer() if wanted is None else None
        head = _pick_head(trace, wanted or declared) if (wanted or declared) else None
        if head is None and wanted is None:
            head = _pick_head(trace)
        if head is not None:
            return head
        fallback = _pick_head(trace) if wanted is not None else None
        if fallback is not None:
            raise CovidlensError(
                f"CAM needs the maps that are globally average-pooled into {self.model_name!r}'s classifier; layer "
                f"{wanted!r} is not it (use --layer {fallback.layer}, or --method gradcam for any layer)"
            )
        raise CovidlensError(
            f"CAM is undefined for model {self.model_name!r} at this input size: no layer's maps larger than 1x1 are "
            "globally average-pooled into a linear classifier (nor are class maps averaged into the logits); use "
            "--method gradcam, gradcampp or smoothgradcampp"
        )

    def _check_feature_maps(self, shape: tuple[int, ...] | None, layer: str, inputs: Tensor) -> None:
        dims = inputs.ndim - 2
        examples = ", ".join(convolution_names(self.model)[-4:][::-1])
        if shape is None or len(shape) != inputs.ndim:
            raise CovidlensError(
                f"layer {layer!r} of {self.model_name!r} gives {'no tensor' if shape is None else f'shape {shape}'}, "
                f"not {dims}D feature maps; choose a convolution or block, e.g. {examples}"
            )
        if not _has_extent(shape):
            remedy = (
                "CAM can use no other layer: use --method gradcam, or a larger input"
                if self.method.name == "cam"
                else f"choose an earlier layer (e.g. {examples}) or a larger input"
            )
            raise CovidlensError(
                f"layer {layer!r} of {self.model_name!r} gives {'x'.join(map(str, shape[2:]))} maps at this input "
                f"size ({'x'.join(map(str, inputs.shape[2:]))}): nothing to localize; {remedy}"
            )

    def explain(self, inputs: Tensor, target: Target = "predicted") -> Explanation:
        """Maps of `inputs` (N, C, [D,] H, W) for the predicted class, one class index, or one index per input."""
        if inputs.ndim not in (4, 5):
            raise CovidlensError(f"inputs must be (N, C, H, W) or (N, C, D, H, W), not shape {tuple(inputs.shape)}")
        layer = self.resolve_layer(inputs)
        method = self.method
        kwargs = dict(self.options)
        if method.name == "cam":
            kwargs.update(fc_layer=self.head.fc_layer, num_classes=self.num_outputs)
        devices = [inputs.device.index or 0] if inputs.device.type == "cuda" else []
        with (
            eval_mode(self.model),
            no_leftover_hooks(self.model),
            torch.random.fork_rng(devices=devices),
            torch.set_grad_enabled(method.gradient),
        ):
            torch.manual_seed(self.seed)
            with method.extractor(self.model, layer, **kwargs) as extractor:
                x = inputs.detach().clone().requires_grad_(method.gradient)
                scores = self.model(x)
                probabilities, predicted = _probabilities(scores.detach())
                targets = _target_indices(target, predicted, probabilities.shape[1])
                raw = _class_maps(extractor, scores, targets, method.gradient)
        maps = upsample_maps(raw, tuple(inputs.shape[2:]))
        return Explanation(
            method=method.name,
            layer=layer,
            maps=maps,
            raw=raw.cpu().numpy().astype(np.float32),
            probabilities=probabilities.cpu().numpy(),
            predicted=predicted.cpu().numpy(),
            targets=targets,
        )


def explain_batch(
    model: nn.Module,
    inputs: Tensor,
    method: str,
    layer: str | None = None,
    target: Target = "predicted",
    model_name: str | None = None,
) -> Explanation:
    """Class activation maps of `inputs` by `method` ("cam", "gradcam", ...) at `layer` (default: the model's)."""
    return Explainer(model, method, layer, model_name).explain(inputs, target)


def _probabilities(scores: Tensor) -> tuple[Tensor, Tensor]:
    """Softmax over class logits; a single logit is a sigmoid head: (1 - p, p)."""
    if scores.ndim != 2:
        raise CovidlensError(f"model outputs shape {tuple(scores.shape)}, not (batch, classes) scores")
    if scores.shape[1] == 1:
        positive = torch.sigmoid(scores.float())
        probabilities = torch.cat([1 - positive, positive], dim=1)
    else:
        probabilities = torch.softmax(scores.float(), dim=1)
    return probabilities, probabilities.argmax(dim=1)


def _target_indices(target: Target, predicted: Tensor, classes: int) -> np.ndarray:
    if isinstance(target, str):
        if target != "predicted":
            raise CovidlensError(f"target {target!r}: give 'predicted' or a class index")
        indices = predicted.cpu().numpy()
    elif isinstance(target, int | np.integer):
        indices = np.full(len(predicted), int(target))
    else:
        indices = np.asarray(target, dtype=int)
        if indices.shape != (len(predicted),):
            raise CovidlensError(f"{len(indices)} targets for {len(predicted)} inputs")
    bad = [int(i) for i in indices if not 0 <= i < classes]
    if bad:
        raise CovidlensError(f"target class {bad[0]} does not exist: the model has {classes} classes (0-{classes - 1})")
    return indices.astype(int)


def _class_maps(extractor: _CAM, scores: Tensor, targets: np.ndarray, gradient: bool) -> Tensor:
    """Un-normalized maps (N, *layer spatial) for each input's target class."""
    if scores.shape[1] > 1:
        return extractor(class_idx=targets.tolist(), scores=scores, normalized=False)[0].detach().float()
    # A single-logit (sigmoid) head: class 1 is the logit, class 0 its negation.
    signs = torch.tensor(np.where(targets == 1, 1.0, -1.0), dtype=scores.dtype, device=scores.device)
    if gradient:
        objectives = [(lambda out, s=s: s * out[0]) for s in signs]
        return extractor(scores=scores, targets=objectives, normalized=False)[0].detach().float()
    maps = extractor(class_idx=[0] * len(targets), scores=scores, normalized=False)[0].detach().float()
    return maps * signs.view(-1, *([1] * (maps.ndim - 1)))


def upsample_maps(raw: Tensor, size: tuple[int, ...]) -> np.ndarray:
    """Maps (N, *layer spatial) resized to `size` (bilinear 2D, trilinear 3D), each scaled to [0, 1]."""
    mode = {2: "bilinear", 3: "trilinear"}.get(len(size))
    if mode is None:
        raise ValueError(f"maps must be 2D or 3D, not {len(size)}D")
    resized = F.interpolate(raw.float().unsqueeze(1), size=size, mode=mode, align_corners=False).squeeze(1)
    resized = torch.nan_to_num(resized, nan=0.0, posinf=0.0, neginf=0.0)
    return np.stack([normalize_map(m) for m in resized.cpu().numpy()]) if len(resized) else resized.numpy()
