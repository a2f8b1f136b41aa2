"""One training run: batches from an image source, optimiser, schedule, history, best-epoch restore."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from covidlens.config import AugmentConfig, OptimizerConfig, SchedulerConfig, TrainConfig
from covidlens.data.augment import augment_batch
from covidlens.data.cache import ImageSource
from covidlens.data.preprocess import to_model_input
from covidlens.errors import CovidlensError

HISTORY_COLUMNS = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"]


@dataclass
class FitResult:
    """Per-epoch history and the epoch whose weights the model holds after fitting."""

    history: pd.DataFrame
    best_epoch: int


def select_device(name: str) -> torch.device:
    """'auto' picks CUDA when present, else CPU; anything else is passed to torch."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CovidlensError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CovidlensError(f"device {name!r} asked for, but no CUDA GPU is available; use device=cpu")
    return device


def iterate_batches(
    source: ImageSource,
    indices: np.ndarray,
    batch_size: int,
    channels: int,
    generator: torch.Generator | None = None,
    augment: AugmentConfig | None = None,
    min_batch: int = 1,
) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """Yield (row indices, float input batch); shuffled and augmented when a generator is given.

    A trailing batch smaller than `min_batch` is dropped (training a model with batch norm uses 2: it
    cannot train on one image; the order is reshuffled each epoch, so no image is always left out).
    """
    order = indices
    if generator is not None:
        order = indices[torch.randperm(len(indices), generator=generator).numpy()]
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        if len(rows) < min_batch:
            break
        batch = torch.from_numpy(to_model_input(source.get(rows), channels))
        if augment is not None and generator is not None:
            batch = augment_batch(batch, augment, generator)
        yield rows, batch


def training_loss(model: nn.Module, config: TrainConfig) -> nn.Module:
    """The model's own training loss (`model.training_loss`, e.g. an SVM's hinge loss), else
    label-smoothed cross-entropy. Every loss takes (outputs, class indices)."""
    own = getattr(model, "training_loss", None)
    return own if own is not None else nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)


def make_optimizer(model: nn.Module, config: OptimizerConfig) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD with momentum; weight_decay is the L2 penalty."""
    params = model.parameters()
    if config.name == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.name == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def make_scheduler(
    optimizer: torch.optim.Optimizer, config: SchedulerConfig
) -> torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau | None:
    """Reduce-on-plateau (Keras semantics), step decay, or none."""
    if config.name == "plateau":
        # Keras lowers the rate on the patience-th epoch without improvement; torch one epoch later.
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer,
            mode="min" if config.monitor == "val_loss" else "max",
            factor=config.factor,
            patience=max(config.patience - 1, 0),
            threshold=config.min_delta,
            threshold_mode="abs",
        )
    if config.name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.step_size, gamma=config.factor)
    return None


def _batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _run_epoch(
    model: nn.Module,
    source: ImageSource,
    indices: np.ndarray,
    labels: np.ndarray,
    config: TrainConfig,
    channels: int,
    device: torch.device,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
) -> tuple[float, float]:
    """Train one epoch; return mean loss and accuracy over its samples."""
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    min_batch = 2 if _batchnorm_layers(model) else 1  # batch 1 is paper 003's per-image SVM rule
    batches = iterate_batches(
        source, indices, config.batch_size, channels, generator, config.augment, min_batch=min_batch
    )
    for rows, batch in batches:
        target = torch.from_numpy(labels[rows]).to(device)
        optimizer.zero_grad(set_to_none=True)
        logits = model(batch.to(device))
        loss = loss_fn(logits, target)
        loss.backward()
        optimizer.step()
        total_loss += loss.item() * len(rows)
        correct += int((logits.argmax(1) == target).sum())
        seen += len(rows)
    return total_loss / max(seen, 1), correct / max(seen, 1)


@torch.no_grad()
def recompute_batchnorm(
    model: nn.Module,
    source: ImageSource,
    indices: np.ndarray,
    batch_size: int,
    channels: int,
    device: torch.device,
) -> None:
    """Replace batch-norm running statistics by their exact average over `indices` (un-augmented).

    With few steps per epoch and a high learning rate, the running averages lag far behind the
    weights, and eval-mode predictions collapse to one class; one extra forward pass fixes that.
    """
    norms = _batchnorm_layers(model)
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average
    model.train()
    for _, batch in iterate_batches(source, indices, batch_size, channels, min_batch=2):
        model(batch.to(device))
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum


@torch.inference_mode()
def predict_proba(
    model: nn.Module,
    source: ImageSource,
    indices: np.ndarray,
    batch_size: int,
    channels: int,
    device: torch.device,
) -> np.ndarray:
    """Softmax class probabilities (N, classes) for the rows `indices` of `source`."""
    model.eval()
    parts = [
        torch.softmax(model(batch.to(device)).float(), dim=1).cpu().numpy()
        for _, batch in iterate_batches(source, indices, batch_size, channels)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)


def _evaluate(
    model: nn.Module,
    source: ImageSource,
    indices: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    channels: int,
    device: torch.device,
    loss_fn: nn.Module,
) -> tuple[float, float]:
    probs = torch.from_numpy(predict_proba(model, source, indices, batch_size, channels, device))
    target = torch.from_numpy(labels[indices])
    loss = float(loss_fn(torch.log(probs.clamp_min(1e-12)), target))
    return loss, float((probs.argmax(1) == target).float().mean())


def _improved(
    monitor: str, loss: float, accuracy: float, lowest_loss: float | None, highest_accuracy: float | None
) -> bool:
    """Whether this epoch becomes the best under `monitor`, given the extremes of all earlier epochs.

    val_loss_and_accuracy is paper 003's SaveBest: the loss must reach a new minimum and the accuracy a new
    maximum at the same epoch (the records of epochs that were not kept still count). The first epoch counts.
    """
    if lowest_loss is None or highest_accuracy is None:
        return True
    new_low, new_high = loss < lowest_loss, accuracy > highest_accuracy
    if monitor == "val_loss":
        return new_low
    if monitor == "val_accuracy":
        return new_high
    return new_low and new_high


def fit(
    model: nn.Module,
    source: ImageSource,
    labels: np.ndarray,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    config: TrainConfig,
    channels: int,
    seed: int,
    device: torch.device,
    on_epoch: Callable[[dict], None] | None = None,
) -> FitResult:
    """Train `model` in place; with restore_best it ends holding the weights of its best validation epoch."""
    model.to(device)
    generator = torch.Generator().manual_seed(seed)
    loss_fn = training_loss(model, config)
    # Validation loss is plain cross-entropy, so it stays comparable across recipes.
    val_loss_fn = nn.NLLLoss()
    optimizer = make_optimizer(model, config.optimizer)
    scheduler = make_scheduler(optimizer, config.scheduler)
    rows, best_epoch, best_state = [], 0, None
    lowest_loss: float | None = None
    highest_accuracy: float | None = None
    for epoch in range(1, config.epochs + 1):
        lr = optimizer.param_groups[0]["lr"]
        train_loss, train_acc = _run_epoch(
            model, source, train_idx, labels, config, channels, device, loss_fn, optimizer, generator
        )
        if config.precise_bn:
            recompute_batchnorm(model, source, train_idx, config.batch_size, channels, device)
        val_loss, val_acc = _evaluate(
            model, source, val_idx, labels, config.batch_size, channels, device, val_loss_fn
        )
        record = dict(
            zip(HISTORY_COLUMNS, [epoch, train_loss, train_acc, val_loss, val_acc, lr], strict=True)
        )
        rows.append(record)
        if _improved(config.monitor, val_loss, val_acc, lowest_loss, highest_accuracy):
            best_epoch = epoch
            best_state = copy.deepcopy(model.state_dict()) if config.restore_best else None
        lowest_loss = val_loss if lowest_loss is None else min(lowest_loss, val_loss)
        highest_accuracy = val_acc if highest_accuracy is None else max(highest_accuracy, val_acc)
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step(val_loss if config.scheduler.monitor == "val_loss" else val_acc)
        elif scheduler is not None:
            scheduler.step()
        if on_epoch:
            on_epoch(record)
    if config.restore_best and best_state is not None:
        model.load_state_dict(best_state)
    else:
        best_epoch = config.epochs
    return FitResult(pd.DataFrame(rows, columns=HISTORY_COLUMNS), best_epoch)
