"""Report figures as PNG bytes: training curves and confusion matrices."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def training_curves(history: pd.DataFrame) -> bytes:
    """Loss and accuracy per epoch: each fold faint, the mean across folds bold."""
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for (_, _), fold in history.groupby(["round", "fold"]):
            ax.plot(fold["epoch"], fold[f"train_{metric}"], color="tab:blue", alpha=0.2, lw=1)
            ax.plot(fold["epoch"], fold[f"val_{metric}"], color="tab:orange", alpha=0.2, lw=1)
        mean = history.groupby("epoch")[[f"train_{metric}", f"val_{metric}"]].mean()
        ax.plot(mean.index, mean[f"train_{metric}"], color="tab:blue", lw=2, label="train (mean)")
        ax.plot(mean.index, mean[f"val_{metric}"], color="tab:orange", lw=2, label="validation (mean)")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    return _png(figure)


def confusion_matrices(matrix: list[list[int]], normalized: list[list[float]], classes: list[str]) -> bytes:
    """Raw and row-normalised confusion matrices side by side."""
    figure, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for ax, values, title, fmt in (
        (axes[0], np.asarray(matrix), "counts", "{:.0f}"),
        (axes[1], np.asarray(normalized), "normalized by true class", "{:.2f}"),
    ):
        ax.imshow(values, cmap="Blues", vmin=0)
        ax.set_title(title)
        ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
        ax.set_yticks(range(len(classes)), classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        high = values.max() if values.size else 0
        for (i, j), value in np.ndenumerate(values):
            colour = "white" if value > high / 2 else "black"
            ax.text(j, i, fmt.format(value), ha="center", va="center", color=colour)
    return _png(figure)


def comparison_bars(
    groups: list[str], values: list[float], lows: list[float], highs: list[float], metric: str
) -> bytes:
    """One bar per compared setting with its confidence interval (paper 003's Figs. 4-5 as a chart)."""
    figure, ax = plt.subplots(figsize=(max(5.0, 0.55 * len(groups) + 2.0), 3.8))
    positions = np.arange(len(groups))
    below = np.clip(np.asarray(values) - np.asarray(lows), 0, None)
    above = np.clip(np.asarray(highs) - np.asarray(values), 0, None)
    ax.bar(positions, values, color="tab:blue", alpha=0.8)
    ax.errorbar(positions, values, yerr=[below, above], fmt="none", ecolor="black", capsize=3, lw=1)
    ax.set_xticks(positions, groups, rotation=45, ha="right")
    ax.set_ylabel(metric)
    ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)
    return _png(figure)
