"""A cheap fingerprint of a data source's content, for the pull step's cache key.

KFP caches a step on its inputs. The pull step's input is a *location* (a folder, a zip, an
``s3://`` URI), whose content can change while the location stays the same; the fingerprint
passed alongside it makes a changed source a cache miss, so cached runs never train on stale
data. It is computed by the client that starts the run (``vinspect pipeline run/submit``).

A live CVAT task or project has no location whose content can be listed; its version is read
from CVAT itself (:func:`cvat_fingerprint`): the task's or project's ``updated_date`` and every
job's ``updated_date``, state and stage, which CVAT bumps whenever annotations are saved.
"""

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def source_fingerprint(source: str, *, s3_client=None) -> str:
    """Fingerprint ``source`` from sizes and modification times (local) or ETags (S3).

    Args:
        source: A local folder or file, or ``s3://bucket/key-or-prefix``; empty for a CVAT pull.
        s3_client: boto3 S3 client, needed for ``s3://`` sources.

    Returns:
        A short hex digest, or ``""`` for an empty source (a CVAT pull: see
        :func:`cvat_fingerprint`).

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
        bucket, _, prefix = source[len("s3://") :].partition("/")
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


def cvat_fingerprint(client, *, task_id: int | None = None, project_id: int | None = None) -> str:
    """Fingerprint a CVAT task's or project's annotations from their modification dates.

    CVAT bumps a job's ``updated_date`` (and its task's and project's) whenever annotations are
    saved, so these dates plus each job's state and stage (only completed jobs are pulled by
    default) change exactly when a pull could return something different.

    Args:
        client: A logged-in ``cvat_sdk.Client`` (:func:`components.data.cvat_pull.make_client`).
        task_id: CVAT task, or
        project_id: CVAT project (all its tasks' jobs).

    Returns:
        A short hex digest.

    Raises:
        ValueError: Neither or both of ``task_id`` and ``project_id``.
        components.data.errors.CVATError: CVAT refused or failed a request (the message says which).
    """
    from components.data.cvat_pull import list_jobs
    from components.data.errors import CVATError

    if bool(task_id) == bool(project_id):
        raise ValueError("give exactly one of a CVAT task id and a CVAT project id")
    kind, obj_id = ("task", task_id) if task_id else ("project", project_id)
    api = client.api_client.tasks_api if kind == "task" else client.api_client.projects_api
    try:
        obj, _ = api.retrieve(id=obj_id)
    except Exception as e:  # the SDK raises ApiException, urllib3 errors, ...
        status = getattr(e, "status", None)
        raise CVATError(
            f"reading {kind} {obj_id} failed: "
            + (f"HTTP {status} {getattr(e, 'reason', '')}".strip() if status else f"{type(e).__name__}: {e}")
        ) from e
    h = hashlib.sha256(f"{kind}\t{obj_id}\t{_field(obj, 'updated_date')}\n".encode())
    jobs = list_jobs(client, task_id=task_id) if task_id else list_jobs(client, project_id=project_id)
    for job in sorted(jobs, key=lambda j: j.id):
        fields = [_field(job, name) for name in ("id", "task_id", "updated_date", "state", "stage", "type")]
        h.update(("job\t" + "\t".join(fields) + "\n").encode())
    return h.hexdigest()[:16]


def _field(obj, name: str) -> str:
    """A model field as text: dates in ISO form, enums by value, absent fields empty."""
    value = getattr(obj, name, None)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(getattr(value, "value", value) if value is not None else "")


def cvat_ids(arguments: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """``(task_id, project_id)`` of the pipeline arguments' CVAT source (None where absent/0)."""

    def _id(name: str) -> int | None:
        value = arguments.get(name) or 0
        try:
            return int(value) or None
        except (TypeError, ValueError):
            raise ValueError(f"pipeline parameter {name}={value!r} is not a CVAT id") from None

    return _id("cvat_task_id"), _id("cvat_project_id")


def data_version(arguments: Mapping[str, Any], *, s3_client=None, cvat_client=None) -> str:
    """The ``source_version`` for a run's arguments: the fingerprint of everything the pull reads.

    Args:
        arguments: Pipeline arguments (``data_source``, ``cvat_task_id``, ``cvat_project_id``).
        s3_client: boto3 S3 client, needed for an ``s3://`` ``data_source``.
        cvat_client: Logged-in ``cvat_sdk.Client``, needed for a CVAT task or project.

    Returns:
        A short hex digest; ``""`` when the arguments name no source at all.

    Raises:
        FileNotFoundError, ValueError: See :func:`source_fingerprint`.
        components.data.errors.CVATError: See :func:`cvat_fingerprint`.
    """
    source = str(arguments.get("data_source") or "")
    task_id, project_id = cvat_ids(arguments)
    parts = []
    if source:
        parts.append(source_fingerprint(source, s3_client=s3_client))
    if task_id or project_id:
        if cvat_client is None:
            raise ValueError("a CVAT client is needed to read the version of a CVAT source")
        parts.append(cvat_fingerprint(cvat_client, task_id=task_id, project_id=project_id))
    if len(parts) <= 1:
        return parts[0] if parts else ""
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
