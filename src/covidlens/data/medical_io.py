"""CT in Hounsfield units (HU) from DICOM files, DICOM series and NIfTI volumes, and writers for both.

Orientation convention: every 2D slice this module returns is a radiological axial image. Rows run
from anterior (top) to posterior (bottom) and columns from the patient's right (image left) to the
patient's left, which is DICOM's ImageOrientationPatient [1, 0, 0, 0, 1, 0] and how the synthetic
phantoms are drawn. Slices of a volume are numbered inferior to superior (ascending patient z).

- A DICOM file is returned as stored (rows x columns); `read_dicom_series` orders a folder's files by
  their position along the slice normal and refuses series that are not one contiguous stack.
- A NIfTI volume is reoriented as `nibabel.as_closest_canonical` does (RAS+: the third axis runs
  inferior to superior), and its axial slice k is returned transposed and flipped in both axes, so rows
  run anterior to posterior and columns right to left.

pydicom and nibabel are imported lazily, when such files are met.
"""

from __future__ import annotations

import os
import threading
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from covidlens.errors import CovidlensError

DICOM_SUFFIX = ".dcm"
NIFTI_SUFFIXES = (".nii", ".nii.gz")
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)  # ImageOrientationPatient of an axial slice (LPS)
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
STORED_BITS = 12  # written pixels are unsigned 12-bit: HU -1024..3071 with the default intercept
HU_MIN = -1024.0  # the default RescaleIntercept: written DICOM holds HU -1024..3071, clipped outside
GAP_FACTOR = 1.5  # a step this many times the median step between slices means a missing slice
DUPLICATE_MM = 0.01  # slices closer than this along the normal are at the same position
ORIENTATION_TOLERANCE = 1e-4  # direction cosines closer than this are the same orientation
VOLUME_CACHE_SIZE = 3  # NIfTI volumes kept decoded: consecutive reads are slices of one file


# ---------------------------------------------------------------------------------------------------------
# DICOM


def _pydicom() -> Any:
    import pydicom

    return pydicom


def _number(value: object, default: float) -> float:
    """A DICOM numeric value as a float; blank or missing gives `default`."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    return float(value)  # type: ignore[arg-type]


def _read_dataset(path: Path) -> Any:
    """The parsed DICOM file; CovidlensError when it is missing or not DICOM."""
    pydicom = _pydicom()
    try:
        return pydicom.dcmread(path)
    except FileNotFoundError:
        raise CovidlensError(f"{path}: no such DICOM file") from None
    except (pydicom.errors.InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as exc:
        raise CovidlensError(f"{path}: not a readable DICOM file ({exc}); remove it or re-export it") from None


def read_dicom_hu(path: str | Path) -> np.ndarray:
    """One DICOM slice in HU as float32 (rows x columns): stored pixels * RescaleSlope + RescaleIntercept."""
    path = Path(path)
    dataset = _read_dataset(path)
    if "PixelData" not in dataset:
        raise CovidlensError(f"{path}: DICOM file without pixel data (not an image slice); remove it")
    if int(_number(dataset.get("SamplesPerPixel"), 1)) != 1:
        raise CovidlensError(f"{path}: colour DICOM image; a CT slice has one sample per pixel")
    if int(_number(dataset.get("NumberOfFrames"), 1)) != 1:
        raise CovidlensError(f"{path}: multi-frame DICOM is not supported; export the series as one file per slice")
    try:
        pixels = dataset.pixel_array
    except (NotImplementedError, RuntimeError, ValueError, AttributeError, TypeError) as exc:
        syntax = getattr(dataset.file_meta, "TransferSyntaxUID", "unknown")
        raise CovidlensError(
            f"{path}: cannot decode the pixel data (transfer syntax {syntax}: {exc}); install a decoder "
            "(e.g. pip install pylibjpeg pylibjpeg-libjpeg) or re-export it uncompressed"
        ) from None
    if pixels.ndim != 2:
        raise CovidlensError(f"{path}: pixel data of shape {pixels.shape} is not one 2D slice")
    try:
        slope = _number(dataset.get("RescaleSlope"), 1.0)
        intercept = _number(dataset.get("RescaleIntercept"), 0.0)
    except (TypeError, ValueError) as exc:
        raise CovidlensError(f"{path}: unreadable RescaleSlope / RescaleIntercept ({exc})") from None
    return pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)


@dataclass(frozen=True)
class DicomSeries:
    """One DICOM series: its slice files in z order (ascending position along the slice normal)."""

    folder: Path
    files: tuple[Path, ...]
    positions: tuple[float, ...]  # mm along the normal, ascending
    spacing: float | None  # median step between slices in mm; None for a one-slice series
    orientation: tuple[float, ...]  # ImageOrientationPatient: row then column direction cosines
    normal: tuple[float, float, float]  # row x column: the direction slices are ordered along
    series_uid: str
    ignored: tuple[tuple[Path, str], ...] = ()  # files of the folder that are not slices, with the reason


@dataclass(frozen=True)
class _SliceHeader:
    path: Path
    position: np.ndarray
    orientation: np.ndarray
    series_uid: str


def _slice_header(path: Path) -> _SliceHeader | str:
    """The header fields that place a slice, or why the file is not a slice of a volume."""
    pydicom = _pydicom()
    try:
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
    except (pydicom.errors.InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as exc:
        return f"not a DICOM file ({exc})"
    try:
        position = np.array([float(v) for v in dataset.ImagePositionPatient], dtype=np.float64)
        orientation = np.array([float(v) for v in dataset.ImageOrientationPatient], dtype=np.float64)
    except AttributeError:
        return "DICOM file without ImagePositionPatient / ImageOrientationPatient (not a slice of a volume)"
    except (TypeError, ValueError) as exc:
        return f"unreadable ImagePositionPatient / ImageOrientationPatient ({exc})"
    if position.shape != (3,) or orientation.shape != (6,):
        return f"malformed ImagePositionPatient {list(position)} / ImageOrientationPatient {list(orientation)}"
    return _SliceHeader(path, position, orientation, str(dataset.get("SeriesInstanceUID", "")))


def _format_orientation(orientation: np.ndarray) -> str:
    return "[" + ",".join(f"{v:g}" for v in np.round(orientation, 4)) + "]"


def read_dicom_series(folder: str | Path) -> DicomSeries:
    """Read the headers of a folder's DICOM files and order them along the slice normal, checking that they
    form one contiguous series (one SeriesInstanceUID, one orientation, no duplicate position, no gap).

    Files that are not DICOM slices are left out and listed in `ignored`; sub-folders are not read.
    """
    folder = Path(folder)
    try:
        names = sorted(e.name for e in os.scandir(folder) if e.is_file() and not e.name.startswith("."))
    except OSError as exc:
        raise CovidlensError(f"{folder}: cannot list this DICOM series folder ({exc.strerror or exc})") from None
    headers: list[_SliceHeader] = []
    ignored: list[tuple[Path, str]] = []
    for name in names:
        found = _slice_header(folder / name)
        if isinstance(found, str):
            ignored.append((folder / name, found))
        else:
            headers.append(found)
    if not headers:
        raise CovidlensError(f"{folder}: no DICOM files (slices with a position) found in this series folder")
    uids = sorted({h.series_uid for h in headers})
    if len(uids) > 1:
        shown = ", ".join(repr(u) for u in uids[:2])
        raise CovidlensError(
            f"{folder}: {len(uids)} series in one folder (SeriesInstanceUID {shown}...); "
            "put each series in its own folder"
        )
    orientation = _single_orientation(folder, headers)
    row, column = orientation[:3], orientation[3:]
    normal = np.cross(row, column)
    length = float(np.linalg.norm(normal))
    if length < 1e-6:
        raise CovidlensError(f"{folder}: ImageOrientationPatient {_format_orientation(orientation)} is degenerate")
    normal /= length
    along = np.array([float(h.position @ normal) for h in headers])
    order = np.argsort(along, kind="stable")
    positions = along[order]
    files = [headers[i].path for i in order]
    steps = np.diff(positions)
    for i, step in enumerate(steps):
        if step < DUPLICATE_MM:
            raise CovidlensError(
                f"{folder}: duplicate position z={positions[i]:.2f} mm ({files[i].name} and {files[i + 1].name}); "
                "remove the repeated slice"
            )
    spacing = float(np.median(steps)) if len(steps) else None
    if spacing is not None:
        for i, step in enumerate(steps):
            if step > GAP_FACTOR * spacing:
                raise CovidlensError(
                    f"{folder}: missing slice between z={positions[i]:.2f} and z={positions[i + 1]:.2f} mm "
                    f"(a {step:.2f} mm step where slices are {spacing:.2f} mm apart); the series is incomplete"
                )
    return DicomSeries(
        folder=folder,
        files=tuple(files),
        positions=tuple(float(p) for p in positions),
        spacing=spacing,
        orientation=tuple(float(v) for v in orientation),
        normal=(float(normal[0]), float(normal[1]), float(normal[2])),
        series_uid=uids[0],
        ignored=tuple(ignored),
    )


def _single_orientation(folder: Path, headers: list[_SliceHeader]) -> np.ndarray:
    """The one ImageOrientationPatient of the headers; CovidlensError naming the two commonest otherwise."""
    groups: list[list[_SliceHeader]] = []
    for header in headers:
        for group in groups:
            if np.allclose(header.orientation, group[0].orientation, atol=ORIENTATION_TOLERANCE):
                group.append(header)
                break
        else:
            groups.append([header])
    if len(groups) > 1:
        most, other = sorted(groups, key=len, reverse=True)[:2]
        raise CovidlensError(
            f"{folder}: mixed orientations ({len(groups)}): {len(most)} file(s) with ImageOrientationPatient "
            f"{_format_orientation(most[0].orientation)} and {len(other)} with "
            f"{_format_orientation(other[0].orientation)} (e.g. {other[0].path.name}); "
            "keep one series per folder (remove scouts / localizers)"
        )
    return groups[0][0].orientation


def write_dicom_slice(
    path: str | Path,
    hu: np.ndarray,
    *,
    patient_id: str,
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    position: Sequence[float],
    pixel_spacing: tuple[float, float],
    slice_thickness: float,
    instance_number: int,
    orientation: Sequence[float] = AXIAL,
    slope: float = 1.0,
    intercept: float = HU_MIN,
) -> None:
    """Write one CT Image Storage file: pixels round((HU - intercept) / slope), clipped to unsigned 12 bits."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    stored = np.rint((np.asarray(hu, dtype=np.float64) - intercept) / slope)
    pixels = np.clip(stored, 0, 2**STORED_BITS - 1).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[series_uid, "frame of reference"])
    ds.Modality = "CT"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.PatientID = patient_id
    ds.PatientName = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyDate = ""
    ds.StudyTime = ""
    ds.StudyID = ""
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.Manufacturer = "covidlens"
    ds.SeriesNumber = 1
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = int(instance_number)
    ds.KVP = ""
    ds.PositionReferenceIndicator = ""
    ds.ImagePositionPatient = [_ds(v) for v in position]
    ds.ImageOrientationPatient = [_ds(v) for v in orientation]
    ds.PixelSpacing = [_ds(v) for v in pixel_spacing]
    ds.SliceThickness = _ds(slice_thickness)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = (int(n) for n in pixels.shape)
    ds.BitsAllocated = 16
    ds.BitsStored = STORED_BITS
    ds.HighBit = STORED_BITS - 1
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = _ds(intercept)
    ds.RescaleSlope = _ds(slope)
    ds.RescaleType = "HU"
    ds.PixelData = pixels.tobytes()
    try:
        ds.save_as(path, enforce_file_format=True)
    except OSError as exc:
        raise CovidlensError(f"could not write {path} ({exc.strerror or exc}); check the folder is writable") from None


def _ds(value: float) -> str:
    """A decimal string (DICOM DS, at most 16 characters) for a float."""
    text = f"{float(value):.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


# ---------------------------------------------------------------------------------------------------------
# NIfTI


def _nibabel() -> Any:
    import nibabel

    return nibabel


@dataclass(frozen=True)
class _Volume:
    data: np.ndarray  # stored values, axes in RAS+ order (as nibabel.as_closest_canonical gives)
    slope: float
    inter: float


_VOLUMES: OrderedDict[tuple[str, int, int], _Volume] = OrderedDict()
_VOLUMES_LOCK = threading.Lock()


def _canonical_orientation(path: Path, image: Any) -> np.ndarray:
    """nibabel's io_orientation of the image (the transform as_closest_canonical applies), checked."""
    nibabel = _nibabel()
    shape = image.shape
    if len(shape) < 3 or any(n != 1 for n in shape[3:]):
        raise CovidlensError(f"{path}: a NIfTI of shape {tuple(shape)} is not a 3D CT volume")
    orientation = nibabel.orientations.io_orientation(image.affine)
    if np.isnan(orientation).any():
        raise CovidlensError(f"{path}: the NIfTI affine has no clear orientation; fix its header (sform / qform)")
    return orientation


def _load_nifti(path: Path) -> Any:
    nibabel = _nibabel()
    if not path.is_file():
        raise CovidlensError(f"{path}: no such NIfTI file")
    try:
        return nibabel.load(str(path))
    except (nibabel.filebasedimages.ImageFileError, OSError, EOFError, ValueError, zlib.error) as exc:
        raise CovidlensError(f"{path}: not a readable NIfTI file ({exc}); remove it or re-export it") from None


def nifti_slice_count(path: str | Path) -> int:
    """Number of axial slices of a NIfTI volume (its third axis once reoriented to RAS+); reads the header."""
    path = Path(path)
    image = _load_nifti(path)
    orientation = _canonical_orientation(path, image)
    axis = int(np.flatnonzero(orientation[:, 0] == 2)[0])
    return int(image.shape[axis])


def _read_volume(path: Path) -> _Volume:
    nibabel = _nibabel()
    image = _load_nifti(path)
    orientation = _canonical_orientation(path, image)
    proxy = image.dataobj
    try:
        raw = np.asanyarray(proxy.get_unscaled() if hasattr(proxy, "get_unscaled") else proxy)
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        raise CovidlensError(f"{path}: truncated or corrupt NIfTI data ({exc}); re-export it") from None
    slope = float(getattr(proxy, "slope", 1.0))
    inter = float(getattr(proxy, "inter", 0.0))
    data = nibabel.orientations.apply_orientation(raw.reshape(raw.shape[:3]), orientation)
    return _Volume(data, slope, inter)


def _cached_volume(path: Path) -> _Volume:
    """The decoded volume, from a small cache keyed by (path, mtime, size)."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise CovidlensError(f"{path}: no such NIfTI file") from None
    key = (os.path.abspath(path), stat.st_mtime_ns, stat.st_size)
    with _VOLUMES_LOCK:
        volume = _VOLUMES.get(key)
        if volume is not None:
            _VOLUMES.move_to_end(key)
            return volume
    volume = _read_volume(path)
    with _VOLUMES_LOCK:
        _VOLUMES[key] = volume
        while len(_VOLUMES) > VOLUME_CACHE_SIZE:
            _VOLUMES.popitem(last=False)
    return volume


def read_nifti_slice(path: str | Path, frame: int) -> np.ndarray:
    """Axial slice `frame` (0 = most inferior) of a NIfTI volume in HU as float32, rows anterior to posterior
    and columns from the patient's right to left (see the module docstring)."""
    path = Path(path)
    volume = _cached_volume(path)
    count = volume.data.shape[2]
    if not 0 <= int(frame) < count:
        raise CovidlensError(
            f"{path}: slice {frame} is out of range; the volume has {count} axial slices (0..{count - 1}); "
            "re-index the data"
        )
    # RAS+ axes: i runs toward the patient's right, j toward anterior; the image wants rows toward posterior
    # and columns toward the patient's left, so transpose (rows = j, columns = i) and flip both.
    plane = volume.data[:, :, int(frame)].T[::-1, ::-1]
    values = plane.astype(np.float32) * np.float32(volume.slope) + np.float32(volume.inter)
    return np.ascontiguousarray(values, dtype=np.float32)


def write_nifti_volume(
    path: str | Path, slices: Sequence[np.ndarray], pixel_spacing: tuple[float, float], z_positions: Sequence[float]
) -> None:
    """Write radiological axial slices (evenly spaced, in any z order) as one int16 HU volume.

    Stored in the order given, data[:, :, s] = slices[s].T, with the affine diag(-column spacing, -row
    spacing, z step) (an LPS-like layout); `read_nifti_slice` gives the slices back inferior to superior.
    `pixel_spacing` is (row spacing, column spacing) in mm, as DICOM's PixelSpacing. The stored int16
    values are the HU themselves, rounded (no scaling in the header; unlike DICOM's 12 bits, nothing
    below -1024 is clipped).
    """
    nibabel = _nibabel()
    z = np.asarray(z_positions, dtype=np.float64)
    if len(slices) != len(z) or not len(z):
        raise CovidlensError(f"{path}: {len(slices)} slices but {len(z)} z positions")
    step = float((z[-1] - z[0]) / (len(z) - 1)) if len(z) > 1 else 1.0
    if len(z) > 1 and (abs(step) < DUPLICATE_MM or not np.allclose(np.diff(z), step, atol=1e-3 * abs(step))):
        raise CovidlensError(f"{path}: z positions {list(z)} are not evenly spaced")
    stack = np.stack([np.asarray(s, dtype=np.float64).T for s in slices], axis=2)
    limits = np.iinfo(np.int16)
    data = np.rint(np.clip(stack, limits.min, limits.max)).astype(np.int16)
    row_mm, column_mm = (float(v) for v in pixel_spacing)  # DICOM PixelSpacing order
    affine = np.diag([-column_mm, -row_mm, step, 1.0])
    affine[:3, 3] = [(data.shape[0] - 1) / 2 * column_mm, (data.shape[1] - 1) / 2 * row_mm, z[0]]
    image = nibabel.Nifti1Image(data, affine)
    image.header.set_data_dtype(np.int16)
    image.header.set_xyzt_units("mm", "sec")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    try:
        nibabel.save(image, str(path))
    except OSError as exc:
        raise CovidlensError(f"could not write {path} ({exc.strerror or exc}); check the folder is writable") from None
