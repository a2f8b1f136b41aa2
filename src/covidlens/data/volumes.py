"""Volumes of n adjacent slices of one scan (paper 002 Section 2.2): the volume table and its image source.

A scan's slices, in z order (the manifest's slice_index), are cut into windows of `depth` slices
starting every `stride` slices (stride = depth: non-overlapping, the default). A remainder shorter
than `depth` at the end of a scan is dropped, as taking slices // depth volumes does; a scan with
fewer than `depth` slices gives one volume whose last slice is repeated (`padded` counts the copies).
Each volume is one sample: the volume table has the manifest's columns, so splits, training,
predictions and metrics treat volumes exactly as they treat slices.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from covidlens.data.cache import ImageSource
from covidlens.errors import CovidlensError

VOLUME_COLUMNS = [
    "sample_id",
    "label",
    "patient_id",
    "scan_id",
    "start",
    "depth",
    "scan_slices",
    "padded",
    "modality",
    "source",
]
CARRIED_COLUMNS = ["patient_id_from", "split"]  # manifest columns a volume takes from its scan when present


def window_starts(n_slices: int, depth: int, stride: int) -> list[int]:
    """First-slice positions of the volumes cut from a scan of `n_slices` slices."""
    if n_slices <= depth:
        return [0]
    return list(range(0, n_slices - depth + 1, stride))


def scan_rows(manifest: pd.DataFrame) -> dict[str, np.ndarray]:
    """Manifest row numbers of each scan's slices in z order (by slice_index, then sample_id)."""
    order = manifest.assign(_row=np.arange(len(manifest))).sort_values(
        ["scan_id", "slice_index", "sample_id"], kind="stable"
    )
    return {str(scan): group["_row"].to_numpy() for scan, group in order.groupby("scan_id", sort=True)}


def _check_scans(manifest: pd.DataFrame, rows_of: dict[str, np.ndarray]) -> None:
    for scan, rows in rows_of.items():
        slices = manifest["slice_index"].to_numpy()[rows]
        if (slices < 0).any():
            raise CovidlensError(
                f"scan {scan!r} has slices without a slice_index; volumes need each slice's z position "
                "(use a layout with numbered slices, or fill slice_index in the manifest)"
            )
        if len(np.unique(slices)) != len(slices):
            raise CovidlensError(f"scan {scan!r} has two slices with the same slice_index; fix the manifest")


def build_volume_table(manifest: pd.DataFrame, depth: int, stride: int | None = None) -> pd.DataFrame:
    """One row per volume: `<scan_id>@<start>` ids, the scan's label and patient, start and padding."""
    if depth < 2:
        raise CovidlensError(f"data.depth={depth} must be at least 2 (a volume stacks 2 or more slices)")
    stride = depth if stride is None else stride
    if stride < 1:
        raise CovidlensError(f"data.stride={stride} must be at least 1")
    rows_of = scan_rows(manifest)
    _check_scans(manifest, rows_of)
    carried = [c for c in CARRIED_COLUMNS if c in manifest.columns]
    records = []
    for scan, rows in rows_of.items():
        first = manifest.iloc[rows[0]]
        for start in window_starts(len(rows), depth, stride):
            record = {
                "sample_id": f"{scan}@{start:04d}",
                "label": first["label"],
                "patient_id": first["patient_id"],
                "scan_id": scan,
                "start": start,
                "depth": depth,
                "scan_slices": len(rows),
                "padded": max(0, depth - len(rows)),
                "modality": first.get("modality", "ct"),
                "source": first.get("source", ""),
            }
            record.update({c: first[c] for c in carried})
            records.append(record)
    return pd.DataFrame(records, columns=VOLUME_COLUMNS + carried)


def volume_slice_rows(manifest: pd.DataFrame, volumes: pd.DataFrame) -> np.ndarray:
    """(volumes, depth) manifest row numbers of each volume's slices, the last slice repeated as padding."""
    rows_of = scan_rows(manifest)
    depth = int(volumes["depth"].iloc[0]) if len(volumes) else 0
    table = np.empty((len(volumes), depth), dtype=np.int64)
    offsets = np.arange(depth)
    for i, (scan, start) in enumerate(zip(volumes["scan_id"].astype(str), volumes["start"].astype(int), strict=True)):
        if scan not in rows_of:
            raise CovidlensError(f"volume table names scan {scan!r}, which is not in the manifest; rebuild the run")
        rows = rows_of[scan]
        table[i] = rows[np.minimum(start + offsets, len(rows) - 1)]
    return table


class VolumeSource:
    """Volumes (N, D, H, W) uint8 assembled from a slice source by each volume's slice rows."""

    def __init__(self, slices: ImageSource, slice_rows: np.ndarray) -> None:
        self.slices = slices
        self.slice_rows = slice_rows

    def __len__(self) -> int:
        return len(self.slice_rows)

    def get(self, indices: Sequence[int]) -> np.ndarray:
        """The volumes at `indices`, depth-first: one slice-source read for the whole batch."""
        rows = self.slice_rows[np.asarray(indices)]
        flat = self.slices.get(rows.ravel())
        return flat.reshape(rows.shape + flat.shape[1:])
