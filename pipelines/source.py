"""A cheap fingerprint of a data source's content, for the pull step's cache key.

KFP caches a step on its inputs. The pull step's input is a *location* (a folder, a zip, an
``s3://`` URI), whose content can change while the location stays the same; the fingerprint
passed alongside it makes a changed source a cache miss, so cached runs never train on stale
data. It is computed by the client that starts the run (``vinspect pipeline run/submit``).
"""

import hashlib
from pathlib import Path


def source_fingerprint(source: str, *, s3_client=None) -> str:
    """Fingerprint ``source`` from sizes and modification times (local) or ETags (S3).

    Args:
        source: A local folder or file, or ``s3://bucket/key-or-prefix``; empty for a CVAT pull.
        s3_client: boto3 S3 client, needed for ``s3://`` sources.

    Returns:
        A short hex digest, or ``""`` when the source cannot be fingerprinted from here (a CVAT
        task: those runs should be started with caching off; scheduled runs always are).

    Raises:
        FileNotFoundError: A local source that does not exist.
        ValueError: An ``s3://`` source without a client, or one that matches no object.
    """
    if not source:
        return ""
    h = hashlib.sha256()
    if source.startswith("s3://"):
        if s3_client is None:
            raise ValueError(f"{source} is on S3: an S3 client is needed to fingerprint it")
        bucket, _, prefix = source[len("s3://"):].partition("/")
        found = False
        for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                found = True
                h.update(f"{obj['Key']}\t{obj.get('ETag', '')}\t{obj.get('Size', 0)}\n".encode())
        if not found:
            raise ValueError(f"no object in S3 matches {source}")
        return h.hexdigest()[:16]
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"data source {path} does not exist")
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(path) if f != path else f.name}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]
