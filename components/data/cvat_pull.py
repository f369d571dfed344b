"""Export annotations from a live CVAT server with cvat-sdk.

The export is CVAT's asynchronous flow: ``POST /api/{tasks|projects|jobs}/{id}/dataset/export``
answers 202 with an ``rq_id``; ``GET /api/requests/{rq_id}`` is polled until ``finished`` (or
``failed``); the archive is then downloaded from the request's ``result_url``. cvat-sdk's own
``export_dataset`` polls forever, so this module drives the same SDK endpoints with a deadline.

Only jobs whose state is ``completed`` (or ``accepted``) are exported unless ``include_all_jobs``:
when every job qualifies the whole task/project is exported in one request, otherwise each
qualifying job is exported and the parts are merged by the importer.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from components.data.errors import CVATError, DatasetError

log = logging.getLogger(__name__)

ULTRALYTICS_FORMAT = "Ultralytics YOLO Detection 1.0"
DONE_STATES = {"completed", "accepted"}


def make_client(url: str, *, token: str | None = None, username: str | None = None,
                password: str | None = None, ca_bundle: str | None = None, verify_ssl: bool | None = None):
    """Build a logged-in ``cvat_sdk.Client`` from a URL and a token or user/password.

    Args:
        url: CVAT server URL.
        token: Personal access token (sent as ``Authorization: Bearer``).
        username: User name, with ``password``, when there is no token.
        password: Password.
        ca_bundle: CA certificates to trust for an HTTPS server with a private CA.
        verify_ssl: Certificate checking; None (the default) means on. Keep it on: for a private CA
            pass ``ca_bundle`` instead.

    Raises:
        CVATError: For missing credentials, a wrong password (401/400) or an unreachable server.
    """
    from cvat_sdk.api_client import rest
    from cvat_sdk.core.client import AccessTokenCredentials, Client, Config, PasswordCredentials

    if not token and not (username and password):
        raise CVATError("no CVAT credentials: set CVAT_TOKEN, or CVAT_USERNAME and CVAT_PASSWORD")
    try:
        # The version check would run before a private CA could be set, so it is done after.
        client = Client(url, config=Config(allow_unsupported_server=True, verify_ssl=verify_ssl),
                        check_server_version=False)
        if ca_bundle:
            client.api_client.configuration.ssl_ca_cert = ca_bundle
            client.api_client.rest_client = rest.RESTClientObject(client.api_client.configuration)
        client.check_server_version(fail_if_unsupported=False)
        client.login(AccessTokenCredentials(token) if token else PasswordCredentials(username, password))
    except CVATError:
        raise
    except Exception as e:
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
    except Exception as e:
        status = getattr(e, "status", None)
        hint = {
            401: "the token or password was refused; check CVAT_TOKEN / CVAT_USERNAME / CVAT_PASSWORD",
            403: "this user may not read it; ask for access in CVAT",
            404: "it does not exist on this server; check the id",
            405: "the server does not offer this export format; see /api/server/annotation/formats",
        }.get(status, "")
        raise CVATError(f"{what} failed: {_describe(e)}{'; ' + hint if hint else ''}") from e


def _job_state(job) -> str:
    state = getattr(job, "state", None)
    return str(getattr(state, "value", state) or "")


def list_jobs(client, *, task_id: int | None = None, project_id: int | None = None) -> list:
    """All jobs of a task or project (every page)."""
    from cvat_sdk.core.helpers import get_paginated_collection

    kwargs = {"task_id": task_id} if task_id is not None else {"project_id": project_id}
    return _api_call(f"listing jobs of {'task ' + str(task_id) if task_id is not None else 'project ' + str(project_id)}",
                     get_paginated_collection, client.api_client.jobs_api.list_endpoint, **kwargs)


def _export_one(client, kind: str, obj_id: int, fmt: str, dest: Path, timeout: float, poll: float) -> Path:
    """Run one export request to completion and download its archive to ``dest``."""
    from cvat_sdk.core.downloading import Downloader

    api = {"task": client.api_client.tasks_api, "project": client.api_client.projects_api,
           "job": client.api_client.jobs_api}[kind]
    rq, response = _api_call(f"starting the export of {kind} {obj_id}", api.create_dataset_export,
                             format=fmt, id=obj_id, save_images=True)
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
            raise CVATError(f"export of {kind} {obj_id} not ready after {timeout:.0f}s (request {rq_id} is "
                            f"{status!r}); CVAT may be busy: retry later or raise the timeout")
        time.sleep(poll)
    url = getattr(request, "result_url", None)
    if not url:
        raise CVATError(f"export of {kind} {obj_id} finished without a result_url (it went to cloud storage?); "
                        "export to local storage")
    return _api_call(f"downloading {url}", Downloader(client).download_file, url, output_path=dest,
                     timeout=int(max(timeout, 60)))


def export_from_cvat(client, work: Path, *, task_id: int | None = None, project_id: int | None = None,
                     fmt: str = ULTRALYTICS_FORMAT, include_all_jobs: bool = False,
                     timeout: float = 600.0, poll: float = 2.0) -> tuple[list[tuple[Path, str]], dict]:
    """Export a task or project (or its completed jobs) to archives under ``work``.

    Args:
        client: Logged-in ``cvat_sdk.Client``.
        work: Scratch folder for the archives.
        task_id: The task to export (exactly one of task_id/project_id).
        project_id: The project to export.
        fmt: CVAT export format name.
        include_all_jobs: Export every job, not only completed/accepted ones.
        timeout: Seconds to wait for each export to be prepared.
        poll: Seconds between status checks.

    Returns:
        ``[(archive, tag)]`` and the source description for the manifest.

    Raises:
        CVATError: Server errors, a failed or timed-out export.
        DatasetError: No job is completed (and include_all_jobs is off).
    """
    if (task_id is None) == (project_id is None):
        raise DatasetError("give exactly one of a task id or a project id")
    kind, obj_id = ("task", task_id) if task_id is not None else ("project", project_id)
    api = client.api_client.tasks_api if kind == "task" else client.api_client.projects_api
    _api_call(f"reading {kind} {obj_id}", api.retrieve, id=obj_id)
    source = {"type": "cvat", "host": _public_host(client.api_map.host), kind + "_id": obj_id, "format": fmt,
              "include_all_jobs": include_all_jobs}
    work.mkdir(parents=True, exist_ok=True)
    if include_all_jobs:
        source["jobs"] = "all"
        return [(_export_one(client, kind, obj_id, fmt, work / f"{kind}_{obj_id}.zip", timeout, poll), kind)], source
    jobs = list_jobs(client, task_id=task_id, project_id=project_id)
    done = [j for j in jobs if _job_state(j) in DONE_STATES]
    source["jobs"] = sorted(j.id for j in done)
    if not done:
        states = sorted({f"job {j.id}: {_job_state(j) or '?'}" for j in jobs})
        raise DatasetError(f"{kind} {obj_id} has no completed or accepted jobs ({'; '.join(states) or 'no jobs'}); "
                           "finish the jobs in CVAT or pass --include-all-jobs")
    if len(done) == len(jobs):
        return [(_export_one(client, kind, obj_id, fmt, work / f"{kind}_{obj_id}.zip", timeout, poll), kind)], source
    skipped = sorted(j.id for j in jobs if j not in done)
    log.info("exporting %d completed job(s) of %s %s; skipping unfinished job(s) %s", len(done), kind, obj_id, skipped)
    source["skipped_jobs"] = skipped
    return [(_export_one(client, "job", j.id, fmt, work / f"job_{j.id}.zip", timeout, poll), f"job{j.id}")
            for j in sorted(done, key=lambda j: j.id)], source
