"""A small CVAT 2.x server for tests: real HTTP on loopback, answering what cvat-sdk calls.

Built from ``../shared/specs/cvat_api_excerpt.yaml`` (CVAT's OpenAPI schema, v2.72): login (token,
session cookie + CSRF, personal access token as ``Bearer``, basic auth), ``/api/server/about``,
tasks, projects, the paginated ``/api/jobs`` list, the asynchronous export
(``POST /api/{tasks|projects|jobs}/{id}/dataset/export`` -> 202 ``{rq_id}``; ``GET /api/requests/{rq_id}``
queued -> started -> finished or failed; download from ``result_url`` with a Content-Disposition
file name), and CVAT's error bodies (``{"detail": ...}``; 401, 404, 405 for an unknown format).

In front of it, optionally, the virtual-host routing of CVAT's own deployment: CVAT's
``docker-compose.yml`` (cvat-ai/cvat) reaches ``cvat_server`` and ``cvat_ui`` only through traefik
routers whose rules are ``Host(`${CVAT_HOST:-localhost}`)`` (``traefik.http.routers.cvat.rule``,
``traefik.http.routers.cvat-ui.rule`` labels). Traefik's ``Host`` matcher compares the request's
host name (the ``Host`` header, port removed, case-insensitive); a request no router matches gets
traefik's ``404 page not found`` as ``text/plain``. ``FakeCVAT(hosts=[...])`` enforces that.

Exports are built on request from in-memory frames in "Ultralytics YOLO Detection 1.0",
"YOLO 1.1" or "CVAT for images 1.1", with each task's subset, the way CVAT lays them out.
"""

from __future__ import annotations

import base64
import io
import json
import secrets
import threading
import uuid
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import yaml

CT = "application/vnd.cvat+json"
FORMATS = ("Ultralytics YOLO Detection 1.0", "YOLO 1.1", "CVAT for images 1.1")
NOW = "2026-01-01T00:00:00.000000Z"


@dataclass
class Frame:
    """One image of a task with its rectangles in pixels."""

    name: str
    data: bytes
    width: int
    height: int
    boxes: list[tuple[str, float, float, float, float]] = field(default_factory=list)


JOB_STATES = ("new", "in progress", "completed", "rejected")
JOB_STAGES = ("annotation", "validation", "acceptance")
JOB_TYPES = ("annotation", "ground_truth", "replica")


@dataclass
class Job:
    """A CVAT 2.x job: ``state`` within its ``stage``; ``type`` ground_truth for a CVAT >= 2.5 GT job.

    A ground-truth job's frames are a sample of the task's frames that the annotation jobs also cover;
    a task/project export takes its annotations from the annotation jobs only.
    """

    id: int
    task_id: int
    frames: range  # frame indices of the task
    state: str = "completed"
    stage: str = "acceptance"
    type: str = "annotation"
    updated_date: str = NOW  # CVAT bumps it when the job's annotations are saved

    def __post_init__(self) -> None:
        # Catch typos such as "accepted" (a stage-like word, not a CVAT job state) in test setups.
        for name, allowed in (("state", JOB_STATES), ("stage", JOB_STAGES), ("type", JOB_TYPES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"job {self.id}: {name} {getattr(self, name)!r} is not one of {allowed}")


@dataclass
class Task:
    id: int
    name: str
    labels: list[str]
    frames: list[Frame]
    jobs: list[Job]
    subset: str = ""
    project_id: int | None = None
    updated_date: str = NOW


@dataclass
class Project:
    id: int
    name: str
    labels: list[str]


@dataclass
class ExportRequest:
    id: str
    target: str
    obj_id: int
    fmt: str
    polls: int = 0
    archive: bytes | None = None


class FakeCVAT:
    """The server. Configure ``tasks``/``projects`` and failure knobs, then ``start()``.

    Attributes:
        polls_before_finish: How many status polls answer queued/started before finished.
        fail_exports: ``(target, id)`` whose export ends ``failed``.
        stuck_exports: ``(target, id)`` whose export never finishes.
        calls: ``(method, path)`` of every request, for assertions.
    """

    def __init__(
        self,
        *,
        username: str = "annotator",
        password: str = "correct horse",
        pat: str | None = None,
        page_size: int = 2,
        version: str = "2.72.0",
        hosts: list[str] | None = None,
    ):
        self.username, self.password = username, password
        # Host names traefik routes to CVAT (None: no traefik in front, anything goes).
        self.hosts = [h.lower() for h in hosts] if hosts is not None else None
        self.pat = pat or "pat_" + secrets.token_hex(8)
        self.tokens: set[str] = set()
        self.sessions: dict[str, str] = {}  # sessionid -> csrftoken
        self.tasks: dict[int, Task] = {}
        self.projects: dict[int, Project] = {}
        self.requests: dict[str, ExportRequest] = {}
        self.polls_before_finish = 2
        self.fail_exports: set[tuple[str, int]] = set()
        self.stuck_exports: set[tuple[str, int]] = set()
        self.page_size = page_size
        self.version = version
        self.calls: list[tuple[str, str]] = []
        # Set-up state (projects/tasks created over the API, users, uploads): see _setup_routes.
        self.users: dict[str, dict] = {
            username: {
                "id": 1,
                "username": username,
                "email": f"{username}@example.com",
                "password": password,
                "first_name": "",
                "last_name": "",
            }
        }
        self.registration_open = True
        self.uploads: dict[int, dict] = {}  # task id -> {"started": bool, "files": [(name, bytes)]}
        self.create_requests: dict[str, dict] = {}  # rq_id -> {"task_id", "polls"}
        self.shapes: dict[int, list[dict]] = {}  # task id -> annotations as uploaded (LabeledShape)
        self.default_segment_size = 0  # 0: one job for the whole task, as CVAT without segment_size
        self.segment_sizes: dict[int, int] = {}  # task id -> segment_size asked for at creation
        self.assignees: dict[int, int | None] = {}  # job id -> user id
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -------------------------------------------------------------- lifecycle
    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "FakeCVAT":
        handler = type("Handler", (_Handler,), {"cvat": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # -------------------------------------------------------------- models
    def task_json(self, t: Task) -> dict:
        done = sum(j.state == "completed" for j in t.jobs if j.type == "annotation")
        n_jobs = sum(j.type == "annotation" for j in t.jobs)
        return {
            "url": f"{self.url}/api/tasks/{t.id}",
            "id": t.id,
            "name": t.name,
            "project_id": t.project_id,
            "owner": {
                "url": f"{self.url}/api/users/1",
                "id": 1,
                "username": self.username,
                "first_name": "",
                "last_name": "",
            },
            "assignee": None,
            "bug_tracker": "",
            "created_date": NOW,
            "updated_date": t.updated_date,
            "overlap": 0,
            "segment_size": max((len(j.frames) for j in t.jobs if j.type == "annotation"), default=0),
            "status": "completed" if done == n_jobs else "annotation",
            "size": len(t.frames),
            "mode": "annotation",
            "dimension": "2d",
            "subset": t.subset,
            "jobs": {"count": n_jobs, "completed": done, "validation": 0, "url": f"{self.url}/api/jobs?task_id={t.id}"},
            "labels": {"url": f"{self.url}/api/labels?task_id={t.id}"},
            "target_storage": None,
            "source_storage": None,
        }

    def project_json(self, p: Project) -> dict:
        tasks = [t for t in self.tasks.values() if t.project_id == p.id]
        return {
            "url": f"{self.url}/api/projects/{p.id}",
            "id": p.id,
            "name": p.name,
            "owner": {"url": f"{self.url}/api/users/1", "id": 1, "username": self.username},
            "assignee": None,
            "bug_tracker": "",
            "task_subsets": sorted({t.subset for t in tasks if t.subset}),
            "created_date": NOW,
            "updated_date": NOW,
            "status": "annotation",
            "dimension": "2d",
            "target_storage": None,
            "source_storage": None,
            "tasks": {"count": len(tasks), "url": f"{self.url}/api/tasks?project_id={p.id}"},
            "labels": {"url": f"{self.url}/api/labels?project_id={p.id}"},
        }

    def job_json(self, j: Job) -> dict:
        t = self.tasks[j.task_id]
        return {
            "url": f"{self.url}/api/jobs/{j.id}",
            "id": j.id,
            "task_id": j.task_id,
            "project_id": t.project_id,
            "stage": j.stage,
            "state": j.state,
            # The deprecated 1.x workflow field (JobStatus: annotation/validation/completed) that
            # ``stage`` replaced; its last step was "completed" where the stage is "acceptance".
            "status": {"acceptance": "completed"}.get(j.stage, j.stage),
            "start_frame": j.frames.start,
            "stop_frame": j.frames.stop - 1,
            "frame_count": len(j.frames),
            "mode": "annotation",
            "dimension": "2d",
            "type": j.type,
            "created_date": NOW,
            "updated_date": j.updated_date,
            "issues": {"url": f"{self.url}/api/issues?job_id={j.id}", "count": 0},
            "labels": {"url": f"{self.url}/api/labels?job_id={j.id}"},
        }

    def request_json(self, r: ExportRequest) -> dict:
        status = r.archive is not None and "finished"
        if not status:
            status = "queued" if r.polls <= 1 else "started"
        if (r.target, r.obj_id) in self.fail_exports and r.polls > self.polls_before_finish:
            status = "failed"
        body = {
            "id": r.id,
            "status": status,
            "message": ""
            if status != "failed"
            else "Traceback (most recent call last): datumaro.components.errors.DatasetExportError: disk full",
            "operation": {
                "type": "export:dataset",
                "target": r.target,
                f"{r.target}_id": r.obj_id,
                "format": r.fmt,
                "lightweight": True,
            },
            "progress": None if status == "queued" else (1.0 if status == "finished" else 0.5),
            "created_date": NOW,
            "started_date": None if status == "queued" else NOW,
            "finished_date": NOW if status in ("finished", "failed") else None,
            "expiry_date": None,
            "owner": {"id": 1, "username": self.username},
            "result_url": f"{self.url}/api/{r.target}s/{r.obj_id}/dataset/download?rq_id={r.id}"
            if status == "finished"
            else None,
            "result_id": None,
        }
        return body

    # -------------------------------------------------------------- exports
    def frames_for(self, target: str, obj_id: int) -> tuple[list[str], list[tuple[Task, Frame]]]:
        if target == "task":
            t = self.tasks[obj_id]
            return t.labels, [(t, f) for f in t.frames]
        if target == "job":
            j = next(j for t in self.tasks.values() for j in t.jobs if j.id == obj_id)
            t = self.tasks[j.task_id]
            return t.labels, [(t, t.frames[i]) for i in j.frames]
        p = self.projects[obj_id]
        return p.labels, [
            (t, f) for t in sorted(self.tasks.values(), key=lambda t: t.id) if t.project_id == obj_id for f in t.frames
        ]

    def build_archive(self, r: ExportRequest) -> bytes:
        labels, frames = self.frames_for(r.target, r.obj_id)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            by_subset: dict[str, list[tuple[Task, Frame]]] = {}
            for t, f in frames:
                by_subset.setdefault(t.subset or ("train" if r.fmt != "CVAT for images 1.1" else ""), []).append((t, f))
            if r.fmt == "Ultralytics YOLO Detection 1.0":
                data = {"path": ".", **{s: f"images/{s}" for s in by_subset}, "names": dict(enumerate(labels))}
                z.writestr("data.yaml", yaml.safe_dump(data, sort_keys=False))
                for s, fs in by_subset.items():
                    for _t, f in fs:
                        z.writestr(f"images/{s}/{f.name}", f.data)
                        z.writestr(f"labels/{s}/{f.name.rsplit('.', 1)[0]}.txt", _yolo_lines(f, labels))
            elif r.fmt == "YOLO 1.1":
                z.writestr("obj.names", "".join(n + "\n" for n in labels))
                z.writestr(
                    "obj.data",
                    f"classes = {len(labels)}\n"
                    + "".join(f"{s} = data/{s}.txt\n" for s in by_subset)
                    + "names = data/obj.names\nbackup = backup/\n",
                )
                for s, fs in by_subset.items():
                    z.writestr(f"{s}.txt", "".join(f"data/obj_{s}_data/{f.name}\n" for _t, f in fs))
                    for _t, f in fs:
                        z.writestr(f"obj_{s}_data/{f.name}", f.data)
                        z.writestr(f"obj_{s}_data/{f.name.rsplit('.', 1)[0]}.txt", _yolo_lines(f, labels))
            else:
                z.writestr("annotations.xml", _cvat_xml(r, labels, frames))
                for t, f in frames:
                    prefix = f"images/{t.subset}/" if r.target == "project" and t.subset else "images/"
                    z.writestr(prefix + f.name, f.data)
        return buf.getvalue()


def _yolo_lines(f: Frame, labels: list[str]) -> str:
    out = []
    for lab, x0, y0, x1, y1 in f.boxes:
        out.append(
            f"{labels.index(lab)} {(x0 + x1) / 2 / f.width:.6f} {(y0 + y1) / 2 / f.height:.6f} "
            f"{(x1 - x0) / f.width:.6f} {(y1 - y0) / f.height:.6f}\n"
        )
    return "".join(out)


def _cvat_xml(r: ExportRequest, labels: list[str], frames) -> str:
    meta = "project" if r.target == "project" else "task"
    lab = "".join(f"<label><name>{n}</name><type>rectangle</type><attributes></attributes></label>" for n in labels)
    parts = [
        f'<?xml version="1.0" encoding="utf-8"?>\n<annotations>\n<version>1.1</version>\n'
        f"<meta><{meta}><id>{r.obj_id}</id><labels>{lab}</labels></{meta}></meta>\n"
    ]
    for i, (t, f) in enumerate(frames):
        sub = f' subset="{t.subset}" task_id="{t.id}"' if meta == "project" and t.subset else ""
        parts.append(f'<image id="{i}" name="{f.name}" width="{f.width}" height="{f.height}"{sub}>\n')
        for lab_name, x0, y0, x1, y1 in f.boxes:
            parts.append(
                f'<box label="{lab_name}" occluded="0" source="manual" xtl="{x0:.2f}" ytl="{y0:.2f}" '
                f'xbr="{x1:.2f}" ybr="{y1:.2f}" z_order="0"></box>\n'
            )
        parts.append("</image>\n")
    parts.append("</annotations>\n")
    return "".join(parts)


class _Handler(BaseHTTPRequestHandler):
    cvat: FakeCVAT
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep test output quiet
        pass

    # -------------------------------------------------------------- plumbing
    def _send(self, status: int, body=None, *, ctype: str = CT, headers: dict | None = None) -> None:
        raw = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        self.send_response(status)
        if body is not None:
            self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(raw)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(raw)

    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _cookies(self) -> dict[str, str]:
        out = {}
        for part in (self.headers.get("Cookie") or "").split(";"):
            if "=" in part:
                k, v = part.strip().split("=", 1)
                out[k] = v
        return out

    def _authenticated(self, unsafe: bool) -> bool | str:
        c = self.cvat
        auth = self.headers.get("Authorization") or ""
        if auth.startswith("Token "):
            return auth[6:] in c.tokens or "Invalid token."
        if auth.startswith("Bearer "):
            return auth[7:] == c.pat or "Invalid token."
        if auth.startswith("Basic "):
            user, _, pw = base64.b64decode(auth[6:]).decode().partition(":")
            return (user == c.username and pw == c.password) or "Invalid username/password."
        cookies = self._cookies()
        sid = cookies.get("sessionid")
        if sid in c.sessions:
            if unsafe and self.headers.get("X-CSRFToken") != c.sessions[sid]:
                return "CSRF Failed: CSRF token missing or incorrect."
            return True
        return "Authentication credentials were not provided."

    def _routed_by_traefik(self) -> bool:
        if self.cvat.hosts is None:
            return True
        host = (self.headers.get("Host") or "").strip().lower()
        if host.startswith("["):
            host = host.split("]")[0] + "]"
        else:
            host = host.rsplit(":", 1)[0] if ":" in host else host
        return host in self.cvat.hosts

    def _route(self, method: str) -> None:
        c = self.cvat
        if not self._routed_by_traefik():
            c.calls.append((method, "404 " + self.path))
            self._body() if method == "POST" else None
            return self._send(404, b"404 page not found\n", ctype="text/plain; charset=utf-8")
        parts = urlsplit(self.path)
        path, query = parts.path.rstrip("/"), {k: v[-1] for k, v in parse_qs(parts.query).items()}
        c.calls.append((method, path))
        body = self._body() if method in ("POST", "PATCH", "PUT") else b""
        self.request_body = body
        if path == "/api/server/about" and method == "GET":
            return self._send(
                200,
                {
                    "name": "Computer Vision Annotation Tool",
                    "description": "test server",
                    "version": c.version,
                    "logo_url": "",
                    "subtitle": "",
                },
            )
        if path == "/api/auth/login" and method == "POST":
            creds = json.loads(body or b"{}")
            if creds.get("username") != c.username or creds.get("password") != c.password:
                return self._send(400, {"non_field_errors": ["Unable to log in with provided credentials."]})
            key, sid, csrf = secrets.token_hex(20), secrets.token_hex(16), secrets.token_hex(16)
            c.tokens.add(key)
            c.sessions[sid] = csrf
            self.send_response(200)
            raw = json.dumps({"key": key}).encode()
            self.send_header("Content-Type", CT)
            self.send_header("Content-Length", str(len(raw)))
            self.send_header("Set-Cookie", f"sessionid={sid}; HttpOnly; Path=/; SameSite=Lax")
            self.send_header("Set-Cookie", f"csrftoken={csrf}; Path=/; SameSite=Lax")
            self.end_headers()
            self.wfile.write(raw)
            return None
        ok = self._authenticated(unsafe=method not in ("GET", "HEAD"))
        if ok is not True:
            return self._send(401, {"detail": ok}, headers={"WWW-Authenticate": "Token"})
        seg = path.split("/")[2:]  # after /api
        try:
            return self._dispatch(method, seg, query)
        except KeyError:
            return self._send(404, {"detail": "Not found."})

    def _dispatch(self, method: str, seg: list[str], query: dict) -> None:
        c = self.cvat
        if _setup_routes(self, method, seg, query) is not NOT_HANDLED:
            return None
        if seg[:1] == ["server"] and seg[1:] == ["annotation", "formats"]:
            fmts = [
                {"name": f, "ext": "ZIP", "version": f.rsplit(" ", 1)[-1], "enabled": True, "dimension": "2d"}
                for f in FORMATS
            ]
            return self._send(200, {"importers": fmts, "exporters": fmts})
        if seg[0] in ("tasks", "projects") and len(seg) == 2 and method == "GET":
            obj_id = int(seg[1])
            if seg[0] == "tasks":
                return self._send(200, c.task_json(c.tasks[obj_id]))
            return self._send(200, c.project_json(c.projects[obj_id]))
        if seg == ["jobs"] and method == "GET":
            jobs = [
                j
                for t in sorted(c.tasks.values(), key=lambda t: t.id)
                for j in t.jobs
                if ("task_id" not in query or j.task_id == int(query["task_id"]))
                and ("project_id" not in query or c.tasks[j.task_id].project_id == int(query["project_id"]))
            ]
            page, size = int(query.get("page", 1)), int(query.get("page_size", c.page_size))
            chunk = jobs[(page - 1) * size : page * size]
            nxt = f"{c.url}/api/jobs?page={page + 1}" if page * size < len(jobs) else None
            return self._send(
                200, {"count": len(jobs), "next": nxt, "previous": None, "results": [c.job_json(j) for j in chunk]}
            )
        if len(seg) == 4 and seg[2:] == ["dataset", "export"] and method == "POST":
            target = seg[0].rstrip("s")
            obj_id = int(seg[1])
            if target == "task":
                c.tasks[obj_id]
            elif target == "project":
                c.projects[obj_id]
            elif not any(j.id == obj_id for t in c.tasks.values() for j in t.jobs):
                raise KeyError(obj_id)
            fmt = query.get("format")
            if fmt not in FORMATS:
                return self._send(405, {"detail": f"Unknown format specified for the request: {fmt}"})
            if query.get("save_images") not in ("true", "True", "1"):
                return self._send(400, {"detail": "this test server only exports with images"})
            rq = ExportRequest(str(uuid.uuid4()), target, obj_id, fmt)
            c.requests[rq.id] = rq
            return self._send(202, {"rq_id": rq.id})
        if seg[0] == "requests" and len(seg) == 2 and method == "GET":
            rq = c.requests[seg[1]]
            rq.polls += 1
            key = (rq.target, rq.obj_id)
            if rq.polls > c.polls_before_finish and key not in c.stuck_exports and key not in c.fail_exports:
                if rq.archive is None:
                    rq.archive = c.build_archive(rq)
            return self._send(200, c.request_json(rq))
        if len(seg) == 4 and seg[2:] == ["dataset", "download"] and method == "GET":
            rq = c.requests[query["rq_id"]]
            if rq.archive is None:
                return self._send(400, {"detail": "the export is not ready"})
            name = f"{rq.target}_{rq.obj_id}_dataset.zip"
            return self._send(
                200,
                rq.archive,
                ctype="application/zip",
                headers={"Content-Disposition": f'attachment; filename="{name}"'},
            )
        raise KeyError(seg)

    def do_GET(self):  # noqa: N802
        self._route("GET")

    def do_POST(self):  # noqa: N802
        self._route("POST")

    def do_PATCH(self):  # noqa: N802
        self._route("PATCH")

    def do_PUT(self):  # noqa: N802
        self._route("PUT")


# ------------------------------------------------------------------ set-up routes (issue 15)
#
# What `vinspect cvat setup` and `vinspect review push` call through cvat-sdk, answered the way
# CVAT 2.x answers it. Sources: the request/response models and endpoint tables of cvat-sdk's
# generated API (``cvat_sdk/api_client/api/{projects,tasks,labels,users,auth,jobs}_api.py`` and
# ``cvat_sdk/api_client/model/*.py``, SDK 2.80 for server 2.x), and the server code in
# github:cvat-ai/cvat:
#
# - list filters (``?name=``, ``?project_id=``, ``?username=``) are CVAT's ``SimpleFilter``, "the only
#   available check is equality" (``cvat/apps/engine/filters.py``); lists are paginated
#   ``{count, next, previous, results}``;
# - ``POST /api/projects`` with ``labels`` creates them in the order given; ``PATCH
#   /api/projects/{id}`` with ``labels`` adds those without an ``id`` and refuses a name that exists
#   (``LabelSerializer`` / ``ProjectWriteSerializer`` in ``cvat/apps/engine/serializers.py``);
#   tasks inside a project take the project's labels and may not set their own;
# - ``POST /api/tasks/{id}/data`` is the upload protocol of ``UploadMixin``
#   (``cvat/apps/engine/mixins.py``): ``Upload-Start`` -> 202, ``Upload-Multiple`` multipart
#   ``client_files[i]`` -> 200, ``Upload-Finish`` with the data fields -> 202 ``{rq_id}``; the task is
#   created in the background (request operation ``create:task``), frames sorted by name
#   (``sorting_method`` ``lexicographical``, the default), then one job per ``segment_size``
#   frames (all frames in one job when it is 0), each job ``new`` / ``annotation``;
# - ``GET /api/tasks/{id}/data/meta`` lists the frames' names and sizes in frame order;
# - ``PUT /api/tasks/{id}/annotations`` replaces a task's annotations with a ``LabeledData``
#   (``shapes`` of ``type`` rectangle, ``points`` ``[x1, y1, x2, y2]`` in pixels, ``label_id``
#   of the project's labels, ``frame`` index); ``PATCH ...?action=create`` adds to them;
#   a label id that is not the task's is 400;
# - ``POST /api/auth/register`` (dj-rest-auth's ``RegisterView`` as ``RegisterViewEx`` in
#   ``cvat/apps/iam/views.py``): ``username, email, password1, password2``; a taken username is
#   400 ``{"username": ["A user with that username already exists."]}``; 201 with the user;
# - ``PATCH /api/jobs/{id}`` with ``assignee`` (a user id) assigns a job; ``state``/``stage`` move it.

NOT_HANDLED = object()


def _label_id(owner_id: int, index: int) -> int:
    """Stable label ids: the project's (or standalone task's) id * 1000 + position."""
    return owner_id * 1000 + index + 1


def _labels_of(c: FakeCVAT, *, project_id: int | None = None, task_id: int | None = None) -> list[dict]:
    if task_id is not None:
        t = c.tasks[task_id]
        if t.project_id is not None:
            return _labels_of(c, project_id=t.project_id)
        owner, names, key = t.id, t.labels, "task_id"
    else:
        owner, names, key = project_id, c.projects[project_id].labels, "project_id"
    return [
        {
            "id": _label_id(owner, i),
            "name": n,
            "color": "#%06x" % (0x3D3DF5 + 4099 * i),
            "attributes": [],
            "type": "rectangle",
            "sublabels": [],
            "has_parent": False,
            "parent_id": None,
            "project_id": owner if key == "project_id" else None,
            "task_id": owner if key == "task_id" else None,
        }
        for i, n in enumerate(names)
    ]


def _page(c: FakeCVAT, path: str, items: list, query: dict) -> dict:
    page, size = int(query.get("page", 1)), int(query.get("page_size", c.page_size))
    chunk = items[(page - 1) * size : page * size]
    nxt = f"{c.url}/api/{path}?page={page + 1}" if page * size < len(items) else None
    return {"count": len(items), "next": nxt, "previous": None, "results": chunk}


def _user_json(c: FakeCVAT, u: dict) -> dict:
    return {
        "url": f"{c.url}/api/users/{u['id']}",
        "id": u["id"],
        "username": u["username"],
        "first_name": u.get("first_name", ""),
        "last_name": u.get("last_name", ""),
        "email": u["email"],
        "groups": ["admin"] if u["id"] == 1 else ["user"],
        "is_staff": u["id"] == 1,
        "is_superuser": u["id"] == 1,
        "is_active": True,
        "last_login": None,
        "date_joined": NOW,
        "has_analytics_access": False,
    }


def _multipart(content_type: str, body: bytes) -> list[tuple[str, str | None, bytes]]:
    """``(field name, file name, payload)`` of a multipart/form-data body."""
    from email.parser import BytesParser
    from email.policy import HTTP

    msg = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    out = []
    for part in msg.iter_parts():
        out.append(
            (
                part.get_param("name", header="content-disposition"),
                part.get_filename(),
                part.get_payload(decode=True) or b"",
            )
        )
    return out


def _finish_task_data(c: FakeCVAT, task_id: int) -> None:
    """Turn an upload into frames and jobs (what CVAT's background task creation does)."""
    from PIL import Image

    t = c.tasks[task_id]
    files = sorted(c.uploads.pop(task_id)["files"], key=lambda f: f[0])  # lexicographical
    for name, data in files:
        with Image.open(io.BytesIO(data)) as im:
            t.frames.append(Frame(name, data, im.width, im.height))
    size = c.segment_sizes.get(task_id) or c.default_segment_size or len(t.frames)
    next_id = max([j.id for task in c.tasks.values() for j in task.jobs] + [1000]) + 1
    for start in range(0, len(t.frames), size):
        t.jobs.append(Job(next_id, task_id, range(start, min(start + size, len(t.frames))), "new", "annotation"))
        next_id += 1


def _apply_shapes(c: FakeCVAT, t: Task, shapes: list[dict]) -> None:
    """Keep the uploaded shapes and mirror them into the frames' boxes, so exports carry them."""
    names = {lab["id"]: lab["name"] for lab in _labels_of(c, task_id=t.id)}
    for f in t.frames:
        f.boxes = []
    for s in shapes:
        x0, y0, x1, y1 = (float(v) for v in s["points"][:4])
        t.frames[int(s["frame"])].boxes.append((names[s["label_id"]], x0, y0, x1, y1))
    c.shapes[t.id] = shapes


def _setup_routes(h: "_Handler", method: str, seg: list[str], query: dict):  # noqa: C901 (one table of routes)
    c = h.cvat
    body = getattr(h, "request_body", b"")

    def payload() -> dict:
        try:
            return json.loads(body or b"{}")
        except json.JSONDecodeError:
            return {}

    # ---- projects
    if seg == ["projects"] and method == "GET":
        items = [
            c.project_json(p)
            for p in sorted(c.projects.values(), key=lambda p: p.id)
            if "name" not in query or p.name == query["name"]
        ]
        return h._send(200, _page(c, "projects", items, query))
    if seg == ["projects"] and method == "POST":
        data = payload()
        if not data.get("name"):
            return h._send(400, {"name": ["This field is required."]})
        names = [lab["name"] for lab in data.get("labels", [])]
        if len(set(names)) != len(names):
            return h._send(400, {"labels": ["All label names must be unique"]})
        pid = max([*c.projects, *c.tasks, 0]) + 1
        c.projects[pid] = Project(pid, data["name"], names)
        return h._send(201, c.project_json(c.projects[pid]))
    if seg[:1] == ["projects"] and len(seg) == 2 and method == "PATCH":
        p = c.projects[int(seg[1])]
        data = payload()
        for lab in data.get("labels", []):
            if "id" in lab:
                continue  # updating an existing label's fields: nothing this server models
            if lab["name"] in p.labels:
                return h._send(400, {"labels": [f"Label '{lab['name']}' already exists"]})
            p.labels.append(lab["name"])
        if "name" in data:
            p.name = data["name"]
        return h._send(200, c.project_json(p))
    # ---- labels
    if seg == ["labels"] and method == "GET":
        if "project_id" in query:
            items = _labels_of(c, project_id=int(query["project_id"]))
        elif "task_id" in query:
            items = _labels_of(c, task_id=int(query["task_id"]))
        else:
            items = [lab for pid in sorted(c.projects) for lab in _labels_of(c, project_id=pid)]
        return h._send(200, _page(c, "labels", items, query))
    # ---- tasks
    if seg == ["tasks"] and method == "GET":
        items = [
            c.task_json(t)
            for t in sorted(c.tasks.values(), key=lambda t: t.id)
            if ("name" not in query or t.name == query["name"])
            and ("project_id" not in query or t.project_id == int(query["project_id"]))
        ]
        return h._send(200, _page(c, "tasks", items, query))
    if seg == ["tasks"] and method == "POST":
        data = payload()
        if not data.get("name"):
            return h._send(400, {"name": ["This field is required."]})
        pid = data.get("project_id")
        if pid is not None and pid not in c.projects:
            return h._send(400, {"project_id": [f'Invalid pk "{pid}" - object does not exist.']})
        if pid is not None and data.get("labels"):
            return h._send(400, {"labels": ["Tasks inside a project use the project's labels"]})
        labels = c.projects[pid].labels if pid is not None else [lab["name"] for lab in data.get("labels", [])]
        tid = max([*c.tasks, *c.projects, 0]) + 1
        c.tasks[tid] = Task(tid, data["name"], labels, [], [], data.get("subset", ""), pid)
        c.segment_sizes[tid] = int(data.get("segment_size") or 0)
        return h._send(201, c.task_json(c.tasks[tid]))
    if seg[:1] == ["tasks"] and len(seg) == 3 and seg[2] == "data" and method == "POST":
        tid = int(seg[1])
        c.tasks[tid]
        up = c.uploads.setdefault(tid, {"started": False, "files": []})
        if "Upload-Start" in h.headers:
            up["started"] = True
            return h._send(202, None)
        if "Upload-Multiple" in h.headers:
            if not up["started"]:
                return h._send(400, {"detail": "Upload-Start was not sent"})
            for name, filename, data in _multipart(h.headers.get("Content-Type", ""), body):
                if name and name.startswith("client_files[") and filename:
                    up["files"].append((filename.replace("\\", "/").rsplit("/", 1)[-1], data))
            return h._send(200, None)
        if "Upload-Finish" in h.headers:
            if not up["files"]:
                return h._send(400, {"detail": "No media data found"})
            rq_id = str(uuid.uuid4())
            c.create_requests[rq_id] = {"task_id": tid, "polls": 0}
            return h._send(202, {"rq_id": rq_id})
        return h._send(400, {"detail": "this test server takes files with Upload-Start/-Multiple/-Finish"})
    if seg[:1] == ["requests"] and len(seg) == 2 and seg[1] in c.create_requests and method == "GET":
        rq = c.create_requests[seg[1]]
        rq["polls"] += 1
        done = rq["polls"] > c.polls_before_finish
        if done and rq["task_id"] in c.uploads:
            _finish_task_data(c, rq["task_id"])
        status = "finished" if done else ("queued" if rq["polls"] <= 1 else "started")
        return h._send(
            200,
            {
                "id": seg[1],
                "status": status,
                "message": "",
                "operation": {
                    "type": "create:task",
                    "target": "task",
                    "task_id": rq["task_id"],
                    "project_id": None,
                    "job_id": None,
                    "format": None,
                    "function_id": None,
                },
                "progress": 1.0 if done else 0.0,
                "created_date": NOW,
                "started_date": NOW,
                "finished_date": NOW if done else None,
                "expiry_date": None,
                "owner": {"id": 1, "username": c.username},
                "result_url": None,
                "result_id": rq["task_id"] if done else None,
            },
        )
    if seg[:1] == ["tasks"] and seg[2:] == ["data", "meta"] and method == "GET":
        t = c.tasks[int(seg[1])]
        return h._send(
            200,
            {
                "chunk_size": 72,
                "size": len(t.frames),
                "image_quality": 95,
                "start_frame": 0,
                "stop_frame": max(len(t.frames) - 1, 0),
                "frame_filter": "",
                "chunks_updated_date": NOW,
                "frames": [
                    {"width": f.width, "height": f.height, "name": f.name, "related_files": 0} for f in t.frames
                ],
                "deleted_frames": [],
                "included_frames": None,
                "cloud_storage_id": None,
                "storage": "local",
                "storage_method": "cache",
                "sorting_method": "lexicographical",
            },
        )
    if seg[:1] == ["tasks"] and seg[2:] == ["annotations"] and method in ("GET", "PUT", "PATCH"):
        t = c.tasks[int(seg[1])]
        if method == "GET":
            return h._send(200, {"version": 0, "tags": [], "shapes": c.shapes.get(t.id, []), "tracks": []})
        data = payload()
        shapes = data.get("shapes", [])
        ids = {lab["id"] for lab in _labels_of(c, task_id=t.id)}
        for s in shapes:
            if s.get("label_id") not in ids:
                return h._send(400, {"detail": f"label id {s.get('label_id')} is not a label of task {t.id}"})
            if not 0 <= int(s.get("frame", -1)) < len(t.frames):
                return h._send(400, {"detail": f"frame {s.get('frame')} is out of task {t.id}"})
            if s.get("type") != "rectangle" or len(s.get("points", [])) != 4:
                return h._send(400, {"detail": "this test server keeps rectangles (4 points) only"})
        if method == "PATCH":
            if query.get("action") != "create":
                return h._send(400, {"detail": "action must be create, update or delete"})
            shapes = c.shapes.get(t.id, []) + shapes
        stored = [{**s, "id": i + 1} for i, s in enumerate(shapes)]
        _apply_shapes(c, t, stored)
        t.updated_date = NOW.replace("2026-01-01", "2026-01-02")
        return h._send(200, {"version": 1, "tags": [], "shapes": stored, "tracks": []})
    # ---- users
    if seg == ["users"] and method == "GET":
        items = [
            _user_json(c, u)
            for u in sorted(c.users.values(), key=lambda u: u["id"])
            if "username" not in query or u["username"] == query["username"]
        ]
        return h._send(200, _page(c, "users", items, query))
    if seg == ["users", "self"] and method == "GET":
        return h._send(200, _user_json(c, c.users[c.username]))
    if seg == ["auth", "register"] and method == "POST":
        data = payload()
        if not c.registration_open:
            return h._send(403, {"detail": "You do not have permission to perform this action."})
        errors = {
            k: ["This field is required."] for k in ("username", "email", "password1", "password2") if not data.get(k)
        }
        if errors:
            return h._send(400, errors)
        if data["username"] in c.users:
            return h._send(400, {"username": ["A user with that username already exists."]})
        if data["password1"] != data["password2"]:
            return h._send(400, {"non_field_errors": ["The two password fields didn't match."]})
        uid = max(u["id"] for u in c.users.values()) + 1
        c.users[data["username"]] = {
            "id": uid,
            "username": data["username"],
            "email": data["email"],
            "password": data["password1"],
            "first_name": data.get("first_name", ""),
            "last_name": data.get("last_name", ""),
        }
        return h._send(
            201,
            {
                "username": data["username"],
                "email": data["email"],
                "first_name": data.get("first_name", ""),
                "last_name": data.get("last_name", ""),
                "email_verification_required": False,
                "key": None,
            },
        )
    # ---- jobs
    if seg[:1] == ["jobs"] and len(seg) == 2 and method in ("GET", "PATCH"):
        j = next((j for t in c.tasks.values() for j in t.jobs if j.id == int(seg[1])), None)
        if j is None:
            raise KeyError(seg[1])
        if method == "PATCH":
            data = payload()
            if "assignee" in data:
                if data["assignee"] is not None and data["assignee"] not in {u["id"] for u in c.users.values()}:
                    return h._send(400, {"assignee": [f'Invalid pk "{data["assignee"]}" - object does not exist.']})
                c.assignees[j.id] = data["assignee"]
            for name in ("state", "stage"):
                if name in data:
                    setattr(j, name, data[name])
                    j.__post_init__()
        body_out = c.job_json(j)
        uid = c.assignees.get(j.id)
        user = next((u for u in c.users.values() if u["id"] == uid), None)
        body_out["assignee"] = (
            None
            if user is None
            else {
                "url": f"{c.url}/api/users/{uid}",
                "id": uid,
                "username": user["username"],
                "first_name": "",
                "last_name": "",
            }
        )
        return h._send(200, body_out)
    return NOT_HANDLED
