"""S3 side of the data step: read an export archive, upload a dataset by content id.

Functions take a boto3 S3 client; only entry points build one from settings.
"""

from __future__ import annotations

import logging
from pathlib import Path

from components.data.errors import DatasetError
from components.data.manifest import MANIFEST, read_manifest, sha256_file

log = logging.getLogger(__name__)

# Uploaded next to the data: the reports. data.yaml is not: its absolute path only holds on the
# machine that wrote it; consumers write their own after download.
_EXTRA_FILES = (MANIFEST, "qa_report.json", "qa_report.png")


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """Split ``s3://bucket/key`` into ``(bucket, key)``.

    Raises:
        DatasetError: If ``uri`` is not of that form.
    """
    if not uri.startswith("s3://") or "/" not in uri[5:] or not uri[5:].split("/", 1)[1]:
        raise DatasetError(f"{uri!r} is not an s3://bucket/key URI")
    bucket, key = uri[5:].split("/", 1)
    return bucket, key


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
        code = e.response.get("Error", {}).get("Code", "")
        if code in ("404", "NoSuchKey", "NoSuchBucket"):
            raise DatasetError(f"no such object {uri} ({code})") from e
        raise DatasetError(f"cannot read {uri}: {code or e}") from e
    tmp.replace(dest)
    return dest


def _existing_keys(s3_client, bucket: str, prefix: str) -> dict[str, int]:
    keys: dict[str, int] = {}
    for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            keys[obj["Key"]] = obj["Size"]
    return keys


def upload_dataset(s3_client, bucket: str, dataset_dir: Path, *, progress: bool = False) -> str:
    """Upload a dataset folder under ``datasets/<dataset_id>/``, skipping keys already there.

    Files are checked against the manifest's sha256 first, so a modified folder is never
    published under an id that does not describe it. The manifest goes last: its presence marks a
    complete upload.

    Args:
        s3_client: boto3 S3 client.
        bucket: Target bucket (must exist).
        dataset_dir: A folder written by ``import_dataset``/``validate_and_split``.
        progress: Show a progress bar.

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
    try:
        existing = _existing_keys(s3_client, bucket, prefix)
    except ClientError as e:
        code = e.response.get("Error", {}).get("Code", "")
        raise DatasetError(
            f"cannot list s3://{bucket}/{prefix} ({code}); create the bucket or set VINSPECT_DATA_BUCKET"
        ) from e
    todo = [rel for rel in sorted(manifest.files) if prefix + rel not in existing]
    for rel in tqdm(todo, desc="upload", unit="file", disable=not progress):
        path = dataset_dir / rel
        if sha256_file(path) != manifest.files[rel]:
            raise DatasetError("file differs from manifest.json; re-run the import", file=path)
        s3_client.upload_file(str(path), bucket, prefix + rel)
    uploaded = len(todo)
    for name in _EXTRA_FILES:
        path = dataset_dir / name
        if path.is_file() and prefix + name not in existing:
            s3_client.upload_file(str(path), bucket, prefix + name)
    log.info(
        "uploaded %d file(s), %d already present, to s3://%s/%s",
        uploaded,
        len(manifest.files) - uploaded,
        bucket,
        prefix,
    )
    return f"s3://{bucket}/{prefix}"
