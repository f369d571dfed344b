"""The image processor: one core, `Inspector.inspect(event) -> result event`, two adapters.

* `create_http_app`: an HTTP CloudEvents receiver for Knative (KafkaSource -> Broker ->
  Trigger). It replies with the result event, which the Broker routes on to the dashboard.
  A poison event answers 400 (Knative sends it to the Trigger's dead-letter sink), a model
  outage 503 (Knative retries with its delivery backoff).
* `KafkaLoop`: a consumer/producer loop for local and edge use. It inspects up to
  `concurrency` records in parallel, writes results (or dead letters) and commits a
  record's offset only once its output, and that of every earlier record of the
  partition, is acknowledged by the broker: a crash at any point re-delivers, never loses. While the model server fails, records are retried with capped exponential
  backoff instead of being dead-lettered; only records that can never succeed go to the DLQ.

Both expose Prometheus metrics and health endpoints. No torch, no Ultralytics: decoding,
letterbox and NMS come from `serving.detector`, inference is a v2 call.
"""


import base64
import io
import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from serving import detector as det
from serving.events import (
    PoisonEvent,
    from_kafka,
    http_binary,
    parse_image_event,
    result_event,
    to_kafka,
)
from serving.model_client import (
    ModelClient, ModelClientError, ModelRequestRejected, ModelUnavailable,
)

log = logging.getLogger(__name__)

DEFAULT_SOURCE = "/vinspect/processor"
_COLORS = {0: (230, 40, 40), 1: (255, 160, 0)}


# --------------------------------------------------------------------------------------
# Metrics.
# --------------------------------------------------------------------------------------


class ProcessorMetrics:
    """Prometheus metrics of one processor (own registry, so tests can run several)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        buckets = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
        self.events = Counter(
            "vinspect_processor_events", "Processed events by outcome (pass, fail, dlq)",
            ["outcome"], registry=self.registry,
        )
        self.latency = Histogram(
            "vinspect_processor_inspect_seconds", "Time to inspect one image, retries included",
            registry=self.registry, buckets=buckets,
        )
        self.inference = Histogram(
            "vinspect_processor_inference_seconds", "Model server round trip per image",
            registry=self.registry, buckets=buckets,
        )
        self.retries = Counter(
            "vinspect_processor_model_retries", "Inference attempts retried because the model "
            "server was unavailable", registry=self.registry,
        )
        self.in_flight = Gauge(
            "vinspect_processor_in_flight", "Events being inspected now", registry=self.registry,
        )
        self.commits = Counter(
            "vinspect_processor_commits", "Kafka offset commits", registry=self.registry,
        )

    def render(self) -> tuple[bytes, str]:
        """Exposition text and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


# --------------------------------------------------------------------------------------
# The core.
# --------------------------------------------------------------------------------------


@dataclass
class InspectConfig:
    """Knobs of the inspection (defaults: the original demo's conf 0.2 / IoU 0.4)."""

    conf: float = 0.2
    iou: float = 0.4
    names: tuple[str, ...] = det.CLASS_NAMES
    imgsz: tuple[int, int] | None = None  # None: from the model's input shape
    annotate: bool = True
    jpeg_quality: int = 85
    source: str = DEFAULT_SOURCE


def annotate(img: np.ndarray, detections: list[det.Detection], quality: int = 85) -> bytes:
    """Draw boxes and labels on an RGB image and return JPEG bytes."""
    from PIL import Image, ImageDraw, ImageFont

    pil = Image.fromarray(img)
    draw = ImageDraw.Draw(pil)
    font = ImageFont.load_default()
    width = max(2, round(max(img.shape[:2]) / 250))
    for d in detections:
        color = _COLORS.get(d.class_id, (40, 120, 255))
        x1, y1, x2, y2 = d.box
        draw.rectangle((x1, y1, x2, y2), outline=color, width=width)
        text = f"{d.class_name} {d.score:.2f}"
        tx, ty = x1, max(0, y1 - 12)
        bbox = draw.textbbox((tx, ty), text, font=font)
        draw.rectangle(bbox, fill=color)
        draw.text((tx, ty), text, fill=(0, 0, 0), font=font)
    buf = io.BytesIO()
    pil.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


class Inspector:
    """Turns image events into result events through a remote v2 model.

    Args:
        client: The v2 model client (retries of its own are kept short; the Kafka loop
            retries for longer).
        config: Thresholds, class names, annotation.
        metrics: Optional metrics to record into.
    """

    def __init__(
        self,
        client: ModelClient,
        config: InspectConfig | None = None,
        metrics: ProcessorMetrics | None = None,
    ):
        self.client = client
        self.config = config or InspectConfig()
        self.metrics = metrics
        self._meta_lock = threading.Lock()
        self._input_name: str | None = None
        self._output_name: str | None = None
        self._imgsz: tuple[int, int] | None = None

    def _describe(self, refresh: bool = False) -> tuple[str, str, tuple[int, int]]:
        """Tensor names and input size, from `GET /v2/models/{name}` (cached)."""
        with self._meta_lock:
            if refresh or self._input_name is None:
                try:
                    meta = self.client.metadata()
                    inp, out = meta["inputs"][0], meta["outputs"][0]
                    shape = list(inp.get("shape") or [])
                except ModelRequestRejected as exc:
                    # No such model (yet): a deployment problem, not the event's fault.
                    raise ModelUnavailable(f"model metadata: {exc}") from None
                except (KeyError, IndexError, TypeError, ValueError) as exc:
                    raise ModelUnavailable(f"model metadata is malformed: {exc!r}") from None
                if self.config.imgsz:
                    imgsz = tuple(self.config.imgsz)
                elif len(shape) == 4 and shape[2] > 0 and shape[3] > 0:
                    imgsz = (int(shape[2]), int(shape[3]))
                else:
                    imgsz = (det.DEFAULT_IMGSZ, det.DEFAULT_IMGSZ)
                self._input_name, self._output_name, self._imgsz = inp["name"], out["name"], imgsz
            return self._input_name, self._output_name, self._imgsz  # type: ignore[return-value]

    def ready(self) -> bool:
        """True when the model answers on its ready endpoint."""
        return self.client.ready()

    def inspect(self, event: Any) -> Any:
        """Inspect one image event and return its result event.

        Args:
            event: A CloudEvent (`cloudevents.v1.http.CloudEvent`) as `parse_image_event`
                accepts.

        Returns:
            The result CloudEvent (`io.vinspect.inspection.result`), data:
            `camera`, `image_id`, `captured_at`, `label`, `passed`, `verdict`, `detections`
            (class_id, class_name, score, box xyxy in image pixels), `image` (width,
            height), `model` (name, version), `timings_ms`, `annotated_image` (JPEG data URL).

        Raises:
            PoisonEvent: The event can never be processed.
            ModelUnavailable: The model server is down or failing; retry later.
        """
        t_start = time.perf_counter()
        parsed = parse_image_event(event)
        try:
            # Decoded once, in OpenCV's BGR: the detector writes RGB tensor planes from it, and
            # an RGB copy is only made for drawing on a failed part.
            img = det.decode_bgr(parsed.image)
        except ValueError as exc:
            raise PoisonEvent(f"event {parsed.event_id}: {exc}") from None
        t_decoded = time.perf_counter()
        model_version: dict[str, str | None] = {}

        class _Refused(Exception):
            pass

        def detect(refresh: bool) -> tuple[list[det.Detection], det.Detector]:
            input_name, output_name, imgsz = self._describe(refresh=refresh)

            def remote(tensor: np.ndarray) -> np.ndarray:
                try:
                    t0 = time.perf_counter()
                    response = self.client.infer({input_name: tensor}, [output_name])
                    if self.metrics:
                        self.metrics.inference.observe(time.perf_counter() - t0)
                    model_version["version"] = response.model_version
                    model_version["name"] = response.model_name or self.client.model_name
                    return response.outputs[output_name].array
                except ModelRequestRejected as exc:
                    if exc.status_code in (404, 503):
                        # Model not (yet) deployed under that name: an outage, not bad data.
                        raise ModelUnavailable(str(exc)) from None
                    raise _Refused(str(exc)) from None
                except ModelClientError as exc:  # malformed answer: the server's problem
                    raise ModelUnavailable(str(exc)) from None
                except KeyError:
                    raise ModelUnavailable(f"response has no output {output_name!r}") from None

            detector = det.Detector(
                None, conf=self.config.conf, iou=self.config.iou,
                names=list(self.config.names), imgsz=imgsz,
            )
            return detector.detect_with(img, remote), detector

        try:
            detections, detector = detect(refresh=False)
        except _Refused:
            # A rollout may have swapped in a model with another input size or tensor
            # names: read the metadata again and redo the whole detection once.
            try:
                detections, detector = detect(refresh=True)
            except _Refused as exc:
                raise PoisonEvent(f"event {parsed.event_id}: model refused it: {exc}") from None
        t_detected = time.perf_counter()
        annotated = None
        if self.config.annotate:
            # Nothing to draw on a good part: the camera's own JPEG is the annotated image,
            # which saves a full-size re-encode per passing image.
            jpeg = (parsed.image if not detections and parsed.image[:3] == b"\xff\xd8\xff"
                    else annotate(img.rgb(), detections, self.config.jpeg_quality))
            annotated = "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")
        t_end = time.perf_counter()
        passed = not detections
        data = {
            "camera": parsed.camera_id,
            "image_id": parsed.event_id,
            "image_source": parsed.source,
            "captured_at": parsed.time,
            "label": parsed.label,
            "passed": passed,
            "verdict": "pass" if passed else "fail",
            "detections": [d.to_dict() for d in detections],
            "image": {"width": int(img.shape[1]), "height": int(img.shape[0])},
            "model": {"name": model_version.get("name"), "version": model_version.get("version")},
            "thresholds": {"conf": self.config.conf, "iou": self.config.iou},
            "timings_ms": {
                "decode": round((t_decoded - t_start) * 1e3, 3),
                "preprocess": round(detector.timings.get("preprocess", 0.0), 3),
                "inference": round(detector.timings.get("inference", 0.0), 3),
                "postprocess": round(detector.timings.get("postprocess", 0.0), 3),
                "annotate": round((t_end - t_detected) * 1e3, 3),
                "total": round((t_end - t_start) * 1e3, 3),
            },
            "annotated_image": annotated,
        }
        if self.metrics:
            self.metrics.events.labels("pass" if passed else "fail").inc()
            self.metrics.latency.observe(t_end - t_start)
        return result_event(data, parsed.event_id, parsed.camera_id, self.config.source)


# --------------------------------------------------------------------------------------
# Adapter 1: HTTP CloudEvents receiver (Knative).
# --------------------------------------------------------------------------------------


def create_http_app(inspector: Inspector, metrics: ProcessorMetrics) -> Any:
    """The Knative adapter: POST a CloudEvent (binary or structured), get the result back.

    Routes: `POST /` (the event), `GET /healthz` (live), `GET /readyz` (model reachable),
    `GET /metrics`.
    """
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response
    from starlette.concurrency import run_in_threadpool

    app = FastAPI(title="vinspect image processor")

    async def receive(request: Request) -> Response:
        from cloudevents.v1.exceptions import GenericException
        from cloudevents.v1.http import from_http

        body = await request.body()
        try:
            event = from_http(dict(request.headers), body)
        except (GenericException, ValueError) as exc:
            metrics.events.labels("dlq").inc()
            return JSONResponse({"error": f"not a CloudEvent: {exc}"}, status_code=400)
        metrics.in_flight.inc()
        try:
            result = await run_in_threadpool(inspector.inspect, event)
        except PoisonEvent as exc:
            metrics.events.labels("dlq").inc()
            log.warning("rejected event %s: %s", event.get("id"), exc)
            return JSONResponse({"error": str(exc)}, status_code=400)
        except ModelClientError as exc:
            log.warning("model unavailable for event %s: %s", event.get("id"), exc)
            return JSONResponse({"error": f"model unavailable: {exc}"}, status_code=503)
        finally:
            metrics.in_flight.dec()
        headers, payload = http_binary(result)
        return Response(payload, status_code=200, headers=headers)

    # Knative posts to "/"; "/events" is an alias for people wiring it by hand.
    app.add_api_route("/", receive, methods=["POST"])
    app.add_api_route("/events", receive, methods=["POST"])

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        ok = await run_in_threadpool(inspector.ready)
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        payload, content_type = metrics.render()
        return Response(payload, media_type=content_type)

    return app


# --------------------------------------------------------------------------------------
# Adapter 2: the Kafka loop.
# --------------------------------------------------------------------------------------


class _Stopped(Exception):
    """The loop was asked to stop (or to give up its partitions) while retrying a record."""


@dataclass
class _Outcome:
    message: Any
    result: Any = None  # result CloudEvent
    error: str | None = None  # poison reason -> DLQ


class _Pending:
    """One consumed record on its way to being committed."""

    __slots__ = ("message", "future", "state")

    def __init__(self, message: Any):
        self.message = message
        self.future: Any = None
        self.state = "inspecting"  # -> producing -> done, or aborted


class KafkaLoop:
    """Consume images, inspect, produce results, dead-letter poison, commit after.

    Up to `concurrency` records are inspected at once (a sliding window, so the model
    server never idles while results are written). A record's offset is committed only
    when it and every earlier record of its partition have their result (or dead letter)
    acknowledged by the broker: a crash anywhere re-delivers, never loses.

    Args:
        inspector: The core.
        consumer: A `confluent_kafka.Consumer` with `enable.auto.commit=False` and the
            default (eager) partition assignment.
        producer: A `confluent_kafka.Producer`.
        images_topic / results_topic / dlq_topic: Topics.
        concurrency: Records inspected in parallel.
        backoff: First retry delay while the model server fails.
        max_backoff: Cap of the retry delay.
        commit_interval: Seconds between offset commits.
        metrics: Metrics to record into.
    """

    def __init__(
        self,
        inspector: Inspector,
        consumer: Any,
        producer: Any,
        *,
        images_topic: str,
        results_topic: str,
        dlq_topic: str,
        concurrency: int = 4,
        backoff: float = 0.25,
        max_backoff: float = 5.0,
        commit_interval: float = 0.2,
        metrics: ProcessorMetrics | None = None,
    ):
        self.inspector = inspector
        self.consumer = consumer
        self.producer = producer
        self.images_topic = images_topic
        self.results_topic = results_topic
        self.dlq_topic = dlq_topic
        self.concurrency = max(1, concurrency)
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.commit_interval = commit_interval
        self.metrics = metrics or inspector.metrics or ProcessorMetrics()
        self.stop_event = threading.Event()
        self._abort = threading.Event()
        self.heartbeat = time.monotonic()
        self.assigned = False
        self.model_ok = False
        self.processed = 0  # records whose output the broker acknowledged
        self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="inspect")
        self._inflight: list[_Pending] = []
        self._partitions: dict[tuple[str, int], OrderedDict[int, _Pending]] = {}
        self._last_commit = 0.0

    # -- per record ----------------------------------------------------------------

    def _inspect_with_retry(self, message: Any) -> _Outcome:
        try:
            event = from_kafka(
                message.value(), message.headers(), message.key(),
                topic=message.topic(), partition=message.partition(), offset=message.offset(),
            )
        except PoisonEvent as exc:
            return _Outcome(message, error=str(exc))
        attempt = 0
        while True:
            try:
                result = self.inspector.inspect(event)
                self.model_ok = True
                return _Outcome(message, result=result)
            except PoisonEvent as exc:
                return _Outcome(message, error=str(exc))
            except ModelClientError as exc:  # unavailable, or answering nonsense: retry
                self.model_ok = False
                self.metrics.retries.inc()
                delay = min(self.max_backoff, self.backoff * 2 ** min(attempt, 16))
                if attempt % 10 == 0:
                    log.warning(
                        "model unavailable (%s); retrying %s[%d]@%d in %.2fs",
                        exc, message.topic(), message.partition(), message.offset(), delay,
                    )
                attempt += 1
                if self._abort.wait(delay):
                    raise _Stopped() from None
            except Exception as exc:  # a bug on this record must not stop the stream
                log.exception("unexpected error on %s[%d]@%d", message.topic(),
                              message.partition(), message.offset())
                return _Outcome(message, error=f"internal error: {exc!r}")

    def _submit(self, message: Any) -> None:
        pending = _Pending(message)
        key = (message.topic(), message.partition())
        self._partitions.setdefault(key, OrderedDict())[message.offset()] = pending
        pending.future = self._pool.submit(self._inspect_with_retry, message)
        self._inflight.append(pending)
        self.metrics.in_flight.inc()

    def _produce(self, pending: _Pending, outcome: _Outcome) -> None:
        m = outcome.message
        if outcome.error is not None:
            headers = list(m.headers() or []) + [
                ("dlq_reason", outcome.error[:1000].encode("utf-8")),
                ("dlq_source_topic", m.topic().encode()),
                ("dlq_source_partition", str(m.partition()).encode()),
                ("dlq_source_offset", str(m.offset()).encode()),
            ]
            topic, key, value = self.dlq_topic, m.key(), m.value()
            self.metrics.events.labels("dlq").inc()
            log.warning("dead-lettering %s[%d]@%d: %s", m.topic(), m.partition(), m.offset(),
                        outcome.error)
        else:
            key, value, headers = to_kafka(outcome.result)
            topic = self.results_topic

        def delivered(err: Any, _msg: Any) -> None:
            if err is None:
                pending.state = "done"
                self.processed += 1
            else:  # librdkafka gave up after its own retries: write it again
                log.error("delivery to %s failed (%s); producing again", topic, err)
                self._send(topic, key, value, headers, delivered)

        pending.state = "producing"
        self._send(topic, key, value, headers, delivered)

    def _send(self, topic: str, key: Any, value: Any, headers: Any, callback: Any) -> None:
        while True:
            try:
                self.producer.produce(topic, value=value, key=key, headers=headers,
                                      on_delivery=callback)
                return
            except BufferError:  # local queue full: serve delivery reports first
                self.producer.poll(0.1)

    def _reap(self, block: bool) -> None:
        """Publish the outcome of every finished inspection."""
        if block and self._inflight and not any(p.future.done() for p in self._inflight):
            wait([p.future for p in self._inflight], timeout=0.1, return_when=FIRST_COMPLETED)
        still = []
        for pending in self._inflight:
            if not pending.future.done():
                still.append(pending)
                continue
            self.metrics.in_flight.dec()
            try:
                self._produce(pending, pending.future.result())
            except _Stopped:
                pending.state = "aborted"  # never committed: re-delivered after restart
        self._inflight = still

    def _commit_ready(self, force: bool = False) -> None:
        """Commit, per partition, past the longest prefix of acknowledged records."""
        from confluent_kafka import KafkaException, TopicPartition

        now = time.monotonic()
        if not force and now - self._last_commit < self.commit_interval:
            return
        self._last_commit = now
        offsets = []
        for (topic, partition), pending in self._partitions.items():
            last = None
            while pending:
                offset, item = next(iter(pending.items()))
                if item.state != "done":
                    break
                pending.popitem(last=False)
                last = offset
            if last is not None:
                offsets.append(TopicPartition(topic, partition, last + 1))
        if offsets:
            try:
                self.consumer.commit(offsets=offsets, asynchronous=False)
                self.metrics.commits.inc()
            except KafkaException as exc:  # e.g. a rebalance in progress: next round re-tries
                log.warning("commit failed: %s", exc)

    def _drain(self) -> None:
        """Finish or abort everything in flight, flush, commit what is complete, forget the rest."""
        self._abort.set()
        try:
            while self._inflight:
                self._reap(block=True)
            self.producer.flush(30)
            self._commit_ready(force=True)
        finally:
            self._partitions.clear()
            if not self.stop_event.is_set():
                self._abort.clear()

    # -- the loop ------------------------------------------------------------------

    def run(self, max_messages: int | None = None) -> None:
        """Run until `stop()` (or `max_messages` acknowledged); closes the consumer at the end."""

        def on_assign(_consumer: Any, partitions: list[Any]) -> None:
            self.assigned = bool(partitions)
            log.info("assigned %s", [f"{p.topic}[{p.partition}]" for p in partitions])

        def on_revoke(_consumer: Any, _partitions: list[Any]) -> None:
            # Eager rebalancing takes every partition away: settle all work first, so the
            # next owner starts exactly after what we acknowledged.
            self.assigned = False
            self._drain()

        self.consumer.subscribe([self.images_topic], on_assign=on_assign, on_revoke=on_revoke)
        try:
            while not self.stop_event.is_set():
                self.heartbeat = time.monotonic()
                if max_messages is not None and self.processed >= max_messages:
                    break
                self._reap(block=len(self._inflight) >= self.concurrency)
                self.producer.poll(0)
                self._commit_ready()
                if len(self._inflight) >= self.concurrency:
                    continue
                busy = self._inflight or any(self._partitions.values())
                message = self.consumer.poll(0.02 if busy else 0.5)
                if message is None:
                    continue
                if message.error():
                    log.warning("consumer error: %s", message.error())
                    continue
                self._submit(message)
            self._drain()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self.producer.flush(10)
            self.consumer.close()

    def stop(self) -> None:
        """Ask the loop to finish; records still being retried are re-delivered later."""
        self.stop_event.set()
        self._abort.set()

    def live(self, stale_after: float = 60.0) -> bool:
        """The loop is turning (its heartbeat is recent)."""
        return time.monotonic() - self.heartbeat < stale_after

    def ready(self) -> bool:
        """Partitions assigned and the model reachable."""
        return self.assigned and (self.model_ok or self.inspector.ready())


def serve_health(
    host: str, port: int, live: Callable[[], bool], ready: Callable[[], bool],
    metrics: ProcessorMetrics,
) -> Any:
    """Start `/healthz`, `/readyz` and `/metrics` on a background thread; returns the server."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path == "/metrics":
                body, ctype, code = (*metrics.render(), 200)
            elif self.path in ("/healthz", "/readyz"):
                ok = (live if self.path == "/healthz" else ready)()
                body, ctype, code = (b'{"ok":true}' if ok else b'{"ok":false}',
                                     "application/json", 200 if ok else 503)
            else:
                body, ctype, code = b'{"error":"not found"}', "application/json", 404
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: Any) -> None:  # keep probes out of the logs
            return

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
    return server


def kafka_clients(kafka_settings: Any, group_id: str | None = None) -> tuple[Any, Any]:
    """Consumer and producer configured for the loop from `KafkaSettings`."""
    from confluent_kafka import Consumer, Producer

    base = kafka_settings.client_config()
    consumer = Consumer({
        **base,
        "group.id": group_id or kafka_settings.group_id,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 1000,
        # An image record is large; one fetch need not hold more than a few.
        "max.partition.fetch.bytes": 8 * 1024 * 1024,
        # Images are a live stream: do not let the broker hold a fetch for the default 500 ms.
        "fetch.wait.max.ms": 50,
    })
    producer = Producer({**base, "linger.ms": 5, "acks": "all",
                         "message.max.bytes": 8 * 1024 * 1024})
    return consumer, producer
