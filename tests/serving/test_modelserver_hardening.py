"""Model-server faults from issue 18: auth, confined loads, readiness, malformed and stalled bodies.

Every server here listens on loopback only; every request loop is bounded.
"""

from __future__ import annotations

import json
import os
import socket
import time

import httpx
import numpy as np
import pytest

from serving import v2
from serving.modelserver import ModelRepository, create_app

from .conftest import IMGSZ, PYTHON, ThreadServer, free_port, wait_http

SHAPE = [1, 3, IMGSZ, IMGSZ]
TOKEN = "hardening-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def guarded(onnx_model):
    """A server with a token, the tiny model loaded, and its folder as the only model root."""
    repo = ModelRepository(threads=1)
    repo.load("metal-nut", str(onnx_model))
    app = create_app(
        repo, token=TOKEN, model_roots=[str(onnx_model.parent)], max_body_bytes=1024 * 1024, body_timeout_s=1.0
    )
    with ThreadServer(app) as server:
        server.repository = repo
        yield server


def _infer_body():
    return v2.encode_request({"images": np.zeros(SHAPE, np.float32)}, ["output0"])


# --- point 2: authentication -----------------------------------------------------------------


def test_token_guards_inference_and_repository_but_not_health(guarded):
    body, headers = _infer_body()
    url = guarded.url
    for bad in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}, {"Authorization": "Basic x"}):
        r = httpx.post(f"{url}/v2/models/metal-nut/infer", content=body, headers={**headers, **bad})
        assert r.status_code == 401 and "bearer token" in r.json()["error"]
        assert r.headers["www-authenticate"] == "Bearer"
        assert httpx.post(f"{url}/v2/repository/models/metal-nut/unload", headers=bad).status_code == 401
        assert httpx.post(f"{url}/v2/repository/index", headers=bad).status_code == 401
        assert httpx.get(f"{url}/v2/models/metal-nut", headers=bad).status_code == 401
        assert httpx.get(f"{url}/metrics", headers=bad).status_code == 401
    assert httpx.get(f"{url}/v2/health/live").status_code == 200
    assert httpx.get(f"{url}/v2/health/ready").status_code == 200
    r = httpx.post(f"{url}/v2/models/metal-nut/infer", content=body, headers={**headers, **AUTH})
    assert r.status_code == 200
    assert httpx.post(f"{url}/v2/repository/index", headers=AUTH).status_code == 200


def test_without_a_token_the_repository_api_is_disabled(onnx_model):
    repo = ModelRepository(threads=1)
    repo.load("metal-nut", str(onnx_model))
    with ThreadServer(create_app(repo, model_roots=[str(onnx_model.parent)])) as server:
        for path in (
            "/v2/repository/index",
            "/v2/repository/models/metal-nut/unload",
            "/v2/repository/models/metal-nut/load",
        ):
            r = httpx.post(server.url + path, headers=AUTH, json={"parameters": {"uri": str(onnx_model)}})
            assert r.status_code == 403 and "VINSPECT_MODEL_TOKEN" in r.json()["error"], path
        body, headers = _infer_body()
        r = httpx.post(f"{server.url}/v2/models/metal-nut/infer", content=body, headers=headers)
        assert r.status_code == 200  # inference stays open when no token is configured
        assert repo.get("metal-nut") is not None  # the unload above did nothing


def test_load_is_confined_to_the_model_roots_and_says_nothing_about_outside(guarded, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "model.onnx").write_bytes(b"secret")
    root = guarded_root(guarded)
    url = f"{guarded.url}/v2/repository/models/other/load"
    cases = {
        "existing file outside": str(outside / "model.onnx"),
        "missing file outside": str(outside / "nope.onnx"),
        "existing system file": "/etc/passwd",
        "missing system path": "/no/such/dir/model.onnx",
        "dot-dot out of the root": str(root) + "/.." * len(root.parts) + f"{outside}/model.onnx",
        "relative path": "model.onnx",
        "file url outside": f"file://{outside}/model.onnx",
        "http url": "http://127.0.0.1:1/model.onnx",
        "s3 bucket not a root": "s3://elsewhere/model/1/",
    }
    answers = {}
    for what, uri in cases.items():
        r = httpx.post(url, headers=AUTH, json={"parameters": {"uri": uri}})
        assert r.status_code == 403, (what, r.text)
        answers[what] = r.json()["error"].replace(repr(uri), "<uri>")
    # Existing and missing paths outside the roots get the very same answer.
    assert len(set(answers.values())) == 1, answers
    assert "not under this server's model roots" in answers["existing file outside"]
    # A symlink inside the root that points outside is refused too.
    link = guarded_root(guarded) / f"link-{os.getpid()}.onnx"
    link.symlink_to(outside / "model.onnx")
    try:
        r = httpx.post(url, headers=AUTH, json={"parameters": {"uri": str(link)}})
        assert r.status_code == 403
    finally:
        link.unlink()
    # Inside the root works.
    r = httpx.post(url, headers=AUTH, json={"parameters": {"uri": str(guarded_root(guarded) / "model.onnx")}})
    assert r.status_code == 200, r.text
    httpx.post(f"{guarded.url}/v2/repository/models/other/unload", headers=AUTH)


def guarded_root(server):
    """The folder of the model the guarded server was started with (its only model root)."""
    from pathlib import Path

    return Path(server.repository.get("metal-nut").source.location).parent


def test_s3_roots_confine_bucket_and_prefix():
    from serving.modelserver import Forbidden, ModelRoots

    roots = ModelRoots.parse(["s3://models/metal-nut", "/srv/models"])
    assert roots.check("s3://models/metal-nut/3/") == "s3://models/metal-nut/3/"
    assert roots.check("s3://models/metal-nut") == "s3://models/metal-nut"
    for uri in (
        "s3://models/metal-nutty/1/",
        "s3://models/other/1/",
        "s3://data/metal-nut/1/",
        "s3://models/metal-nut/../other/1/",
        "/srv/modelsX/a.onnx",
        "/srv/models/../etc/passwd",
    ):
        with pytest.raises(Forbidden):
            roots.check(uri)
    with pytest.raises(ValueError):
        ModelRoots.parse(["relative/dir"])


# --- point 3: readiness ------------------------------------------------------------------------


def test_a_failed_load_of_a_made_up_name_leaves_the_server_ready(guarded):
    assert httpx.get(f"{guarded.url}/v2/health/ready").status_code == 200
    r = httpx.post(
        f"{guarded.url}/v2/repository/models/made-up/load",
        headers=AUTH,
        json={"parameters": {"uri": str(guarded_root(guarded) / "made-up")}},
    )
    assert r.status_code == 400
    # Reported, but not meant to serve: the probe keeps the healthy server in service.
    index = httpx.post(f"{guarded.url}/v2/repository/index", headers=AUTH).json()
    assert {"name": "made-up", "state": "UNAVAILABLE"}.items() <= next(
        i for i in index if i["name"] == "made-up"
    ).items()
    assert httpx.get(f"{guarded.url}/v2/health/ready").status_code == 200


def test_readiness_follows_the_models_meant_to_serve(onnx_model, tmp_path):
    repo = ModelRepository(threads=1)
    repo.register("declared", str(tmp_path / "missing.onnx"))  # declared at start-up, cannot load
    repo.load("metal-nut", str(onnx_model))
    assert not repo.ready()  # a declared model that does not serve: not ready
    repo.unload("declared")  # taken out on purpose
    assert repo.ready()
    repo.unload("metal-nut")
    assert not repo.ready()  # nothing meant to serve is serving


# --- point 7: malformed bodies -----------------------------------------------------------------
# Every malformed body the v2 decoder refuses is in test_v2.py, every bad request the data plane
# refuses in test_modelserver_dataplane.py. Here: what only HTTP carries (Content-Encoding, the
# header-length header), and a few of the others, to show each reaches the client as a 400 JSON
# naming the field and the server keeps serving.

_IMG = {"name": "images", "shape": SHAPE, "datatype": "FP32"}
_N = int(np.prod(SHAPE))

# (id, body bytes, extra headers, the field the error must name)
MALFORMED = [
    ("not-json", b"{not json", {}, "JSON"),
    ("list", b"[1]", {}, "object"),
    ("deep-200000", b"[" * 200_000 + b"]" * 200_000, {}, "nested"),
    ("deep-object", b'{"inputs":' + b"[" * 200_000 + b"]" * 200_000 + b"}", {}, "nested"),
    (
        "shape-huge",
        json.dumps({"inputs": [{**_IMG, "shape": [10**12, 10**12], "data": [0.0]}]}).encode(),
        {},
        "elements",
    ),
    (
        "output-unknown",
        json.dumps({"inputs": [{**_IMG, "data": [0.0] * _N}], "outputs": [{"name": "nope"}]}).encode(),
        {},
        "nope",
    ),
    ("header-length-not-a-number", b"", {v2.HEADER_LENGTH: "x"}, v2.HEADER_LENGTH),
    ("header-length-too-big", b"{}", {v2.HEADER_LENGTH: "999"}, v2.HEADER_LENGTH),
    ("bad-gzip", b"not gzip", {"Content-Encoding": "gzip"}, "gzip"),
    ("unknown-encoding", b"{}", {"Content-Encoding": "br"}, "Content-Encoding"),
]


@pytest.mark.parametrize("ident, body, headers, field", MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_infer_body_is_a_400_json_naming_the_field(guarded, ident, body, headers, field):
    r = httpx.post(
        f"{guarded.url}/v2/models/metal-nut/infer",
        content=body,
        headers={"Content-Type": "application/json", **headers, **AUTH},
        timeout=30,
    )
    assert r.status_code == 400, r.text[:300]
    assert field in r.json()["error"], r.text[:300]
    assert httpx.get(f"{guarded.url}/v2/health/ready").status_code == 200


LOAD_MALFORMED = [
    ("not-json", b"{", "JSON"),
    ("deep", b"[" * 200_000 + b"]" * 200_000, "nested"),
    ("uri-number", b'{"parameters": {"uri": 5}}', "parameters.uri"),
]


@pytest.mark.parametrize("ident, body, field", LOAD_MALFORMED, ids=[c[0] for c in LOAD_MALFORMED])
def test_malformed_load_body_is_a_400_json_naming_the_field(guarded, ident, body, field):
    r = httpx.post(
        f"{guarded.url}/v2/repository/models/metal-nut/load",
        content=body,
        headers={"Content-Type": "application/json", **AUTH},
    )
    assert r.status_code == 400, r.text[:300]
    assert field in r.json()["error"]
    # The served model is untouched and the server stays ready.
    assert httpx.get(f"{guarded.url}/v2/health/ready").status_code == 200


def _raw_request(port: int, head: bytes, body_part: bytes, wait_s: float) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as sock:
        sock.sendall(head + body_part)
        chunks = []
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks) and b'"}' in chunks[-1]:
                    break
        except socket.timeout:
            pass
        return b"".join(chunks)


def test_a_declared_100_mib_body_is_413(guarded):
    head = (
        f"POST /v2/models/metal-nut/infer HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {100 * 1024 * 1024}\r\n\r\n"
    ).encode()
    answer = _raw_request(guarded.port, head, b"{" * 1000, wait_s=10)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"exceeds the limit" in answer


def test_a_streamed_body_over_the_limit_is_413(guarded):
    def chunks():
        for _ in range(40):  # 2.5 MiB, chunked (no Content-Length), over the 1 MiB limit
            yield b" " * 65536

    r = httpx.post(f"{guarded.url}/v2/models/metal-nut/infer", content=chunks(), headers=AUTH)
    assert r.status_code == 413


@pytest.fixture(scope="module")
def served_cli(onnx_model, tmp_path_factory):
    """`vinspect serve model` as a child process (default --host), with a 1 s body timeout."""
    import subprocess

    from .conftest import REPO

    log_path = tmp_path_factory.mktemp("cli-server") / "server.log"
    port = free_port()
    env = {**os.environ, "VINSPECT_MODEL_TOKEN": TOKEN, "PYTHONPATH": str(REPO)}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                PYTHON,
                "-m",
                "vinspect",
                "serve",
                "model",
                "--uri",
                str(onnx_model),
                "--name",
                "metal-nut",
                "--port",
                str(port),
                "--threads",
                "1",
                "--body-timeout",
                "1",
                "--log-level",
                "info",
            ],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_http(f"http://127.0.0.1:{port}/v2/health/ready", timeout=60, proc=proc)
        yield port, log_path
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def test_the_cli_binds_loopback_by_default(served_cli):
    port, log_path = served_cli
    assert f"Uvicorn running on http://127.0.0.1:{port}" in log_path.read_text()


def test_a_stalled_body_times_out_with_one_log_line(served_cli):
    port, log_path = served_cli
    before = log_path.read_text()
    head = (
        f"POST /v2/models/metal-nut/infer HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n"
    ).encode()
    started = time.monotonic()
    answer = _raw_request(port, head, b'{"inputs": [', wait_s=10)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert time.monotonic() - started < 8
    assert b"received 12 of 5000" in answer
    # A client that sends part of a body and hangs up: one line too.
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head + b'{"inputs"')
        time.sleep(0.2)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        new = log_path.read_text()[len(before) :]
        if "client closed the connection" in new or new.count("body stalled") >= 2:
            break
        time.sleep(0.1)
    new = log_path.read_text()[len(before) :]
    assert new.count("body stalled") + new.count("client closed the connection") == 2, new
    assert "Traceback" not in new and "Exception in ASGI application" not in new, new
    assert httpx.get(f"http://127.0.0.1:{port}/v2/health/ready").status_code == 200
