"""Reading a CVAT export from where it lies: a folder, a ``.zip`` archive, or one on S3.

The archive is checked before anything is extracted (no member may escape the folder), and the
per-job exports of one CVAT task or project are merged into one :class:`Export`. Parsing the
export's format is :mod:`components.data.formats`; pulling it from a live server is
:mod:`components.data.cvat_pull`.
"""

from __future__ import annotations

import zipfile
from collections import Counter
from pathlib import Path, PurePosixPath

from components.data.errors import DatasetError
from components.data.formats import Export, Item, export_root
from components.data.manifest import sha256_file


def extract_zip(archive: Path, dest: Path) -> Path:
    """Extract a CVAT export zip safely and return the export root inside ``dest``.

    Raises:
        DatasetError: For a corrupt or truncated archive, or a member escaping ``dest``.
    """
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(archive) as zf:
            for member in zf.infolist():
                p = PurePosixPath(member.filename)
                if p.is_absolute() or ".." in p.parts:
                    raise DatasetError(f"archive member {member.filename!r} escapes the export folder", file=archive)
            zf.extractall(dest)
    except zipfile.BadZipFile as e:
        raise DatasetError(f"not a valid zip archive (corrupt or truncated: {e})", file=archive) from e
    except (OSError, EOFError) as e:
        raise DatasetError(f"cannot read zip archive ({e})", file=archive) from e
    if not any(dest.iterdir()):
        raise DatasetError("the archive is empty: an empty export has nothing to import", file=archive)
    return export_root(dest)


def resolve_source(source: str | Path, work: Path, s3_client) -> tuple[Path, dict]:
    """Find the export root of a folder, a ``.zip`` or an ``s3://`` archive (extracted under ``work``).

    Returns:
        The export root and the manifest's ``source`` record (type, uri, and the archive's sha256).

    Raises:
        DatasetError: For a missing, empty or unreadable source, naming it.
    """
    src = str(source)
    if src.startswith("s3://"):
        from components.data.s3 import download_archive

        if s3_client is None:
            raise DatasetError(f"{src} needs an S3 client (set AWS_S3_ENDPOINT and credentials)")
        archive = download_archive(s3_client, src, work / "export.zip")
        return extract_zip(archive, work / "export"), {"type": "archive", "uri": src, "sha256": sha256_file(archive)}
    path = Path(src).expanduser()
    if not path.exists():
        raise DatasetError("source does not exist", file=path)
    if path.is_file():
        root = extract_zip(path, work / "export")
        return root, {"type": "archive", "uri": str(path.resolve()), "sha256": sha256_file(path)}
    if not any(path.iterdir()):
        raise DatasetError("the export folder is empty: nothing to import", file=path)
    return export_root(path), {"type": "directory", "uri": str(path.resolve())}


def merge_exports(exports: list[tuple[Export, str]]) -> Export:
    """Merge per-job exports of one task/project; repeated frame names get the job as a prefix."""
    first = exports[0][0]
    counts = Counter(it.name for e, _ in exports for it in e.items)
    items: list[Item] = []
    for e, tag in exports:
        if e.labels != first.labels:
            raise DatasetError(f"job exports disagree on labels: {first.labels} vs {e.labels}")
        for it in e.items:
            if counts[it.name] > 1:
                it.name = f"{tag}/{it.name}"
            items.append(it)
    other = Counter()
    for e, _ in exports:
        other.update(e.other_shapes)
    return Export(first.format, first.root, first.labels, items, other)
