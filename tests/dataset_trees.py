"""Builders of tiny dataset trees, laid out as each public dataset is when downloaded."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

FIXTURES = Path(__file__).parent / "fixtures"
COVID_CT_FIXTURE = FIXTURES / "covid_ct"


def write_image(path: Path, value: int = 128, size: int = 8) -> Path:
    """A tiny grayscale image; the format follows the extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.full((size, size), value, dtype=np.uint8)
    pixels[0, 0] = 255 - value  # not uniform, so a decode has something to do
    Image.fromarray(pixels).save(path)
    return path


def write_truncated_png(path: Path) -> Path:
    """A PNG cut in half, as an interrupted download leaves it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint8)  # incompressible
    Image.fromarray(noise).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def write_text(path: Path, text: str = "not an image\n") -> Path:
    """A text file (possibly with an image extension)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def multiclass_tree(root: Path, folder_names: tuple[str, str, str] = ("COVID", "Healthy", "Others"),
                    patients: int = 2, slices: tuple[int, ...] = (1, 2, 10)) -> Path:
    """Paper 000's layout: <class>/<patient>/slice_<n>.png, the same patient folder names in each class."""
    for class_name in folder_names:
        for patient in range(1, patients + 1):
            for number in slices:
                write_image(root / class_name / f"patient{patient}" / f"slice_{number}.png", value=number)
    return root


def sarscov2_tree(root: Path, per_class: int = 3) -> Path:
    """The SARS-CoV-2 CT set: flat COVID/ and non-COVID/ folders."""
    for number in range(1, per_class + 1):
        write_image(root / "COVID" / f"Covid ({number}).png")
        write_image(root / "non-COVID" / f"Non-Covid ({number}).png")
    return root


def covid_ct_names(label: str) -> dict[str, str]:
    """Image name -> split of the real COVID-CT split lists for label COVID or NonCOVID."""
    names: dict[str, str] = {}
    for split in ("train", "val", "test"):
        listing = COVID_CT_FIXTURE / "Data-split" / label / f"{split}CT_{label}.txt"
        names.update({line.strip(): split for line in listing.read_text().splitlines() if line.strip()})
    return names


def covid_ct_tree(root: Path, image_parent: str = "Images-processed",
                  folders: tuple[str, str] = ("CT_COVID", "CT_NonCOVID")) -> Path:
    """COVID-CT with its real split lists and metadata tables, and an 8x8 image for every listed name."""
    shutil.copytree(COVID_CT_FIXTURE, root)
    for label, folder in zip(("COVID", "NonCOVID"), folders, strict=True):
        for name in covid_ct_names(label):
            write_image(root / image_parent / folder / name)
    return root
