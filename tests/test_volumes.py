import numpy as np
import pandas as pd
import pytest
import torch

from covidlens.config import AugmentConfig
from covidlens.data.augment import augment_batch
from covidlens.data.cache import CachedImages
from covidlens.data.preprocess import to_model_input
from covidlens.data.volumes import VolumeSource, build_volume_table, volume_slice_rows, window_starts
from covidlens.errors import CovidlensError


def scan_manifest(lengths: dict[str, int], shuffle_seed: int | None = 0) -> pd.DataFrame:
    """Slices of several scans; rows shuffled so z order must come from slice_index."""
    rows = []
    for scan, n in lengths.items():
        patient = scan.split("/")[0]
        for k in range(n):
            rows.append(
                {"sample_id": f"{scan}/{k:04d}", "path": f"{scan}/{k}.png", "label": patient[:1].upper(),
                 "patient_id": patient, "scan_id": scan, "slice_index": k, "modality": "ct", "source": "t"}
            )
    frame = pd.DataFrame(rows)
    if shuffle_seed is not None:
        frame = frame.sample(frac=1.0, random_state=shuffle_seed).reset_index(drop=True)
    return frame


@pytest.mark.parametrize(
    ("n", "depth", "stride", "starts"),
    [
        (10, 4, 4, [0, 4]),  # the remainder of 2 slices is dropped
        (12, 4, 4, [0, 4, 8]),
        (10, 4, 2, [0, 2, 4, 6]),  # sliding window
        (3, 4, 4, [0]),  # shorter than the depth: one padded volume
        (4, 4, 4, [0]),
    ],
)
def test_window_starts(n, depth, stride, starts):
    assert window_starts(n, depth, stride) == starts


def test_volume_table_has_one_row_per_window_with_the_scans_label_and_patient():
    manifest = scan_manifest({"a1/s1": 9, "a1/s2": 3, "b2/s1": 8})
    table = build_volume_table(manifest, depth=4)
    assert table["sample_id"].tolist() == ["a1/s1@0000", "a1/s1@0004", "a1/s2@0000", "b2/s1@0000", "b2/s1@0004"]
    assert table["padded"].tolist() == [0, 0, 1, 0, 0]
    assert table["scan_slices"].tolist() == [9, 9, 3, 8, 8]
    assert set(table.loc[table["patient_id"] == "a1", "label"]) == {"A"}
    sliding = build_volume_table(manifest, depth=4, stride=1)
    assert len(sliding) == (9 - 3) + 1 + (8 - 3)


def test_volume_slices_follow_z_order_and_pad_with_the_last_slice():
    manifest = scan_manifest({"a1/s1": 6, "a1/s2": 3})
    volumes = build_volume_table(manifest, depth=4, stride=2)
    rows = volume_slice_rows(manifest, volumes)
    z = manifest["slice_index"].to_numpy()[rows]
    scans = manifest["scan_id"].to_numpy()[rows]
    assert z.tolist() == [[0, 1, 2, 3], [2, 3, 4, 5], [0, 1, 2, 2]]
    assert (scans == volumes["scan_id"].to_numpy()[:, None]).all()


def test_volume_source_stacks_the_slices_depth_first():
    manifest = scan_manifest({"a1/s1": 5, "b2/s1": 4}, shuffle_seed=3)
    slices = np.stack([np.full((6, 6), 10 * i, dtype=np.uint8) for i in range(len(manifest))])
    volumes = build_volume_table(manifest, depth=2)
    source = VolumeSource(CachedImages(slices), volume_slice_rows(manifest, volumes))
    batch = source.get([0, 3])
    assert batch.shape == (2, 2, 6, 6)
    rows = volume_slice_rows(manifest, volumes)[[0, 3]]
    assert (batch[:, :, 0, 0] == rows * 10).all()
    model_input = to_model_input(batch, channels=3)
    assert model_input.shape == (2, 3, 2, 6, 6) and model_input.dtype == np.float32


def test_volume_needs_slice_positions_and_unique_ones():
    manifest = scan_manifest({"a1/s1": 4})
    with pytest.raises(CovidlensError, match="at least 2"):
        build_volume_table(manifest, depth=1)
    unnumbered = manifest.assign(slice_index=-1)
    with pytest.raises(CovidlensError, match="without a slice_index"):
        build_volume_table(unnumbered, depth=2)
    twice = manifest.assign(slice_index=[0, 1, 1, 2])
    with pytest.raises(CovidlensError, match="same slice_index"):
        build_volume_table(twice, depth=2)


def test_augmentation_moves_every_slice_of_a_volume_the_same_way():
    config = AugmentConfig(rotation=(0, 90), zoom=(0.8, 1.2), width_shift=0.2)
    image = torch.rand(2, 1, 16, 16)
    volume = image[:, :, None].repeat(1, 3, 4, 1, 1)  # (B, C=3, D=4, H, W), every slice the same image
    moved = augment_batch(volume, config, torch.Generator().manual_seed(5))
    flat = augment_batch(image, config, torch.Generator().manual_seed(5))
    assert moved.shape == volume.shape
    for c in range(3):
        for d in range(4):
            torch.testing.assert_close(moved[:, c, d], flat[:, 0])
    assert not torch.allclose(moved, volume)
