"""The local v2 model server, checked with the real `tritonclient.http` client and raw HTTP."""

from __future__ import annotations

import json
import threading
import time

import httpx
import numpy as np
import pytest

from serving import v2
from serving.modelserver import ModelRepository, create_app

from .conftest import IMGSZ, ThreadServer

SHAPE = [1, 3, IMGSZ, IMGSZ]
# The repository API needs a token; these tests are about loading, not about auth.
TOKEN = "test-model-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def reference(onnx_model):
    """The same engine in process, at the same precision, on the same file: what the server must
    answer (OpenVINO at the runtime's precision by default, as OVMS)."""
    from serving.detector import open_engine

    engine = open_engine(onnx_model, threads=1)
    x = np.random.default_rng(0).random(SHAPE, dtype=np.float32)
    return x, engine.run({"images": x}, ["output0"])[0]


def test_metadata_uses_onnx_tensor_names(model_server, onnx_model):
    import onnx

    graph = onnx.load(str(onnx_model)).graph
    meta = httpx.get(f"{model_server.url}/v2/models/metal-nut").json()
    assert [t["name"] for t in meta["inputs"]] == [i.name for i in graph.input] == ["images"]
    assert [t["name"] for t in meta["outputs"]] == [o.name for o in graph.output] == ["output0"]
    assert meta["inputs"][0] == {"name": "images", "datatype": "FP32", "shape": SHAPE}
    # 4 box coordinates + 2 classes (scratch, bent), anchors at strides 8/16/32.
    n = sum((IMGSZ // s) ** 2 for s in (8, 16, 32))
    assert meta["outputs"][0] == {"name": "output0", "datatype": "FP32", "shape": [1, 6, n]}
    assert meta["versions"] == ["1"]
    versioned = httpx.get(f"{model_server.url}/v2/models/metal-nut/versions/1").json()
    assert versioned == meta


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_conformance(model_server, reference, binary):
    import tritonclient.http as triton

    x, expected = reference
    client = triton.InferenceServerClient(model_server.url.removeprefix("http://"))
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("metal-nut")
    assert client.is_model_ready("metal-nut", "1")
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    assert client.get_model_metadata("metal-nut")["inputs"][0]["name"] == "images"

    inp = triton.InferInput("images", SHAPE, "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    out = triton.InferRequestedOutput("output0", binary_data=binary)
    result = client.infer("metal-nut", [inp], outputs=[out], request_id="req-7")
    np.testing.assert_allclose(result.as_numpy("output0"), expected, rtol=1e-5, atol=1e-5)
    response = result.get_response()
    assert response["id"] == "req-7"
    assert response["model_name"] == "metal-nut" and response["model_version"] == "1"
    if binary:
        assert response["outputs"][0]["parameters"]["binary_data_size"] == expected.nbytes
    else:
        assert "data" in response["outputs"][0]

    # No outputs listed: all outputs come back (binary when the inputs were).
    result = client.infer("metal-nut", [inp])
    np.testing.assert_allclose(result.as_numpy("output0"), expected, rtol=1e-5, atol=1e-5)


def test_tritonclient_compressed_request(model_server, reference):
    import tritonclient.http as triton

    x, expected = reference
    client = triton.InferenceServerClient(model_server.url.removeprefix("http://"))
    inp = triton.InferInput("images", SHAPE, "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("metal-nut", [inp], request_compression_algorithm="gzip")
    np.testing.assert_allclose(result.as_numpy("output0"), expected, rtol=1e-5, atol=1e-5)


def _post(url: str, inputs: dict, **kw) -> httpx.Response:
    body, headers = v2.encode_request(inputs, ["output0"], **kw)
    return httpx.post(f"{url}/v2/models/metal-nut/infer", content=body, headers=headers)


@pytest.mark.parametrize(
    "inputs, message",
    [
        ({"pictures": np.zeros(SHAPE, np.float32)}, "unexpected input 'pictures'"),
        ({"images": np.zeros([1, 3, 64, 64], np.float32)}, "expects [1, 3, 96, 96]"),
        ({"images": np.zeros(SHAPE, np.float64)}, "expects FP32"),
        ({"images": np.zeros(SHAPE, np.uint8)}, "expects FP32"),
    ],
    ids=["name", "shape", "fp64", "uint8"],
)
def test_bad_input_is_400_with_message(model_server, inputs, message):
    for binary in (True, False):
        response = _post(model_server.url, inputs, binary_inputs=binary)
        assert response.status_code == 400
        assert message in response.json()["error"]


def test_malformed_and_oversized_bodies_are_400(model_server):
    url = f"{model_server.url}/v2/models/metal-nut/infer"
    r = httpx.post(url, content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
    # binary_data_size larger than what follows the header
    header = json.dumps(
        {"inputs": [{"name": "images", "shape": SHAPE, "datatype": "FP32", "parameters": {"binary_data_size": 999999}}]}
    ).encode()
    r = httpx.post(url, content=header + b"\0" * 10, headers={v2.HEADER_LENGTH: str(len(header))})
    assert r.status_code == 400 and "binary_data_size" in r.json()["error"]
    # JSON data with the wrong element count
    r = httpx.post(url, json={"inputs": [{"name": "images", "shape": SHAPE, "datatype": "FP32", "data": [1.0, 2.0]}]})
    assert r.status_code == 400 and "elements" in r.json()["error"]
    # over the 1 MiB limit this server was started with: 413, the status for "too large"
    big = np.zeros([1, 3, 320, 320], np.float32)
    r = _post(model_server.url, {"images": big})
    assert r.status_code == 413 and "exceeds the limit" in r.json()["error"]


def test_unknown_model_or_version_is_404(model_server):
    x = {"images": np.zeros(SHAPE, np.float32)}
    body, headers = v2.encode_request(x)
    r = httpx.post(f"{model_server.url}/v2/models/nope/infer", content=body, headers=headers)
    assert r.status_code == 404 and "nope" in r.json()["error"]
    assert httpx.get(f"{model_server.url}/v2/models/nope").status_code == 404
    assert httpx.get(f"{model_server.url}/v2/models/nope/ready").status_code == 404
    r = httpx.get(f"{model_server.url}/v2/models/metal-nut/versions/9")
    assert r.status_code == 404 and "serving version '1'" in r.json()["error"]


def test_503_while_loading_then_ready(onnx_model):
    repo = ModelRepository()
    repo.register("metal-nut", str(onnx_model))
    with ThreadServer(create_app(repo, load_on_startup=False, token=TOKEN)) as server:
        assert httpx.get(f"{server.url}/v2/health/live").status_code == 200
        assert httpx.get(f"{server.url}/v2/health/ready").status_code == 503
        assert httpx.get(f"{server.url}/v2/models/metal-nut/ready", headers=AUTH).status_code == 503
        body, headers = v2.encode_request({"images": np.zeros(SHAPE, np.float32)})
        r = httpx.post(f"{server.url}/v2/models/metal-nut/infer", content=body, headers={**headers, **AUTH})
        assert r.status_code == 503 and "loading" in r.json()["error"]
        # The repository extension loads it (tritonclient sends an empty load request).
        import tritonclient.http as triton

        triton.InferenceServerClient(server.url.removeprefix("http://")).load_model("metal-nut", headers=AUTH)
        assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200
        index = httpx.post(f"{server.url}/v2/repository/index", headers=AUTH).json()
        assert index == [{"name": "metal-nut", "state": "READY", "version": "1"}]


def test_declared_version_is_reported_after_background_load(onnx_model):
    """`serve --version 7` must report 7, not the ONNX folder name (regression)."""
    repo = ModelRepository()
    repo.register("metal-nut", str(onnx_model), "7")
    with ThreadServer(create_app(repo, token=TOKEN)) as server:
        deadline = time.monotonic() + 30
        while httpx.get(f"{server.url}/v2/health/ready").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert httpx.get(f"{server.url}/v2/models/metal-nut", headers=AUTH).json()["versions"] == ["7"]
        # A reload of the same source without a version keeps the declared one (and needs
        # no model root: the operator named that source at start-up).
        r = httpx.post(
            f"{server.url}/v2/repository/models/metal-nut/load",
            headers=AUTH,
            json={"parameters": {"uri": str(onnx_model)}},
        )
        assert r.status_code == 200
        assert httpx.get(f"{server.url}/v2/models/metal-nut", headers=AUTH).json()["versions"] == ["7"]


def test_empty_server_is_live_and_loads_on_request(onnx_model):
    """The demo starts the server empty; the first rollout loads the model."""
    repo = ModelRepository()
    with ThreadServer(create_app(repo, token=TOKEN, model_roots=[str(onnx_model.parent)])) as server:
        assert httpx.get(f"{server.url}/v2/health/live").status_code == 200
        assert httpx.get(f"{server.url}/v2/models/metal-nut", headers=AUTH).status_code == 404
        r = httpx.post(
            f"{server.url}/v2/repository/models/metal-nut/load",
            headers=AUTH,
            json={"parameters": {"uri": str(onnx_model), "version": "3"}},
        )
        assert r.status_code == 200
        assert httpx.get(f"{server.url}/v2/models/metal-nut", headers=AUTH).json()["versions"] == ["3"]


def test_failed_load_is_reported(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"this is not onnx")
    repo = ModelRepository()
    with ThreadServer(create_app(repo, token=TOKEN, model_roots=[str(tmp_path)])) as server:
        r = httpx.post(
            f"{server.url}/v2/repository/models/m/load", headers=AUTH, json={"parameters": {"uri": str(bad)}}
        )
        assert r.status_code == 400 and "not a loadable ONNX model" in r.json()["error"]
        r = httpx.post(
            f"{server.url}/v2/repository/models/m/load",
            headers=AUTH,
            json={"parameters": {"uri": str(tmp_path / "missing")}},
        )
        assert r.status_code == 400 and "does not exist" in r.json()["error"]
        assert httpx.get(f"{server.url}/v2/models/m/ready", headers=AUTH).status_code == 503


def test_load_from_s3_swaps_without_dropping_requests(local_stack, onnx_model, monkeypatch):
    """Serve v1 from a path, swap to the S3 champion layout as v2 under load: no error."""
    local_stack.apply_env(monkeypatch)
    from serving.modelserver import s3_client_factory_from_env
    from vinspect.settings import S3Settings

    s3 = S3Settings.from_env().client()
    bucket = S3Settings.from_env().bucket
    # OVMS layout written by the registry: <model>/<mlflow version>/1/model.onnx
    s3.put_object(Bucket=bucket, Key="metal-nut-swap/2/1/model.onnx", Body=onnx_model.read_bytes())

    repo = ModelRepository(s3_client_factory_from_env())
    repo.load("metal-nut", str(onnx_model), version="1")
    with ThreadServer(create_app(repo, token=TOKEN, model_roots=[f"s3://{bucket}"])) as server:
        x = {"images": np.random.default_rng(1).random(SHAPE, dtype=np.float32)}
        body, headers = v2.encode_request(x, ["output0"])
        headers = {**headers, **AUTH}
        stop = threading.Event()
        statuses: list[int] = []
        per_thread: list[list[str]] = [[], [], []]

        def hammer(versions: list[str]) -> None:
            with httpx.Client(base_url=server.url) as c:
                while not stop.is_set():
                    r = c.post("/v2/models/metal-nut/infer", content=body, headers=headers)
                    statuses.append(r.status_code)
                    if r.status_code == 200:
                        n = int(r.headers[v2.HEADER_LENGTH])
                        versions.append(v2.decode_response(r.content, n).model_version)

        threads = [threading.Thread(target=hammer, args=(v,)) for v in per_thread]
        for t in threads:
            t.start()
        time.sleep(0.5)
        r = httpx.post(
            f"{server.url}/v2/repository/models/metal-nut/load",
            timeout=60,
            headers=AUTH,
            json={"parameters": {"uri": f"s3://{bucket}/metal-nut-swap/2/", "version": "2"}},
        )
        assert r.status_code == 200, r.text
        time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join()
        assert statuses and set(statuses) == {200}
        for versions in per_thread:
            # each thread's requests are sequential: v1 until the swap, then v2 for good
            assert versions[0] == "1" and versions[-1] == "2"
            assert "1" not in versions[versions.index("2") :]
        meta = httpx.get(f"{server.url}/v2/models/metal-nut", headers=AUTH).json()
        assert meta["versions"] == ["2"]


def test_metrics_count_requests(model_server):
    body, headers = v2.encode_request({"images": np.zeros(SHAPE, np.float32)})
    httpx.post(f"{model_server.url}/v2/models/metal-nut/infer", content=body, headers=headers)
    text = httpx.get(f"{model_server.url}/metrics").text
    assert 'vinspect_modelserver_requests_total{code="200",model="metal-nut"}' in text
