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
from serving import images
from serving.events import (
    IMAGE_EVENT_TYPE,
    KNATIVE_KAFKA_EVENT_TYPE,
    RESULT_EVENT_TYPE,
    PoisonEvent,
    from_kafka,
    image_event,
    legacy_record,
    to_kafka,
)
from serving.model_client import ModelClient, ModelUnavailable
from serving.processor import (
    AnnotatedImageStore,
    InspectConfig,
    Inspector,
    ProcessorMetrics,
    annotate,
    create_http_app,
)

from .conftest import ThreadServer, free_port


def _jpeg(w: int = 160, h: int = 120, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


DATA_BUCKET = "vinspect-data"  # the local stack's data bucket (VINSPECT_DATA_BUCKET)


@pytest.fixture
def store(local_stack):
    """The claim-check store on the local stack's real S3 server."""
    s3 = local_stack.s3
    store = AnnotatedImageStore(s3, DATA_BUCKET, "annotated-test")
    yield store
    store.close()


@pytest.fixture
def inspector(model_server, store):
    client = ModelClient(model_server.url, "metal-nut", retries=0)
    yield Inspector(client, InspectConfig(conf=0.2, iou=0.4), ProcessorMetrics(), store)
    client.close()


def test_inspect_result_event(inspector, model_server, local_stack):
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
    assert set(data["timings_ms"]) == {"decode", "preprocess", "inference", "postprocess", "annotate", "total"}
    assert data["timings_ms"]["inference"] > 0
    assert data["passed"] is (not data["detections"])
    assert data["verdict"] == ("pass" if data["passed"] else "fail")
    # Claim check: the image is in S3 under a key of its own; the event carries the key only.
    ref = data["annotated_image"]
    assert data["annotated_image_status"] == "stored"
    assert ref["bucket"] == DATA_BUCKET and ref["key"].startswith("annotated-test/")
    assert "camera-3" in ref["key"] and ref["key"].endswith(".jpg")
    annotated = local_stack.s3.get_object(Bucket=DATA_BUCKET, Key=ref["key"])["Body"].read()
    assert ref["bytes"] == len(annotated)
    assert images.decode_image(annotated).shape == (120, 160, 3)
    assert "base64" not in json.dumps(data)

    # Same detections as the detector core running the same ONNX in-process.
    local = det.Detector(str(model_server.repository.get("metal-nut").source.location), conf=0.01, iou=0.4)
    low = Inspector(inspector.client, InspectConfig(conf=0.01, iou=0.4, annotate=False))
    remote = low.inspect(event).get_data()["detections"]
    assert remote == [d.to_dict() for d in local.detect(images.decode_image(jpeg))]


def test_inspect_accepts_legacy_json_and_knative_wrapping(inspector):
    record = legacy_record(_jpeg(seed=1), "7", label="scratch")
    # As the original camera wrote it to Kafka (no ce_ headers) -> Knative-style wrapping.
    event = from_kafka(json.dumps(record).encode(), [], b"7", topic="t", partition=0, offset=42)
    assert event["type"] == KNATIVE_KAFKA_EVENT_TYPE
    data = inspector.inspect(event).get_data()
    assert data["camera"] == "7" and data["label"] == "scratch"
    # As KafkaSource delivers it over HTTP (structured JSON data).
    wrapped = CloudEvent(
        {"type": KNATIVE_KAFKA_EVENT_TYPE, "source": "/apis/v1/x#t", "datacontenttype": "application/json"}, record
    )
    headers, body = to_binary(wrapped)
    data = inspector.inspect(from_http(headers, body)).get_data()
    assert data["camera"] == "7"


@pytest.mark.parametrize(
    "event, reason",
    [
        (
            CloudEvent({"type": IMAGE_EVENT_TYPE, "source": "s", "datacontenttype": "image/jpeg"}, b"not a jpeg"),
            "cannot read image header",
        ),
        (
            CloudEvent(
                {"type": KNATIVE_KAFKA_EVENT_TYPE, "source": "s", "datacontenttype": "application/json"}, {"id": 1}
            ),
            "no 'image'",
        ),
        (
            CloudEvent(
                {"type": KNATIVE_KAFKA_EVENT_TYPE, "source": "s", "datacontenttype": "application/json"},
                {"image": "data:text/html;base64,PHA+"},
            ),
            "not a data:image",
        ),
        (CloudEvent({"type": IMAGE_EVENT_TYPE, "source": "s"}, b""), "no data"),
        # Issue 18.8: a foreign type is dead-lettered even when its data is a valid JPEG.
        (
            CloudEvent({"type": "com.example.other", "source": "s", "datacontenttype": "image/jpeg"}, _jpeg()),
            "not an image event",
        ),
        (
            CloudEvent({"type": RESULT_EVENT_TYPE, "source": "s", "datacontenttype": "image/jpeg"}, _jpeg()),
            "not an image event",
        ),
        # Attributes are copied into results: over-long ones would make results unbounded.
        (
            CloudEvent(
                {"type": IMAGE_EVENT_TYPE, "source": "s", "id": "x" * 5000, "datacontenttype": "image/jpeg"}, _jpeg()
            ),
            "id is 5000 characters",
        ),
        (
            CloudEvent(
                {"type": IMAGE_EVENT_TYPE, "source": "s", "subject": "c" * 300, "datacontenttype": "image/jpeg"},
                _jpeg(),
            ),
            "camera is 300 characters",
        ),
    ],
    ids=[
        "garbage",
        "json-without-image",
        "wrong-data-url",
        "empty",
        "foreign-type",
        "result-fed-back",
        "long-id",
        "long-camera",
    ],
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
        headers, body = to_binary(
            CloudEvent({"type": IMAGE_EVENT_TYPE, "source": "s", "datacontenttype": "image/jpeg"}, b"junk")
        )
        r = httpx.post(server.url + "/", content=body, headers=headers)
        assert r.status_code == 400 and "cannot read image header" in r.json()["error"]
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
    out = images.decode_image(annotate(img, boxes))
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
        assert data["model"]["version"] == "2" and inspector.model().detector.imgsz == (64, 64)
        client.close()


def test_one_detector_serves_every_event_of_a_model(model_server, monkeypatch):
    """The detector is built once from the model's metadata, not once per event (issue 16)."""
    built = []

    class Counted(det.Detector):
        def __init__(self, *args, **kwargs):
            built.append(kwargs.get("imgsz"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(det, "Detector", Counted)
    client = ModelClient(model_server.url, "metal-nut", retries=0)
    inspector = Inspector(client, InspectConfig(conf=0.2, iou=0.4))
    versions = {inspector.inspect(image_event(_jpeg(seed=i), "c")).get_data()["model"]["version"] for i in range(3)}
    assert versions == {"1"} and len(built) == 1
    assert inspector.model().detector is inspector.model().detector
    client.close()


def _bomb_png(side: int = 12000) -> bytes:
    """A small PNG whose header announces side x side pixels (a decompression bomb)."""
    buf = io.BytesIO()
    Image.new("L", (side, side)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def test_decompression_bomb_is_poison_and_never_decoded(inspector, monkeypatch):
    """Issue 18.6: the header is checked before any decoder runs (memory stays flat)."""
    import resource

    bomb = _bomb_png()
    assert len(bomb) < 500_000
    decoded = []
    monkeypatch.setattr(images, "_imdecode", lambda data, flags: decoded.append(len(data)))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(PoisonEvent, match=r"12000x12000 = 144,000,000 pixels is over the limit"):
        inspector.inspect(CloudEvent({"type": IMAGE_EVENT_TYPE, "source": "s", "datacontenttype": "image/png"}, bomb))
    assert decoded == []
    # Decoding it would add ~430 MB of pixels; the check itself adds next to nothing.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100 * 1024


def test_pixel_limit_is_a_setting(model_server):
    client = ModelClient(model_server.url, "metal-nut", retries=0)
    small = Inspector(client, InspectConfig(max_pixels=100 * 100))
    with pytest.raises(PoisonEvent, match="160x120 = 19,200 pixels is over the limit of 10,000"):
        small.inspect(image_event(_jpeg(), "c"))
    assert Inspector(client).inspect(image_event(_jpeg(), "c"))["type"] == RESULT_EVENT_TYPE
    client.close()


def test_s3_down_result_goes_out_without_image(model_server):
    """The claim check never stops a result: S3 unreachable -> no reference, and it says why."""
    import boto3
    from botocore.config import Config

    dead = boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        aws_access_key_id="x",
        aws_secret_access_key="y",
        region_name="us-east-1",
        config=Config(connect_timeout=1, read_timeout=1, retries={"max_attempts": 1}),
    )
    client = ModelClient(model_server.url, "metal-nut", retries=0)
    metrics = ProcessorMetrics()
    inspector = Inspector(client, metrics=metrics, store=AnnotatedImageStore(dead, DATA_BUCKET))
    data = inspector.inspect(image_event(_jpeg(), "camera-1")).get_data()
    assert data["annotated_image"] is None
    assert data["annotated_image_status"].startswith("failed: EndpointConnectionError")
    assert data["camera"] == "camera-1" and data["model"]["version"] == "1"
    # The Kafka loop's path (background put) says the same.
    inspection = inspector.analyse(image_event(_jpeg(seed=3), "camera-1"))
    inspector.start_store(inspection)
    data = inspector.finish_stored(inspection).get_data()
    assert data["annotated_image"] is None and data["annotated_image_status"].startswith("failed")
    assert 'vinspect_processor_annotated_images_total{outcome="failed"} 2.0' in metrics.render()[0].decode()
    inspector.store.close()
    client.close()


def test_store_backlog_is_bounded():
    """A slow S3 never queues images without bound: beyond max_pending they are skipped."""
    import threading

    gate = threading.Event()

    class SlowS3:
        def put_object(self, **_kw):
            gate.wait(10)

    store = AnnotatedImageStore(SlowS3(), DATA_BUCKET, workers=1, max_pending=2)
    assert store.submit("a", b"1") is not None and store.submit("b", b"2") is not None
    assert store.submit("c", b"3") is None
    gate.set()
    store.close()
    assert store._pending == 0


def test_result_event_is_bounded_for_the_largest_acceptable_input(model_server):
    """Results stay under RESULT_MAX_BYTES (64 KiB) by construction, whatever the input."""
    from serving.events import ATTRIBUTE_LIMITS, record_size
    from serving.processor import RESULT_MAX_BYTES

    client = ModelClient(model_server.url, "metal-nut", retries=0)
    inspector = Inspector(client)
    rng = np.random.default_rng(0)
    big = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (2400, 2400, 3), dtype=np.uint8)).save(big, "JPEG", quality=95)
    assert len(big.getvalue()) > 6 * 1024 * 1024
    event = CloudEvent(
        {
            "type": IMAGE_EVENT_TYPE,
            "source": "s" * ATTRIBUTE_LIMITS["source"],
            "id": "i" * ATTRIBUTE_LIMITS["id"],
            "subject": "c" * ATTRIBUTE_LIMITS["camera"],
            "label": "l" * ATTRIBUTE_LIMITS["label"],
            "time": "t" * ATTRIBUTE_LIMITS["time"],
            "datacontenttype": "image/jpeg",
        },
        big.getvalue(),
    )
    inspection = inspector.analyse(event)
    # The worst case the detector can return: MAX_DETECTIONS boxes with long float scores.
    worst = det.Detection(1, "bent", 0.123456789012345, (1234.56789, 2345.6789, 3456.789, 4567.891))
    inspection.result.detections = [worst.to_dict()] * det.MAX_DETECTIONS
    ref = {
        "bucket": "b" * 63,
        "key": AnnotatedImageStore(None, "b").key_for("c" * 128, "i" * 256),
        "content_type": "image/jpeg",
        "bytes": 10 * 1024 * 1024,
    }
    for status in ("stored", "failed: " + "x" * 300):
        key, value, headers = to_kafka(inspector.finish(inspection, ref, status))
        assert record_size(key, value, headers) < RESULT_MAX_BYTES
    client.close()


def test_result_in_the_original_demos_reply_shape(model_server):
    """Issue 13: `--result-format manuela` gives the demo dashboard its `{text, id, status, image}`."""
    from serving.events import record_size
    from serving.processor import RESULT_MAX_BYTES

    client = ModelClient(model_server.url, "metal-nut", retries=0)
    inspector = Inspector(client, InspectConfig(result_format="manuela"))
    event = image_event(_jpeg(1600, 1200), "7", time="2026-12-06T10:00:00Z")
    reply = inspector.inspect(event)
    assert reply["type"] == "manuela.image-processor.response"
    assert reply["source"] == "manuela/eventing/image-processor"
    data = reply.get_data()
    assert set(data) == {"text", "id", "status", "image"}
    assert data["text"] == "2026-12-06T10:00:00Z" and data["id"] == "7" and data["status"] in (0, 1)
    thumb = images.decode_image(base64.b64decode(data["image"].split(",", 1)[1]))
    assert max(thumb.shape[:2]) <= 640
    assert record_size(*to_kafka(reply)) < RESULT_MAX_BYTES
    with pytest.raises(ValueError, match="result_format"):
        InspectConfig(result_format="other")
    client.close()


def test_http_receiver_limits_body_and_checks_token(inspector):
    """Issue 18.7 and 18.2: 413 over the body limit (before reading it), 401 without the token."""
    metrics = inspector.metrics
    app = create_http_app(inspector, metrics, token="s3cret-for-test", max_body_bytes=64 * 1024)
    with ThreadServer(app) as server:
        headers, body = to_binary(image_event(_jpeg(), "camera-1"))
        r = httpx.post(server.url + "/", content=body, headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        r = httpx.post(server.url + "/", content=body, headers={**headers, "Authorization": "Bearer nope"})
        assert r.status_code == 401
        auth = {"Authorization": "Bearer s3cret-for-test"}
        r = httpx.post(server.url + "/", content=body, headers={**headers, **auth}, timeout=30)
        assert r.status_code == 200, r.text
        big = b"\xff" * (200 * 1024)
        r = httpx.post(server.url + "/", content=big, headers={**headers, **auth})
        assert r.status_code == 413 and "over the limit" in r.json()["error"]

        def chunks():  # no Content-Length: the limit holds on the stream too
            for _ in range(10):
                yield b"\x00" * (32 * 1024)

        r = httpx.post(server.url + "/", content=chunks(), headers={**headers, **auth})
        assert r.status_code == 413
        assert httpx.get(server.url + "/healthz").status_code == 200  # probes need no token
