"""Data step: CVAT annotations -> validated, versioned YOLO dataset.

Public API (used by the pipeline component and the ``vinspect data`` CLI):
``pull_annotations``, ``validate_and_split``, ``import_dataset``, ``validate_dataset``,
``synthesize``, ``upload_dataset``, ``DatasetError``.
"""

from __future__ import annotations

from components.data.errors import CVATError, DatasetError
from components.data.importer import import_dataset, pull_annotations, validate_and_split, validate_dataset
from components.data.s3 import upload_dataset
from components.data.synth import synthesize

__all__ = [
    "CVATError",
    "DatasetError",
    "import_dataset",
    "pull_annotations",
    "synthesize",
    "upload_dataset",
    "validate_and_split",
    "validate_dataset",
]
