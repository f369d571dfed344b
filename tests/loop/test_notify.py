"""Model notifications delivered to a real local HTTP receiver, in both CloudEvents modes."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cloudevents.v1.http import from_http

from serving.notify import DRIFT_DETECTED, GATE_REJECTED, PROMOTED, ROLLED_BACK, Notifier, notify
from tests.conftest import free_port


class Receiver:
    """A webhook on loopback that keeps every request and answers ``status``."""

    def __init__(self, status: int = 202):
        self.status, self.requests = status, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(outer.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def events(self):
        return [from_http(h, body) for h, body in self.requests]

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.stop()


def test_binary_mode_carries_attributes_as_headers(receiver):
    n = Notifier(receiver.url, mode="binary", source="/vinspect/test")
    assert n.promoted("metal-nut", 7, previous_version=6, target="kserve") is True
    headers, body = receiver.requests[0]
    assert headers["ce-type"] == PROMOTED and headers["ce-subject"] == "metal-nut"
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == {
        "model": "metal-nut",
        "version": "7",
        "previous_version": "6",
        "alias": "champion",
        "target": "kserve",
    }
    [event] = receiver.events()
    assert event["source"] == "/vinspect/test" and event["specversion"] == "1.0"


def test_structured_mode_sends_the_whole_event_as_json(receiver):
    n = Notifier(receiver.url, mode="structured")
    assert n.gate_rejected("metal-nut", reasons="mAP50 0.31 < 0.5", dataset_id="abc", metrics={"map50": 0.31})
    assert n.rolled_back("metal-nut", 6, from_version=7, reason="smoke test failed")
    assert n.drift_detected("metal-nut", 7, "cam-2", {"brightness": {"psi": 0.4, "ks": 0.5}}, threshold=0.2)
    headers, body = receiver.requests[0]
    assert headers["content-type"].startswith("application/cloudevents+json")
    doc = json.loads(body)
    assert doc["type"] == GATE_REJECTED and doc["data"]["reasons"] == ["mAP50 0.31 < 0.5"]
    types = [e["type"] for e in receiver.events()]
    assert types == [GATE_REJECTED, ROLLED_BACK, DRIFT_DETECTED]
    assert receiver.events()[2]["subject"] == "cam-2"


def test_delivery_failures_never_raise(caplog):
    down = f"http://127.0.0.1:{free_port()}/nobody"
    n = Notifier(down, token="tok-should-not-be-logged")
    assert n.promoted("metal-nut", 3) is False
    assert "not delivered" in caplog.text and "tok-should-not-be-logged" not in caplog.text
    refusing = Receiver(status=500)
    try:
        assert Notifier(refusing.url).rolled_back("metal-nut", 2) is False
        assert "refused: HTTP 500" in caplog.text
    finally:
        refusing.stop()


def test_token_is_sent_as_bearer(receiver):
    Notifier(receiver.url, token="hook-token").promoted("m", 1)
    assert receiver.requests[0][0]["authorization"] == "Bearer hook-token"


def test_no_url_means_off_and_a_bad_mode_is_named():
    assert Notifier(None).promoted("m", 1) is False
    with pytest.raises(ValueError, match="VINSPECT_NOTIFY_MODE 'xml'"):
        Notifier("http://x", mode="xml")


def test_one_line_notify_reads_the_settings(receiver, monkeypatch):
    monkeypatch.setenv("VINSPECT_NOTIFY_URL", receiver.url)
    monkeypatch.setenv("VINSPECT_NOTIFY_MODE", "structured")
    assert notify("promoted", "metal-nut", 9, previous_version=8) is True
    assert receiver.events()[0]["type"] == PROMOTED
    monkeypatch.setenv("VINSPECT_NOTIFY_MODE", "nonsense")
    assert notify("promoted", "metal-nut", 9) is False  # misconfigured: logged, not raised
    with pytest.raises(ValueError, match="unknown notification"):
        notify("exploded", "m")
