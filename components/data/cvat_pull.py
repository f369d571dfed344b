"""Export annotations from a live CVAT server with cvat-sdk.

The export is CVAT's asynchronous flow: ``POST /api/{tasks|projects|jobs}/{id}/dataset/export``
answers 202 with an ``rq_id``; ``GET /api/requests/{rq_id}`` is polled until ``finished`` (or
``failed``); the archive is then downloaded from the request's ``result_url``. cvat-sdk's own
``export_dataset`` polls forever, so this module drives the same SDK endpoints with a deadline.

Which jobs count as done (CVAT 2.x, the ``JobRead`` model of the schema and of cvat-sdk): a job has
a ``stage`` (``annotation`` / ``validation`` / ``acceptance``: where it is in the workflow) and a
``state`` (``new`` / ``in progress`` / ``completed`` / ``rejected``: how far it is within that stage).
There is no ``accepted`` state: CVAT's "accepted" is stage ``acceptance`` with state ``completed``,
which ``state == "completed"`` already covers. So a job is done when its state is ``completed``, in
any stage (an annotator's finished job as well as a validated or accepted one); ``new``,
``in progress`` and ``rejected`` (sent back for rework) jobs are not.

Only regular annotation jobs (``type`` ``annotation``; CVAT before 2.5 sends no type and has only
these) are considered. Ground-truth jobs (``type`` ``ground_truth``, CVAT >= 2.5) hold a second,
independent annotation of frames that the regular jobs also cover, kept for quality checks; consensus
replicas (``type`` ``replica``) are extra copies of a regular job that CVAT merges into it. Neither is
part of the task's annotations (a task export leaves them out), so they never block "all done" and are
never exported on their own: that would put the same frames into the dataset twice.

Only done jobs are exported unless ``include_all_jobs``: when every annotation job is done the whole
task/project is exported in one request, otherwise each done job is exported and the parts are
merged by :func:`components.data.sources.merge_exports`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from components.data.errors import CVATError, DatasetError

log = logging.getLogger(__name__)

ULTRALYTICS_FORMAT = "Ultralytics YOLO Detection 1.0"
DONE_STATE = "completed"
ANNOTATION_JOB_TYPE = "annotation"


def make_client(
    url: str,
    *,
    token: str | None = None,
    username: str | None = None,
    password: str | None = None,
    ca_bundle: str | None = None,
    verify_ssl: bool | None = None,
    host: str | None = None,
):
    """Build a logged-in ``cvat_sdk.Client`` from a URL and a token or user/password.

    Args:
        url: CVAT server URL.
        token: Personal access token (sent as ``Authorization: Bearer``).
        username: User name, with ``password``, when there is no token.
        password: Password.
        ca_bundle: CA certificates to trust for an HTTPS server with a private CA.
        verify_ssl: Certificate checking; None (the default) means on. Keep it on: for a private CA
            pass ``ca_bundle`` instead.
        host: The host name CVAT is served under (``CVAT_HOST``), sent as the ``Host`` header when
            ``url`` reaches the server by another name (the in-cluster Service): CVAT's traefik
            routes only ``Host(`${CVAT_HOST}`)`` and answers 404 to any other name.

    Raises:
        CVATError: For missing credentials, a wrong password (401/400) or an unreachable server.
    """
    from cvat_sdk.api_client import rest
    from cvat_sdk.core.client import AccessTokenCredentials, Client, Config, PasswordCredentials

    if not token and not (username and password):
        raise CVATError("no CVAT credentials: set CVAT_TOKEN, or CVAT_USERNAME and CVAT_PASSWORD")
    try:
        # The version check would run before a private CA could be set, so it is done after.
        client = Client(
            url, config=Config(allow_unsupported_server=True, verify_ssl=verify_ssl), check_server_version=False
        )
        if ca_bundle:
            client.api_client.configuration.ssl_ca_cert = ca_bundle
            client.api_client.rest_client = rest.RESTClientObject(client.api_client.configuration)
        if host and host != urlsplit(url).hostname:
            client.api_client.set_default_header("Host", host)
        client.check_server_version(fail_if_unsupported=False)
        client.login(AccessTokenCredentials(token) if token else PasswordCredentials(username, password))
    except CVATError:
        raise
    except Exception as e:  # the SDK, urllib3 and ssl each raise their own types; all mean "cannot log in"
        raise CVATError(f"cannot log in to CVAT at {url}: {_describe(e)}") from e
    return client


def _public_host(url: str) -> str:
    """The server URL without any user:password part, fit for a manifest."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _describe(e: Exception) -> str:
    status = getattr(e, "status", None)
    body = getattr(e, "body", None)
    if status is not None:
        text = body.decode(errors="replace") if isinstance(body, bytes) else str(body or "")
        return f"HTTP {status} {getattr(e, 'reason', '')} {text.strip()[:300]}".strip()
    return f"{type(e).__name__}: {e}"


def _api_call(what: str, fn, *args, **kwargs):
    """Call an SDK endpoint and turn its exceptions into CVATError with a hint."""
    try:
        return fn(*args, **kwargs)
    except Exception as e:  # cvat-sdk raises ApiException, urllib3 and ssl errors alike: each becomes a CVATError
        status = getattr(e, "status", None)
        hint = {
            401: "the token or password was refused; check CVAT_TOKEN / CVAT_USERNAME / CVAT_PASSWORD",
            403: "this user may not read it; ask for access in CVAT",
            404: "it does not exist on this server; check the id",
            405: "the server does not offer this export format; see /api/server/annotation/formats",
        }.get(status, "")
        raise CVATError(f"{what} failed: {_describe(e)}{'; ' + hint if hint else ''}") from e


def _job_field(job, name: str) -> str:
    """A job's enum field as plain text ("" when the server did not send it)."""
    value = getattr(job, name, None)
    return str(getattr(value, "value", value) or "")


def is_annotation_job(job) -> bool:
    """Whether a job is a regular annotation job (not a ground-truth job or a consensus replica).

    CVAT before 2.5 sends no ``type``; every job there is an annotation job.
    """
    return _job_field(job, "type") in ("", ANNOTATION_JOB_TYPE)


def is_done(job) -> bool:
    """Whether a job's annotation is finished: state ``completed`` in any stage (see the module docs)."""
    return _job_field(job, "state") == DONE_STATE


def list_jobs(client, *, task_id: int | None = None, project_id: int | None = None) -> list:
    """All jobs of a task or project (every page)."""
    from cvat_sdk.core.helpers import get_paginated_collection

    kwargs = {"task_id": task_id} if task_id is not None else {"project_id": project_id}
    return _api_call(
        f"listing jobs of {'task ' + str(task_id) if task_id is not None else 'project ' + str(project_id)}",
        get_paginated_collection,
        client.api_client.jobs_api.list_endpoint,
        **kwargs,
    )


def _export_one(client, kind: str, obj_id: int, fmt: str, dest: Path, timeout: float, poll: float) -> Path:
    """Run one export request to completion and download its archive to ``dest``."""
    from cvat_sdk.core.downloading import Downloader

    api = {
        "task": client.api_client.tasks_api,
        "project": client.api_client.projects_api,
        "job": client.api_client.jobs_api,
    }[kind]
    rq, response = _api_call(
        f"starting the export of {kind} {obj_id}", api.create_dataset_export, format=fmt, id=obj_id, save_images=True
    )
    if response.status not in (200, 201, 202):
        raise CVATError(f"starting the export of {kind} {obj_id}: unexpected HTTP {response.status}")
    rq_id = rq.rq_id
    deadline = time.monotonic() + timeout
    while True:
        request, _ = _api_call(f"polling export request {rq_id}", client.api_client.requests_api.retrieve, rq_id)
        status = str(getattr(request.status, "value", request.status))
        if status == "finished":
            break
        if status == "failed":
            raise CVATError(f"CVAT failed to export {kind} {obj_id} as {fmt!r}: {request.message or 'no message'}")
        if time.monotonic() + poll > deadline:
            raise CVATError(
                f"export of {kind} {obj_id} not ready after {timeout:.0f}s (request {rq_id} is "
                f"{status!r}); CVAT may be busy: retry later or raise the timeout"
            )
        time.sleep(poll)
    url = getattr(request, "result_url", None)
    if not url:
        raise CVATError(
            f"export of {kind} {obj_id} finished without a result_url (it went to cloud storage?); "
            "export to local storage"
        )
    return _api_call(
        f"downloading {url}", Downloader(client).download_file, url, output_path=dest, timeout=int(max(timeout, 60))
    )


def export_from_cvat(
    client,
    work: Path,
    *,
    task_id: int | None = None,
    project_id: int | None = None,
    fmt: str = ULTRALYTICS_FORMAT,
    include_all_jobs: bool = False,
    timeout: float = 600.0,
    poll: float = 2.0,
) -> tuple[list[tuple[Path, str]], dict]:
    """Export a task or project (or its completed annotation jobs) to archives under ``work``.

    Ground-truth and replica jobs are always left out (see the module docs); with
    ``include_all_jobs`` the whole task/project is exported, whose annotations CVAT builds from the
    regular annotation jobs only.

    Args:
        client: Logged-in ``cvat_sdk.Client``.
        work: Scratch folder for the archives.
        task_id: The task to export (exactly one of task_id/project_id).
        project_id: The project to export.
        fmt: CVAT export format name.
        include_all_jobs: Export every annotation job, not only completed ones.
        timeout: Seconds to wait for each export to be prepared.
        poll: Seconds between status checks.

    Returns:
        ``[(archive, tag)]`` and the source description for the manifest (``jobs``: the completed
        annotation jobs taken; ``skipped_jobs``: unfinished ones left out; ``ignored_jobs``:
        ground-truth/replica jobs, when there are any).

    Raises:
        CVATError: Server errors, a failed or timed-out export.
        DatasetError: No annotation job is completed (and include_all_jobs is off).
    """
    if (task_id is None) == (project_id is None):
        raise DatasetError("give exactly one of a task id or a project id")
    kind, obj_id = ("task", task_id) if task_id is not None else ("project", project_id)
    api = client.api_client.tasks_api if kind == "task" else client.api_client.projects_api
    _api_call(f"reading {kind} {obj_id}", api.retrieve, id=obj_id)
    source = {
        "type": "cvat",
        "host": _public_host(client.api_map.host),
        kind + "_id": obj_id,
        "format": fmt,
        "include_all_jobs": include_all_jobs,
    }
    work.mkdir(parents=True, exist_ok=True)
    if include_all_jobs:
        source["jobs"] = "all"
        return [(_export_one(client, kind, obj_id, fmt, work / f"{kind}_{obj_id}.zip", timeout, poll), kind)], source
    all_jobs = list_jobs(client, task_id=task_id, project_id=project_id)
    jobs = [j for j in all_jobs if is_annotation_job(j)]
    ignored = sorted(j.id for j in all_jobs if not is_annotation_job(j))
    if ignored:
        log.info("ignoring ground-truth/replica job(s) %s of %s %s", ignored, kind, obj_id)
        source["ignored_jobs"] = ignored
    done = [j for j in jobs if is_done(j)]
    source["jobs"] = sorted(j.id for j in done)
    if not done:
        states = sorted(f"job {j.id}: {_job_field(j, 'stage') or '?'}/{_job_field(j, 'state') or '?'}" for j in jobs)
        raise DatasetError(
            f"{kind} {obj_id} has no completed annotation jobs "
            f"({'; '.join(states) or 'no annotation jobs'}); "
            "finish the jobs in CVAT or pass --include-all-jobs"
        )
    if len(done) == len(jobs):
        return [(_export_one(client, kind, obj_id, fmt, work / f"{kind}_{obj_id}.zip", timeout, poll), kind)], source
    done_ids = {j.id for j in done}
    skipped = sorted(j.id for j in jobs if j.id not in done_ids)
    log.info("exporting %d completed job(s) of %s %s; skipping unfinished job(s) %s", len(done), kind, obj_id, skipped)
    source["skipped_jobs"] = skipped
    return [
        (_export_one(client, "job", j.id, fmt, work / f"job_{j.id}.zip", timeout, poll), f"job{j.id}")
        for j in sorted(done, key=lambda j: j.id)
    ], source
