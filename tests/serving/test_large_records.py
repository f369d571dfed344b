"""Issue 18.1: no record, however large, stops the line (real processor, real local broker).

A 20 MiB record (the local broker, like a misconfigured producer on a cluster, does not hold
the topic to its 10 MiB) and a valid 6.5 MiB JPEG go through `vinspect serve processor`
against the local stack's tansu broker and S3 server. Before the fix the dead-letter produce
failed with MSG_SIZE_TOO_LARGE, the exception stopped the processor and the committed offset
never moved (every restart read the same record again).
"""

from __future__ import annotations

import io
import json
import uuid

import httpx
import numpy as np
from PIL import Image

from serving.events import image_event, to_kafka

from .test_stream import Runtime, _collect


def _big_jpeg(side: int = 2400) -> bytes:
    rng = np.random.default_rng(7)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def _committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        parts = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return {tp.partition: tp.offset for tp in parts}
    finally:
        consumer.close()


def test_huge_record_and_large_jpeg_do_not_stop_the_line(start_proc, local_stack, onnx_model):
    from confluent_kafka import Producer

    rt = Runtime(start_proc, local_stack, onnx_model, f"big-{uuid.uuid4().hex[:6]}")
    rt.start_model()
    processor = rt.start_processor()
    topic = rt.topics["VINSPECT_IMAGES_TOPIC"]
    producer = Producer({"bootstrap.servers": rt.bootstrap, "message.max.bytes": 32 * 1024 * 1024})
    delivered: dict[str, tuple[int, int]] = {}

    def report(name):
        return lambda err, msg: delivered.__setitem__(name, (msg.partition(), msg.offset())) if err is None else None

    # 1. A 20 MiB record: a CloudEvent whose data is far over the image limit.
    huge = image_event(np.random.default_rng(1).bytes(20 * 1024 * 1024), "camera-0", event_id="huge-1")
    key, value, headers = to_kafka(huge)
    producer.produce(topic, key=key, value=value, headers=headers, on_delivery=report("huge"))
    # 2. A valid 6.5 MiB JPEG (its result used to carry 9 MB of base64).
    jpeg = _big_jpeg()
    assert len(jpeg) > 6 * 1024 * 1024
    large = image_event(jpeg, "camera-0", event_id="large-1")
    key, value, headers = to_kafka(large)
    producer.produce(topic, key=key, value=value, headers=headers, on_delivery=report("large"))
    # 3. An ordinary frame behind them, on the same camera (same partition).
    small = io.BytesIO()
    Image.fromarray(np.full((120, 160, 3), 100, np.uint8)).save(small, "JPEG")
    key, value, headers = to_kafka(image_event(small.getvalue(), "camera-0", event_id="small-1"))
    producer.produce(topic, key=key, value=value, headers=headers, on_delivery=report("small"))
    assert producer.flush(60) == 0 and set(delivered) == {"huge", "large", "small"}

    results = _collect(
        rt.bootstrap, rt.topics["VINSPECT_RESULTS_TOPIC"], 2, 120, key=lambda item: json.loads(item[1])["image_id"]
    )
    by_id = {json.loads(v)["image_id"]: (k, v, h) for k, v, h in results}
    assert set(by_id) == {"large-1", "small-1"}, processor.output()
    for _key, value, _headers in results:
        assert len(value) < 64 * 1024  # no image bytes in a result
    ref = json.loads(by_id["large-1"][1])["annotated_image"]
    assert ref is not None, json.loads(by_id["large-1"][1])["annotated_image_status"]
    stored = local_stack.s3.get_object(Bucket=ref["bucket"], Key=ref["key"])["Body"].read()
    assert len(stored) == ref["bytes"] > 1024 * 1024

    dlq = _collect(rt.bootstrap, rt.topics["VINSPECT_DLQ_TOPIC"], 1, 60)
    assert len(dlq) == 1, processor.output()
    _key, value, headers = dlq[0]
    assert headers["dlq_payload"] == b"omitted" and len(value) < 4096
    reference = json.loads(value)
    partition, offset = delivered["huge"]
    assert reference["topic"] == topic and (reference["partition"], reference["offset"]) == (partition, offset)
    assert reference["size"] > 20 * 1024 * 1024 and "over the limit" in reference["reason"]
    assert reference["event"]["id"] == "huge-1"

    # The processor is still running, ready, and has committed past all three records.
    assert processor.poll() is None, processor.output()
    assert httpx.get(f"http://127.0.0.1:{rt.health_port}/readyz").status_code == 200
    import time

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        committed = _committed(rt.bootstrap, rt.env["VINSPECT_KAFKA_GROUP"], topic, 2)
        if committed.get(partition, -1) >= delivered["small"][1] + 1:
            break
        time.sleep(0.5)
    assert committed[partition] == delivered["small"][1] + 1, committed
