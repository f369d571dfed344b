"""The Open Inference Protocol bodies (``serving/v2.py``), tested directly: no server, no socket.

Encoding and decoding round trips (JSON and the binary tensor extension), and every malformed
body a client can send refused with a :class:`~serving.v2.V2ProtocolError` naming the field.
What HTTP adds (status 400, Content-Encoding, size and time limits) is tested in
``test_modelserver_hardening.py``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from serving import v2
from vinspect.errors import VinspectError

# -- v2 bodies ---------------------------------------------------------------------------


@pytest.mark.parametrize("binary", [True, False])
def test_request_round_trip(binary):
    inputs = {
        "a": np.arange(12, dtype=np.float32).reshape(3, 4),
        "b": np.array([[1, -2]], dtype=np.int64),
        "c": np.array([b"jpeg\x00bytes", b""], dtype=object),
        "d": np.array([True, False]),
    }
    body, headers = v2.encode_request(inputs, ["out"], binary_inputs=binary, binary_outputs=binary, request_id="42")
    length = int(headers[v2.HEADER_LENGTH]) if binary else None
    assert (v2.HEADER_LENGTH in headers) is binary
    req = v2.decode_request(body, length)
    assert req.id == "42" and [o.name for o in req.outputs] == ["out"]
    assert req.outputs[0].binary is binary
    for tensor in req.inputs:
        expected = inputs[tensor.name]
        assert tensor.datatype == {"a": "FP32", "b": "INT64", "c": "BYTES", "d": "BOOL"}[tensor.name]
        if tensor.name == "c" and not binary:
            continue  # JSON BYTES are strings; NUL survives but not arbitrary binary
        assert tensor.array.tolist() == expected.tolist()


def test_request_parts_send_the_tensor_without_copying_it():
    image = np.random.default_rng(1).random((1, 3, 8, 8), dtype=np.float32)
    labels = np.array([b"a", b"bc"], dtype=object)
    parts, headers = v2.encode_request_parts({"images": image, "labels": labels}, ["output0"])
    body, joined_headers = v2.encode_request({"images": image, "labels": labels}, ["output0"])
    assert b"".join(parts) == body
    assert int(headers["Content-Length"]) == len(body)
    assert {k: v for k, v in headers.items() if k != "Content-Length"} == joined_headers
    assert np.shares_memory(np.frombuffer(parts[1], np.float32), image)  # a view, not a copy
    req = v2.decode_request(body, int(headers[v2.HEADER_LENGTH]))
    np.testing.assert_array_equal(req.inputs[0].array, image)
    assert req.inputs[1].array.tolist() == [b"a", b"bc"]
    # A non-contiguous array is made contiguous first (the one copy that cannot be avoided).
    strided = np.zeros((4, 6), np.float32)[:, ::2]
    parts, headers = v2.encode_request_parts({"x": strided})
    assert v2.decode_request(b"".join(parts), int(headers[v2.HEADER_LENGTH])).inputs[0].array.shape == (4, 3)


def test_response_round_trip_mixed():
    out = np.random.default_rng(0).random((1, 6, 8), dtype=np.float32)
    body, headers = v2.encode_response("m", "3", "id-1", [("x", out, True), ("y", out[:, :2], False)])
    resp = v2.decode_response(body, int(headers[v2.HEADER_LENGTH]))
    assert resp.model_name == "m" and resp.model_version == "3" and resp.id == "id-1"
    np.testing.assert_array_equal(resp.outputs["x"].array, out)
    np.testing.assert_allclose(resp.outputs["y"].array, out[:, :2])


@pytest.mark.parametrize(
    "body, length, message",
    [
        (
            b'{"inputs": [{"name": "a", "shape": [2], "datatype": "FP32", '
            b'"parameters": {"binary_data_size": 8}}]}' + b"\0" * 4,
            100,
            "does not fit",
        ),
        (b'{"inputs": [{"name": "a", "shape": [2], "datatype": "FP99", "data": [1, 2]}]}', None, "datatype 'FP99'"),
        (b'{"inputs": [{"name": "a", "shape": [-1], "datatype": "FP32", "data": [1]}]}', None, "non-negative"),
        (b'{"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": ["x"]}]}', None, "is not FP32"),
        (b"[]", None, "JSON object"),
        (b'{"inputs": []}', 99, "Inference-Header-Content-Length is 99"),
    ],
)
def test_decode_request_errors(body, length, message):
    with pytest.raises(v2.V2ProtocolError, match=message):
        v2.decode_request(body, length)


def test_binary_bytes_claimed_by_no_input_is_an_error():
    body, headers = v2.encode_request({"a": np.zeros(2, np.float32)})
    with pytest.raises(v2.V2ProtocolError, match="not claimed"):
        v2.decode_request(body + b"\0\0\0\0", int(headers[v2.HEADER_LENGTH]))


# -- malformed request bodies: each refused, naming the field ------------------------------

SHAPE = [1, 3, 4, 4]
_IMG = {"name": "images", "shape": SHAPE, "datatype": "FP32"}
_N = int(np.prod(SHAPE))


def _tensor(**over):
    return {**_IMG, "data": [0.0] * _N, **over}


def _binary_size_bool():
    header = json.dumps({"inputs": [{**_IMG, "parameters": {"binary_data_size": True}}]}).encode()
    return header + b"\0", len(header)


def _bytes_truncated():
    # A BYTES tensor whose 2 bytes of data cannot hold the 4-byte length of its first element.
    entry = {"name": "s", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 2}}
    header = json.dumps({"inputs": [entry]}).encode()
    return header + b"\x01\x00", len(header)


# (id, body bytes, Inference-Header-Content-Length or None, text the error must contain)
MALFORMED = [
    ("not-json", b"{not json", None, "JSON"),
    ("empty", b"", None, "JSON"),
    ("not-utf8", b"\xff\xfe{", None, "JSON"),
    ("null", b"null", None, "object"),
    ("list", b"[1]", None, "object"),
    ("string", b'"x"', None, "object"),
    ("number", b"1", None, "object"),
    ("deep-200000", b"[" * 200_000 + b"]" * 200_000, None, "nested"),
    ("deep-object", b'{"inputs":' + b"[" * 200_000 + b"]" * 200_000 + b"}", None, "nested"),
    ("no-inputs", b"{}", None, "inputs"),
    ("inputs-object", json.dumps({"inputs": {}}).encode(), None, "inputs"),
    ("inputs-string", json.dumps({"inputs": "x"}).encode(), None, "inputs"),
    ("input-not-object", json.dumps({"inputs": [1]}).encode(), None, "name"),
    ("name-number", json.dumps({"inputs": [_tensor(name=5)]}).encode(), None, "name"),
    ("datatype-list", json.dumps({"inputs": [_tensor(datatype=["FP32"])]}).encode(), None, "datatype"),
    ("datatype-object", json.dumps({"inputs": [_tensor(datatype={"a": 1})]}).encode(), None, "datatype"),
    ("datatype-unknown", json.dumps({"inputs": [_tensor(datatype="FP8")]}).encode(), None, "datatype"),
    ("shape-string", json.dumps({"inputs": [_tensor(shape="1,3")]}).encode(), None, "shape"),
    ("shape-negative", json.dumps({"inputs": [_tensor(shape=[-1, 3, 4, 4])]}).encode(), None, "shape"),
    ("shape-float", json.dumps({"inputs": [_tensor(shape=[1.5, 3, 4, 4])]}).encode(), None, "shape"),
    ("shape-huge", json.dumps({"inputs": [_tensor(shape=[10**12, 10**12])]}).encode(), None, "elements"),
    ("data-missing", json.dumps({"inputs": [_IMG]}).encode(), None, "data"),
    ("data-strings", json.dumps({"inputs": [_tensor(data=["a"] * _N)]}).encode(), None, "data"),
    ("data-object", json.dumps({"inputs": [_tensor(data={"a": 1})]}).encode(), None, "data"),
    ("data-short", json.dumps({"inputs": [_tensor(data=[1.0])]}).encode(), None, "elements"),
    ("int8-overflow", json.dumps({"inputs": [_tensor(datatype="INT8", data=[1000] * _N)]}).encode(), None, "data"),
    ("tensor-parameters-list", json.dumps({"inputs": [_tensor(parameters=[1])]}).encode(), None, "parameters"),
    ("tensor-parameters-string", json.dumps({"inputs": [_tensor(parameters="x")]}).encode(), None, "parameters"),
    ("parameters-list", json.dumps({"inputs": [_tensor()], "parameters": [1]}).encode(), None, "parameters"),
    ("parameters-string", json.dumps({"inputs": [_tensor()], "parameters": "x"}).encode(), None, "parameters"),
    ("outputs-string", json.dumps({"inputs": [_tensor()], "outputs": "x"}).encode(), None, "outputs"),
    (
        "output-parameters-list",
        json.dumps({"inputs": [_tensor()], "outputs": [{"name": "output0", "parameters": [1]}]}).encode(),
        None,
        "parameters",
    ),
    (
        "output-parameters-string",
        json.dumps({"inputs": [_tensor()], "outputs": [{"name": "output0", "parameters": "x"}]}).encode(),
        None,
        "parameters",
    ),
    ("output-not-object", json.dumps({"inputs": [_tensor()], "outputs": ["output0"]}).encode(), None, "name"),
    ("binary-size-bool", *_binary_size_bool(), "binary_data_size"),
    ("header-length-too-big", b"{}", 999, v2.HEADER_LENGTH),
    ("header-length-negative", b"{}", -1, v2.HEADER_LENGTH),
    (
        "binary-size-too-big",
        json.dumps({"inputs": [{**_IMG, "parameters": {"binary_data_size": 10**9}}]}).encode(),
        None,
        "binary_data_size",
    ),
    ("bytes-truncated-length", *_bytes_truncated(), "truncated"),
]


@pytest.mark.parametrize("ident, body, header_length, field", MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_request_is_refused_naming_the_field(ident, body, header_length, field):
    with pytest.raises(v2.V2ProtocolError) as info:
        v2.decode_request(body, header_length)
    assert field in str(info.value), str(info.value)


# -- the one JSON guard (inference bodies and repository load requests) --------------------


def test_json_object_returns_the_object():
    assert v2.json_object(b'{"a": [1, {"b": 2}]}', "body") == {"a": [1, {"b": 2}]}


@pytest.mark.parametrize(
    "data, message",
    [
        (b"{", "load request is not valid JSON: Expecting"),
        (b"\xff", "load request is not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "load request is not valid JSON: nested too deeply"),
        (b"[1]", 'load request must be a JSON object like {"parameters": {}}, not list'),
        (b"null", "not NoneType"),
    ],
)
def test_json_object_refuses_what_is_not_one_naming_the_body(data, message):
    with pytest.raises(v2.V2ProtocolError) as info:
        v2.json_object(data, "load request", like='{"parameters": {}}')
    assert message in str(info.value)


def test_protocol_errors_are_vinspect_errors_and_value_errors():
    # The CLI catches VinspectError once; code written against ValueError keeps working.
    with pytest.raises(VinspectError):
        v2.decode_request(b"[]")
    assert issubclass(v2.V2ProtocolError, ValueError)


# -- responses and datatypes ---------------------------------------------------------------


def test_response_without_request_id_echoes_an_empty_id_and_keeps_bytes():
    labels = np.array([b"scratch", b"bent"], dtype=object)
    body, headers = v2.encode_response("m", None, None, [("labels", labels, False)])
    assert v2.HEADER_LENGTH not in headers and headers["Content-Type"] == v2.JSON_CONTENT_TYPE
    header = json.loads(body)
    assert header["id"] == "" and "model_version" not in header
    decoded = v2.decode_response(body)
    assert decoded.outputs["labels"].array.tolist() == [b"scratch", b"bent"]


def test_an_error_answer_decodes_to_a_protocol_error_with_the_message():
    with pytest.raises(v2.V2ProtocolError, match="server error: model 'm' is loading"):
        v2.decode_response(b'{"error": "model \'m\' is loading"}')


def test_datatypes_map_both_ways_and_unknown_ones_are_refused():
    for name in v2.DATATYPES - {"BYTES"}:
        assert v2.datatype_of(np.zeros(1, v2.numpy_dtype(name))) == name
    assert v2.datatype_of(np.array([b"x"], dtype=object)) == "BYTES"
    with pytest.raises(v2.V2ProtocolError, match="unsupported datatype 'BYTES'"):
        v2.numpy_dtype("BYTES")
    with pytest.raises(v2.V2ProtocolError, match="no v2 datatype"):
        v2.datatype_of(np.zeros(1, np.complex64))


def test_binary_tensors_decode_as_views_on_the_body():
    image = np.arange(_N, dtype=np.float32).reshape(SHAPE)
    body, headers = v2.encode_request({"images": image})
    decoded = v2.decode_request(body, int(headers[v2.HEADER_LENGTH]))
    array = decoded.inputs[0].array
    np.testing.assert_array_equal(array, image)
    assert not array.flags.owndata  # frombuffer over the body: no copy of a large image tensor
    assert decoded.binary_data_output and decoded.outputs is None
