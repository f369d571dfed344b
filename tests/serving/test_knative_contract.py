"""Processor and dashboard against the Knative reply contract (issue 13, point 3).

`knative_contract.judge` models the Kafka Broker's dispatcher from its source; each answer our
services give is run through it and must mean what we intend: a result replied, a dashboard
delivery acknowledged (not a failure), poison dead-lettered at once, an outage retried.
"""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
from cloudevents.v1.conversion import to_binary, to_structured
from cloudevents.v1.http import CloudEvent
from PIL import Image

from serving.dashboard.app import DashboardState, create_app
from serving.events import IMAGE_EVENT_TYPE, RESULT_EVENT_TYPE, image_event, result_event
from serving.model_client import ModelClient
from serving.processor import InspectConfig, Inspector, ProcessorMetrics, create_http_app

from .conftest import ThreadServer, free_port
from .knative_contract import ACK, DEAD_LETTER, REPLY, RETRY, judge, judge_response


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((48, 64, 3), 120, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.mark.parametrize(
    "status, headers, body, outcome",
    [
        (202, {}, b"", ACK),
        (204, {}, b"", ACK),
        (202, {"content-type": "application/json"}, b'{"camera": "c"}', DEAD_LETTER),
        (200, {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "s", "ce-type": "t"}, b"{}", REPLY),
        (200, {"ce-specversion": "1.0", "ce-id": "1", "ce-type": "t"}, b"{}", DEAD_LETTER),
        (200, {"ce-specversion": "1.0", "ce-id": "1", "ce-type": "t"}, b"", ACK),
        (
            200,
            {"content-type": "application/cloudevents+json"},
            b'{"specversion": "1.0", "id": "1", "source": "s", "type": "t"}',
            REPLY,
        ),
        (200, {"content-type": "application/cloudevents+json"}, b'{"specversion": "1.0"}', DEAD_LETTER),
        (200, {"content-type": "application/cloudevents-batch+json"}, b"[]", DEAD_LETTER),
        (400, {}, b"", DEAD_LETTER),
        (401, {}, b"", DEAD_LETTER),
        (413, {}, b"", DEAD_LETTER),
        (404, {}, b"", RETRY),
        (408, {}, b"", RETRY),
        (409, {}, b"", RETRY),
        (429, {}, b"", RETRY),
        (500, {}, b"", RETRY),
        (503, {}, b"x", RETRY),
    ],
)
def test_checker_follows_the_dispatcher(status, headers, body, outcome):
    assert judge(status, headers, body).outcome == outcome


def test_processor_answers_by_the_contract(model_server):
    client = ModelClient(model_server.url, "metal-nut", retries=0)
    metrics = ProcessorMetrics()
    app = create_http_app(Inspector(client, InspectConfig(), metrics), metrics, max_body_bytes=256 * 1024)
    with ThreadServer(app) as server:
        for to_http in (to_binary, to_structured):
            headers, body = to_http(image_event(_jpeg(), "camera-1"))
            verdict = judge_response(httpx.post(server.url + "/", content=body, headers=headers, timeout=30))
            assert verdict.outcome == REPLY, verdict.reason
            assert verdict.reply["type"] == RESULT_EVENT_TYPE and verdict.reply["subject"] == "camera-1"
        # Poison never comes back: dead-lettered at once, no retries.
        for event in (
            CloudEvent({"type": IMAGE_EVENT_TYPE, "source": "s"}, b"junk"),
            CloudEvent({"type": "com.example.other", "source": "s"}, _jpeg()),
        ):
            headers, body = to_binary(event)
            verdict = judge_response(httpx.post(server.url + "/", content=body, headers=headers))
            assert verdict.outcome == DEAD_LETTER, verdict.reason
        headers, body = to_binary(image_event(b"\xff" * (300 * 1024), "c"))
        assert judge_response(httpx.post(server.url + "/", content=body, headers=headers)).outcome == DEAD_LETTER
        assert judge_response(httpx.post(server.url + "/", content=b"hello")).outcome == DEAD_LETTER
    client.close()

    # The model away: retried with the Trigger's backoff, never dead-lettered.
    down = ModelClient(f"http://127.0.0.1:{free_port()}", "metal-nut", retries=0, timeout=2)
    with ThreadServer(create_http_app(Inspector(down), ProcessorMetrics())) as server:
        headers, body = to_binary(image_event(_jpeg(), "camera-1"))
        verdict = judge_response(httpx.post(server.url + "/", content=body, headers=headers, timeout=30))
        assert verdict.outcome == RETRY, verdict.reason
    down.close()


def test_dashboard_answers_by_the_contract():
    data = {"camera": "c", "image_id": "i", "passed": True, "detections": []}
    with ThreadServer(create_app(DashboardState())) as server:
        for to_http in (to_binary, to_structured):
            headers, body = to_http(result_event(data, "i", "c", "/test"))
            verdict = judge_response(httpx.post(server.url + "/", content=body, headers=headers))
            # Acknowledged, and no reply: the dashboard is the end of the line.
            assert verdict.outcome == ACK, verdict.reason
        headers, body = to_binary(image_event(_jpeg(), "c"))
        assert judge_response(httpx.post(server.url + "/", content=body, headers=headers)).outcome == DEAD_LETTER
        assert judge_response(httpx.post(server.url + "/", content=b"nope")).outcome == DEAD_LETTER
