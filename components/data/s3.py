"""S3 side of the data step: read an export archive, upload and download a dataset by content id.

A dataset is immutable and addressed by its content id, so it is stored as one object:

    s3://<bucket>/datasets/<dataset_id>/dataset.tar      every image and label (plain tar, no compression)
    s3://<bucket>/datasets/<dataset_id>/manifest.json    written last: its presence marks a complete upload
    s3://<bucket>/datasets/<dataset_id>/qa_report.{json,png}

One object instead of one PUT per file: an S3 request costs far more than the bytes of a small
image (measured on the local stack's ``rclone serve s3``, 2,000 images: 29.5 s one PUT per file,
11.6 s with 8 parallel PUTs, 0.9 s as one streamed archive; ``benchmarks/data_import.py``).
The archive is built while it is sent (multipart, never whole in memory or on disk) and is
byte-for-byte the same for the same dataset (sorted members, fixed owner, mode and time).
Buckets written before keep their per-file layout (``datasets/<id>/<images|labels>/...``):
``upload_dataset`` sees such a dataset as already there and ``download_dataset`` reads both.

Functions take a boto3 S3 client; only entry points build one from settings.
"""

from __future__ import annotations

import hashlib
import io
import logging
import shutil
import tarfile
from pathlib import Path, PurePosixPath

from components.data.errors import DatasetError
from components.data.manifest import MANIFEST, Manifest, read_manifest, sha256_file

log = logging.getLogger(__name__)

ARCHIVE = "dataset.tar"
# Uploaded next to the archive: the reports, readable without unpacking. data.yaml is not: its
# absolute path only holds on the machine that wrote it; consumers write their own after download.
_REPORTS = ("qa_report.json", "qa_report.png")


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """Split ``s3://bucket/key`` into ``(bucket, key)``.

    Raises:
        DatasetError: If ``uri`` is not of that form.
    """
    if not uri.startswith("s3://") or "/" not in uri[5:] or not uri[5:].split("/", 1)[1]:
        raise DatasetError(f"{uri!r} is not an s3://bucket/key URI")
    bucket, key = uri[5:].split("/", 1)
    return bucket, key


def _client_error(e, uri: str) -> DatasetError:
    code = e.response.get("Error", {}).get("Code", "")
    if code in ("404", "NoSuchKey", "NoSuchBucket"):
        return DatasetError(f"no such object {uri} ({code})")
    return DatasetError(f"cannot read {uri}: {code or e}")


def download_archive(s3_client, uri: str, dest: Path) -> Path:
    """Download the export archive at ``uri`` to ``dest``.

    Raises:
        DatasetError: If the bucket or key does not exist or cannot be read.
    """
    from botocore.exceptions import ClientError

    bucket, key = parse_s3_uri(uri)
    tmp = dest.with_name(dest.name + ".part")
    try:
        s3_client.download_file(bucket, key, str(tmp))
    except ClientError as e:
        raise _client_error(e, uri) from e
    tmp.replace(dest)
    return dest


def _existing_keys(s3_client, bucket: str, prefix: str) -> dict[str, int]:
    keys: dict[str, int] = {}
    for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            keys[obj["Key"]] = obj["Size"]
    return keys


class _TarStream:
    """A read-only file object whose bytes are the dataset's tar archive, made as they are read.

    Each file is checked against the manifest's sha256 as it goes in; a mismatch raises from
    ``read``, so the transfer fails (and a multipart upload is aborted) instead of storing an
    archive that does not match its id. Memory holds one file plus one read's worth of bytes.
    """

    def __init__(self, dataset_dir: Path, files: dict[str, str]):
        self._dir = dataset_dir
        self._todo = iter(sorted(files.items()))
        self._buf = bytearray()
        self._tar: tarfile.TarFile | None = tarfile.open(fileobj=self, mode="w|", format=tarfile.PAX_FORMAT)
        self.size = 0  # bytes handed out so far

    def write(self, data: bytes) -> int:  # tarfile's sink
        self._buf += data
        return len(data)

    def _add_next(self) -> bool:
        item = next(self._todo, None)
        if item is None:
            self._tar.close()  # end-of-archive blocks go into the buffer
            self._tar = None
            return False
        rel, digest = item
        path = self._dir / rel
        try:
            data = path.read_bytes()
        except OSError as e:
            raise DatasetError(f"cannot read: {e.strerror}; re-run the import", file=path) from e
        if hashlib.sha256(data).hexdigest() != digest:
            raise DatasetError("file differs from manifest.json; re-run the import", file=path)
        info = tarfile.TarInfo(rel)
        info.size, info.mode, info.mtime = len(data), 0o644, 0
        self._tar.addfile(info, io.BytesIO(data))
        return True

    def read(self, n: int = -1) -> bytes:
        while self._tar is not None and (n < 0 or len(self._buf) < n):
            self._add_next()
        n = len(self._buf) if n < 0 else min(n, len(self._buf))
        out = bytes(self._buf[:n])
        del self._buf[:n]
        self.size += len(out)
        return out


def upload_dataset(s3_client, bucket: str, dataset_dir: Path, *, progress: bool = False) -> str:
    """Upload a dataset folder as ``datasets/<dataset_id>/dataset.tar`` + its manifest and reports.

    Nothing is sent when the dataset is already there (the manifest is present, beside the
    archive or beside the per-file layout of older uploads). Files are checked against the
    manifest's sha256 as they are archived, so a modified folder is never published under an id
    that does not describe it. The manifest goes last: its presence marks a complete upload.

    Args:
        s3_client: boto3 S3 client.
        bucket: Target bucket (must exist).
        dataset_dir: A folder written by ``import_dataset``/``validate_and_split``.
        progress: Show a progress bar (bytes sent).

    Returns:
        ``s3://<bucket>/datasets/<dataset_id>/``.

    Raises:
        DatasetError: If a file does not match the manifest or the bucket does not exist.
    """
    from botocore.exceptions import ClientError
    from tqdm import tqdm

    dataset_dir = Path(dataset_dir)
    manifest = read_manifest(dataset_dir)
    prefix = f"datasets/{manifest.dataset_id}/"
    uri = f"s3://{bucket}/{prefix}"
    try:
        existing = _existing_keys(s3_client, bucket, prefix)
    except ClientError as e:
        code = e.response.get("Error", {}).get("Code", "")
        raise DatasetError(
            f"cannot list s3://{bucket}/{prefix} ({code}); create the bucket or set VINSPECT_DATA_BUCKET"
        ) from e
    files = manifest.files
    old_layout = all(prefix + rel in existing for rel in files)
    if prefix + MANIFEST in existing and (prefix + ARCHIVE in existing or old_layout):
        log.info("dataset %s already at %s", manifest.dataset_id, uri)
        return uri
    # No manifest: an earlier upload did not finish (or never began); send everything again.
    stream = _TarStream(dataset_dir, files)
    with tqdm(desc="upload", unit="B", unit_scale=True, disable=not progress) as bar:
        s3_client.upload_fileobj(stream, bucket, prefix + ARCHIVE, Callback=bar.update)
    # The stream raised on any bad file; a size check catches a transfer that ended early.
    stored = s3_client.head_object(Bucket=bucket, Key=prefix + ARCHIVE)["ContentLength"]
    if stored != stream.size:
        raise DatasetError(f"{uri}{ARCHIVE}: stored {stored} bytes, sent {stream.size}; upload again")
    for name in _REPORTS:
        if (dataset_dir / name).is_file():
            s3_client.upload_file(str(dataset_dir / name), bucket, prefix + name)
    s3_client.upload_file(str(dataset_dir / MANIFEST), bucket, prefix + MANIFEST)
    log.info("uploaded %d file(s) as %s%s", len(files), uri, ARCHIVE)
    return uri


def _safe_rel(rel: str, where: str) -> str:
    p = PurePosixPath(rel)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise DatasetError(f"unsafe path {rel!r} in manifest.json", file=where)
    return rel


def _check_file(path: Path, digest: str, source: str) -> None:
    if sha256_file(path) != digest:
        raise DatasetError(f"differs from manifest.json (sha256); the stored dataset is damaged: {source}", file=path)


def download_dataset(s3_client, uri: str, dest: Path) -> Manifest:
    """Download the dataset at ``s3://<bucket>/datasets/<id>/`` into the new folder ``dest``.

    Reads the archive (``dataset.tar``) or, for datasets uploaded before it, the per-file
    layout. Every file is checked against the manifest's sha256 and the manifest against the id
    in the URI; the folder appears only when all of it is there and correct.

    Args:
        s3_client: boto3 S3 client.
        uri: ``s3://<bucket>/datasets/<dataset_id>/`` as returned by ``upload_dataset``.
        dest: Folder to create (must not exist).

    Returns:
        The manifest.

    Raises:
        DatasetError: If ``dest`` exists, the dataset is missing or incomplete, or a file does
            not match the manifest.
    """
    from botocore.exceptions import ClientError

    bucket, key = parse_s3_uri(uri)
    prefix = key.rstrip("/") + "/"
    dataset_id = PurePosixPath(prefix).name
    base = f"s3://{bucket}/{prefix}"
    dest = Path(dest)
    if dest.exists():
        raise DatasetError("already exists; choose a new folder for the download", file=dest)
    tmp = dest.with_name(f".{dest.name}.part")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        try:
            s3_client.download_file(bucket, prefix + MANIFEST, str(tmp / MANIFEST))
        except ClientError as e:
            raise DatasetError(f"no complete dataset at {base} (no {MANIFEST}): {_client_error(e, base)}") from e
        manifest = read_manifest(tmp)
        if manifest.dataset_id != dataset_id:
            raise DatasetError(
                f"manifest.json is for dataset {manifest.dataset_id!r}, not {dataset_id!r}", file=base + MANIFEST
            )
        files = {_safe_rel(rel, base + MANIFEST): d for rel, d in manifest.files.items()}
        existing = _existing_keys(s3_client, bucket, prefix)
        if prefix + ARCHIVE in existing:
            _extract(s3_client, bucket, prefix + ARCHIVE, files, tmp)
        else:
            for rel in sorted(files):
                if prefix + rel not in existing:
                    raise DatasetError(f"missing from {base} (no {ARCHIVE}, per-file layout incomplete)", file=rel)
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                s3_client.download_file(bucket, prefix + rel, str(tmp / rel))
        for rel, digest in files.items():
            if not (tmp / rel).is_file():
                raise DatasetError(f"missing from {base}{ARCHIVE}", file=rel)
            _check_file(tmp / rel, digest, base)
        for name in _REPORTS:
            if prefix + name in existing:
                s3_client.download_file(bucket, prefix + name, str(tmp / name))
        tmp.rename(dest)
    except BaseException:  # Ctrl-C included: never leave a half-written folder; re-raised as is
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("downloaded dataset %s (%d files) to %s", dataset_id, len(files), dest)
    return manifest


def _extract(s3_client, bucket: str, key: str, files: dict[str, str], out: Path) -> None:
    """Unpack the members of ``files`` from the archive as it streams in; nothing else is written."""
    body = s3_client.get_object(Bucket=bucket, Key=key)["Body"]
    try:
        with tarfile.open(fileobj=body, mode="r|") as tar:
            for member in tar:
                if member.name not in files or not member.isfile():
                    raise DatasetError(
                        f"unexpected member {member.name!r} (not in manifest.json)", file=f"s3://{bucket}/{key}"
                    )
                path = out / member.name
                path.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as src, path.open("wb") as dst:
                    shutil.copyfileobj(src, dst)
    except tarfile.TarError as e:
        raise DatasetError(f"not a readable tar archive: {e}", file=f"s3://{bucket}/{key}") from e
    finally:
        body.close()
