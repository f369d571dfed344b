"""Content digests and the dataset manifest.

``dataset_id`` is computed from content only (class names in order, and every image and label file's
path inside the dataset with its sha256), so the same input gives the same id on any machine.
Absolute paths, timestamps and the source location are recorded but never hashed.
"""

from __future__ import annotations

import hashlib
import json
import os
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


def read_manifest(dataset_dir: Path) -> dict:
    """Load ``dataset_dir/manifest.json``.

    Raises:
        DatasetError: If it is missing or not a vinspect manifest.
    """
    path = Path(dataset_dir) / MANIFEST
    if not path.is_file():
        raise DatasetError("no manifest.json: this folder was not written by `vinspect data import`/pull", file=path)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DatasetError(f"manifest is not valid JSON: {e.msg}", file=path, line=e.lineno) from e
    if manifest.get("schema") != SCHEMA:
        raise DatasetError(f"unexpected manifest schema {manifest.get('schema')!r} (want {SCHEMA})", file=path)
    return manifest
