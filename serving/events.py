"""CloudEvents of the runtime: image events in, result events out, in Kafka and over HTTP.

Kafka binary content mode (the CloudEvents Kafka protocol binding, as Knative's KafkaSource
and KafkaSink use it): attributes are `ce_<name>` headers, the payload is the record value,
`content-type` carries `datacontenttype`, the record key is the camera id.

Also understood, for the original Manuela demo's camera and Knative's KafkaSource:

* the legacy JSON record `{"image": "data:image/jpeg;base64,...", "id", "type", "time",
  "text", "label"}` written to Kafka without any `ce_` header;
* the same record wrapped by KafkaSource as a `dev.knative.kafka.event`.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from cloudevents.v1.http import CloudEvent

from vinspect.errors import VinspectError

IMAGE_EVENT_TYPE = "io.vinspect.image.captured"
RESULT_EVENT_TYPE = "io.vinspect.inspection.result"
KNATIVE_KAFKA_EVENT_TYPE = "dev.knative.kafka.event"
LEGACY_EVENT_TYPE = "manuela.cam-sim.image"  # what the original camera used over HTTP
# The original demo's reply, which its dashboard subscribes to (`--result-format manuela`).
LEGACY_RESULT_EVENT_TYPE = "manuela.image-processor.response"
LEGACY_RESULT_SOURCE = "manuela/eventing/image-processor"
# Only these are image events. Anything else (a result fed back by a misrouted Trigger, another
# team's event) is dead-lettered even when its data happens to be a valid image.
IMAGE_EVENT_TYPES = (IMAGE_EVENT_TYPE, KNATIVE_KAFKA_EVENT_TYPE, LEGACY_EVENT_TYPE)

# Longest accepted value of each attribute copied into a result. With the detections capped
# by the detector (300), this bounds a result event's size whatever the input says.
ATTRIBUTE_LIMITS = {"id": 256, "camera": 128, "label": 64, "source": 512, "time": 64}

_CE_PREFIX = "ce_"
_DATA_URL = re.compile(r"^data:image/(jpeg|jpg|png);base64,(?P<data>[A-Za-z0-9+/=\s]+)$")


class PoisonEvent(VinspectError, ValueError):
    """An event that can never be processed (not an image event, undecodable image...)."""


def now_iso() -> str:
    """Current UTC time in RFC 3339 (CloudEvents `time`)."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def image_event(
    jpeg: bytes,
    camera_id: str,
    *,
    source: str = "/vinspect/camera",
    label: str | None = None,
    event_id: str | None = None,
    time: str | None = None,
) -> CloudEvent:
    """Build an image CloudEvent (data = the JPEG bytes).

    Args:
        jpeg: RGB JPEG bytes.
        camera_id: Camera id (also the Kafka key and the event `subject`).
        source: CloudEvents `source`.
        label: Optional ground-truth label (simulators know it), as extension `label`.
        event_id: Event id (default: a UUID).
        time: Capture time (default: now).
    """
    attributes = {
        "type": IMAGE_EVENT_TYPE,
        "source": source,
        "id": event_id or str(uuid.uuid4()),
        "time": time or now_iso(),
        "subject": camera_id,
        "datacontenttype": "image/jpeg",
        "partitionkey": camera_id,
    }
    if label:
        attributes["label"] = label
    return CloudEvent(attributes, jpeg)


def legacy_record(jpeg: bytes, camera_id: str, label: str = "unknown", time: str | None = None) -> dict[str, Any]:
    """The original demo camera's JSON record for one frame."""
    stamp = time or now_iso()
    return {
        "image": "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii"),
        "id": camera_id,
        "type": "image",
        "time": stamp,
        "text": stamp,
        "label": label,
    }


def to_kafka(event: CloudEvent) -> tuple[bytes | None, bytes, list[tuple[str, bytes]]]:
    """Kafka binary content mode: (key, value, headers) for one event."""
    attrs = event.get_attributes()
    headers: list[tuple[str, bytes]] = []
    for name, value in attrs.items():
        if name == "datacontenttype" or value is None:
            continue
        headers.append((_CE_PREFIX + name, str(value).encode("utf-8")))
    content_type = attrs.get("datacontenttype")
    data = event.get_data()
    if isinstance(data, (dict, list)):
        value = json.dumps(data, separators=(",", ":")).encode("utf-8")
        content_type = content_type or "application/json"
    elif isinstance(data, str):
        value = data.encode("utf-8")
    else:
        value = bytes(data or b"")
    if content_type:
        headers.append(("content-type", str(content_type).encode("utf-8")))
    key = attrs.get("partitionkey") or attrs.get("subject")
    return (str(key).encode("utf-8") if key else None), value, headers


def from_kafka(
    value: bytes | None,
    headers: list[tuple[str, bytes]] | None,
    key: bytes | None = None,
    *,
    topic: str = "",
    partition: int = 0,
    offset: int = 0,
) -> CloudEvent:
    """Read one Kafka record as a CloudEvent.

    Records with `ce_` headers are binary-mode CloudEvents. Records without them are
    wrapped the way Knative's KafkaSource does (`dev.knative.kafka.event`, data = value), so
    the legacy JSON record takes the same path as over Knative.

    Raises:
        PoisonEvent: When the `ce_` headers are present but incomplete.
    """
    attrs: dict[str, Any] = {}
    content_type = None
    for name, raw in headers or []:
        text = raw.decode("utf-8", "replace") if isinstance(raw, (bytes, bytearray)) else str(raw)
        lname = name.lower()
        if lname.startswith(_CE_PREFIX):
            attrs[lname[len(_CE_PREFIX) :]] = text
        elif lname == "content-type":
            content_type = text
    if attrs:
        missing = [a for a in ("id", "source", "type", "specversion") if not attrs.get(a)]
        if missing:
            raise PoisonEvent(f"record {topic}/{partition}@{offset}: ce_ headers lack {missing}")
        if content_type:
            attrs["datacontenttype"] = content_type
        attrs.pop("specversion", None)  # CloudEvent() sets it; we only speak 1.0
        return CloudEvent(attrs, value or b"")
    wrapped = {
        "type": KNATIVE_KAFKA_EVENT_TYPE,
        "source": f"/vinspect/kafka#{topic}",
        "id": f"partition:{partition}/offset:{offset}",
        "subject": f"partition:{partition}#{offset}",
    }
    if key:
        wrapped["key"] = key.decode("utf-8", "replace")
    if content_type:
        wrapped["datacontenttype"] = content_type
    return CloudEvent(wrapped, value or b"")


@dataclass
class ImageInput:
    """What the processor needs from an image event."""

    event_id: str
    camera_id: str
    image: bytes
    time: str | None
    label: str | None
    source: str


def _decode_data_url(value: Any, where: str) -> bytes:
    if not isinstance(value, str):
        raise PoisonEvent(f"{where}: 'image' is not a string")
    match = _DATA_URL.match(value.strip())
    if not match:
        raise PoisonEvent(f"{where}: 'image' is not a data:image/jpeg;base64 URL")
    try:
        return base64.b64decode(match.group("data"), validate=False)
    except (binascii.Error, ValueError) as exc:
        raise PoisonEvent(f"{where}: 'image' is not valid base64: {exc}") from None


def _as_bytes(data: Any) -> bytes:
    if data is None:
        return b""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    if isinstance(data, str):
        return data.encode("utf-8")
    return json.dumps(data).encode("utf-8")


def parse_image_event(event: CloudEvent) -> ImageInput:
    """Extract the image and its camera from any accepted image event.

    Accepts the types in `IMAGE_EVENT_TYPES` only: our `io.vinspect.image.captured` (data =
    JPEG bytes), and the legacy JSON record as data of `dev.knative.kafka.event` or
    `manuela.cam-sim.image`; structured events whose data is base64 (`data_base64`) too.

    Raises:
        PoisonEvent: When the type is not an image event, no image can be found, or an
            attribute is longer than `ATTRIBUTE_LIMITS` allows.
    """
    attrs = event.get_attributes()
    event_id = str(attrs.get("id", ""))
    where = f"event {event_id[:80] or '?'} ({str(attrs.get('type'))[:80]})"
    if attrs.get("type") not in IMAGE_EVENT_TYPES:
        raise PoisonEvent(f"{where}: type is not an image event (accepted: {', '.join(IMAGE_EVENT_TYPES)})")
    return _bounded(_parse_image(event, attrs, event_id, where), where)


def _bounded(parsed: "ImageInput", where: str) -> "ImageInput":
    """Refuse attribute values longer than `ATTRIBUTE_LIMITS` (they are copied into results)."""
    for field, value in (
        ("id", parsed.event_id),
        ("camera", parsed.camera_id),
        ("label", parsed.label),
        ("source", parsed.source),
        ("time", parsed.time),
    ):
        if value is not None and len(value) > ATTRIBUTE_LIMITS[field]:
            raise PoisonEvent(
                f"{where}: {field} is {len(value)} characters, over the limit of {ATTRIBUTE_LIMITS[field]}"
            )
    return parsed


def _parse_image(event: CloudEvent, attrs: dict[str, Any], event_id: str, where: str) -> "ImageInput":
    data = event.get_data()
    content_type = str(attrs.get("datacontenttype") or "")
    raw = _as_bytes(data) if not isinstance(data, dict) else b""
    if isinstance(data, dict) or content_type.startswith("application/json") or raw[:1] == b"{":
        record = data
        if not isinstance(record, dict):
            try:
                record = json.loads(raw)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise PoisonEvent(f"{where}: data is not JSON: {exc}") from None
        if not isinstance(record, dict) or "image" not in record:
            raise PoisonEvent(f"{where}: JSON data has no 'image' field")
        camera = record.get("id", attrs.get("key") or attrs.get("subject") or "unknown")
        return ImageInput(
            event_id=event_id,
            camera_id=str(camera),
            image=_decode_data_url(record["image"], where),
            time=str(record.get("time") or attrs.get("time") or "") or None,
            label=str(record["label"]) if record.get("label") not in (None, "") else None,
            source=str(attrs.get("source", "")),
        )
    if not raw:
        raise PoisonEvent(f"{where}: no data")
    camera = attrs.get("subject") or attrs.get("partitionkey") or attrs.get("key") or "unknown"
    return ImageInput(
        event_id=event_id,
        camera_id=str(camera),
        image=raw,
        time=str(attrs["time"]) if attrs.get("time") else None,
        label=str(attrs["label"]) if attrs.get("label") else None,
        source=str(attrs.get("source", "")),
    )


@dataclass
class InspectionResult:
    """The verdict on one image: the data of a result event (``io.vinspect.inspection.result``).

    Built by the processor, carried over Kafka or HTTP, read by the dashboard, the loop's metrics,
    review queue and drift. :meth:`to_dict` is its one serializer: the JSON shape on the wire.

    Attributes:
        camera: Camera id (the input event's subject or the legacy record's ``id``).
        image_id: The input event's id.
        image_source: The input event's ``source``.
        captured_at: Capture time, when the event had one.
        label: Ground-truth label, when the camera knew one (simulators).
        detections: ``{class_id, class_name, score, box: [x1, y1, x2, y2]}`` in image pixels,
            highest score first (:meth:`serving.detector.Detection.to_dict`).
        width / height: The image's size in pixels.
        model_name / model_version: The model that answered.
        conf / iou: The thresholds applied.
        timings_ms: Milliseconds per stage (``decode``, ``preprocess``, ``inference``,
            ``postprocess``, ``annotate``, ``total``).
        annotated_image: The claim check, ``{bucket, key, content_type, bytes[, original_key]}``,
            or None.
        annotated_image_status: ``stored``, ``disabled...``, ``failed: ...``, ``skipped: ...``
            (``pending`` while the put runs).
    """

    camera: str
    image_id: str
    image_source: str
    captured_at: str | None
    label: str | None
    detections: list[dict[str, Any]]
    width: int
    height: int
    model_name: str | None
    model_version: str | None
    conf: float
    iou: float
    timings_ms: dict[str, float]
    annotated_image: dict[str, Any] | None = None
    annotated_image_status: str = "disabled"

    @property
    def passed(self) -> bool:
        """A part passes when nothing was detected on it."""
        return not self.detections

    def to_dict(self, *, claim_check: bool = True) -> dict[str, Any]:
        """The result event's JSON data.

        Args:
            claim_check: Include ``annotated_image`` and ``annotated_image_status`` (off: the
                payload the feedback loop sees before the image is stored).
        """
        passed = self.passed
        data: dict[str, Any] = {
            "camera": self.camera,
            "image_id": self.image_id,
            "image_source": self.image_source,
            "captured_at": self.captured_at,
            "label": self.label,
            "passed": passed,
            "verdict": "pass" if passed else "fail",
            "detections": self.detections,
            "image": {"width": self.width, "height": self.height},
            "model": {"name": self.model_name, "version": self.model_version},
            "thresholds": {"conf": self.conf, "iou": self.iou},
            "timings_ms": self.timings_ms,
        }
        if claim_check:
            data["annotated_image"] = self.annotated_image
            data["annotated_image_status"] = self.annotated_image_status
        return data


def result_event(
    result: InspectionResult | dict[str, Any], input_event_id: str, camera_id: str, source: str
) -> CloudEvent:
    """Build the result CloudEvent; its id derives from the input's, so consumers can dedupe.

    Args:
        result: The verdict (serialized with :meth:`InspectionResult.to_dict`), or data already
            in that shape.
        input_event_id: The image event's id.
        camera_id: The camera (subject and partition key).
        source: The CloudEvents ``source`` of the processor.
    """
    data = result.to_dict() if isinstance(result, InspectionResult) else result
    return CloudEvent(
        {
            "type": RESULT_EVENT_TYPE,
            "source": source,
            "id": f"result-{input_event_id}",
            "time": now_iso(),
            "subject": camera_id,
            "datacontenttype": "application/json",
            "partitionkey": camera_id,
        },
        data,
    )


def result_data(event: CloudEvent) -> dict[str, Any]:
    """The JSON payload of a result event (from HTTP or Kafka, dict or bytes).

    Raises:
        PoisonEvent: When the data is not a JSON object.
    """
    data = event.get_data()
    if isinstance(data, dict):
        return data
    try:
        parsed = json.loads(_as_bytes(data))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PoisonEvent(f"result event {event.get('id')}: data is not JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise PoisonEvent(f"result event {event.get('id')}: data is not a JSON object")
    return parsed


def http_binary(event: CloudEvent) -> tuple[dict[str, str], bytes]:
    """HTTP binary content mode (`ce-*` headers) for a reply or a POST."""
    from cloudevents.v1.conversion import to_binary

    return to_binary(event)


def record_size(key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]] | None) -> int:
    """Bytes a Kafka record takes against a size limit (key, value, header names and values)."""
    size = len(key or b"") + len(value or b"")
    for name, raw in headers or []:
        size += len(name) + len(raw or b"")
    return size


def dlq_reference(
    topic: str,
    partition: int,
    offset: int,
    size: int,
    reason: str,
    headers: list[tuple[str, bytes]] | None = None,
) -> tuple[bytes, list[tuple[str, bytes]]]:
    """A dead letter that points at a record instead of copying it (value, headers).

    Used when the record (or a result made from it) is too large for the dead-letter topic:
    the original stays in its topic for its retention, the reference says where and why.
    The value is JSON `{topic, partition, offset, size, reason, event}` where `event` holds
    the record's CloudEvents attributes (each cut to 256 characters), never its payload.
    """
    attributes = {}
    for name, raw in headers or []:
        if name.lower().startswith(_CE_PREFIX) and len(attributes) < 32:
            text = raw.decode("utf-8", "replace") if isinstance(raw, (bytes, bytearray)) else str(raw)
            attributes[name[len(_CE_PREFIX) :][:64]] = text[:256]
    value = json.dumps(
        {
            "topic": topic,
            "partition": partition,
            "offset": offset,
            "size": size,
            "reason": reason[:1000],
            "event": attributes,
        },
        separators=(",", ":"),
    ).encode("utf-8")
    out = [
        ("dlq_reason", reason[:1000].encode("utf-8")),
        ("dlq_source_topic", topic.encode()),
        ("dlq_source_partition", str(partition).encode()),
        ("dlq_source_offset", str(offset).encode()),
        ("dlq_payload", b"omitted"),
        ("content-type", b"application/json"),
    ]
    return value, out
