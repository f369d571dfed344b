"""The processor core `Inspector.inspect` and its Knative HTTP adapter, against our model server."""

from __future__ import annotations

import base64
import io
import json

import httpx
import numpy as np
import pytest
from cloudevents.v1.conversion import to_binary, to_structured
from cloudevents.v1.http import CloudEvent, from_http
from PIL import Image

from serving import detector as det
from serving.events import (
    KNATIVE_KAFKA_EVENT_TYPE, RESULT_EVENT_TYPE, PoisonEvent, from_kafka, image_event,
    legacy_record, to_kafka,
)
from serving.model_client import ModelClient, ModelUnavailable
from serving.processor import InspectConfig, Inspector, ProcessorMetrics, annotate, create_http_app

from .conftest import ThreadServer, free_port


def _jpeg(w: int = 160, h: int = 120, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture
def inspector(model_server):
    client = ModelClient(model_server.url, "metal-nut", retries=0)
    yield Inspector(client, InspectConfig(conf=0.2, iou=0.4), ProcessorMetrics())
    client.close()


def test_inspect_result_event(inspector, model_server):
    jpeg = _jpeg()
    event = image_event(jpeg, "camera-3", label="bent")
    result = inspector.inspect(event)
    assert result["type"] == RESULT_EVENT_TYPE
    assert result["id"] == f"result-{event['id']}"
    assert result["subject"] == "camera-3"
    data = result.get_data()
    assert data["camera"] == "camera-3" and data["image_id"] == event["id"]
    assert data["label"] == "bent"
    assert data["image"] == {"width": 160, "height": 120}
    assert data["model"] == {"name": "metal-nut", "version": "1"}
    assert set(data["timings_ms"]) == {"decode", "preprocess", "inference", "postprocess",
                                       "annotate", "total"}
    assert data["timings_ms"]["inference"] > 0
    assert data["passed"] is (not data["detections"])
    assert data["verdict"] == ("pass" if data["passed"] else "fail")
    assert data["annotated_image"].startswith("data:image/jpeg;base64,")
    annotated = base64.b64decode(data["annotated_image"].split(",", 1)[1])
    assert det.decode_image(annotated).shape == (120, 160, 3)

    # Same detections as the detector core running the same ONNX in-process.
    local = det.Detector(str(model_server.repository.get("metal-nut").source.location),
                         conf=0.01, iou=0.4)
    low = Inspector(inspector.client, InspectConfig(conf=0.01, iou=0.4, annotate=False))
    remote = low.inspect(event).get_data()["detections"]
    assert remote == [d.to_dict() for d in local.detect(det.decode_image(jpeg))]


def test_inspect_accepts_legacy_json_and_knative_wrapping(inspector):
    record = legacy_record(_jpeg(seed=1), "7", label="scratch")
    # As the original camera wrote it to Kafka (no ce_ headers) -> Knative-style wrapping.
    event = from_kafka(json.dumps(record).encode(), [], b"7", topic="t", partition=0, offset=42)
    assert event["type"] == KNATIVE_KAFKA_EVENT_TYPE
    data = inspector.inspect(event).get_data()
    assert data["camera"] == "7" and data["label"] == "scratch"
    # As KafkaSource delivers it over HTTP (structured JSON data).
    wrapped = CloudEvent({"type": KNATIVE_KAFKA_EVENT_TYPE, "source": "/apis/v1/x#t",
                          "datacontenttype": "application/json"}, record)
    headers, body = to_binary(wrapped)
    data = inspector.inspect(from_http(headers, body)).get_data()
    assert data["camera"] == "7"


@pytest.mark.parametrize(
    "event, reason",
    [
        (CloudEvent({"type": "x", "source": "s", "datacontenttype": "image/jpeg"}, b"not a jpeg"),
         "cannot decode image"),
        (CloudEvent({"type": "x", "source": "s", "datacontenttype": "application/json"},
                    {"id": 1}), "no 'image'"),
        (CloudEvent({"type": "x", "source": "s", "datacontenttype": "application/json"},
                    {"image": "data:text/html;base64,PHA+"}), "not a data:image"),
        (CloudEvent({"type": "x", "source": "s"}, b""), "no data"),
    ],
    ids=["garbage", "json-without-image", "wrong-data-url", "empty"],
)
def test_poison_events(inspector, event, reason):
    with pytest.raises(PoisonEvent, match=reason):
        inspector.inspect(event)


def test_incomplete_ce_headers_are_poison():
    with pytest.raises(PoisonEvent, match="lack"):
        from_kafka(b"x", [("ce_id", b"1"), ("ce_type", b"t")], topic="t", partition=0, offset=1)


def test_kafka_binary_mode_round_trip():
    jpeg = _jpeg()
    event = image_event(jpeg, "camera-0", label="good")
    key, value, headers = to_kafka(event)
    names = dict(headers)
    assert key == b"camera-0" and value == jpeg
    assert names["content-type"] == b"image/jpeg"
    for attr in ("ce_specversion", "ce_id", "ce_source", "ce_type", "ce_time"):
        assert attr in names
    back = from_kafka(value, headers, key)
    assert back["id"] == event["id"] and back.get_data() == jpeg
    assert back["datacontenttype"] == "image/jpeg"


def test_model_down_raises_unavailable():
    client = ModelClient(f"http://127.0.0.1:{free_port()}", "metal-nut", retries=0, timeout=2)
    with pytest.raises(ModelUnavailable):
        Inspector(client).inspect(image_event(_jpeg(), "c"))


def test_http_receiver_replies_with_result(inspector):
    metrics = inspector.metrics
    with ThreadServer(create_http_app(inspector, metrics)) as server:
        event = image_event(_jpeg(), "camera-1")
        headers, body = to_binary(event)
        r = httpx.post(server.url + "/", content=body, headers=headers, timeout=30)
        assert r.status_code == 200, r.text
        assert r.headers["ce-type"] == RESULT_EVENT_TYPE
        assert r.headers["ce-id"] == f"result-{event['id']}"
        reply = from_http(dict(r.headers), r.content)
        assert reply.get_data()["camera"] == "camera-1"

        # Structured mode with base64 data works too.
        headers, body = to_structured(image_event(_jpeg(seed=2), "camera-2"))
        r = httpx.post(server.url + "/", content=body, headers=headers, timeout=30)
        assert r.status_code == 200, r.text

        # A poison event: 400 with the reason (Knative dead-letters it).
        headers, body = to_binary(CloudEvent({"type": "x", "source": "s",
                                              "datacontenttype": "image/jpeg"}, b"junk"))
        r = httpx.post(server.url + "/", content=body, headers=headers)
        assert r.status_code == 400 and "cannot decode image" in r.json()["error"]
        # Not a CloudEvent at all.
        r = httpx.post(server.url + "/", content=b"hello")
        assert r.status_code == 400

        assert httpx.get(server.url + "/healthz").status_code == 200
        assert httpx.get(server.url + "/readyz").status_code == 200
        text = httpx.get(server.url + "/metrics").text
        assert 'vinspect_processor_events_total{outcome="dlq"} 2.0' in text


def test_http_receiver_503_when_model_down():
    client = ModelClient(f"http://127.0.0.1:{free_port()}", "metal-nut", retries=0, timeout=2)
    metrics = ProcessorMetrics()
    with ThreadServer(create_http_app(Inspector(client, metrics=metrics), metrics)) as server:
        headers, body = to_binary(image_event(_jpeg(), "c"))
        r = httpx.post(server.url + "/", content=body, headers=headers, timeout=30)
        assert r.status_code == 503 and "model unavailable" in r.json()["error"]
        assert httpx.get(server.url + "/readyz").status_code == 503


def test_annotate_draws_boxes():
    img = np.full((100, 100, 3), 128, np.uint8)
    boxes = [det.Detection(0, "scratch", 0.9, (10.0, 20.0, 60.0, 70.0))]
    out = det.decode_image(annotate(img, boxes))
    # the box outline is red-ish where the plain image was grey
    assert out[45, 10, 0] > 180 and out[45, 10, 1] < 100
    assert abs(int(out[90, 90, 0]) - 128) < 10


def test_unknown_model_is_an_outage_not_poison(model_server):
    """A model not deployed (yet) must not send good images to the dead-letter topic."""
    client = ModelClient(model_server.url, "not-deployed-yet", retries=0)
    with pytest.raises(ModelUnavailable, match="not served here"):
        Inspector(client).inspect(image_event(_jpeg(), "c"))


def test_swap_to_another_input_size_is_followed(onnx_model, onnx_model_64):
    """After a rollout changes the input size, the processor re-reads the metadata once."""
    from serving.modelserver import ModelRepository, create_app

    repo = ModelRepository()
    repo.load("metal-nut", str(onnx_model), version="1")
    # The repository API (the load below) needs a token and a model root holding the new file.
    app = create_app(repo, token="swap-test-token", model_roots=[str(onnx_model_64.parent)])
    with ThreadServer(app) as server:
        client = ModelClient(server.url, "metal-nut", retries=0, token="swap-test-token")
        inspector = Inspector(client)
        assert inspector.inspect(image_event(_jpeg(), "c")).get_data()["model"]["version"] == "1"
        assert client.load(str(onnx_model_64), version="2")["version"] == "2"
        data = inspector.inspect(image_event(_jpeg(), "c")).get_data()
        assert data["model"]["version"] == "2" and inspector._imgsz == (64, 64)
        client.close()
