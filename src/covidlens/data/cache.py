"""Image sources for training: decode-once arrays on disk (the cache), or decode on every read."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from covidlens import atomic
from covidlens.data.preprocess import Preprocessing
from covidlens.errors import CovidlensError


class ImageSource(Protocol):
    """Model-ready uint8 slices (N, H, W) by row index of a manifest."""

    def __len__(self) -> int: ...

    def get(self, indices: Sequence[int]) -> np.ndarray: ...


class DecodedImages:
    """Decodes and resizes every image on every read (the slow path, kept for comparison)."""

    def __init__(self, paths: Sequence[str], prep: Preprocessing, frames: Sequence[int] | None = None) -> None:
        self.paths = list(paths)
        self.prep = prep
        self.frames = list(frames) if frames is not None else [None] * len(self.paths)

    def __len__(self) -> int:
        return len(self.paths)

    def get(self, indices: Sequence[int]) -> np.ndarray:
        """Decode the images at `indices`."""
        return np.stack([self.prep.load(self.paths[i], self.frames[i]) for i in indices])


class CachedImages:
    """All images decoded and resized once into one memory-mapped .npy array."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def __len__(self) -> int:
        return len(self.array)

    def get(self, indices: Sequence[int]) -> np.ndarray:
        """Read the images at `indices` from the array."""
        return np.asarray(self.array[np.asarray(indices)])


def cache_key(paths: Sequence[str], prep: Preprocessing, frames: Sequence[int] | None = None) -> str:
    """A key that changes when any file, its size or time, or the preprocessing changes."""
    settings = prep.settings()
    if frames is not None:
        settings["frames"] = [int(f) for f in frames]
    digest = hashlib.sha1(json.dumps(settings).encode())
    for path in paths:
        try:
            stat = os.stat(path)
        except OSError:
            raise CovidlensError(f"{path}: image named in the manifest is gone; restore it or re-index") from None
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def build_cache(
    paths: Sequence[str],
    prep: Preprocessing,
    folder: str | Path,
    progress: Callable[[int, int], None] | None = None,
    frames: Sequence[int] | None = None,
) -> CachedImages:
    """Decode every image once into `folder/images-<key>-<H>x<W>.npy`, or reuse that file if it exists.

    `frames` gives the slice index of each path inside a multi-slice file (NIfTI); other files ignore it.
    """
    height, width = prep.shape
    target = Path(folder) / f"images-{cache_key(paths, prep, frames)}-{height}x{width}.npy"
    if not target.is_file():
        decoder = DecodedImages(paths, prep, frames)

        def fill(tmp: Path) -> None:
            array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), height, width))
            for i in range(len(paths)):
                array[i] = decoder.get([i])[0]
                if progress:
                    progress(i + 1, len(paths))
            array.flush()
            del array

        atomic.write_with(target, fill)
    return CachedImages(np.load(target, mmap_mode="r"))
