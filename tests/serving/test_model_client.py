"""The v2 client: TLS verification with a CA bundle, bearer token never shown, retries; v2 bodies."""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging

import httpx
import numpy as np
import pytest

from serving.model_client import ModelClient, ModelRequestRejected, ModelUnavailable

from .conftest import IMGSZ, ThreadServer

TOKEN = "s3cr3t-token-value"


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
