"""Content digests and the dataset manifest.

``dataset_id`` is computed from content only (class names in order, and every image and label file's
path inside the dataset with its sha256), so the same input gives the same id on any machine.
Absolute paths, timestamps and the source location are recorded but never hashed.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from components.data.errors import DatasetError

MANIFEST = "manifest.json"
SCHEMA = "vinspect.dataset/1"
ID_LENGTH = 16  # hex digits of sha256 kept for the id: short enough for S3 keys and tags


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks so memory stays flat."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def dataset_id(classes: list[str], files: dict[str, str]) -> str:
    """Content digest of a dataset: class order plus ``relpath -> sha256`` of every file."""
    h = hashlib.sha256()
    h.update(json.dumps(list(classes)).encode())
    for rel in sorted(files):
        h.update(f"\n{rel}\t{files[rel]}".encode())
    return h.hexdigest()[:ID_LENGTH]


def write_json(path: Path, obj: Any) -> None:
    """Write JSON (sorted keys, stable) through a temp file in the same folder."""
    tmp = path.with_name(f".{path.name}.tmp")
    # json.dump streams chunk by chunk; json.dumps would hold every chunk of a large manifest at once.
    with tmp.open("w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=1, sort_keys=True)
        fh.write("\n")
    os.replace(tmp, path)


# Keys each kind of manifest holds besides the common ones (the JSON written stays exactly this).
_ANNOTATION_KEYS = ("ignored_labels", "ignored_boxes", "orphan_labels", "subsets")
_DATASET_KEYS = ("parent_id", "split", "splits")
_KINDS = ("annotations", "dataset")
# The JSON type each field must have when present.
_TYPES = {
    "dataset_id": str,
    "classes": list,
    "files": dict,
    "items": list,
    "counts": dict,
    "source": dict,
    "splits": list,
}
_JSON_NAMES = {str: "string", list: "list", dict: "object"}


@dataclass
class Manifest:
    """A dataset's ``manifest.json``: what it holds, where it came from, and the id it goes by.

    Two kinds: ``annotations`` (the unsplit output of ``pull_annotations``) and ``dataset`` (the
    split, Ultralytics-ready output of ``validate_and_split``). ``dataset_id`` is the content
    digest (:func:`dataset_id`) used everywhere downstream. Only ``schema`` is required when
    reading: a hand-written manifest of the minimal dataset layout (``schema`` and ``classes``,
    say) reads as a ``dataset`` with the other fields empty, as it always did.

    Attributes:
        kind: ``"annotations"`` or ``"dataset"``.
        dataset_id: Content digest of ``classes`` and ``files`` ("" when the manifest has none).
        classes: Class names in id order.
        files: ``relpath -> sha256`` of every image and label file.
        items: One record per image: ``name, image, label, subset[, split], width, height``.
        counts: Images, boxes and background images per split (or subset) and class.
        source: Where the export came from (type, uri, format, archive digest).
        source_labels: The export's own label names, in its order.
        class_map: Export label -> class id.
        other_shapes: Non-rectangle annotations left out, per shape type.
        ignored_labels: Export labels that are not classes (annotations only).
        ignored_boxes: Boxes left out per such label (annotations only).
        orphan_labels: Label files that belong to no image (annotations only).
        subsets: The CVAT subsets seen (annotations only).
        parent_id: The id of the annotations it was split from (dataset only).
        split: How the split was made (dataset only).
        splits: The splits present, in order (dataset only).
        schema: Always :data:`SCHEMA`.
    """

    kind: str = "dataset"
    dataset_id: str = ""
    classes: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    items: list[dict[str, Any]] = field(default_factory=list)
    counts: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    source_labels: list[str] = field(default_factory=list)
    class_map: dict[str, int] = field(default_factory=dict)
    other_shapes: dict[str, int] = field(default_factory=dict)
    ignored_labels: list[str] = field(default_factory=list)
    ignored_boxes: dict[str, int] = field(default_factory=dict)
    orphan_labels: list[str] = field(default_factory=list)
    subsets: list[str] = field(default_factory=list)
    parent_id: str | None = None
    split: dict[str, Any] = field(default_factory=dict)
    splits: list[str] = field(default_factory=list)
    schema: str = SCHEMA

    def to_dict(self) -> dict[str, Any]:
        """The JSON form, with the keys of its kind only (what :func:`write_manifest` writes)."""
        # Shallow on purpose: asdict() would deep-copy every item of a large manifest.
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        for key in _DATASET_KEYS if self.kind == "annotations" else _ANNOTATION_KEYS:
            data.pop(key)
        return data

    @classmethod
    def from_dict(cls, data: Any, path: str | Path | None = None) -> Manifest:
        """Check and type a manifest read from JSON.

        Raises:
            DatasetError: Naming ``path`` and the field, for another schema, an unknown kind or a
                field of the wrong JSON type.
        """
        if not isinstance(data, dict):
            raise DatasetError(f"manifest is a JSON {type(data).__name__}, not an object", file=path)
        if data.get("schema") != SCHEMA:
            raise DatasetError(f"unexpected manifest schema {data.get('schema')!r} (want {SCHEMA})", file=path)
        if data.get("kind", "dataset") not in _KINDS:
            raise DatasetError(f"manifest field 'kind' is {data.get('kind')!r}, not one of {list(_KINDS)}", file=path)
        known = {f.name for f in fields(cls)}
        for key, typ in _TYPES.items():
            if data.get(key) is not None and not isinstance(data[key], typ):
                raise DatasetError(f"manifest field {key!r} is not a JSON {_JSON_NAMES[typ]}", file=path)
        return cls(**{k: v for k, v in data.items() if k in known and v is not None})


def write_manifest(dataset_dir: Path, manifest: Manifest) -> None:
    """Write ``dataset_dir/manifest.json`` (through a temp file, see :func:`write_json`)."""
    write_json(Path(dataset_dir) / MANIFEST, manifest.to_dict())


def read_manifest(dataset_dir: str | Path) -> Manifest:
    """Load ``dataset_dir/manifest.json``: the one reader of a dataset manifest.

    Args:
        dataset_dir: A dataset folder (written by ``vinspect data import``/``pull``).

    Raises:
        DatasetError: Naming the manifest file, if it is missing, not JSON, or not a vinspect
            manifest (schema, kind, a missing or mistyped field).
    """
    path = Path(dataset_dir) / MANIFEST
    if not path.is_file():
        raise DatasetError("no manifest.json: this folder was not written by `vinspect data import`/pull", file=path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DatasetError(f"manifest is not valid JSON: {e.msg}", file=path, line=e.lineno) from e
    return Manifest.from_dict(data, path)
