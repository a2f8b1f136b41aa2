"""Training images/s with the decode-once cache and without it, measured in one run.

    .venv/bin/python benchmarks/bench_cache.py [--patients 20] [--size 64] [--epochs 2]

Synthesises 512x512 CT slices, then trains the demo model for a few epochs twice on the same
images: once reading from the cache (decoded and resized once), once decoding every image
on every epoch. Prints both rates and their ratio.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from covidlens.config import load_recipe
from covidlens.data.cache import DecodedImages, build_cache
from covidlens.data.index import index_dataset
from covidlens.data.preprocess import Preprocessing
from covidlens.data.synth import synthesize
from covidlens.models import create_model
from covidlens.train.trainer import fit


def images_per_second(source, labels, recipe, epochs: int) -> float:
    """Train a fresh model for `epochs` on every image and return training images per second."""
    torch.manual_seed(0)
    model = create_model(recipe.model.name, num_classes=3, in_chans=recipe.data.channels)
    every = np.arange(len(labels))
    config = recipe.train.model_copy(update={"epochs": epochs})
    start = time.perf_counter()
    fit(model, source, labels, every, every[:1], config, recipe.data.channels, 0, torch.device("cpu"))
    return epochs * len(labels) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=20)
    parser.add_argument("--size", type=int, default=64, help="model input size in pixels (the demo's)")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    recipe = load_recipe("demo", [f"data.image_size={args.size}"])
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        synthesize("ct-slices", data, args.patients, seed=0, slices=(10, 20))
        manifest = index_dataset(data).manifest
        classes = sorted(manifest["label"].unique())
        labels = manifest["label"].map({c: i for i, c in enumerate(classes)}).to_numpy(np.int64)
        paths = manifest["path"].tolist()
        start = time.perf_counter()
        cached = build_cache(paths, Preprocessing(args.size), Path(tmp) / "cache")
        build_seconds = time.perf_counter() - start
        with_cache = images_per_second(cached, labels, recipe, args.epochs)
        without_cache = images_per_second(DecodedImages(paths, Preprocessing(args.size)), labels, recipe, args.epochs)
    print(
        f"{len(paths)} slices of 512x512 -> {args.size}x{args.size} px, "
        f"model {recipe.model.name}, {args.epochs} epochs"
    )
    print(f"cache build (once per run): {build_seconds:.1f} s")
    print(f"training with cache:    {with_cache:8.1f} images/s")
    print(f"training without cache: {without_cache:8.1f} images/s")
    print(f"speed-up: {with_cache / without_cache:.2f}x")


if __name__ == "__main__":
    main()
