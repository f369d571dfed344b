"""S3: a dataset stored by content id as one archive, read back in both layouts, and import from an s3:// archive.

All against the local stack's S3 (``rclone serve s3``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
import uuid

import pytest

from components.data import DatasetError, import_dataset, upload_dataset
from components.data.manifest import SCHEMA, dataset_id, read_manifest
from components.data.s3 import download_dataset


@pytest.fixture
def bucket(local_stack):
    name = f"data-{uuid.uuid4().hex[:8]}"
    local_stack.s3.create_bucket(Bucket=name)
    return name


class _CountingS3:
    """Delegates to a real client, recording every key it writes."""

    def __init__(self, s3):
        self._s3 = s3
        self.written: list[str] = []

    def upload_file(self, filename, bucket, key, **kw):
        self.written.append(key)
        return self._s3.upload_file(filename, bucket, key, **kw)

    def upload_fileobj(self, fileobj, bucket, key, **kw):
        self.written.append(key)
        return self._s3.upload_fileobj(fileobj, bucket, key, **kw)

    def put_object(self, **kw):
        self.written.append(kw["Key"])
        return self._s3.put_object(**kw)

    def __getattr__(self, name):
        return getattr(self._s3, name)


def _keys(s3, bucket, prefix=""):
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for o in page.get("Contents", []):
            out[o["Key"]] = o["LastModified"]
    return out


def _members(s3, bucket, key) -> dict[str, bytes]:
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar}


def _same_files(a, b, rels):
    return all((a / r).read_bytes() == (b / r).read_bytes() for r in rels)


def test_upload_is_one_archive_then_nothing(local_stack, bucket, small_export, tmp_path):
    s3 = local_stack.s3
    m = import_dataset(small_export, tmp_path / "ds")
    uri = upload_dataset(s3, bucket, tmp_path / "ds")
    prefix = f"datasets/{m.dataset_id}/"
    assert uri == f"s3://{bucket}/{prefix}"
    first = _keys(s3, bucket, prefix)
    assert set(first) == {prefix + n for n in ("dataset.tar", "manifest.json", "qa_report.json", "qa_report.png")}
    members = _members(s3, bucket, prefix + "dataset.tar")
    assert sorted(members) == sorted(m.files)
    assert all(hashlib.sha256(members[r]).hexdigest() == m.files[r] for r in members)
    # Already there: one listing, no write at all.
    counting = _CountingS3(s3)
    assert upload_dataset(counting, bucket, tmp_path / "ds") == uri
    assert counting.written == []
    assert _keys(s3, bucket, prefix) == first
    # Without the manifest (an upload cut short), everything goes again, the manifest last, and
    # the archive is byte-for-byte the same.
    before = s3.get_object(Bucket=bucket, Key=prefix + "dataset.tar")["Body"].read()
    s3.delete_object(Bucket=bucket, Key=prefix + "manifest.json")
    counting = _CountingS3(s3)
    upload_dataset(counting, bucket, tmp_path / "ds")
    assert counting.written[0] == prefix + "dataset.tar" and counting.written[-1] == prefix + "manifest.json"
    assert s3.get_object(Bucket=bucket, Key=prefix + "dataset.tar")["Body"].read() == before


def test_tampered_folder_is_refused_and_nothing_stored(local_stack, bucket, small_export, tmp_path):
    s3 = local_stack.s3
    m = import_dataset(small_export, tmp_path / "ds")
    last = sorted(m.files)[-1]  # archived last: the refusal comes after the rest was read
    (tmp_path / "ds" / last).write_bytes(b"tampered")
    with pytest.raises(DatasetError, match="differs from manifest.json") as err:
        upload_dataset(s3, bucket, tmp_path / "ds")
    assert err.value.file == str(tmp_path / "ds" / last)
    assert _keys(s3, bucket) == {}


def _big_dataset(root, n=3, mb=3):
    """A hand-made dataset of ``n`` random files of ``mb`` MiB: large enough for a multipart upload."""
    root.mkdir()
    files = {}
    for i in range(n):
        rel = f"images/train/f{i}.bin"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        data = os.urandom(mb << 20)
        (root / rel).write_bytes(data)
        files[rel] = hashlib.sha256(data).hexdigest()
    manifest = {"schema": SCHEMA, "classes": ["x"], "files": files, "dataset_id": dataset_id(["x"], files)}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return read_manifest(root)


def test_multipart_upload_aborted_on_a_bad_file(local_stack, bucket, tmp_path):
    from boto3.s3.transfer import TransferConfig

    s3 = local_stack.s3
    m = _big_dataset(tmp_path / "ds", n=3, mb=6)
    (tmp_path / "ds" / sorted(m.files)[-1]).write_bytes(b"tampered")

    class SmallParts(_CountingS3):
        def upload_fileobj(self, fileobj, bucket, key, **kw):
            cfg = TransferConfig(multipart_threshold=5 << 20, multipart_chunksize=5 << 20)
            return super().upload_fileobj(fileobj, bucket, key, Config=cfg, **kw)

    with pytest.raises(DatasetError, match="differs from manifest.json"):
        upload_dataset(SmallParts(s3), bucket, tmp_path / "ds")
    assert _keys(s3, bucket) == {}
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    # Repaired, the same multipart path stores it whole.
    shutil.rmtree(tmp_path / "ds")
    m = _big_dataset(tmp_path / "ds", n=3, mb=6)
    uri = upload_dataset(SmallParts(s3), bucket, tmp_path / "ds")
    download_dataset(s3, uri, tmp_path / "back")
    assert _same_files(tmp_path / "ds", tmp_path / "back", m.files)


def test_download_round_trip(local_stack, bucket, small_export, tmp_path):
    s3 = local_stack.s3
    m = import_dataset(small_export, tmp_path / "ds")
    uri = upload_dataset(s3, bucket, tmp_path / "ds")
    got = download_dataset(s3, uri, tmp_path / "back")
    assert got.dataset_id == m.dataset_id
    assert _same_files(tmp_path / "ds", tmp_path / "back", [*m.files, "manifest.json", "qa_report.json"])
    with pytest.raises(DatasetError, match="already exists"):
        download_dataset(s3, uri, tmp_path / "back")


def test_old_per_file_layout_is_read_and_not_uploaded_again(local_stack, bucket, small_export, tmp_path):
    """Buckets written before the archive (one object per file) keep working."""
    s3 = local_stack.s3
    m = import_dataset(small_export, tmp_path / "ds")
    prefix = f"datasets/{m.dataset_id}/"
    for rel in [*sorted(m.files), "qa_report.json", "manifest.json"]:  # as the old upload_dataset did
        s3.upload_file(str(tmp_path / "ds" / rel), bucket, prefix + rel)
    counting = _CountingS3(s3)
    uri = upload_dataset(counting, bucket, tmp_path / "ds")
    assert counting.written == []
    download_dataset(s3, uri, tmp_path / "back")
    assert _same_files(tmp_path / "ds", tmp_path / "back", m.files)
    # An old layout missing a file is incomplete: refused, and no folder is left behind.
    s3.delete_object(Bucket=bucket, Key=prefix + sorted(m.files)[0])
    with pytest.raises(DatasetError, match="per-file layout incomplete"):
        download_dataset(s3, uri, tmp_path / "back2")
    assert not (tmp_path / "back2").exists() and not (tmp_path / ".back2.part").exists()


def test_download_refuses_a_damaged_archive(local_stack, bucket, small_export, tmp_path):
    s3 = local_stack.s3
    m = import_dataset(small_export, tmp_path / "ds")
    uri = upload_dataset(s3, bucket, tmp_path / "ds")
    key = f"datasets/{m.dataset_id}/dataset.tar"
    members = _members(s3, bucket, key)
    victim = sorted(members)[3]
    members[victim] = b"x" + members[victim][1:]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    s3.put_object(Bucket=bucket, Key=key, Body=buf.getvalue())
    with pytest.raises(DatasetError, match="differs from manifest.json") as err:
        download_dataset(s3, uri, tmp_path / "back")
    assert err.value.file.endswith(victim)
    assert not (tmp_path / "back").exists() and not (tmp_path / ".back.part").exists()
    # A member outside the manifest (here a path escaping the folder) is refused before it is written.
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("../escape")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    s3.put_object(Bucket=bucket, Key=key, Body=buf.getvalue())
    with pytest.raises(DatasetError, match="not in manifest.json"):
        download_dataset(s3, uri, tmp_path / "back")
    assert not (tmp_path / "escape").exists()


def test_download_missing_dataset(local_stack, bucket, tmp_path):
    with pytest.raises(DatasetError, match="no complete dataset"):
        download_dataset(local_stack.s3, f"s3://{bucket}/datasets/0123456789abcdef/", tmp_path / "x")
    assert not (tmp_path / "x").exists()


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
