"""Intermediate activation maps (paper 000, Section 3.5.2 and Fig. 2): the filter outputs of chosen layers.

Paper 000 iterates through the layers between input and output and shows each filter's output as an image,
titled with the layer's name and its index in the network ("Block4b_activation, Layer 202"). Here a layer's
index is its 1-based position among the model's named sub-modules (`model.named_modules()` without the model
itself), the closest PyTorch has to a Keras layer index; titles say "layer 12: layer1.0.conv1".

Outputs are captured with forward hooks in eval mode under `torch.inference_mode()`, copied at once (a later
in-place operation such as a residual `out += identity` cannot change them), and the hooks are removed even
when the forward pass fails. A module called more than once in one forward pass (a shared ReLU) keeps the
output of its last call. For a 3D model each layer's maps are shown at the middle index of that layer's depth.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from torch import nn

from covidlens import atomic
from covidlens.config import Recipe
from covidlens.data.adapters.common import list_images
from covidlens.data.preprocess import Preprocessing, to_model_input
from covidlens.errors import CovidlensError
from covidlens.models.describe import CONVOLUTIONS, feature_layers
from covidlens.progress import console

TILE_INCHES = 1.1  # one filter's map in a grid
HEADER_INCHES = 0.45  # the grid's title
LABEL_INCHES = 2.6  # the overview's left column of layer labels
DPI = 100
OVERVIEW_FILTERS = 8  # filters per layer in the overview row
NAMES_IN_ERRORS = 12


@dataclass
class LayerMaps:
    """One layer's filter outputs for one image: (C, H, W), for 3D models at one depth index."""

    index: int
    name: str
    maps: np.ndarray
    depth_index: int | None = None
    depth: int | None = None

    def title(self) -> str:
        """'layer <index>: <name> (<C> filters, <H>x<W>)', plus the depth shown for 3D models."""
        channels, height, width = self.maps.shape
        where = f", middle depth {self.depth_index + 1} of {self.depth}" if self.depth is not None else ""
        return f"layer {self.index}: {self.name} ({channels} filters, {height}x{width}{where})"


def layer_indices(model: nn.Module) -> dict[str, int]:
    """Each named sub-module's 1-based position in `model.named_modules()` (the model itself excluded)."""
    return {name: i for i, (name, _) in enumerate(model.named_modules()) if name}


def convolution_names(model: nn.Module) -> list[str]:
    """Module names of the model's convolutions, in definition order (shallow to deep)."""
    return [name for name, module in model.named_modules() if isinstance(module, CONVOLUTIONS)]


def check_has_convolutions(model: nn.Module) -> None:
    """Refuse models without convolutions (the classical SVM and MLP): they have no feature maps to show."""
    if not convolution_names(model):
        raise CovidlensError(
            f"{type(model).__name__} has no convolution layers, so it has no activation maps; "
            "use a CNN checkpoint"
        )


def select_layers(model: nn.Module, layers: Sequence[str] | None = None, every: int | None = None) -> list[str]:
    """The layers to show, shallow to deep: named ones, every N-th convolution, or the model's feature layers.

    `every=N` takes the 1st, (N+1)-th, (2N+1)-th ... convolution and always the last one, so the deepest
    map is shown too.
    """
    check_has_convolutions(model)
    if layers and every is not None:
        raise CovidlensError("give --layers or --every, not both")
    indices = layer_indices(model)
    if every is not None:
        if every < 1:
            raise CovidlensError(f"--every {every}: must be 1 or more (1 shows every convolution)")
        convolutions = convolution_names(model)
        picked = convolutions[::every]
        return picked if picked[-1] == convolutions[-1] else [*picked, convolutions[-1]]
    if layers:
        unknown = [name for name in layers if name not in indices]
        if unknown:
            raise CovidlensError(unknown_layer_message(model, unknown[0], indices))
        return sorted(dict.fromkeys(layers), key=indices.__getitem__)
    return feature_layers(model)


def unknown_layer_message(model: nn.Module, name: str, indices: dict[str, int]) -> str:
    close = difflib.get_close_matches(name, list(indices), n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    examples = list(dict.fromkeys([*feature_layers(model), *convolution_names(model)]))[:NAMES_IN_ERRORS]
    return (
        f"{type(model).__name__} has no layer {name!r}; {hint}its layers include {', '.join(examples)} "
        f"({len(indices)} named modules in all)"
    )


def capture_activations(model: nn.Module, batch: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
    """The outputs of `layers` for `batch` (float32 copies on the CPU), from one eval-mode forward pass."""
    modules = dict(model.named_modules())
    missing = [name for name in layers if name not in modules or not name]
    if missing:
        raise CovidlensError(unknown_layer_message(model, missing[0], layer_indices(model)))
    outputs: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def hook(_module: nn.Module, _inputs: tuple, output: object) -> None:
            if isinstance(output, torch.Tensor):
                outputs[name] = output.detach().to("cpu", torch.float32, copy=True)

        return hook

    was_training = model.training
    handles = [modules[name].register_forward_hook(keep(name)) for name in layers]
    try:
        model.eval()
        device = next(model.parameters()).device
        with torch.inference_mode():
            model(batch.to(device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    for name in layers:
        if name not in outputs:
            raise CovidlensError(f"layer {name!r} gave no tensor in the forward pass; choose another layer")
        if outputs[name].ndim != batch.ndim:
            raise CovidlensError(
                f"layer {name!r} outputs shape {tuple(outputs[name].shape)}, not feature maps like the input's "
                f"{batch.ndim - 2}D ones; choose a convolution or block"
            )
    return outputs


def layer_maps(model: nn.Module, batch: torch.Tensor, layers: Sequence[str]) -> list[LayerMaps]:
    """Each layer's maps for the first image of `batch`; 3D outputs at the middle index of their depth."""
    indices = layer_indices(model)
    captured = capture_activations(model, batch, layers)
    result = []
    for name in layers:
        output = captured[name][0]
        if output.ndim == 4:  # (C, D, H, W)
            depth = output.shape[1]
            middle = (depth - 1) // 2
            result.append(LayerMaps(indices[name], name, output[:, middle].numpy(), middle, depth))
        else:
            result.append(LayerMaps(indices[name], name, output.numpy()))
    return result


def choose_filters(maps: np.ndarray, count: int, most_active: bool = False) -> list[int]:
    """The first `count` channels, or the `count` with the highest mean activation (most active first)."""
    count = min(count, maps.shape[0])
    if not most_active:
        return list(range(count))
    activity = maps.reshape(maps.shape[0], -1).mean(axis=1)
    return [int(i) for i in np.argsort(-activity, kind="stable")[:count]]


def normalize_map(values: np.ndarray) -> np.ndarray:
    """Scale one map to [0, 1] by its own min and max; a constant map becomes 0."""
    low, high = float(values.min()), float(values.max())
    if not np.isfinite(low) or not np.isfinite(high) or high <= low:
        return np.zeros_like(values, dtype=np.float32)
    return ((values - low) / (high - low)).astype(np.float32)


def grid_shape(tiles: int) -> tuple[int, int]:
    """(rows, columns) of a near-square grid holding `tiles` maps."""
    columns = max(1, math.ceil(math.sqrt(tiles)))
    return math.ceil(tiles / columns), columns


def _draw_tile(ax, image: np.ndarray, label: str | None = None, cmap: str = "viridis") -> None:
    ax.imshow(normalize_map(image), cmap=colormaps[cmap], vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    if label is not None:
        ax.text(
            0.03, 0.97, label, transform=ax.transAxes, fontsize=6, color="white", va="top", ha="left",
            bbox={"facecolor": "black", "alpha": 0.55, "pad": 1.0, "linewidth": 0},
        )


def save_filter_grid(
    path: str | Path, layer: LayerMaps, filters: int = 16, most_active: bool = False
) -> tuple[int, int]:
    """Write one layer's grid of filter maps (each min-max normalized, viridis) as a PNG; return (rows, cols)."""
    channels = choose_filters(layer.maps, filters, most_active)
    rows, columns = grid_shape(len(channels))
    figure = Figure(figsize=(columns * TILE_INCHES, rows * TILE_INCHES + HEADER_INCHES), dpi=DPI)
    top = 1.0 - HEADER_INCHES / (rows * TILE_INCHES + HEADER_INCHES)
    axes = figure.subplots(rows, columns, squeeze=False)
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=top, wspace=0.04, hspace=0.04)
    for i, ax in enumerate(axes.flat):
        if i < len(channels):
            _draw_tile(ax, layer.maps[channels[i]], f"{channels[i]}")
        else:
            ax.axis("off")
    title = layer.title() + (", most active first" if most_active else "")
    figure.suptitle(title, fontsize=8 if columns < 4 else 9, y=1.0 - 0.08 * HEADER_INCHES / figure.get_figheight())
    atomic.write_with(path, lambda tmp: figure.savefig(tmp, format="png", dpi=DPI))
    return rows, columns


def save_overview(
    path: str | Path, image: np.ndarray, layers: Sequence[LayerMaps], per_row: int = OVERVIEW_FILTERS
) -> tuple[int, int]:
    """Write the input and one row per layer (its `per_row` most active filters), shallow to deep."""
    columns = max(1, min(per_row, max(layer.maps.shape[0] for layer in layers)))
    rows = len(layers) + 1
    width = LABEL_INCHES + columns * TILE_INCHES
    height = rows * TILE_INCHES + HEADER_INCHES
    figure = Figure(figsize=(width, height), dpi=DPI)
    grid = figure.add_gridspec(
        rows, columns + 1, width_ratios=[LABEL_INCHES / TILE_INCHES] + [1.0] * columns,
        left=0.005, right=0.995, bottom=0.005, top=1.0 - HEADER_INCHES / height, wspace=0.04, hspace=0.06,
    )
    labels = ["input image", *(_row_label(layer) for layer in layers)]
    for row, label in enumerate(labels):
        text_ax = figure.add_subplot(grid[row, 0])
        text_ax.axis("off")
        text_ax.text(0.98, 0.5, label, ha="right", va="center", fontsize=7, transform=text_ax.transAxes, wrap=True)
    _draw_tile(figure.add_subplot(grid[0, 1]), image, cmap="gray")
    for row, layer in enumerate(layers, start=1):
        for column, channel in enumerate(choose_filters(layer.maps, columns, most_active=True)):
            _draw_tile(figure.add_subplot(grid[row, column + 1]), layer.maps[channel], f"{channel}")
    figure.suptitle(
        f"activation maps, shallow to deep: the {columns} most active filters per layer",
        fontsize=9, y=1.0 - 0.08 * HEADER_INCHES / height,
    )
    atomic.write_with(path, lambda tmp: figure.savefig(tmp, format="png", dpi=DPI))
    return rows, columns + 1


def _row_label(layer: LayerMaps) -> str:
    channels, height, width = layer.maps.shape
    where = f"\ndepth {layer.depth_index + 1} of {layer.depth}" if layer.depth is not None else ""
    return f"layer {layer.index}: {layer.name}\n{channels} filters, {height}x{width}{where}"


def image_stem(path: Path) -> str:
    """A file's name without its image suffix (`x.nii.gz` -> `x`); a folder's name as it is."""
    if path.is_dir():
        return path.name
    name = path.name
    return name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else path.stem


def load_model_input(image: Path, recipe: Recipe, prep: Preprocessing) -> tuple[torch.Tensor, np.ndarray]:
    """The model input (1, C, [D,] H, W) for an image file, or a scan folder for a volume model, and the
    uint8 image it shows (the middle slice of a volume), preprocessed by the checkpoint's `prep`."""
    data = recipe.data
    if not image.exists():
        raise CovidlensError(f"{image}: no such image file or scan folder")
    if data.depth is None:
        if image.is_dir():
            raise CovidlensError(f"{image}: a folder; this 2D model takes one image file (pass one slice)")
        gray = prep.load(image)
        return torch.from_numpy(to_model_input(gray[None], data.channels)), gray
    if not image.is_dir():
        raise CovidlensError(
            f"{image}: a file; this volume model (data.depth={data.depth}) takes a scan folder of numbered slices"
        )
    slices = list_images(image).images[: data.depth]  # natural order: slice_2 before slice_10
    if not slices:
        raise CovidlensError(f"{image}: no slice images in this scan folder")
    volume = np.stack([prep.load(p) for p in slices])
    if len(slices) < data.depth:  # as training does for short scans: repeat the last slice
        note = f"{image}: {len(slices)} slices, fewer than depth {data.depth}; repeating the last"
        console.print(note, soft_wrap=True)
        volume = np.concatenate([volume, np.repeat(volume[-1:], data.depth - len(slices), axis=0)])
    return torch.from_numpy(to_model_input(volume[None], data.channels)), volume[(data.depth - 1) // 2]


def pick_checkpoint(model_path: str | Path, fold_model: int = 0) -> tuple[Path, str]:
    """The checkpoint to explain and a phrase saying which: a .pt as given, or fold model N of a run."""
    from covidlens.deploy.predict import checkpoints_of

    found = checkpoints_of(model_path)
    if Path(model_path).is_file():
        if fold_model != 0:
            raise CovidlensError(f"--fold-model {fold_model}: {model_path} is one checkpoint; give a run directory")
        return found[0], f"checkpoint {found[0]}"
    if not 0 <= fold_model < len(found):
        raise CovidlensError(
            f"--fold-model {fold_model}: {model_path} has {len(found)} fold models, numbered 0 to {len(found) - 1}"
        )
    return found[fold_model], f"fold model {fold_model} of {len(found)} ({found[fold_model].name}) of {model_path}"


def layer_file_name(stem: str, layer: LayerMaps, width: int = 3) -> str:
    """`<image stem>_<index>_<name with dots as ->.png`, the index zero-padded so files sort shallow to deep."""
    return f"{stem}_{layer.index:0{width}d}_{layer.name.replace('.', '-')}.png"


def write_activation_maps(
    model_path: str | Path,
    image: str | Path,
    out: str | Path,
    layers: Sequence[str] | None = None,
    every: int | None = None,
    filters: int = 16,
    most_active: bool = False,
    fold_model: int = 0,
    device: str = "cpu",
) -> list[Path]:
    """Write one filter grid per chosen layer and an overview for `image`; return the paths (overview last)."""
    from covidlens.train.checkpoint import read_checkpoint
    from covidlens.train.trainer import select_device

    if filters < 1:
        raise CovidlensError(f"--filters {filters}: must be 1 or more")
    image, out = Path(image), Path(out)
    if not image.exists():
        raise CovidlensError(f"{image}: no such image file or scan folder")
    checkpoint, which = pick_checkpoint(model_path, fold_model)
    loaded = read_checkpoint(checkpoint)
    model, recipe = loaded.model, loaded.recipe
    chosen = select_layers(model, layers, every)
    batch, shown = load_model_input(image, recipe, loaded.prep)
    model = model.to(select_device(device))
    # every check is done: progress from here on (an error message stays the only line otherwise)
    console.print(f"activation maps of {which}", soft_wrap=True)
    console.print(f"capturing {len(chosen)} layers of {recipe.model.name} for {image}", soft_wrap=True)
    maps = layer_maps(model, batch, chosen)
    stem = image_stem(image)
    width = len(str(len(layer_indices(model))))
    written = []
    for layer in maps:
        path = out / layer_file_name(stem, layer, width)
        save_filter_grid(path, layer, filters, most_active)
        written.append(path)
    overview = out / f"{stem}_overview.png"
    save_overview(overview, shown, maps)
    written.append(overview)
    console.print(f"wrote {len(maps)} layer grids and {overview.name} to {out}", soft_wrap=True)
    return written
