"""The model server's data plane, called directly: no HTTP server, no socket.

What each REST route does (access rules, the v2 inference flow, the repository API, metrics)
is :class:`serving.modelserver.DataPlane`'s; these tests call it with plain values, as kserve
tests its ``DataPlane``. The HTTP layer's own duties (status codes, body limits, encodings) are
in ``test_modelserver_hardening.py``.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from serving import v2
from serving.modelserver import (
    DataPlane,
    Forbidden,
    InvalidInput,
    ModelLoadError,
    ModelNotFound,
    ModelNotReady,
    ModelRepository,
    ModelServerError,
    Unauthorized,
    parse_load_request,
)
from vinspect.errors import VinspectError

from .conftest import IMGSZ

SHAPE = [1, 3, IMGSZ, IMGSZ]
TOKEN = "dataplane-test-token"
BEARER = f"Bearer {TOKEN}"


def _body(data: bytes):
    async def read() -> bytes:
        return data

    return read


def _never_read():
    async def read() -> bytes:
        raise AssertionError("the body was read")

    return read


@pytest.fixture(scope="module")
def repository(onnx_model):
    repo = ModelRepository(threads=1)
    repo.load("metal-nut", str(onnx_model))
    return repo


@pytest.fixture
def plane(repository, onnx_model):
    """A data plane with a token and the model's folder as its only root (fresh metrics each test)."""
    return DataPlane(repository, token=TOKEN, model_roots=[str(onnx_model.parent)])


def test_infer_answers_a_binary_request_with_the_models_output(plane):
    x = np.random.default_rng(0).random(SHAPE, dtype=np.float32)
    body, headers = v2.encode_request({"images": x}, ["output0"], request_id="r-1")
    payload, out_headers = asyncio.run(
        plane.infer("metal-nut", _body(body), header_length=headers[v2.HEADER_LENGTH], authorization=BEARER)
    )
    response = v2.decode_response(payload, int(out_headers[v2.HEADER_LENGTH]))
    assert response.model_name == "metal-nut" and response.model_version == "1" and response.id == "r-1"
    expected = plane.repository.get("metal-nut").infer({"images": x}, ["output0"])[0]
    np.testing.assert_array_equal(response.outputs["output0"].array, expected)


def test_infer_answers_json_when_asked_for_json(plane):
    body, _ = v2.encode_request({"images": np.zeros(SHAPE, np.float32)}, binary_inputs=False, binary_outputs=False)
    payload, headers = asyncio.run(plane.infer("metal-nut", _body(body), authorization=BEARER))
    assert v2.HEADER_LENGTH not in headers
    assert v2.decode_response(payload).outputs["output0"].array.shape[:2] == (1, 6)


def test_an_unknown_or_unready_model_is_answered_before_its_body_is_read(plane, repository):
    with pytest.raises(ModelNotFound, match="'nope' is not served here"):
        asyncio.run(plane.infer("nope", _never_read(), authorization=BEARER))
    with pytest.raises(ModelNotFound, match="no version '7'"):
        asyncio.run(plane.infer("metal-nut", _never_read(), version="7", authorization=BEARER))
    repository.register("declared-later", "/nowhere/model.onnx")
    try:
        with pytest.raises(ModelNotReady, match="loading"):
            asyncio.run(plane.infer("declared-later", _never_read(), authorization=BEARER))
    finally:
        repository.unload("declared-later")


@pytest.mark.parametrize(
    "header_length, body, field",
    [
        ("x", b"{}", v2.HEADER_LENGTH),
        (None, b"[1]", "JSON object"),
        (None, b'{"inputs": [{"name": "other", "shape": [1], "datatype": "FP32", "data": [0]}]}', "'other'"),
        (None, b'{"inputs": [{"name": "images", "shape": [1], "datatype": "FP32", "data": [0]}]}', "shape [1]"),
        (None, b'{"inputs": [{"name": "images", "shape": [1], "datatype": "INT8", "data": [0]}]}', "datatype INT8"),
        (None, b"{}", "'inputs'"),
    ],
)
def test_a_bad_request_is_invalid_input_naming_the_field(plane, header_length, body, field):
    with pytest.raises(InvalidInput) as info:
        asyncio.run(plane.infer("metal-nut", _body(body), header_length=header_length, authorization=BEARER))
    assert field in str(info.value) and info.value.status_code == 400


def test_an_unknown_output_is_invalid_input_naming_it(plane):
    body, _ = v2.encode_request({"images": np.zeros(SHAPE, np.float32)}, ["nope"], binary_inputs=False)
    with pytest.raises(InvalidInput, match="unknown output 'nope'"):
        asyncio.run(plane.infer("metal-nut", _body(body), authorization=BEARER))


def test_metrics_count_requests_by_status(plane):
    body, _ = v2.encode_request({"images": np.zeros(SHAPE, np.float32)}, binary_inputs=False)
    asyncio.run(plane.infer("metal-nut", _body(body), authorization=BEARER))
    with pytest.raises(InvalidInput):
        asyncio.run(plane.infer("metal-nut", _body(b"{"), authorization=BEARER))
    with pytest.raises(Unauthorized):
        asyncio.run(plane.infer("metal-nut", _never_read(), authorization=None))
    text, content_type = plane.metrics(authorization=BEARER)
    text = text.decode()
    assert content_type.startswith("text/plain")
    for code in ("200", "400", "401"):
        assert f'vinspect_modelserver_requests_total{{code="{code}",model="metal-nut"}} 1.0' in text, text
    assert 'vinspect_modelserver_infer_seconds_count{model="metal-nut"} 1.0' in text


# -- access ------------------------------------------------------------------------------------


def test_with_a_token_everything_but_health_needs_it(plane):
    for wrong in (None, "", "Bearer wrong", TOKEN, f"Basic {TOKEN}"):
        with pytest.raises(Unauthorized, match="bearer token"):
            plane.server_metadata(authorization=wrong)
        with pytest.raises(Unauthorized):
            plane.model_metadata("metal-nut", authorization=wrong)
        with pytest.raises(Unauthorized):
            plane.model_ready("metal-nut", authorization=wrong)
        with pytest.raises(Unauthorized):
            plane.index(authorization=wrong)
        with pytest.raises(Unauthorized):
            plane.unload("metal-nut", authorization=wrong)
        with pytest.raises(Unauthorized):
            plane.metrics(authorization=wrong)
    assert plane.live() == {"live": True} and plane.ready() is True
    assert plane.server_metadata(authorization=f"bearer  {TOKEN} ")["name"] == "vinspect-modelserver"
    assert plane.model_metadata("metal-nut", authorization=BEARER)["inputs"][0]["name"] == "images"
    assert plane.model_ready("metal-nut", authorization=BEARER) == {"name": "metal-nut", "ready": True}


def test_without_a_token_inference_is_open_and_the_repository_api_refused(repository):
    plane = DataPlane(repository)
    assert plane.model_metadata("metal-nut")["name"] == "metal-nut"
    for call in (
        lambda: plane.index(authorization=BEARER),
        lambda: plane.unload("metal-nut", authorization=BEARER),
        lambda: asyncio.run(plane.load("metal-nut", _never_read(), authorization=BEARER)),
    ):
        with pytest.raises(Forbidden, match="VINSPECT_MODEL_TOKEN"):
            call()
    assert repository.get("metal-nut") is not None  # the unload did nothing


# -- repository API ----------------------------------------------------------------------------

# (id, body, the field the error names)
LOAD_MALFORMED = [
    ("list", b"[1]", "object"),
    ("string", b'"x"', "object"),
    ("not-json", b"{", "JSON"),
    ("not-utf8", b"\xff{", "JSON"),
    ("deep", b"[" * 200_000 + b"]" * 200_000, "nested"),
    ("parameters-list", b'{"parameters": [1]}', "parameters"),
    ("parameters-string", b'{"parameters": "x"}', "parameters"),
    ("uri-number", b'{"parameters": {"uri": 5}}', "parameters.uri"),
    ("uri-object", b'{"parameters": {"uri": {"a": 1}}}', "parameters.uri"),
    ("version-list", b'{"parameters": {"version": [1]}}', "parameters.version"),
    ("version-bool", b'{"parameters": {"version": true}}', "parameters.version"),
]


@pytest.mark.parametrize("ident, body, field", LOAD_MALFORMED, ids=[c[0] for c in LOAD_MALFORMED])
def test_a_malformed_load_request_is_invalid_input_and_changes_nothing(plane, ident, body, field):
    before = plane.repository.get("metal-nut")
    with pytest.raises(InvalidInput) as info:
        asyncio.run(plane.load("metal-nut", _body(body), authorization=BEARER))
    assert field in str(info.value)
    assert plane.repository.get("metal-nut") is before and plane.ready()


def test_load_request_fields():
    assert parse_load_request(b"") == (None, None)
    assert parse_load_request(b"  \n") == (None, None)
    assert parse_load_request(b"{}") == (None, None)
    assert parse_load_request(b'{"parameters": {"uri": "s3://models/m/3/", "version": 3}}') == (
        "s3://models/m/3/",
        "3",
    )
    assert parse_load_request(b'{"parameters": {"uri": "", "version": "2"}}') == (None, "2")


def test_load_swaps_in_a_model_under_the_roots_and_refuses_one_outside(plane, onnx_model, tmp_path):
    body = _body(f'{{"parameters": {{"uri": "{onnx_model}", "version": "5"}}}}'.encode())
    assert asyncio.run(plane.load("second", body, authorization=BEARER)) == {
        "name": "second",
        "version": "5",
        "state": "READY",
    }
    try:
        assert {"name": "second", "state": "READY", "version": "5"} in plane.index(authorization=BEARER)
        outside = tmp_path / "model.onnx"
        outside.write_bytes(onnx_model.read_bytes())
        with pytest.raises(Forbidden, match="not under this server's model roots"):
            asyncio.run(
                plane.load("second", _body(f'{{"parameters": {{"uri": "{outside}"}}}}'.encode()), authorization=BEARER)
            )
        with pytest.raises(ModelLoadError, match="does not exist"):
            asyncio.run(
                plane.load(
                    "second",
                    _body(f'{{"parameters": {{"uri": "{onnx_model.parent / "missing"}"}}}}'.encode()),
                    authorization=BEARER,
                )
            )
        assert plane.repository.get("second").version == "5"  # failed loads left it serving
    finally:
        assert plane.unload("second", authorization=BEARER) == {"name": "second", "state": "UNAVAILABLE"}


def test_every_error_carries_its_status_and_is_a_vinspect_error():
    statuses = {cls: cls.status_code for cls in (InvalidInput, Unauthorized, Forbidden, ModelNotFound, ModelNotReady)}
    assert statuses == {InvalidInput: 400, Unauthorized: 401, Forbidden: 403, ModelNotFound: 404, ModelNotReady: 503}
    assert issubclass(ModelServerError, VinspectError) and issubclass(InvalidInput, ValueError)
