"""Helpers every dataset adapter shares: finding and checking images, patient ids, manifest rows."""

from __future__ import annotations

import io
import os
import re
import unicodedata
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import pandas as pd
from PIL import Image, UnidentifiedImageError

from covidlens.data.adapters.base import IndexOptions, IndexResult
from covidlens.data.manifest import IMAGE_WISE, MASK_SUFFIX, make_manifest
from covidlens.errors import CovidlensError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})
# The synthetic generator writes a slice's lesion mask beside it as `<stem>.mask.png`.
IMAGE_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*", b"BM")
NO_PATIENTS_HINT = (
    "pass --patient-regex REGEX (its first group, searched in each file's path relative to the data "
    "folder, is the patient) or --no-patients (image-wise: splits may leak, and reports will say so)"
)
SHOWN = 5  # how many offending files an error message names


class IndexWarning(UserWarning):
    """Something in the data that the user should know about but that does not stop indexing."""


@dataclass
class Candidate:
    """An image an adapter found, before it is checked and given its final patient id."""

    path: Path
    label: str
    patient_id: str = ""  # from the layout; "" when the layout gives none
    scan_id: str = ""  # "" means the patient id
    slice_index: int = -1
    split: str | None = None  # None: the layout has no fixed split
    sample_id: str = ""  # "" means the path relative to the dataset root
    patient_id_from: str = "layout"
    mask_path: str | None = None  # None: use `<stem>.mask.png` beside the image when it exists
    extra: dict[str, str] = field(default_factory=dict)  # further manifest columns (CSV manifests)


class ImageListing(NamedTuple):
    """The image files under a folder, and the other (non-image) files found beside them."""

    images: list[Path]
    not_images: list[Path]


def natural_key(text: str) -> tuple:
    """Sort key that orders digit runs by value, so slice_2 comes before slice_10."""
    parts = re.split(r"(\d+)", text.casefold())  # odd positions hold the digit runs
    return tuple(int(part) if i % 2 else part for i, part in enumerate(parts)), text


def is_hidden(name: str) -> bool:
    """True for dot-files and dot-folders (.DS_Store, ._x.png, .ipynb_checkpoints) and macOS zip debris."""
    return name.startswith(".") or name == "__MACOSX"


def is_mask(path: Path) -> bool:
    """True for a lesion mask written beside a slice."""
    return path.name.lower().endswith(MASK_SUFFIX)


def is_image_file(path: Path) -> bool:
    """True when the extension is an image one (case-insensitive) and the file is not a mask."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not is_mask(path)


def mask_path_for(image: Path) -> Path:
    """Where the lesion mask of `image` lives, if it has one."""
    return image.with_name(image.name[: -len(image.suffix)] + MASK_SUFFIX)


def refuse_unreadable_folder(error: OSError) -> None:
    """os.walk error handler: a folder that cannot be listed is an error, not silently missing data."""
    raise CovidlensError(f"{error.filename}: cannot list this folder ({error.strerror}); check permissions")


def walk_files(folder: Path) -> Iterator[Path]:
    """Yield the non-hidden files below `folder` (recursively) in natural order of their paths."""
    for current, dirs, files in os.walk(folder, onerror=refuse_unreadable_folder):
        dirs[:] = sorted((d for d in dirs if not is_hidden(d)), key=natural_key)
        for name in sorted((f for f in files if not is_hidden(f)), key=natural_key):
            yield Path(current, name)


def list_images(folder: Path) -> ImageListing:
    """The image files below `folder`, naturally sorted, apart from masks, plus the other files."""
    images: list[Path] = []
    not_images: list[Path] = []
    for path in walk_files(folder):
        if is_image_file(path):
            images.append(path)
        elif not is_mask(path):
            not_images.append(path)
    return ImageListing(images, not_images)


def has_files(folder: Path) -> bool:
    """True when any non-hidden file lies below `folder`."""
    return next(walk_files(folder), None) is not None


def has_images(folder: Path) -> bool:
    """True when any image file lies below `folder`."""
    return any(is_image_file(path) for path in walk_files(folder))


def subfolders(folder: Path) -> list[Path]:
    """The non-hidden folders directly in `folder`, naturally sorted."""
    try:
        entries = list(folder.iterdir())
    except (NotADirectoryError, FileNotFoundError):
        return []
    folders = [e for e in entries if e.is_dir() and not is_hidden(e.name)]
    return sorted(folders, key=lambda e: natural_key(e.name))


def find_child(folder: Path, name: str, want_dir: bool = True) -> Path | None:
    """The entry of `folder` called `name` in any letter case, or None; two such entries is an error."""
    if not folder.is_dir():
        return None
    matches = [
        e for e in folder.iterdir() if e.name.casefold() == name.casefold() and e.is_dir() == want_dir
    ]
    if len(matches) > 1:
        names = ", ".join(sorted(e.name for e in matches))
        raise CovidlensError(f"{folder}: both {names} exist; keep one of them")
    return matches[0] if matches else None


def unwrap_enclosing_folder(path: Path, max_depth: int = 3) -> Path:
    """Step into a folder's only entry while it is a folder (as unzipping often leaves it)."""
    for _ in range(max_depth):
        if not path.is_dir():
            return path
        entries = [e for e in path.iterdir() if not is_hidden(e.name)]
        if len(entries) != 1 or not entries[0].is_dir():
            return path
        path = entries[0]
    return path


def match_class_folders(root: Path, labels: dict[str, str], unknown: str | None = None) -> dict[str, Path]:
    """Map canonical label -> folder for folders of `root` named (any case) as the keys of `labels`.

    Other folders are passed over, or, when `unknown` says what is allowed and what to do, refused:
    "<folder>: folder 'x' is not <unknown>".
    """
    found: dict[str, Path] = {}
    for folder in subfolders(root):
        label = labels.get(folder.name.casefold())
        if label is None:
            if unknown is not None:
                raise CovidlensError(f"{folder}: folder {folder.name!r} is not {unknown}")
            continue
        if label in found:
            raise CovidlensError(f"{root}: both {found[label].name} and {folder.name} exist; keep one")
        found[label] = folder
    return found


def class_folder_names(root: Path) -> set[str]:
    """The case-folded names of the folders directly in `root`."""
    return {folder.name.casefold() for folder in subfolders(root)}


def numbered_slices(images: list[Path]) -> list[int] | None:
    """The numbers the slices of one folder are named by (`0007.png` -> 7), in the order given.

    None when some name is not a plain number (ASCII digits) or two names give the same number.
    """
    stems = [path.name[: -len(path.suffix)] for path in images]
    if not all(re.fullmatch(r"[0-9]+", stem) for stem in stems):
        return None
    numbers = [int(stem) for stem in stems]
    return numbers if len(set(numbers)) == len(numbers) else None


def class_folder_candidates(class_dir: Path, label: str,
                            numbered: bool = False) -> tuple[list[Candidate], list[Path]]:
    """Images of one class folder; the first sub-folder level is the patient, deeper levels the scan.

    Images directly in the class folder get no patient id. slice_index is the natural order of an
    image among the image files of its folder (corrupt ones included, so a bad file leaves a gap
    rather than renumbering its neighbours). With `numbered`, slices named by their number
    (`0000.png`, `0001.png`, ...) get that number instead, for every image of a folder whose names are
    all distinct plain numbers; other folders keep the natural order.
    """
    listing = list_images(class_dir)
    in_folder: dict[Path, list[Path]] = {}
    for path in listing.images:
        if path.parent != class_dir:
            in_folder.setdefault(path.parent, []).append(path)
    slice_index: dict[Path, int] = {}
    for images in in_folder.values():
        numbers = (numbered_slices(images) if numbered else None) or range(len(images))
        slice_index.update(zip(images, numbers, strict=True))
    candidates: list[Candidate] = []
    for path in listing.images:
        parts = path.relative_to(class_dir).parts
        if len(parts) == 1:
            candidates.append(Candidate(path=path, label=label))
            continue
        scan = "/".join(parts[:-1])
        candidates.append(
            Candidate(path, label, patient_id=parts[0], scan_id=scan, slice_index=slice_index[path])
        )
    return candidates, listing.not_images


def prefix_shared_patient_names(candidates: list[Candidate]) -> None:
    """Prefix every patient (and scan) id with its class when a patient folder name occurs in two classes.

    The folder name alone is the id when names are unique (as in paper 000's set and the synthetic
    data); otherwise `patient1` under COVID and under Healthy would merge into one patient.
    """
    classes_of: dict[str, set[str]] = {}
    for candidate in candidates:
        if candidate.patient_id:
            classes_of.setdefault(candidate.patient_id, set()).add(candidate.label)
    if all(len(labels) == 1 for labels in classes_of.values()):
        return
    for candidate in candidates:
        if candidate.patient_id:
            candidate.patient_id = f"{candidate.label}/{candidate.patient_id}"
            candidate.scan_id = f"{candidate.label}/{candidate.scan_id}"


def collect_class_folders(dataset_root: Path, root: Path, class_dirs: dict[str, Path],
                          numbered: bool = False) -> tuple[list[Candidate], list[tuple[str, str]]]:
    """Candidates of every class folder (label -> folder), and skipped entries for stray files.

    `numbered`: slice_index from numeric slice names, as `class_folder_candidates` describes.
    """
    candidates: list[Candidate] = []
    skipped: list[tuple[str, str]] = []
    for label, class_dir in class_dirs.items():
        found, not_images = class_folder_candidates(class_dir, label, numbered)
        candidates += found
        skipped += not_image_reasons(not_images, dataset_root)
    prefix_shared_patient_names(candidates)
    skipped += images_outside(root, class_dirs.values(), dataset_root)
    return candidates, skipped


def has_exactly_class_folders(path: Path, labels: dict[str, str]) -> bool:
    """True when the folder (or its only sub-folder) holds exactly the class folders of `labels`."""
    return class_folder_names(unwrap_enclosing_folder(path)) == set(labels)


def index_named_class_folders(
    path: Path, options: IndexOptions, layout: str, labels: dict[str, str], patient_source: str,
    numbered: bool = False,
) -> IndexResult:
    """Index a layout of fixed class folders (folder name, any case -> label) below `path`.

    `numbered`: slices are named by their z position (`0000.png`, ...); see `class_folder_candidates`.
    """
    root = unwrap_enclosing_folder(path)
    class_dirs = match_class_folders(root, labels)
    missing = [label for label in labels.values() if label not in class_dirs]
    if missing:
        raise CovidlensError(
            f"{root}: class folder(s) {', '.join(missing)} not found; the {layout} layout needs "
            f"{', '.join(labels.values())} (any letter case)"
        )
    candidates, skipped = collect_class_folders(path, root, class_dirs, numbered)
    return build_result(path, candidates, layout, options, skipped, patient_source=patient_source)


def images_outside(root: Path, class_dirs: Iterable[Path], dataset_root: Path) -> list[tuple[str, str]]:
    """Skipped-list entries for images under `root` that lie in none of `class_dirs` (not indexed)."""
    inside = set(class_dirs)
    entries = []
    for path in walk_files(root):
        if is_image_file(path) and not inside.intersection(path.parents):
            entries.append((relative_id(path, dataset_root), "image outside the class folders; not indexed"))
    return entries


def not_image_reasons(files: Iterable[Path], root: Path) -> list[tuple[str, str]]:
    """Skipped-list entries for non-image files found among the images."""
    return [(relative_id(path, root), f"not an image file (extension {path.suffix or 'none'!r})")
            for path in files]


def check_image(path: Path) -> str | None:
    """Why the image at `path` cannot be used (missing, empty, not an image, truncated), or None if it can."""
    try:
        if path.stat().st_size == 0:
            return "empty file (0 bytes)"
        with Image.open(path) as image:
            if image.format == "PNG":
                image.verify()  # reads every chunk and checks its CRC: catches truncation, no decoding
            else:
                image.draft(image.mode, (max(1, image.width // 8), max(1, image.height // 8)))
                image.load()  # no verify() for other formats; a decode (reduced for JPEG) catches truncation
    except FileNotFoundError:
        return "no such file"
    except UnidentifiedImageError:
        if has_image_signature(path):
            return "truncated or corrupt image (its header cannot be read)"
        return "not an image (the content is no image format Pillow knows)"
    except Image.DecompressionBombError as exc:
        return f"image too large to decode safely ({exc})"
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        return f"truncated or corrupt image ({exc})"
    return None


def has_image_signature(path: Path) -> bool:
    """True when the file starts like a PNG, JPEG, TIFF or BMP file."""
    with open(path, "rb") as handle:
        start = handle.read(8)
    return start.startswith(IMAGE_SIGNATURES)


def check_sample(path: Path) -> str | None:
    """Why a manifest path cannot be used; images are decoded, other things only need to exist."""
    if is_image_file(path):
        return check_image(path)
    return None if path.exists() else "no such file or folder"


def find_unusable(paths: list[Path]) -> dict[Path, str]:
    """Map each unusable path to the reason, checking in a few threads (Pillow releases the GIL)."""
    if len(paths) < 64:
        reasons = map(check_sample, paths)
    else:
        with ThreadPoolExecutor(max_workers=min(8, 2 * (os.cpu_count() or 1))) as pool:
            reasons = list(pool.map(check_sample, paths, chunksize=32))
    return {path: reason for path, reason in zip(paths, reasons, strict=True) if reason is not None}


def relative_id(path: Path, root: Path) -> str:
    """The posix path of `path` relative to `root`, or its absolute posix path when outside `root`."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def compile_patient_regex(pattern: str) -> re.Pattern[str]:
    """Compile a --patient-regex, checking it has a capture group."""
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise CovidlensError(f"--patient-regex {pattern!r} is not a valid regex: {exc}") from None
    if regex.groups < 1:
        raise CovidlensError(
            f"--patient-regex {pattern!r} has no capture group; wrap the patient part in (...), "
            r"e.g. '^([^/]+)/' or 'patient(\d+)'"
        )
    return regex


def patient_from_regex(regex: re.Pattern[str], relative_path: str) -> str | None:
    """The first capture group of `regex` searched in `relative_path`, or None when it does not match."""
    found = regex.search(relative_path)
    if found is None or not found.group(1):
        return None
    return found.group(1)


def check_options(options: IndexOptions) -> None:
    """Reject contradictory patient options."""
    if options.patient_regex and options.no_patients:
        raise CovidlensError("pass either --patient-regex or --no-patients, not both")


def list_some(items: list[str]) -> str:
    """A short listing of the first few items and how many more there are."""
    shown = ", ".join(repr(item) for item in items[:SHOWN])
    more = len(items) - SHOWN
    return shown + (f" and {more} more" if more > 0 else "")


def require_layout_patients(root: Path, layout: str, candidates: list[Candidate], options: IndexOptions,
                            where: str = "") -> None:
    """Raise when the layout gave no patient id for some image and no option tells what to do."""
    if options.no_patients or options.patient_regex:
        return
    lacking = [c for c in candidates if not c.patient_id]
    if not lacking:
        return
    source = f" ({where})" if where else ""
    if len(lacking) == len(candidates):
        raise CovidlensError(
            f"{root}: no patient ids can be found in the {layout} layout{source}; {NO_PATIENTS_HINT}"
        )
    names = [relative_id(c.path, root) for c in lacking]
    raise CovidlensError(
        f"{root}: {len(lacking)} image(s) have no patient id{source}: {list_some(names)}; "
        f"give them one, or {NO_PATIENTS_HINT}"
    )


def assign_patients(candidates: list[Candidate], sample_ids: list[str], relative_paths: list[str],
                    options: IndexOptions) -> None:
    """Apply --no-patients or --patient-regex to the candidates (in place); the layout's ids otherwise."""
    if options.no_patients:
        for candidate, sample_id in zip(candidates, sample_ids, strict=True):
            candidate.patient_id = candidate.scan_id = sample_id
            candidate.patient_id_from = IMAGE_WISE
        return
    if not options.patient_regex:
        return
    regex = compile_patient_regex(options.patient_regex)
    unmatched: list[str] = []
    for candidate, relative_path in zip(candidates, relative_paths, strict=True):
        patient = patient_from_regex(regex, relative_path)
        if patient is None:
            unmatched.append(relative_path)
            continue
        candidate.patient_id = patient
        candidate.patient_id_from = "regex"
    if unmatched:
        raise CovidlensError(
            f"--patient-regex {options.patient_regex!r} does not match {len(unmatched)} file(s): "
            f"{list_some(unmatched)}; fix the regex so its first group finds the patient in every path"
        )


def build_result(root: Path, candidates: list[Candidate], layout: str, options: IndexOptions,
                 skipped: list[tuple[str, str]] | None = None, patient_source: str = "") -> IndexResult:
    """Check the images, settle patient ids and build the manifest; unusable files go to `skipped`.

    `root` is the dataset root: sample ids and --patient-regex use paths relative to it.
    `patient_source` names where the layout's patient ids come from, for error messages.
    """
    check_options(options)
    require_layout_patients(root, layout, candidates, options, patient_source)
    skipped = list(skipped or [])
    unusable = find_unusable([c.path for c in candidates])
    usable: list[Candidate] = []
    for candidate in candidates:
        reason = unusable.get(candidate.path)
        if reason is None:
            usable.append(candidate)
        else:
            skipped.append((candidate.sample_id or relative_id(candidate.path, root), reason))
    relative_paths = [relative_id(c.path, root) for c in usable]
    sample_ids = [c.sample_id or rel for c, rel in zip(usable, relative_paths, strict=True)]
    assign_patients(usable, sample_ids, relative_paths, options)
    masks = [find_mask(c) for c in usable]
    with_masks = any(masks)
    with_split = any(c.split is not None for c in usable)
    rows = [
        manifest_row(c, sample_id, layout, mask if with_masks else None, with_split)
        for c, sample_id, mask in zip(usable, sample_ids, masks, strict=True)
    ]
    return IndexResult(manifest=make_manifest(rows), layout=layout, skipped=sorted(skipped))


def find_mask(candidate: Candidate) -> str:
    """The lesion mask path of a candidate: the one it names, or the file beside it, or ""."""
    if candidate.mask_path is not None:
        return candidate.mask_path
    beside = mask_path_for(candidate.path)
    return str(beside) if beside.is_file() else ""


def manifest_row(candidate: Candidate, sample_id: str, layout: str, mask: str | None,
                 with_split: bool) -> dict:
    """One manifest row; optional columns only when the dataset has them."""
    row: dict = {
        "sample_id": sample_id,
        "path": str(candidate.path),
        "label": candidate.label,
        "patient_id": candidate.patient_id,
        "scan_id": candidate.scan_id or candidate.patient_id,
        "slice_index": candidate.slice_index,
        "modality": "ct",
        "source": layout,
        "patient_id_from": candidate.patient_id_from,
    }
    if with_split:
        row["split"] = candidate.split or ""
    if mask is not None:
        row["mask_path"] = mask
    row.update(candidate.extra)  # adapters put only columns they do not compute here (modality, source...)
    return row


def name_key(name: str) -> str:
    """A file name normalised for tolerant matching: Unicode NFC, whitespace runs collapsed, case-folded."""
    return " ".join(unicodedata.normalize("NFC", name).split()).casefold()


def normalize_header(header: str) -> str:
    """'  Patient_ID ' -> 'patient id'."""
    return " ".join(str(header).replace("_", " ").split()).casefold()


def read_table(path: Path) -> pd.DataFrame:
    """Read a CSV (delimiter guessed from the header line) or XLSX table as strings."""
    if path.suffix.lower() == ".xlsx":
        try:
            return pd.read_excel(path, dtype=str).fillna("")
        except ImportError:
            raise CovidlensError(
                f"{path}: reading .xlsx needs openpyxl; pip install openpyxl, or save the table as "
                f"{path.with_suffix('.csv').name} beside it"
            ) from None
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")  # spreadsheet exports are often Windows-encoded
    header = text.splitlines()[0] if text else ""
    delimiter = max((",", ";", "\t"), key=header.count)
    try:
        return pd.read_csv(io.StringIO(text), sep=delimiter, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise CovidlensError(f"{path}: not a readable CSV table ({exc})") from None


def pick_column(table: pd.DataFrame, wanted: tuple[str, ...], path: Path, what: str) -> str:
    """The column of `table` whose normalised header is the first of `wanted` present."""
    by_name = {normalize_header(column): column for column in table.columns}
    for name in wanted:
        if name in by_name:
            return by_name[name]
    found = ", ".join(repr(c) for c in table.columns)
    raise CovidlensError(f"{path}: no {what} column (looked for {', '.join(wanted)}; found {found})")
