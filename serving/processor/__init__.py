"""The image processor: one core, ``Inspector.inspect(event) -> result event``, two adapters.

Where each job lives:

* :mod:`~serving.processor.inspector`: the inspection core (parse, decode, detect, verdict,
  result event), one :class:`~serving.detector.Detector` per served model;
* :mod:`~serving.processor.kafka_loop`: the Kafka loop (consume, inspect, produce, dead-letter,
  commit after), for local and edge use;
* :mod:`~serving.processor.knative`: the Knative adapter (an HTTP CloudEvents receiver);
* :mod:`~serving.processor.health`: ``/healthz``, ``/readyz``, ``/metrics`` beside the Kafka loop;
* :mod:`~serving.processor.store`: the claim check (annotated JPEGs to S3);
* :mod:`~serving.processor.drawing`: boxes drawn on images;
* :mod:`~serving.processor.metrics`: the Prometheus metrics;
* :mod:`~serving.processor.app`: the assembly from the environment (``vinspect serve processor``).

The names below are this package's public interface, importable as ``serving.processor.<name>``
as they were when the processor was one module (tests, notebooks, ``components/data/cvat_setup``
and the CLI import them so). Every submodule is light: FastAPI, confluent-kafka and
cloudevents' HTTP parts are imported inside the functions that need them.
"""

from serving.processor.drawing import annotate, draw
from serving.processor.health import serve_health
from serving.processor.inspector import (
    DEFAULT_MAX_IMAGE_BYTES,
    RESULT_MAX_BYTES,
    InspectConfig,
    Inspection,
    Inspector,
    ProcessorConfigError,
)
from serving.processor.kafka_loop import DEFAULT_DLQ_COPY_MAX_BYTES, KafkaLoop, kafka_clients
from serving.processor.knative import create_http_app
from serving.processor.metrics import ProcessorMetrics
from serving.processor.store import AnnotatedImageStore

__all__ = [
    "DEFAULT_DLQ_COPY_MAX_BYTES",
    "DEFAULT_MAX_IMAGE_BYTES",
    "RESULT_MAX_BYTES",
    "AnnotatedImageStore",
    "InspectConfig",
    "Inspection",
    "Inspector",
    "KafkaLoop",
    "ProcessorConfigError",
    "ProcessorMetrics",
    "annotate",
    "create_http_app",
    "draw",
    "kafka_clients",
    "serve_health",
]
