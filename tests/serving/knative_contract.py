"""What the Knative Kafka Broker makes of a subscriber's HTTP answer: a fake built from its source.

We cannot run the Broker here, so this models its dispatcher's decision, rule by rule, from
the upstream code (Apache-2.0):

* knative-extensions/eventing-kafka-broker @ 7d8fe89f4b5ef86c0b59ccf82613ec9ce1118438,
  ``data-plane/dispatcher/src/main/java/dev/knative/eventing/kafka/broker/dispatcher/impl/
  http/WebClientCloudEventSender.java``: a status ``>= 300`` is a failed delivery;
  ``isRetryableStatusCode`` retries ``>= 500``, 404, 408, 409 and 429 (with the Trigger's
  delivery backoff, then the dead-letter sink); any other failure status goes to the
  dead-letter sink without a retry.
* ``.../dispatcher/impl/BaseResponseHandler.java`` ``handle()``: a 2xx response is read as a
  CloudEvent (``VertxMessageFactory.createReader(response).toEvent()``). When that fails and
  the body is empty, the delivery is acknowledged and nothing is replied; when it fails and
  the body is *not* empty, the future fails ("Unable to decode response: unknown encoding and
  non empty response") and ``RecordDispatcherImpl`` sends the record to the dead-letter sink.
  A parsed event is the reply, produced back to the Broker.
* cloudevents/sdk-java @ ecde1d4a36f58df8786e4091159d399a3a4e186d,
  ``core/src/main/java/io/cloudevents/core/message/impl/MessageUtils.java``
  ``parseStructuredOrBinaryMessage``: structured mode when ``Content-Type`` names a known
  event format (``application/cloudevents+json``); another ``application/cloudevents*`` is an
  unknown encoding; otherwise binary mode when a ``ce-specversion`` header is present, else
  an unknown encoding. Building the event requires ``id``, ``source`` and ``type`` (and a
  known spec version, 1.0 or 0.3).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping

ACK, REPLY, RETRY, DEAD_LETTER = "ack", "reply", "retry", "dead-letter"
_RETRYABLE = {404, 408, 409, 429}
_SPEC_VERSIONS = {"1.0", "0.3"}
_REQUIRED = ("id", "source", "type")


@dataclass
class Verdict:
    """The Broker's decision: `outcome` (ack, reply, retry, dead-letter) and the reply's attributes."""

    outcome: str
    reason: str
    reply: dict[str, Any] | None = None


def _read_event(headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
    """The reply CloudEvent's attributes, as the Java SDK's reader would build them; raises ValueError."""
    lower = {k.lower(): v for k, v in headers.items()}
    content_type = lower.get("content-type")
    if content_type is not None:
        media = content_type.split(";", 1)[0].strip().lower()
        if media == "application/cloudevents+json":
            try:
                event = json.loads(body)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise ValueError(f"structured body is not JSON: {exc}") from None
            if not isinstance(event, dict):
                raise ValueError("structured body is not a JSON object")
            return _checked(event)
        if media.startswith("application/cloudevents"):
            raise ValueError(f"unknown structured format {media}")
    spec = lower.get("ce-specversion")
    if spec is None:
        raise ValueError("unknown encoding: no structured content type and no ce-specversion header")
    attributes = {k[3:]: v for k, v in lower.items() if k.startswith("ce-")}
    return _checked(attributes)


def _checked(attributes: dict[str, Any]) -> dict[str, Any]:
    if str(attributes.get("specversion")) not in _SPEC_VERSIONS:
        raise ValueError(f"unknown spec version {attributes.get('specversion')!r}")
    missing = [a for a in _REQUIRED if not attributes.get(a)]
    if missing:
        raise ValueError(f"event lacks {missing}")
    return attributes


def judge(status: int, headers: Mapping[str, str], body: bytes) -> Verdict:
    """What the Kafka Broker's dispatcher does with one HTTP answer from a subscriber."""
    if status >= 300:
        if status >= 500 or status in _RETRYABLE:
            return Verdict(RETRY, f"status {status} is retried")
        return Verdict(DEAD_LETTER, f"status {status} is not retried")
    if status < 200:
        return Verdict(DEAD_LETTER, f"status {status} is not a success")
    try:
        event = _read_event(headers, body)
    except ValueError as exc:
        if not body:
            return Verdict(ACK, "empty body, no event")
        return Verdict(DEAD_LETTER, f"non-empty body that is not a CloudEvent ({exc})")
    return Verdict(REPLY, "a CloudEvent reply", event)


def judge_response(response: Any) -> Verdict:
    """`judge` for an `httpx.Response`."""
    return judge(response.status_code, dict(response.headers), response.content)
