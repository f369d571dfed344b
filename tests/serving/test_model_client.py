"""The v2 client: TLS verification with a CA bundle, bearer token never shown, retries; v2 bodies."""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging

import httpx
import numpy as np
import pytest

from serving import v2
from serving.model_client import ModelClient, ModelRequestRejected, ModelUnavailable

from .conftest import IMGSZ, ThreadServer

TOKEN = "s3cr3t-token-value"


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


# -- client behaviour --------------------------------------------------------------------


def test_token_is_sent_but_never_shown(caplog):
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return httpx.Response(200, json={"name": "m", "inputs": [], "outputs": []})

    caplog.set_level(logging.DEBUG)
    client = ModelClient("https://model.example", "m", token=TOKEN, transport=httpx.MockTransport(handler))
    client.metadata()
    assert seen == [f"Bearer {TOKEN}"]
    assert TOKEN not in repr(client) and "***" in repr(client)
    assert TOKEN not in caplog.text


def test_plain_http_with_token_warns_without_leaking(caplog):
    caplog.set_level(logging.WARNING)
    ModelClient("http://model.example", "m", token=TOKEN)
    assert "plain HTTP" in caplog.text and TOKEN not in caplog.text


def test_retries_5xx_then_succeeds_and_never_retries_4xx():
    calls = {"n": 0}

    def flaky(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] < 3:
            return httpx.Response(503, json={"error": "model 'm' is loading"})
        return httpx.Response(200, json={"name": "m"})

    client = ModelClient("http://x", "m", retries=3, backoff=0.01, transport=httpx.MockTransport(flaky))
    assert client.metadata() == {"name": "m"} and calls["n"] == 3

    calls["n"] = 0
    client = ModelClient("http://x", "m", retries=1, backoff=0.01, transport=httpx.MockTransport(flaky))
    with pytest.raises(ModelUnavailable, match="loading"):
        client.metadata()
    assert calls["n"] == 2

    def bad(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        return httpx.Response(400, json={"error": "input 'images' has shape [1]"})

    calls["n"] = 0
    client = ModelClient("http://x", "m", retries=5, backoff=0.01, transport=httpx.MockTransport(bad))
    with pytest.raises(ModelRequestRejected, match="has shape") as info:
        client.infer({"images": np.zeros(1, np.float32)})
    assert info.value.status_code == 400 and calls["n"] == 1


def _self_signed(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vinspect-test-ca")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def test_tls_verification_stays_on_and_a_ca_bundle_is_honoured(tmp_path, model_server):
    from serving.modelserver import create_app

    cert, key = _self_signed(tmp_path)
    app = create_app(model_server.repository, load_on_startup=False)
    with ThreadServer(app, ssl_certfile=str(cert), ssl_keyfile=str(key)) as server:
        url = server.url.replace("http://", "https://")
        untrusted = ModelClient(url, "metal-nut", retries=0)
        with pytest.raises(ModelUnavailable, match="CERTIFICATE_VERIFY_FAILED|certificate verify"):
            untrusted.metadata()
        trusted = ModelClient(url, "metal-nut", retries=0, ca_bundle=str(cert), token=TOKEN)
        x = np.zeros([1, 3, IMGSZ, IMGSZ], np.float32)
        response = trusted.infer({"images": x}, ["output0"])
        assert response.outputs["output0"].array.shape[:2] == (1, 6)
        trusted.close()
        untrusted.close()


def test_from_settings(monkeypatch):
    from vinspect.settings import ModelServerSettings

    monkeypatch.setenv("VINSPECT_MODEL_URL", "https://metal-nut.apps.example:443")
    monkeypatch.setenv("VINSPECT_MODEL_NAME", "metal-nut")
    monkeypatch.setenv("VINSPECT_MODEL_TOKEN", TOKEN)
    client = ModelClient.from_settings(ModelServerSettings.from_env())
    assert client.base_url == "https://metal-nut.apps.example:443"
    assert client.model_name == "metal-nut" and TOKEN not in repr(client)
