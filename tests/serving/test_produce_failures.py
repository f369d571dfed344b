"""Every produce failure is handled (issue 18.1): the loop goes on and the offset moves.

The processor's `KafkaLoop` runs in-process against the local stack's real broker and the
in-process model server. A thin wrapper around the real producer makes the broker's refusal
happen on chosen topics (a record over `message.max.bytes`, a topic we may not write): raised
by `produce()` as librdkafka does for a local size check, or reported in the delivery
callback as it does for a broker's answer. Everything else goes to the real broker.
"""

from __future__ import annotations

import io
import json
import threading
import time
import uuid

import numpy as np
import pytest
from PIL import Image

from serving.events import image_event, to_kafka
from serving.model_client import ModelClient
from serving.processor import Inspector, KafkaLoop, ProcessorMetrics

from .test_stream import _collect, _topics


class RefusingProducer:
    """A real `confluent_kafka.Producer` that refuses records for some topics, for good."""

    def __init__(self, real, refuse: dict[str, str]):
        from confluent_kafka import KafkaError

        self.real = real
        self.refuse = refuse  # topic -> "sync" (produce raises) or "async" (delivery report)
        self.error = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "refused by the test broker")
        self.reports: list = []
        self.refused: list[str] = []

    def produce(self, topic, value=None, key=None, headers=None, on_delivery=None):
        from confluent_kafka import KafkaException

        mode = self.refuse.get(topic)
        if mode is not None:
            self.refused.append(topic)
        if mode == "sync":
            raise KafkaException(self.error)
        if mode == "async":
            self.reports.append(on_delivery)
            return
        self.real.produce(topic, value=value, key=key, headers=headers, on_delivery=on_delivery)

    def _fire(self) -> None:
        reports, self.reports = self.reports, []
        for report in reports:
            report(self.error, None)

    def poll(self, timeout=0):
        self._fire()
        return self.real.poll(timeout)

    def flush(self, timeout=None):
        self._fire()
        return self.real.flush(timeout) if timeout is not None else self.real.flush()


def _jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.mark.parametrize(
    "results_mode, dlq_mode, fallback",
    [
        ("sync", None, "reference"),
        ("async", None, "reference"),
        ("sync", "async", "dropped"),
    ],
    ids=["result-refused-up-front", "result-refused-by-broker", "dead-letter-refused-too"],
)
def test_refused_writes_never_stop_the_loop(local_stack, model_server, results_mode, dlq_mode, fallback):
    from confluent_kafka import Consumer, Producer, TopicPartition

    bootstrap = local_stack.kafka_bootstrap
    topics = _topics(bootstrap, f"refuse-{uuid.uuid4().hex[:6]}")
    images, results, dlq = (
        topics[k] for k in ("VINSPECT_IMAGES_TOPIC", "VINSPECT_RESULTS_TOPIC", "VINSPECT_DLQ_TOPIC")
    )
    sender = Producer({"bootstrap.servers": bootstrap})
    for i in range(3):
        key, value, headers = to_kafka(image_event(_jpeg(i), "camera-0", event_id=f"img-{i}"))
        sender.produce(images, key=key, value=value, headers=headers)
    assert sender.flush(15) == 0

    group = f"refuse-{uuid.uuid4().hex[:6]}"
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
        }
    )
    producer = refusing = RefusingProducer(
        Producer({"bootstrap.servers": bootstrap}), {results: results_mode, **({dlq: dlq_mode} if dlq_mode else {})}
    )
    client = ModelClient(model_server.url, "metal-nut", retries=0)
    metrics = ProcessorMetrics()
    loop = KafkaLoop(
        Inspector(client, metrics=metrics),
        consumer,
        producer,
        images_topic=images,
        results_topic=results,
        dlq_topic=dlq,
        concurrency=2,
        metrics=metrics,
    )
    errors: list[BaseException] = []

    def run():
        try:
            loop.run(max_messages=3)
        except BaseException as exc:  # noqa: BLE001 - the test asserts there is none
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=60)
    if thread.is_alive():
        loop.stop()
        thread.join(timeout=30)
    client.close()
    producer.real.flush(10)
    del sender  # librdkafka handles closed now, not after the stack is gone
    assert not errors, errors
    assert refusing.refused.count(results) == 3
    assert loop.processed == 3

    # The offset moved past all three records.
    check = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    (committed,) = check.committed([TopicPartition(images, 0)], timeout=10)
    check.close()
    assert committed.offset == 3

    text = metrics.render()[0].decode()
    assert f'vinspect_processor_produce_failures_total{{fallback="{fallback}"}} 3.0' in text
    if fallback == "reference":
        refs = _collect(bootstrap, dlq, 3, 30)
        assert len(refs) == 3
        for _key, value, headers in refs:
            assert headers["dlq_payload"] == b"omitted"
            ref = json.loads(value)
            assert ref["topic"] == images and ref["reason"].startswith(f"result could not be written to {results}")
            assert "MSG_SIZE_TOO_LARGE" in ref["reason"] or "refused by the test broker" in ref["reason"]
        assert sorted(json.loads(v)["event"]["id"] for _k, v, _h in refs) == ["img-0", "img-1", "img-2"]
    else:
        assert refusing.refused.count(dlq) == 3
        time.sleep(0.5)
        assert _collect(bootstrap, dlq, 1, 3) == []
