"""Data step: CVAT annotations -> validated, versioned YOLO dataset.

Public API (used by the pipeline component and the ``vinspect data`` CLI):
``pull_annotations``, ``validate_and_split``, ``import_dataset``, ``validate_dataset``,
``synthesize``, ``upload_dataset``, ``read_manifest`` (a :class:`Manifest`), ``DatasetError``.

Where each job lives: reading an export (folder, zip, S3) in :mod:`~components.data.sources`;
pulling one from a CVAT server in :mod:`~components.data.cvat_pull`; parsing its format in
:mod:`~components.data.formats`; converting it to a normalized dataset in
:mod:`~components.data.convert`; QA and split in :mod:`~components.data.validate` (checks in
:mod:`~components.data.qa`); committing a dataset folder atomically in
:mod:`~components.data.staging`; the manifest in :mod:`~components.data.manifest`;
``vinspect data import`` (both steps) in :mod:`~components.data.importer`.
"""

from __future__ import annotations

from components.data.convert import pull_annotations
from components.data.errors import CVATError, DatasetError
from components.data.importer import import_dataset
from components.data.manifest import Manifest, read_manifest
from components.data.s3 import upload_dataset
from components.data.synth import synthesize
from components.data.validate import validate_and_split, validate_dataset

__all__ = [
    "CVATError",
    "DatasetError",
    "Manifest",
    "import_dataset",
    "pull_annotations",
    "read_manifest",
    "synthesize",
    "upload_dataset",
    "validate_and_split",
    "validate_dataset",
]
