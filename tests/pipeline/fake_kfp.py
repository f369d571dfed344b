"""A small local HTTP server answering the KFP v2beta1 REST endpoints the ``kfp.Client`` calls.

It keeps pipelines, versions, experiments, runs and recurring runs in memory, answers like the
real API server (same paths, JSON field names and status codes), checks the bearer token, and
records every request so tests can assert on exactly what the client sent.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import default as _email_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

API = "/apis/v2beta1"


@dataclass
class Request:
    """One request as the server received it."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any = None  # parsed JSON, or {"fields": {...}, "file": bytes, "filename": str} for uploads


@dataclass
class FakeKFP:
    """State of the fake server; ``requests`` is every request received, in order."""

    token: str | None = None
    requests: list[Request] = field(default_factory=list)
    pipelines: dict[str, dict] = field(default_factory=dict)
    versions: dict[str, dict] = field(default_factory=dict)
    experiments: dict[str, dict] = field(default_factory=dict)
    runs: dict[str, dict] = field(default_factory=dict)
    recurring_runs: dict[str, dict] = field(default_factory=dict)
    url: str = ""
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, *, tls: tuple[str, str] | None = None) -> "FakeKFP":
        """Serve on a free loopback port in a background thread.

        Args:
            tls: ``(certificate file, key file)`` to serve HTTPS instead of HTTP.
        """
        state = self

        class Handler(_Handler):
            fake = state

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        scheme = "http"
        if tls:
            import ssl

            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def calls(self, method: str, path_suffix: str) -> list[Request]:
        """Requests with this method whose path ends with ``path_suffix``."""
        return [r for r in self.requests if r.method == method and r.path.endswith(path_suffix)]


def _now() -> str:
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _filter_name(query: dict[str, list[str]]) -> str | None:
    """The display_name an ``EQUALS`` filter asks for (what ``get_pipeline_id`` sends)."""
    raw = (query.get("filter") or [None])[0]
    if not raw:
        return None
    for pred in json.loads(raw).get("predicates", []):
        if pred.get("key") in ("display_name", "name"):
            return pred.get("string_value") or pred.get("stringValue")
    return None


class _Handler(BaseHTTPRequestHandler):
    fake: FakeKFP

    def log_message(self, *_args) -> None:  # keep test output clean
        pass

    # -- plumbing
    def _send(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str) -> None:
        self._send(status, {"error": message, "code": status, "message": message})

    def _read(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        ctype = self.headers.get("Content-Type", "")
        if ctype.startswith("multipart/form-data"):
            msg = BytesParser(policy=_email_policy).parsebytes(b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + raw)
            out: dict[str, Any] = {"fields": {}}
            for part in msg.iter_parts():
                payload = part.get_payload(decode=True) or b""
                if part.get_filename():
                    out["file"], out["filename"] = payload, part.get_filename()
                else:
                    out["fields"][part.get_param("name", header="content-disposition")] = payload.decode()
            return out
        if raw:
            return json.loads(raw)
        return None

    def _handle(self, method: str) -> None:
        url = urlparse(self.path)
        query = parse_qs(url.query)
        body = self._read() if method in ("POST", "PUT", "PATCH") else None
        req = Request(method, url.path, query, {k.lower(): v for k, v in self.headers.items()}, body)
        fake = self.fake
        with fake.lock:
            fake.requests.append(req)
        if not url.path.startswith(API):
            return self._error(404, f"unknown path {url.path}")
        if fake.token is not None and req.headers.get("authorization") != f"Bearer {fake.token}":
            return self._error(401, "Unauthorized: missing or wrong bearer token")
        route = url.path[len(API) :]
        try:
            m = re.fullmatch(r"/pipelines/([^/]+)/versions", route)
            if m and method == "GET" and m.group(1) != "upload":
                return self._list_versions(m.group(1), query)
            handler = getattr(self, f"_{method.lower()}_{_route_name(route)}", None)
            if handler is None:
                return self._error(404, f"no route {method} {url.path}")
            return handler(route, query, body)
        except KeyError as exc:
            return self._error(404, f"not found: {exc}")

    def do_GET(self) -> None:  # noqa: N802
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")

    def do_DELETE(self) -> None:  # noqa: N802
        self._handle("DELETE")

    # -- routes
    def _get_healthz(self, route, query, body):
        self._send(200, {"multi_user": False})

    def _get_pipelines(self, route, query, body):
        name = _filter_name(query)
        items = [p for p in self.fake.pipelines.values() if name is None or p["display_name"] == name]
        self._send(200, {"pipelines": items, "total_size": len(items)} if items else {})

    def _post_pipelines_upload(self, route, query, body):
        name = (query.get("name") or [None])[0] or (body or {}).get("filename")
        if not body or "file" not in body:
            return self._error(400, "missing uploadfile")
        if any(p["display_name"] == name for p in self.fake.pipelines.values()):
            return self._error(409, f"pipeline {name!r} already exists")
        pid = str(uuid.uuid4())
        pipeline = {
            "pipeline_id": pid,
            "display_name": name,
            "created_at": _now(),
            "description": (query.get("description") or [""])[0],
        }
        self.fake.pipelines[pid] = pipeline
        vid = str(uuid.uuid4())
        self.fake.versions[vid] = {
            "pipeline_id": pid,
            "pipeline_version_id": vid,
            "display_name": name,
            "created_at": _now(),
            "spec": body["file"],
        }
        self._send(200, pipeline)

    def _post_pipelines_upload_version(self, route, query, body):
        pid = (query.get("pipelineid") or [None])[0]
        name = (query.get("name") or [None])[0]
        if pid not in self.fake.pipelines:
            return self._error(404, f"pipeline {pid} not found")
        if not body or "file" not in body:
            return self._error(400, "missing uploadfile")
        if any(v["display_name"] == name and v["pipeline_id"] == pid for v in self.fake.versions.values()):
            return self._error(409, f"version {name!r} already exists")
        vid = str(uuid.uuid4())
        version = {"pipeline_id": pid, "pipeline_version_id": vid, "display_name": name, "created_at": _now()}
        self.fake.versions[vid] = {**version, "spec": body["file"]}
        self._send(200, version)

    def _list_versions(self, pid, query):
        if pid not in self.fake.pipelines:
            return self._error(404, f"pipeline {pid} not found")
        name = _filter_name(query)
        items = [
            {k: v for k, v in ver.items() if k != "spec"}
            for ver in self.fake.versions.values()
            if ver["pipeline_id"] == pid and (name is None or ver["display_name"] == name)
        ]
        items.sort(key=lambda v: v["created_at"], reverse="desc" in (query.get("sort_by") or [""])[0])
        size = int((query.get("page_size") or [len(items) or 1])[0])
        items = items[:size]
        self._send(200, {"pipeline_versions": items, "total_size": len(items)} if items else {})

    def _get_experiments(self, route, query, body):
        name = _filter_name(query)
        items = [e for e in self.fake.experiments.values() if name is None or e["display_name"] == name]
        self._send(200, {"experiments": items, "total_size": len(items)} if items else {})

    def _post_experiments(self, route, query, body):
        eid = str(uuid.uuid4())
        exp = {
            "experiment_id": eid,
            "display_name": body["display_name"],
            "namespace": body.get("namespace"),
            "created_at": _now(),
            "storage_state": "AVAILABLE",
        }
        self.fake.experiments[eid] = exp
        self._send(200, exp)

    def _check_spec_or_version(self, body) -> str | None:
        ref = body.get("pipeline_version_reference")
        if ref:
            if ref.get("pipeline_version_id") not in self.fake.versions:
                return f"pipeline version {ref.get('pipeline_version_id')} not found"
        elif not body.get("pipeline_spec"):
            return "a run needs pipeline_spec or pipeline_version_reference"
        if body.get("experiment_id") and body["experiment_id"] not in self.fake.experiments:
            return f"experiment {body['experiment_id']} not found"
        return None

    def _post_runs(self, route, query, body):
        problem = self._check_spec_or_version(body)
        if problem:
            return self._error(400 if "needs" in problem else 404, problem)
        rid = str(uuid.uuid4())
        run = {**body, "run_id": rid, "state": "PENDING", "created_at": _now()}
        self.fake.runs[rid] = run
        self._send(200, run)

    def _post_recurringruns(self, route, query, body):
        problem = self._check_spec_or_version(body)
        if problem:
            return self._error(400 if "needs" in problem else 404, problem)
        rid = str(uuid.uuid4())
        job = {**body, "recurring_run_id": rid, "status": "ENABLED", "created_at": _now()}
        self.fake.recurring_runs[rid] = job
        self._send(200, job)


def _route_name(route: str) -> str:
    """``/pipelines/upload_version`` -> ``pipelines_upload_version``."""
    return route.strip("/").replace("/", "_").replace("-", "_")
