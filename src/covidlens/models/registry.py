"""The model registry: covidlens' own architectures by name, and any timm model name as well.

Importing `covidlens.models` fills it (see `zoo.py` for paper 000's networks).
"""

from __future__ import annotations

import difflib
import inspect
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from pydantic import TypeAdapter, ValidationError
from torch import nn

from covidlens.errors import CovidlensError
from covidlens.progress import console
from covidlens.registry import Registry


@dataclass(frozen=True)
class ModelSpec:
    """A registered architecture and what covidlens knows about it."""

    name: str
    build: Callable[..., nn.Module]  # build(num_classes=, in_chans=, pretrained=, drop_rate=, **its own options)
    family: str = ""
    paper: str = ""
    input_size: int = 224  # native input side in pixels
    spatial_dims: int = 2
    input_depth: int = 1  # native number of slices of a volume (3D models)
    cam_layer: str = ""  # module name of the default CAM target; "" means the last convolution
    description: str = ""


MODELS: Registry[ModelSpec] = Registry("model")
# Every builder takes these; a recipe sets them through these fields, never through model.options.
BUILDER_ARGUMENTS = {
    "num_classes": "data.classes",
    "in_chans": "data.channels",
    "pretrained": "model.pretrained",
    "drop_rate": "model.drop_rate",
}
ModelOptions = Mapping[str, Any]


def register_model(name: str, **info) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register a builder function under `name` with its ModelSpec fields."""

    def add(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        MODELS.register(name)(ModelSpec(name=name, build=build, **info))
        return build

    return add


def is_known_model(name: str) -> bool:
    """True for registered names and for any timm architecture name."""
    return name in MODELS or timm.is_model(name)


def check_model_name(name: str) -> None:
    """Raise CovidlensError, with close matches, unless `name` is a registered or timm model."""
    if is_known_model(name):
        return
    close = difflib.get_close_matches(name, MODELS.names() + timm.list_models(), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise CovidlensError(f"unknown model {name!r}.{hint} 'covidlens models' lists covidlens' own models")


def model_option_names(name: str) -> list[str] | None:
    """The options (model.options) a registered model's builder takes; None when any is passed on (timm)."""
    if name not in MODELS:
        return None
    parameters = inspect.signature(MODELS.get(name).build).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in parameters if p.kind in keyword and p.name not in BUILDER_ARGUMENTS]


def check_model_options(name: str, options: ModelOptions | None) -> dict[str, Any]:
    """The options checked against the builder's signature and type hints (an int given for a float becomes one).

    Registered models take exactly their builder's extra keyword arguments; a timm name (or a builder with
    **kwargs) gets them unchecked, and timm refuses what its model does not take when it is built.
    """
    options = dict(options or {})
    for key, field in BUILDER_ARGUMENTS.items():
        if key in options:
            raise CovidlensError(f"model.options.{key}: not an option; it comes from the recipe's {field}")
    accepted = model_option_names(name)
    if accepted is None or not options:
        return options
    unknown = [key for key in options if key not in accepted]
    if unknown:
        takes = f"its options are {', '.join(accepted)}" if accepted else "it takes no options"
        raise CovidlensError(f"model.options: {name} has no option {', '.join(unknown)}; {takes}")
    try:
        hints = typing.get_type_hints(MODELS.get(name).build)
    except (NameError, TypeError):  # an unresolvable annotation: leave the values to the builder
        return options
    for key, value in options.items():
        if key not in hints:
            continue
        try:
            # strict (True is no float, 2.5 no int), but a string may spell a number: YAML reads 1e-4 as text
            strict = not isinstance(value, str)
            options[key] = TypeAdapter(hints[key]).validate_python(value, strict=strict)
        except ValidationError:
            raise CovidlensError(
                f"model.options.{key}: {value!r} is not a valid {_type_name(hints[key])} for {name}"
            ) from None
    return options


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint))


def create_model(
    name: str,
    num_classes: int,
    in_chans: int = 3,
    pretrained: bool = False,
    weights: str | Path | None = None,
    drop_rate: float | None = None,
    options: ModelOptions | None = None,
    input_shape: tuple[int, int] | None = None,
) -> nn.Module:
    """Build a registered or timm model with `num_classes` outputs, `in_chans` input channels and its options.

    `input_shape` (height, width) reaches builders whose first layer depends on it (they take `height` and
    `width`, e.g. the flattening SVM and MLP) unless the options set them; other models ignore it.
    """
    check_model_name(name)
    options = check_model_options(name, options)
    if input_shape is not None and {"height", "width"} <= set(model_option_names(name) or ()):
        options = {"height": int(input_shape[0]), "width": int(input_shape[1]), **options}
    if name in MODELS:
        model = MODELS.get(name).build(
            num_classes=num_classes, in_chans=in_chans, pretrained=pretrained, drop_rate=drop_rate, **options
        )
    else:
        model = create_timm(name, num_classes, in_chans, pretrained, drop_rate, options)
    if weights:
        report = load_weights(model, weights)
        console.print(f"weights {weights}: {report.summary()}", highlight=False)
    return model


def check_model_input(
    name: str,
    num_classes: int,
    in_chans: int,
    image_size: int | tuple[int, int],
    depth: int | None = None,
    options: ModelOptions | None = None,
) -> None:
    """Feed the model (built with `options`) a dummy batch on the meta device, so an input it cannot take
    fails before any work.

    2D models get (2, C, H, W); 3D models need `depth` (data.depth) and get (2, C, D, H, W). On the
    meta device only shapes are computed: nothing is allocated and no arithmetic is done.
    """
    check_model_name(name)
    dims = MODELS.get(name).spatial_dims if name in MODELS else 2
    if dims == 3 and depth is None:
        raise CovidlensError(
            f"model {name!r} takes CT volumes (C x D x H x W); set data.depth (e.g. --set data.depth=4) "
            "to stack adjacent slices of each scan into volumes"
        )
    if dims == 2 and depth is not None:
        raise CovidlensError(
            f"model {name!r} takes 2D images, but data.depth={depth} makes volumes; choose a 3D model "
            "(covidlens models --family resnet3d) or remove data.depth"
        )
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    shape = (2, in_chans, height, width) if depth is None else (2, in_chans, depth, height, width)
    with torch.device("meta"):
        model = create_model(
            name, num_classes=num_classes, in_chans=in_chans, options=options, input_shape=(height, width)
        ).eval()
    try:
        with torch.no_grad():
            out = model(torch.empty(*shape, device="meta"))
    except (RuntimeError, AssertionError, ValueError) as exc:
        native = getattr(model, "pretrained_cfg", {}).get("input_size")
        hint = f" (its native input is {native[-1]} px)" if native else ""
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        what = f"{height}x{width}" if depth is None else f"{depth}x{height}x{width}"
        raise CovidlensError(
            f"model {name!r} cannot take {what} input with {in_chans} channel(s){hint}: "
            f"{reason}; set data.image_size to a size it accepts"
        ) from None
    if tuple(out.shape) != (2, num_classes):
        raise CovidlensError(f"model {name!r} gives outputs of shape {tuple(out.shape)}, not (batch, {num_classes})")


def create_timm(
    name: str,
    num_classes: int,
    in_chans: int,
    pretrained: bool,
    drop_rate: float | None,
    options: ModelOptions | None = None,
) -> nn.Module:
    """A timm model with covidlens' arguments and `options` as extra keyword arguments; drop_rate None keeps
    timm's default."""
    extra = dict(options or {}) | ({} if drop_rate is None else {"drop_rate": drop_rate})
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans, **extra)
    except TypeError as exc:
        if not options:
            raise
        raise CovidlensError(
            f"model.options: timm's {name} does not take {', '.join(sorted(options))} ({exc}); "
            "check the option names against timm's model"
        ) from None
    except (OSError, RuntimeError) as exc:
        if not pretrained:
            raise
        raise CovidlensError(
            f"could not get ImageNet weights for {name!r} ({type(exc).__name__}); "
            "set model.pretrained=false or model.weights=PATH to a local file"
        ) from None


def read_torch_file(path: str | Path, what: str) -> Any:
    """torch.load a tensors-only file on the CPU; a missing or damaged file is a CovidlensError."""
    path = Path(path)
    if not path.is_file():
        raise CovidlensError(f"{path}: {what} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file
        raise CovidlensError(f"{path}: not a readable {what} ({type(exc).__name__})") from None


@dataclass(frozen=True)
class WeightsReport:
    """What loading a weights file did: tensors loaded, and the keys it could not use."""

    loaded: int
    missing: list[str]  # in the model, not in the file: left at their initial values
    unexpected: list[str]  # in the file, not in the model
    mismatched: list[str]  # in both, with different shapes (e.g. a 1000-class head): left initial

    def summary(self) -> str:
        """One line for the user."""
        parts = [f"loaded {self.loaded} tensors"]
        for label, keys in (
            ("missing", self.missing),
            ("unexpected", self.unexpected),
            ("shape-mismatched", self.mismatched),
        ):
            if keys:
                shown = ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")
                parts.append(f"{len(keys)} {label} ({shown})")
        return "; ".join(parts)


def load_weights(model: nn.Module, path: str | Path) -> WeightsReport:
    """Load a local state dict, skipping tensors whose shape differs (e.g. a 1000-class head).

    A model with a `translate_state_dict` method renames another library's keys first (e.g. our SqueezeNet
    reads torchvision's ImageNet file).
    """
    state = read_torch_file(path, "PyTorch weights file")
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if isinstance(state, dict) and hasattr(model, "translate_state_dict"):
        state = model.translate_state_dict(state)
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise CovidlensError(f"{path}: no tensor matches this model's layers; is it for another architecture?")
    model.load_state_dict(usable, strict=False)
    return WeightsReport(
        loaded=len(usable),
        missing=sorted(set(own) - set(state)),
        unexpected=sorted(set(state) - set(own)),
        mismatched=sorted(k for k in state if k in own and own[k].shape != state[k].shape),
    )
