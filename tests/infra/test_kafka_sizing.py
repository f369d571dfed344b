"""Kafka disks cannot fill, and Knative's data plane can carry what the topics accept.

Sizing rule (docs/infra.md, "Kafka topics"): a partition holds at most ``retention.bytes``
plus one open segment (``segment.bytes``); a broker holds its share of every partition's
replicas. The worst case must stay under 80 % of a broker's volume in every overlay.
"""

from __future__ import annotations

import math
import re

import pytest

from tests.infra.conftest import find

KAFKA_DEFAULT_SEGMENT_BYTES = 1073741824  # Kafka's log.segment.bytes default
DATA_PLANE_DEFAULT_MAX_REQUEST = 1048576  # eventing-kafka-broker config-kafka-*-data-plane
_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def _quantity(text: str) -> int:
    match = re.fullmatch(r"(\d+)([KMGT]i)?", str(text))
    assert match, f"unsupported storage quantity {text!r}"
    return int(match[1]) * _UNITS.get(match[2] or "", 1)


def _topics(objects):
    return [o for o in objects if o["kind"] == "KafkaTopic"]


def _properties(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line and not line.lstrip().startswith("#"))
    return {k.strip(): v.strip() for k, v in pairs}


def _data_plane_max_request(objects, configmap: str, key: str) -> int:
    config = (find(objects, "KnativeKafka", "knative-kafka")["spec"].get("config") or {}).get(configmap) or {}
    if key not in config:
        return DATA_PLANE_DEFAULT_MAX_REQUEST
    return int(_properties(config[key]).get("max.request.size", DATA_PLANE_DEFAULT_MAX_REQUEST))


@pytest.mark.parametrize("overlay", ["default", "gpu", "sno"], ids=lambda o: f"overlay-{o}")
def test_every_topic_is_capped_by_time_and_size(rendered, overlay):
    for topic in _topics(rendered[overlay]):
        config = topic["spec"].get("config") or {}
        name = topic["metadata"]["name"]
        assert int(config.get("retention.ms", -1)) > 0, f"KafkaTopic {name} keeps records forever"
        assert int(config.get("retention.bytes", -1)) > 0, f"KafkaTopic {name} has no retention.bytes"


@pytest.mark.parametrize("overlay", ["default", "gpu", "sno"], ids=lambda o: f"overlay-{o}")
def test_worst_case_fits_a_broker_volume(rendered, overlay):
    objects = rendered[overlay]
    pools = [o for o in objects if o["kind"] == "KafkaNodePool"]
    brokers = sum(p["spec"]["replicas"] for p in pools if "broker" in p["spec"]["roles"])
    volume = min(sum(_quantity(v["size"]) for v in p["spec"]["storage"]["volumes"]) for p in pools)
    worst = 0
    for topic in _topics(objects):
        config = topic["spec"].get("config") or {}
        per_partition = int(config["retention.bytes"]) + int(config.get("segment.bytes", KAFKA_DEFAULT_SEGMENT_BYTES))
        replicas_here = math.ceil(topic["spec"]["partitions"] * topic["spec"]["replicas"] / brokers)
        worst += replicas_here * per_partition
    assert worst <= 0.8 * volume, (
        f"{overlay}: topics can hold {worst / 2**30:.1f} GiB on a {volume / 2**30:.0f} GiB broker volume"
    )


@pytest.mark.parametrize("overlay", ["default", "gpu", "sno"], ids=lambda o: f"overlay-{o}")
def test_knative_data_plane_produces_what_its_topics_accept(rendered, overlay):
    objects = rendered[overlay]
    broker = find(objects, "Broker", "default")
    broker_topic = broker["metadata"]["annotations"]["kafka.eventing.knative.dev/external.topic"]
    sink_topics = [o["spec"]["topic"] for o in objects if o["kind"] == "KafkaSink"]
    limits = {t["metadata"]["name"]: int(t["spec"]["config"]["max.message.bytes"]) for t in _topics(objects)}
    broker_max = _data_plane_max_request(
        objects, "config-kafka-broker-data-plane", "config-kafka-broker-producer.properties"
    )
    sink_max = _data_plane_max_request(objects, "config-kafka-sink-data-plane", "config-kafka-sink-producer.properties")
    # The same largest record on both sides: neither the producer nor the topic silently caps the other.
    assert broker_max == limits[broker_topic], f"Broker receiver max.request.size {broker_max} vs topic {broker_topic}"
    for topic in sink_topics:
        assert sink_max == limits[topic], f"KafkaSink receiver max.request.size {sink_max} vs topic {topic}"
    # What the KafkaSource reads must fit the Broker topic it is written to.
    source = find(objects, "KafkaSource", "visual-inspection-images")["spec"]
    assert all(limits[t] <= limits[broker_topic] for t in source["topics"])


def test_data_plane_override_keeps_upstream_producer_settings(rendered):
    # The operator replaces the whole entry: losing the serializers would break the data plane.
    spec = find(rendered["default"], "KnativeKafka", "knative-kafka")["spec"]["config"]
    for configmap, key in [
        ("config-kafka-broker-data-plane", "config-kafka-broker-producer.properties"),
        ("config-kafka-sink-data-plane", "config-kafka-sink-producer.properties"),
    ]:
        props = _properties(spec[configmap][key])
        assert props["value.serializer"] == "io.cloudevents.kafka.CloudEventSerializer"
        assert props["key.serializer"] == "org.apache.kafka.common.serialization.StringSerializer"
        assert props["acks"] == "all"


def test_triggers_keep_per_camera_order_like_the_source(rendered):
    objects = rendered["default"]
    assert find(objects, "KafkaSource", "visual-inspection-images")["spec"]["ordering"] == "ordered"
    for trigger in (o for o in objects if o["kind"] == "Trigger"):
        annotations = trigger["metadata"].get("annotations") or {}
        assert annotations.get("kafka.eventing.knative.dev/delivery.order") == "ordered", trigger["metadata"]["name"]


@pytest.mark.parametrize("overlay", ["default", "gpu", "sno"], ids=lambda o: f"overlay-{o}")
def test_runtime_image_limit_fits_the_topics_and_the_data_plane(rendered, overlay, monkeypatch):
    # The processor refuses, and the camera skips, images over VINSPECT_MAX_IMAGE_BYTES. Left at
    # the code's 10 MiB default (the local stack's), the camera would produce frames the 4 MiB
    # topics refuse, and the processor would accept what Knative's data plane cannot carry.
    from vinspect.settings import RuntimeSettings

    objects = rendered[overlay]
    data = find(objects, "ConfigMap", "vinspect-runtime")["data"]
    assert "VINSPECT_MAX_IMAGE_BYTES" in data, "the runtime ConfigMap leaves the image limit at the code's default"
    monkeypatch.setenv("VINSPECT_MAX_IMAGE_BYTES", data["VINSPECT_MAX_IMAGE_BYTES"])
    limit = RuntimeSettings(_env_file=None).max_image_bytes  # what processor and camera read
    assert limit == int(data["VINSPECT_MAX_IMAGE_BYTES"])
    source = find(objects, "KafkaSource", "visual-inspection-images")["spec"]
    broker_topic = find(objects, "Broker", "default")["metadata"]["annotations"][
        "kafka.eventing.knative.dev/external.topic"
    ]
    limits = {t["metadata"]["name"]: int(t["spec"]["config"]["max.message.bytes"]) for t in _topics(objects)}
    for topic in [*source["topics"], broker_topic]:
        assert limit <= limits[topic], (
            f"VINSPECT_MAX_IMAGE_BYTES {limit} > topic {topic} max.message.bytes {limits[topic]}"
        )
    broker_max = _data_plane_max_request(
        objects, "config-kafka-broker-data-plane", "config-kafka-broker-producer.properties"
    )
    assert limit <= broker_max, f"VINSPECT_MAX_IMAGE_BYTES {limit} > Broker receiver max.request.size {broker_max}"
