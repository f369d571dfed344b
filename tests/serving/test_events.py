"""serving.events on its own: the CloudEvents the runtime reads and writes, in Kafka and over HTTP."""

from __future__ import annotations

import base64
import json

import pytest
from cloudevents.v1.http import CloudEvent, from_http

from serving.events import (
    ATTRIBUTE_LIMITS,
    IMAGE_EVENT_TYPE,
    KNATIVE_KAFKA_EVENT_TYPE,
    LEGACY_EVENT_TYPE,
    RESULT_EVENT_TYPE,
    InspectionResult,
    PoisonEvent,
    dlq_reference,
    from_kafka,
    http_binary,
    image_event,
    legacy_record,
    parse_image_event,
    record_size,
    result_data,
    result_event,
    to_kafka,
)
from vinspect.errors import VinspectError

JPEG = b"\xff\xd8\xff\xe0 not decoded here"


def _result(**changes) -> InspectionResult:
    fields = dict(
        camera="cam-1",
        image_id="evt-1",
        image_source="/vinspect/camera",
        captured_at="2026-12-06T10:00:00Z",
        label="good",
        detections=[],
        width=160,
        height=120,
        model_name="metal-nut",
        model_version="3",
        conf=0.2,
        iou=0.4,
        timings_ms={"total": 1.5},
    )
    fields.update(changes)
    return InspectionResult(**fields)


def test_image_event_round_trips_through_kafka_binary_mode():
    event = image_event(JPEG, "cam-1", label="scratch", event_id="e1", time="2026-12-06T10:00:00Z")
    key, value, headers = to_kafka(event)
    assert key == b"cam-1" and value == JPEG
    names = dict(headers)
    assert names["ce_type"] == IMAGE_EVENT_TYPE.encode() and names["ce_id"] == b"e1"
    assert names["content-type"] == b"image/jpeg" and "ce_datacontenttype" not in names
    back = from_kafka(value, headers, key, topic="images", partition=2, offset=7)
    assert back.get_attributes()["label"] == "scratch" and back["datacontenttype"] == "image/jpeg"
    parsed = parse_image_event(back)
    assert (parsed.event_id, parsed.camera_id, parsed.image, parsed.label) == ("e1", "cam-1", JPEG, "scratch")
    assert parsed.time == "2026-12-06T10:00:00Z" and parsed.source == "/vinspect/camera"


def test_incomplete_ce_headers_are_poison_naming_the_record():
    with pytest.raises(PoisonEvent, match=r"record images/3@42: ce_ headers lack \['source', 'specversion'\]"):
        from_kafka(JPEG, [("ce_id", b"x"), ("ce_type", b"t")], topic="images", partition=3, offset=42)


def test_a_record_without_ce_headers_is_wrapped_as_knative_kafkasource_does():
    record = legacy_record(JPEG, "7", label="bent", time="2026-12-06T10:00:00Z")
    assert record["image"] == "data:image/jpeg;base64," + base64.b64encode(JPEG).decode()
    assert record["text"] == record["time"] == "2026-12-06T10:00:00Z" and record["type"] == "image"
    event = from_kafka(json.dumps(record).encode(), [], b"7", topic="images", partition=1, offset=9)
    attrs = event.get_attributes()
    assert attrs["type"] == KNATIVE_KAFKA_EVENT_TYPE and attrs["source"] == "/vinspect/kafka#images"
    assert attrs["id"] == "partition:1/offset:9" and attrs["subject"] == "partition:1#9" and attrs["key"] == "7"
    parsed = parse_image_event(event)
    assert (parsed.camera_id, parsed.image, parsed.label, parsed.time) == ("7", JPEG, "bent", "2026-12-06T10:00:00Z")


def test_the_original_cameras_http_event_is_an_image_event():
    record = legacy_record(JPEG, "cam-9")
    parsed = parse_image_event(CloudEvent({"type": LEGACY_EVENT_TYPE, "source": "cam", "id": "a"}, record))
    assert parsed.camera_id == "cam-9" and parsed.image == JPEG and parsed.label == "unknown"


@pytest.mark.parametrize(
    ("attributes", "data", "message"),
    [
        ({"type": RESULT_EVENT_TYPE}, JPEG, "type is not an image event"),
        ({"type": IMAGE_EVENT_TYPE}, b"", "no data"),
        ({"type": IMAGE_EVENT_TYPE, "datacontenttype": "application/json"}, b"{not json", "data is not JSON"),
        ({"type": KNATIVE_KAFKA_EVENT_TYPE}, {"id": "c"}, "JSON data has no 'image' field"),
        ({"type": KNATIVE_KAFKA_EVENT_TYPE}, {"image": 3}, "'image' is not a string"),
        ({"type": KNATIVE_KAFKA_EVENT_TYPE}, {"image": "http://x/y.jpg"}, "not a data:image/jpeg;base64 URL"),
        ({"type": IMAGE_EVENT_TYPE, "subject": "c" * 129}, JPEG, "camera is 129 characters, over the limit of 128"),
        ({"type": IMAGE_EVENT_TYPE, "label": "l" * 65}, JPEG, "label is 65 characters, over the limit of 64"),
    ],
)
def test_what_can_never_be_inspected_is_poison(attributes, data, message):
    event = CloudEvent({"source": "s", "id": "bad-1", **attributes}, data)
    with pytest.raises(PoisonEvent, match=message) as caught:
        parse_image_event(event)
    assert str(caught.value).startswith("event bad-1 (")  # which event, and its type
    assert isinstance(caught.value, VinspectError) and isinstance(caught.value, ValueError)


def test_attributes_at_their_limits_are_accepted():
    event = image_event(JPEG, "c" * ATTRIBUTE_LIMITS["camera"], event_id="i" * ATTRIBUTE_LIMITS["id"])
    parsed = parse_image_event(event)
    assert len(parsed.camera_id) == ATTRIBUTE_LIMITS["camera"] and len(parsed.event_id) == ATTRIBUTE_LIMITS["id"]


def test_inspection_result_has_one_wire_shape():
    detection = {"class_id": 1, "class_name": "bent", "score": 0.9, "box": [1.0, 2.0, 3.0, 4.0]}
    result = _result(
        detections=[detection], annotated_image={"bucket": "b", "key": "k"}, annotated_image_status="stored"
    )
    assert not result.passed
    data = result.to_dict()
    assert list(data) == [
        "camera",
        "image_id",
        "image_source",
        "captured_at",
        "label",
        "passed",
        "verdict",
        "detections",
        "image",
        "model",
        "thresholds",
        "timings_ms",
        "annotated_image",
        "annotated_image_status",
    ]
    assert data["passed"] is False and data["verdict"] == "fail" and data["detections"] == [detection]
    assert data["image"] == {"width": 160, "height": 120}
    assert data["model"] == {"name": "metal-nut", "version": "3"}
    assert data["thresholds"] == {"conf": 0.2, "iou": 0.4}
    assert data["annotated_image"] == {"bucket": "b", "key": "k"} and data["annotated_image_status"] == "stored"
    before_store = _result().to_dict(claim_check=False)
    assert "annotated_image" not in before_store and before_store["verdict"] == "pass"


def test_result_event_over_kafka_and_http_gives_the_same_data():
    result = _result()
    event = result_event(result, "evt-1", "cam-1", "/vinspect/processor")
    attrs = event.get_attributes()
    assert attrs["type"] == RESULT_EVENT_TYPE and attrs["id"] == "result-evt-1"  # derived: consumers dedupe
    assert attrs["subject"] == attrs["partitionkey"] == "cam-1" and attrs["source"] == "/vinspect/processor"
    key, value, headers = to_kafka(event)
    assert key == b"cam-1" and dict(headers)["content-type"] == b"application/json"
    assert value == json.dumps(result.to_dict(), separators=(",", ":")).encode()
    from_broker = from_kafka(value, headers, key, topic="results")
    assert result_data(from_broker) == result.to_dict()
    http_headers, body = http_binary(event)
    assert http_headers["ce-id"] == "result-evt-1"
    assert result_data(from_http(http_headers, body)) == result.to_dict()
    assert result_event(result.to_dict(), "evt-1", "cam-1", "/s").get_data() == result.to_dict()


def test_result_data_refuses_what_is_not_a_json_object():
    with pytest.raises(PoisonEvent, match="result event r1: data is not JSON"):
        result_data(CloudEvent({"type": RESULT_EVENT_TYPE, "source": "s", "id": "r1"}, b"\xff\xfe"))
    with pytest.raises(PoisonEvent, match="result event r2: data is not a JSON object"):
        result_data(CloudEvent({"type": RESULT_EVENT_TYPE, "source": "s", "id": "r2"}, b"[1, 2]"))


def test_record_size_counts_key_value_and_headers():
    assert record_size(b"key", b"value", [("h", b"12"), ("name", None)]) == 3 + 5 + 1 + 2 + 4
    assert record_size(None, None, None) == 0


def test_dlq_reference_points_at_the_record_without_its_payload():
    headers = [("ce_id", b"e" * 300), ("ce_type", b"t"), ("content-type", b"image/jpeg")]
    headers += [(f"ce_x{i}", b"v") for i in range(40)]
    value, out = dlq_reference("images", 2, 99, 5_000_000, "r" * 2000, headers)
    doc = json.loads(value)
    assert (doc["topic"], doc["partition"], doc["offset"], doc["size"]) == ("images", 2, 99, 5_000_000)
    assert len(doc["reason"]) == 1000 and len(doc["event"]) == 32  # bounded, whatever the record had
    assert doc["event"]["id"] == "e" * 256 and "content-type" not in doc["event"]
    names = dict(out)
    assert names["dlq_payload"] == b"omitted" and names["dlq_source_offset"] == b"99"
    assert names["dlq_source_topic"] == b"images" and len(names["dlq_reason"]) == 1000
    assert names["content-type"] == b"application/json"
