"""Dataset adapters: importing this package registers every layout in `ADAPTERS`."""

import covidlens.data.adapters.ccccii  # noqa: F401  (registers the cc-ccii layout)
import covidlens.data.adapters.cxr_competition  # noqa: F401  (registers the cxr-competition layout)
import covidlens.data.adapters.dicom_series  # noqa: F401  (registers the dicom layout)
import covidlens.data.adapters.kermany  # noqa: F401  (registers the kermany layout)
import covidlens.data.adapters.nifti_folder  # noqa: F401  (registers the nifti layout)
from covidlens.data.adapters import class_folders, covid_ct, csv_manifest, multiclass_ct, sarscov2_ct
from covidlens.data.adapters.base import ADAPTERS, Adapter, IndexOptions, IndexResult

__all__ = [
    "ADAPTERS",
    "Adapter",
    "IndexOptions",
    "IndexResult",
    "class_folders",
    "covid_ct",
    "csv_manifest",
    "multiclass_ct",
    "sarscov2_ct",
]
