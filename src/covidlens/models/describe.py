"""What a model is made of: default CAM layer, feature layers, parameters, size and FLOPs."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from covidlens.models.registry import MODELS, ModelSpec, check_model_name, create_model

CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def last_convolution(model: nn.Module) -> str:
    """Module name of the model's last convolution (the usual Grad-CAM target)."""
    names = [name for name, module in model.named_modules() if isinstance(module, CONVOLUTIONS)]
    if not names:
        raise ValueError(f"{type(model).__name__} has no convolution")
    return names[-1]


def cam_layer(model: nn.Module, spec: ModelSpec | None = None) -> str:
    """The default CAM target: what the model's spec declares, else its last convolution."""
    return spec.cam_layer if spec is not None and spec.cam_layer else last_convolution(model)


def feature_layers(model: nn.Module) -> list[str]:
    """Named layers whose outputs are the model's feature maps, shallow to deep (timm's feature_info)."""
    declared = getattr(model, "feature_layers", None)
    if declared:
        return list(declared)
    info = getattr(model, "feature_info", None)
    if info:
        return [entry["module"] for entry in info]
    return [last_convolution(model)]


def keras_style_parameter_count(model: nn.Module) -> int:
    """Parameters plus batch-norm running statistics, as Keras counts a model's parameters."""
    statistics = sum(
        buffer.numel() for name, buffer in model.named_buffers() if name.endswith(("running_mean", "running_var"))
    )
    return sum(p.numel() for p in model.parameters()) + statistics


def model_stats(name: str, num_classes: int = 3, in_chans: int = 3, input_size: int | None = None) -> dict:
    """Parameters (M), fp32 size (MiB) and GFLOPs (2 x multiply-adds) of one forward pass at the native size.

    The model is built on PyTorch's meta device, so nothing is allocated and no weights are read.
    """
    check_model_name(name)
    spec = MODELS.get(name) if name in MODELS else None
    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes, in_chans=in_chans).eval()
    size = input_size or (spec.input_size if spec else _timm_input_size(model))
    spatial = (spec.input_depth, size, size) if spec and spec.spatial_dims == 3 else (size, size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.empty(1, in_chans, *spatial, device="meta"))
    tensors = [*model.parameters(), *model.buffers()]
    return {
        "name": name,
        "family": spec.family if spec else "timm",
        "paper": spec.paper if spec else "",
        "input_size": size,
        "input_depth": spatial[0] if len(spatial) == 3 else None,
        "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "size_mb": sum(t.numel() * 4 for t in tensors) / 2**20,
        "gflops": counter.get_total_flops() / 1e9,
    }


def _timm_input_size(model: nn.Module) -> int:
    return int(getattr(model, "pretrained_cfg", {}).get("input_size", (3, 224, 224))[-1])
