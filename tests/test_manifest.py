"""Manifest helpers."""

import pandas as pd

from covidlens.data.manifest import relabel_manifest


def test_relabel_merges_classes_and_keeps_the_data_label():
    frame = pd.DataFrame({"label": ["COVID", "Healthy", "Others"], "patient_id": ["a", "b", "c"]})
    merged = relabel_manifest(frame, {"Healthy": "NonCOVID", "Others": "NonCOVID"})
    assert merged["label"].tolist() == ["COVID", "NonCOVID", "NonCOVID"]
    assert merged["original_label"].tolist() == ["COVID", "Healthy", "Others"]
    assert frame["label"].tolist() == ["COVID", "Healthy", "Others"]  # the input is left alone
    assert relabel_manifest(frame, {}) is frame
