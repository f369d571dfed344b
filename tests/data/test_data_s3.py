"""S3: upload by content id (skipping what is there) and import from an s3:// archive, on the local stack's S3."""

from __future__ import annotations

import shutil
import uuid

import pytest

from components.data import DatasetError, import_dataset, upload_dataset


@pytest.fixture
def bucket(local_stack):
    name = f"data-{uuid.uuid4().hex[:8]}"
    local_stack.s3.create_bucket(Bucket=name)
    return name


class _CountingS3:
    """Delegates to a real client, recording the keys it uploads."""

    def __init__(self, s3):
        self._s3 = s3
        self.uploaded: list[str] = []

    def upload_file(self, filename, bucket, key, **kw):
        self.uploaded.append(key)
        return self._s3.upload_file(filename, bucket, key, **kw)

    def __getattr__(self, name):
        return getattr(self._s3, name)


def _keys(s3, bucket, prefix=""):
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for o in page.get("Contents", []):
            out[o["Key"]] = o["LastModified"]
    return out


def test_upload_then_skip_existing(local_stack, bucket, small_export, tmp_path):
    s3 = local_stack.s3
    m = import_dataset(small_export, tmp_path / "ds")
    uri = upload_dataset(s3, bucket, tmp_path / "ds")
    prefix = f"datasets/{m.dataset_id}/"
    assert uri == f"s3://{bucket}/{prefix}"
    first = _keys(s3, bucket, prefix)
    assert set(first) == {prefix + k for k in m.files} | {
        prefix + n for n in ("manifest.json", "qa_report.json", "qa_report.png")
    }
    one = sorted(m.files)[0]
    body = s3.get_object(Bucket=bucket, Key=prefix + one)["Body"].read()
    assert body == (tmp_path / "ds" / one).read_bytes()
    # A second upload writes only what is missing ...
    s3.delete_object(Bucket=bucket, Key=prefix + one)
    counting = _CountingS3(s3)
    upload_dataset(counting, bucket, tmp_path / "ds")
    assert counting.uploaded == [prefix + one]
    assert set(_keys(s3, bucket, prefix)) == set(first)
    # ... and a folder whose files no longer match their manifest is refused.
    (tmp_path / "ds" / one).write_bytes(b"tampered")
    s3.delete_object(Bucket=bucket, Key=prefix + one)
    with pytest.raises(DatasetError, match="differs from manifest.json"):
        upload_dataset(s3, bucket, tmp_path / "ds")


def test_missing_bucket(local_stack, small_export, tmp_path):
    import_dataset(small_export, tmp_path / "ds")
    with pytest.raises(DatasetError, match="create the bucket"):
        upload_dataset(local_stack.s3, "no-such-bucket-here", tmp_path / "ds")


def test_import_from_s3_archive(local_stack, bucket, small_export, tmp_path):
    s3 = local_stack.s3
    archive = shutil.make_archive(str(tmp_path / "export"), "zip", small_export)
    s3.upload_file(archive, bucket, "exports/task-7.zip")
    m = import_dataset(f"s3://{bucket}/exports/task-7.zip", tmp_path / "ds", s3_client=s3)
    local = import_dataset(small_export, tmp_path / "local")
    assert m.dataset_id == local.dataset_id
    assert m.source["uri"] == f"s3://{bucket}/exports/task-7.zip" and len(m.source["sha256"]) == 64
    with pytest.raises(DatasetError, match="no such object"):
        import_dataset(f"s3://{bucket}/exports/missing.zip", tmp_path / "ds2", s3_client=s3)
    assert not (tmp_path / "ds2").exists()
