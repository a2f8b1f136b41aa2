"""CT in Hounsfield units: DICOM files and series, NIfTI volumes, their adapters and synth's formats."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.uid import generate_uid
from typer.testing import CliRunner

from covidlens.cli import app
from covidlens.data import medical_io, synth
from covidlens.data.index import detect_layout, index_dataset
from covidlens.data.preprocess import DEFAULT_HU_WINDOW, load_gray_uint8, read_image, window_hu
from covidlens.errors import CovidlensError

SYNTH = {"patients": 3, "seed": 5, "size": 64, "slices": (3, 5)}
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)


def write_series(
    folder: Path,
    hus: list[np.ndarray],
    positions: list[tuple[float, float, float]],
    orientations: list[tuple[float, ...]] | None = None,
    names: list[str] | None = None,
    series_uids: list[str] | None = None,
    slope: float = 1.0,
    intercept: float = -1024.0,
) -> list[Path]:
    """One DICOM file per slice; file k is named names[k] (default: the reverse of z order)."""
    folder.mkdir(parents=True, exist_ok=True)
    count = len(hus)
    names = names or [f"{count - k:03d}.dcm" for k in range(count)]
    series_uids = series_uids or [generate_uid(entropy_srcs=[str(folder)])] * count
    paths = []
    for k, hu in enumerate(hus):
        path = folder / names[k]
        medical_io.write_dicom_slice(
            path,
            hu,
            patient_id="p1",
            study_uid=generate_uid(entropy_srcs=[str(folder), "study"]),
            series_uid=series_uids[k],
            sop_uid=generate_uid(entropy_srcs=[str(folder), str(k)]),
            position=positions[k],
            pixel_spacing=(0.7, 0.7),
            slice_thickness=2.5,
            instance_number=k + 1,
            orientation=(orientations or [medical_io.AXIAL] * count)[k],
            slope=slope,
            intercept=intercept,
        )
        paths.append(path)
    return paths


def random_hu(count: int, seed: int = 0, shape: tuple[int, int] = (12, 10)) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(-1024, 3072, shape).astype(np.float32) for _ in range(count)]


def axial(zs: list[float]) -> list[tuple[float, float, float]]:
    return [(-20.0, -30.0, z) for z in zs]


# ---------------------------------------------------------------------------------------------------------
# DICOM files and series


@pytest.mark.parametrize(
    ("orientation", "normal"),
    [(medical_io.AXIAL, (0.0, 0.0, 1.0)), (SAGITTAL, (-1.0, 0.0, 0.0))],
)
def test_shuffled_series_is_read_in_z_order_with_exact_hu(tmp_path, orientation, normal):
    hus = random_hu(6)
    offsets = [0.0, 2.5, 5.0, 7.5, 10.0, 12.5]  # slice k lies offsets[k] mm along the normal
    positions = [tuple(float(7.0 + d * n) for n in normal) for d in offsets]
    names = ["b.dcm", "f.dcm", "a.dcm", "e.dcm", "c.dcm", "d.dcm"]  # name order is not z order
    order = np.random.default_rng(3).permutation(6)  # and files are written in shuffled order
    paths = write_series(
        tmp_path / "s",
        [hus[k] for k in order],
        [positions[k] for k in order],
        orientations=[orientation] * 6,
        names=[names[k] for k in order],
    )
    series = medical_io.read_dicom_series(tmp_path / "s")
    assert [p.name for p in series.files] == names
    assert series.normal == pytest.approx(normal)
    assert series.spacing == pytest.approx(2.5)
    assert np.allclose(np.diff(series.positions), 2.5)
    assert series.orientation == pytest.approx(orientation) and series.ignored == ()
    for k, path in enumerate(series.files):
        values = medical_io.read_dicom_hu(path)
        assert values.dtype == np.float32 and values.shape == (12, 10)
        assert np.array_equal(values, hus[k]), k
    assert len(paths) == 6


def test_missing_slice_is_refused_naming_the_gap(tmp_path):
    write_series(tmp_path / "gap", random_hu(5), axial([0.0, 2.5, 5.0, 10.0, 12.5]))
    with pytest.raises(CovidlensError, match=r"missing slice between z=5\.00 and z=10\.00") as error:
        medical_io.read_dicom_series(tmp_path / "gap")
    assert str(tmp_path / "gap") in str(error.value) and "\n" not in str(error.value)


def test_mixed_orientations_are_refused(tmp_path):
    orientations = [medical_io.AXIAL] * 3 + [SAGITTAL]  # a localizer among the axial slices
    write_series(tmp_path / "mixed", random_hu(4), axial([0.0, 2.5, 5.0, 7.5]), orientations=orientations)
    expected = r"mixed orientations \(2\): 3 file.* and 1 with \[0,1,0,0,0,-1\]"
    with pytest.raises(CovidlensError, match=expected) as error:
        medical_io.read_dicom_series(tmp_path / "mixed")
    assert str(tmp_path / "mixed") in str(error.value)


def test_duplicate_positions_and_two_series_are_refused(tmp_path):
    write_series(tmp_path / "dup", random_hu(3), axial([0.0, 2.5, 2.5]))
    with pytest.raises(CovidlensError, match=r"duplicate position z=2\.50"):
        medical_io.read_dicom_series(tmp_path / "dup")
    uids = [generate_uid(entropy_srcs=["a"])] * 2 + [generate_uid(entropy_srcs=["b"])]
    write_series(tmp_path / "two", random_hu(3), axial([0.0, 2.5, 5.0]), series_uids=uids)
    with pytest.raises(CovidlensError, match="2 series in one folder"):
        medical_io.read_dicom_series(tmp_path / "two")


def test_non_dicom_files_are_ignored_and_a_folder_without_dicom_is_refused(tmp_path):
    folder = tmp_path / "s"
    write_series(folder, random_hu(3), axial([0.0, 2.5, 5.0]))
    (folder / "notes.txt").write_text("scanner protocol")
    (folder / ".DS_Store").write_bytes(b"\0")
    series = medical_io.read_dicom_series(folder)
    assert len(series.files) == 3
    assert [(p.name, "not a DICOM file" in reason) for p, reason in series.ignored] == [("notes.txt", True)]
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(CovidlensError, match="no DICOM files"):
        medical_io.read_dicom_series(tmp_path / "empty")


def test_rescale_slope_and_intercept_are_honoured(tmp_path):
    hu = np.array([[-1000.0, -600.0], [0.0, 1200.0]], dtype=np.float32)
    [path] = write_series(tmp_path / "s", [hu], axial([0.0]), slope=2.0, intercept=-1000.0)
    stored = pydicom.dcmread(path).pixel_array
    assert stored.tolist() == [[0, 200], [500, 1100]]  # (HU + 1000) / 2
    assert np.array_equal(medical_io.read_dicom_hu(path), hu)


def test_not_dicom_and_no_pixel_data_are_clear_errors(tmp_path):
    png = tmp_path / "slice.dcm"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 200)
    with pytest.raises(CovidlensError, match="not a readable DICOM file") as error:
        medical_io.read_dicom_hu(png)
    assert str(png) in str(error.value)
    [path] = write_series(tmp_path / "s", random_hu(1), axial([0.0]))
    dataset = pydicom.dcmread(path)
    del dataset.PixelData
    dataset.save_as(path)
    with pytest.raises(CovidlensError, match="without pixel data") as error:
        medical_io.read_dicom_hu(path)
    assert str(path) in str(error.value)
    with pytest.raises(CovidlensError, match="no such DICOM file"):
        medical_io.read_dicom_hu(tmp_path / "missing.dcm")


# ---------------------------------------------------------------------------------------------------------
# NIfTI


def test_nifti_slices_follow_nibabel_canonical_orientation(tmp_path):
    data = np.arange(5 * 6 * 7, dtype=np.int16).reshape(5, 6, 7)
    affine = np.array([[0, 0.8, 0, 0], [0, 0, -0.8, 0], [-2.0, 0, 0, 0], [0, 0, 0, 1.0]])  # i: down, k: back
    image = nib.Nifti1Image(data, affine)
    image.header.set_slope_inter(2.0, -1024.0)
    path = tmp_path / "oblique.nii"
    nib.save(image, path)
    canonical = nib.as_closest_canonical(nib.load(path)).get_fdata()
    assert canonical.shape == (6, 7, 5) and medical_io.nifti_slice_count(path) == 5
    for k in range(5):
        expected = canonical[:, :, k].T[::-1, ::-1]  # rows anterior -> posterior, columns right -> left
        assert np.array_equal(medical_io.read_nifti_slice(path, k), expected.astype(np.float32))
    assert medical_io.read_nifti_slice(path, 0).min() < 0 <= data.min()  # scaled by slope 2, intercept -1024
    with pytest.raises(CovidlensError, match=r"slice 5 is out of range; the volume has 5 axial slices"):
        medical_io.read_nifti_slice(path, 5)


def test_written_nifti_volume_reads_back_inferior_first_and_cache_sees_rewrites(tmp_path):
    hus = random_hu(4, shape=(8, 6))
    path = tmp_path / "v.nii.gz"
    medical_io.write_nifti_volume(path, hus, (0.7, 0.5), [-5.0, -10.0, -15.0, -20.0])  # apex first
    assert nib.aff2axcodes(nib.load(path).affine) == ("L", "P", "I")
    assert [np.array_equal(medical_io.read_nifti_slice(path, k), hus[3 - k]) for k in range(4)] == [True] * 4
    assert nib.load(path).header.get_zooms() == pytest.approx((0.5, 0.7, 5.0))
    other = random_hu(4, seed=9, shape=(8, 6))
    medical_io.write_nifti_volume(path, other, (0.7, 0.5), [0.0, 5.0, 10.0, 15.0])  # now inferior first
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert np.array_equal(medical_io.read_nifti_slice(path, 1), other[1])
    with pytest.raises(CovidlensError, match="not a readable NIfTI file"):
        medical_io.nifti_slice_count(_text_file(tmp_path / "broken.nii.gz"))


def _text_file(path: Path) -> Path:
    path.write_text("not a volume")
    return path


# ---------------------------------------------------------------------------------------------------------
# synth's formats, the adapters and the decoder


@pytest.fixture(scope="module")
def synth_sets(tmp_path_factory) -> dict[str, tuple[Path, pd.DataFrame]]:
    """The same patients as png, nifti and dicom, and the lung-segmented png and nifti variants."""
    root = tmp_path_factory.mktemp("formats")
    variants = {
        "png": {},
        "nifti": {"format": "nifti"},
        "dicom": {"format": "dicom"},
        "png-seg": {"segmented": True},
        "nifti-seg": {"format": "nifti", "segmented": True},
    }
    return {
        name: (root / name, synth.synthesize("ct-volumes", root / name, **SYNTH, **options))
        for name, options in variants.items()
    }


def _by_scan(frame: pd.DataFrame) -> dict[str, list[str]]:
    """scan_id -> paths ordered by slice_index."""
    return {scan: list(rows.sort_values("slice_index").path) for scan, rows in frame.groupby("scan_id")}


def test_nifti_and_dicom_round_trips_give_the_hu_behind_the_pngs(synth_sets):
    png = _by_scan(synth_sets["png"][1])
    nifti, dicom = synth_sets["nifti"][1], synth_sets["dicom"][1]
    assert set(png) == set(nifti.scan_id) == set(dicom.scan_id)
    assert len(nifti) == len(dicom) == sum(map(len, png.values()))
    assert not list(synth_sets["dicom"][0].rglob("*.png")) and (dicom.mask_path == "").all()
    for scan, png_paths in png.items():
        count = len(png_paths)
        volume = nifti[nifti.scan_id == scan].sort_values("slice_index")
        assert list(volume.slice_index) == list(range(count)) and volume.path.nunique() == 1
        assert medical_io.nifti_slice_count(volume.path.iloc[0]) == count
        dicom_paths = _by_scan(dicom)[scan]
        for k in range(count):  # DICOM / NIfTI number slices inferior first, the PNGs apex first
            hu = medical_io.read_nifti_slice(volume.path.iloc[0], k)
            assert np.array_equal(hu, np.rint(hu)) and hu.min() < -1024  # whole HU; noisy air below -1024
            assert np.array_equal(medical_io.read_dicom_hu(dicom_paths[k]), np.maximum(hu, -1024))  # 12-bit DICOM
            difference = synth.lung_window(hu).astype(int) - read_image(png_paths[count - 1 - k]).astype(int)
            assert np.abs(difference).max() <= 1, (scan, k)


def test_dicom_files_are_ct_images_not_named_in_z_order(synth_sets):
    out, frame = synth_sets["dicom"]
    scan = frame[frame.scan_id == frame.scan_id.iloc[0]].sort_values("slice_index")
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in scan.path]
    z = [float(h.ImagePositionPatient[2]) for h in headers]
    assert z == sorted(z) and np.allclose(np.diff(z), np.diff(z)[0], atol=0.002)
    assert [h.InstanceNumber for h in headers] == list(range(len(z), 0, -1))  # acquired apex first
    assert [p for p in scan.path] != sorted(scan.path)
    first = headers[0]
    assert first.SOPClassUID == medical_io.CT_IMAGE_STORAGE and first.Modality == "CT"
    assert (float(first.RescaleIntercept), float(first.RescaleSlope)) == (-1024.0, 1.0)
    assert first.PatientID == scan.patient_id.iloc[0] and first.Rows == first.Columns == 64
    assert len({h.SeriesInstanceUID for h in headers}) == 1
    assert float(first.PixelSpacing[0]) == pytest.approx(synth.FIELD_OF_VIEW_MM / 64)


def test_formats_are_reproducible_and_unknown_format_is_refused(synth_sets, tmp_path):
    again = synth.synthesize("ct-volumes", tmp_path / "again", **SYNTH, format="dicom")
    first = synth_sets["dicom"][1]
    assert [Path(p).name for p in again.path] == [Path(p).name for p in first.path]
    assert all(Path(a).read_bytes() == Path(b).read_bytes() for a, b in zip(again.path, first.path, strict=True))
    with pytest.raises(CovidlensError, match="format='jpg' is not one of png, nifti, dicom"):
        synth.synthesize("ct-volumes", tmp_path / "jpg", **SYNTH, format="jpg")
    with pytest.raises(CovidlensError, match="has no option format"):
        synth.synthesize("ct-slices", tmp_path / "slices", patients=3, format="dicom")


def test_decoder_uses_the_default_hu_window_for_dicom_and_nifti_frames(synth_sets):
    dicom = synth_sets["dicom"][1].iloc[0]
    hu = medical_io.read_dicom_hu(dicom.path)
    expected = np.round(window_hu(hu, *DEFAULT_HU_WINDOW) * 255.0).astype(np.uint8)
    assert np.array_equal(load_gray_uint8(dicom.path, 64), expected)
    assert not np.array_equal(load_gray_uint8(dicom.path, 64, window=(40.0, 400.0)), expected)
    nifti = synth_sets["nifti"][1]
    row = nifti[nifti.slice_index == 2].iloc[0]
    hu = medical_io.read_nifti_slice(row.path, 2)
    expected = np.round(window_hu(hu, *DEFAULT_HU_WINDOW) * 255.0).astype(np.uint8)
    assert np.array_equal(load_gray_uint8(row.path, 64, frame=int(row.slice_index)), expected)


def test_dicom_adapter_indexes_synth_series_in_z_order(synth_sets):
    out, written = synth_sets["dicom"]
    assert detect_layout(out) == "dicom"
    result = index_dataset(out)
    manifest = result.manifest
    assert result.layout == "dicom" and result.skipped == []
    assert len(manifest) == len(written) and manifest.patient_id.nunique() == 3
    scans = zip(written.patient_id, written.scan_id, strict=True)
    assert set(manifest.scan_id) == {f"{pid}/{scan}" for pid, scan in scans}
    assert (manifest.source == "dicom").all() and (manifest.modality == "ct").all()
    expected = dict(zip(written.path, written.slice_index, strict=True))
    assert dict(zip(manifest.path, manifest.slice_index, strict=True)) == expected
    for _, rows in manifest.groupby("scan_id"):
        ordered = rows.sort_values("slice_index")
        assert list(ordered.slice_index) == list(range(len(rows)))
        z = [float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]) for p in ordered.path]
        assert z == sorted(z)
    row = manifest.iloc[0]
    assert row.sample_id == Path(row.path).relative_to(out).as_posix()


def test_dicom_adapter_refuses_a_series_with_a_missing_slice(tmp_path):
    data = tmp_path / "data"
    synth.synthesize("ct-volumes", data, patients=3, size=32, slices=(5, 5), format="dicom")
    (data / "NCP" / "notes.txt").write_text("not indexed, not an image")
    result = index_dataset(data)
    assert result.skipped == [("NCP/notes.txt", "not in a DICOM series folder; not indexed")]
    manifest = result.manifest
    scan = manifest[manifest.scan_id == manifest.scan_id.iloc[0]].sort_values("slice_index")
    Path(scan.path.iloc[2]).unlink()
    series_folder = Path(scan.path.iloc[0]).parent
    with pytest.raises(CovidlensError, match="missing slice between") as error:
        index_dataset(data)
    assert str(series_folder) in str(error.value)


def test_nifti_adapter_indexes_one_row_per_axial_slice(synth_sets):
    out, written = synth_sets["nifti"]
    assert detect_layout(out) == "nifti"
    result = index_dataset(out)
    manifest = result.manifest
    assert result.layout == "nifti" and result.skipped == []
    assert len(manifest) == len(written) and manifest.patient_id.nunique() == 3
    assert set(manifest.scan_id) == set(written.scan_id) and (manifest.patient_id_from == "csv").all()
    for scan, rows in manifest.groupby("scan_id"):
        assert list(rows.sample_id) == [f"{scan}/{k:04d}" for k in range(len(rows))]
        assert list(rows.slice_index) == list(range(len(rows)))
    first = manifest.iloc[3]
    assert np.array_equal(
        load_gray_uint8(first.path, 64, frame=int(first.slice_index)),
        load_gray_uint8(first.path, 64, frame=3),
    )


def test_nifti_adapter_skips_unlisted_volumes_and_refuses_rows_naming_missing_files(synth_sets, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(synth_sets["nifti"][0], data)
    table = pd.read_csv(data / "labels.csv")
    extra = data / "volumes" / "extra.nii.gz"
    shutil.copy(data / table.file.iloc[0], extra)
    table = table.drop(columns=["patient_id", "scan_id"]).rename(columns={"file": "name"})
    table["name"] = [Path(f).name for f in table.name]  # bare file names are found below the folder
    table.to_csv(data / "labels.csv", index=False)
    result = index_dataset(data)
    assert result.skipped == [("volumes/extra.nii.gz", "not in labels.csv; add a row (file, label) to use it")]
    assert set(result.manifest.patient_id) == set(result.manifest.scan_id) == {Path(n).name[:-7] for n in table.name}
    assert (result.manifest.patient_id_from == "layout").all()
    pd.concat([table, pd.DataFrame([{"name": "gone.nii.gz", "label": "NCP"}])]).to_csv(data / "labels.csv", index=False)
    with pytest.raises(CovidlensError, match=r"row \d+: file 'gone.nii.gz' not found under"):
        index_dataset(data)


def _lung_masks(seed: int, index: int) -> list[np.ndarray]:
    """The true lung masks of patient `index`'s first scan, drawn as synth_ct_volumes draws them."""
    label = synth.patient_labels(SYNTH["patients"], synth.VOLUME_CLASS_SHARES)[index]
    anatomy_rng, findings_rng, scan_rng = synth.patient_streams(seed, index)
    phantom = synth.make_phantom(synth.VOLUME_PHANTOM_LABELS[label], 0.5, anatomy_rng, findings_rng)
    count = int(scan_rng.integers(SYNTH["slices"][0], SYNTH["slices"][1] + 1))
    heights = synth.slice_heights(scan_rng, count)
    return [synth.render_hu_slice(phantom, float(z), SYNTH["size"]).lung for z in heights]


def test_segmented_variant_keeps_the_lungs_and_blanks_the_rest(synth_sets):
    complete, segmented = _by_scan(synth_sets["png"][1]), _by_scan(synth_sets["png-seg"][1])
    assert complete.keys() == segmented.keys()
    label = synth.patient_labels(SYNTH["patients"], synth.VOLUME_CLASS_SHARES)[0]
    scan = f"{synth.patient_id(label, 0, SYNTH['patients'])}_s1"  # patient 0's first scan
    lungs = _lung_masks(SYNTH["seed"], 0)
    assert len(lungs) == len(complete[scan]) and sum(lung.sum() for lung in lungs) > 0
    for lung, full_path, seg_path in zip(lungs, complete[scan], segmented[scan], strict=True):
        full, seg = read_image(full_path), read_image(seg_path)
        assert (seg[~lung] == 0).all() and np.array_equal(seg[lung], full[lung])
    nifti, nifti_seg = synth_sets["nifti"][1], synth_sets["nifti-seg"][1]
    path, seg_path = (f[f.scan_id == scan].path.iloc[0] for f in (nifti, nifti_seg))
    for k, lung in enumerate(reversed(lungs)):  # NIfTI slices run inferior first
        full, seg = medical_io.read_nifti_slice(path, k), medical_io.read_nifti_slice(seg_path, k)
        assert (seg[~lung] == -1000.0).all() and np.array_equal(seg[lung], full[lung])


def test_cli_writes_dicom_and_nifti_and_index_detects_them(tmp_path):
    runner = CliRunner()
    common = ["--patients", "3", "--size", "32", "--min-slices", "2", "--max-slices", "3"]
    for image_format, layout in (("dicom", "dicom"), ("nifti", "nifti")):
        out = tmp_path / image_format
        result = runner.invoke(app, ["synth", "ct-volumes", str(out), "--format", image_format, *common])
        assert result.exit_code == 0, result.output
        assert any(out.rglob("*.dcm" if image_format == "dicom" else "*.nii.gz"))
        manifest = tmp_path / f"{image_format}.csv"
        result = runner.invoke(app, ["index", str(out), "-o", str(manifest)])
        assert result.exit_code == 0, result.output
        assert f"layout: {layout}" in result.output
        assert pd.read_csv(manifest).patient_id.nunique() == 3
    result = runner.invoke(app, ["synth", "ct-volumes", str(tmp_path / "seg"), "--segmented", *common])
    assert result.exit_code == 0 and not list((tmp_path / "seg").rglob("*.dcm"))
    result = runner.invoke(app, ["synth", "ct-slices", str(tmp_path / "s"), "--format", "dicom", *common])
    assert isinstance(result.exception, CovidlensError) and "no option format" in str(result.exception)
