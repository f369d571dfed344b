"""The image processor: one core, `Inspector.inspect(event) -> result event`, two adapters.

* `create_http_app`: an HTTP CloudEvents receiver for Knative (KafkaSource -> Broker ->
  Trigger). It replies with the result event, which the Broker routes on to the dashboard.
  A poison event answers 400 (Knative sends it to the Trigger's dead-letter sink), a model
  outage 503 (Knative retries with its delivery backoff); a body over the image size limit
  413, a missing or wrong bearer token (when one is configured) 401.
* `KafkaLoop`: a consumer/producer loop for local and edge use. It inspects up to
  `concurrency` records in parallel, writes results (or dead letters) and commits a
  record's offset only once its output, and that of every earlier record of the
  partition, is acknowledged by the broker: a crash at any point re-delivers, never loses.
  While the model server fails, records are retried with capped exponential backoff instead
  of being dead-lettered; only records that can never succeed go to the DLQ. Every produce
  failure is handled: a result or dead letter the broker refuses for good becomes a
  dead-letter *reference* (topic, partition, offset, size, reason; no payload), so no record
  can stop the loop and the offset always moves on.

Claim check: the annotated JPEG goes to S3 (`AnnotatedImageStore`, a bounded pool of
background workers, so inference never waits on S3) and the result event carries its key.
Results stay under `RESULT_MAX_BYTES` by construction (no image bytes, bounded attributes,
at most 300 detections).

Both expose Prometheus metrics and health endpoints. No torch, no Ultralytics: decoding,
letterbox and NMS come from `serving.detector`, inference is a v2 call.
"""

import base64
import datetime as dt
import hashlib
import io
import logging
import re
import threading
import time
from collections import OrderedDict
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from serving import detector as det
from serving.events import (
    LEGACY_RESULT_EVENT_TYPE,
    LEGACY_RESULT_SOURCE,
    ImageInput,
    PoisonEvent,
    dlq_reference,
    from_kafka,
    http_binary,
    now_iso,
    parse_image_event,
    record_size,
    result_event,
    to_kafka,
)
from serving.httputil import bearer_ok, read_limited
from serving.imagelimits import DEFAULT_MAX_PIXELS, ImageTooLarge, check_image_header
from serving.images import decode_bgr
from serving.model_client import (
    ModelClient,
    ModelClientError,
    ModelRequestRejected,
    ModelUnavailable,
)

log = logging.getLogger(__name__)

DEFAULT_SOURCE = "/vinspect/processor"
_COLORS = {0: (230, 40, 40), 1: (255, 160, 0)}

# A result event (key, value and headers) is at most this big: far under Kafka's default
# 1 MiB `max.message.bytes` and the Knative Kafka data plane's producer `max.request.size`
# (1048576 in eventing-kafka-broker's data-plane/config/broker/100-config-kafka-broker-data-plane.yaml).
RESULT_MAX_BYTES = 64 * 1024
# The largest image accepted: the images topic's `max.message.bytes` (10 MiB).
DEFAULT_MAX_IMAGE_BYTES = 10 * 1024 * 1024
# Dead letters up to this size carry the original record; larger ones a reference to it.
DEFAULT_DLQ_COPY_MAX_BYTES = 1024 * 1024
RESULT_FORMATS = ("vinspect", "manuela")


# --------------------------------------------------------------------------------------
# Metrics.
# --------------------------------------------------------------------------------------


class ProcessorMetrics:
    """Prometheus metrics of one processor (own registry, so tests can run several)."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        from serving.metrics import InspectionMetrics

        # One registry for the loop's metrics (serving.metrics: per camera and class, drift,
        # review) and the adapters' own, so one `/metrics` serves both.
        self.loop = InspectionMetrics()
        self.registry = self.loop.registry
        buckets = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
        self.events = Counter(
            "vinspect_processor_events",
            "Processed events by outcome (pass, fail, dlq)",
            ["outcome"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "vinspect_processor_inspect_seconds",
            "Time to inspect one image, retries included",
            registry=self.registry,
            buckets=buckets,
        )
        self.inference = Histogram(
            "vinspect_processor_inference_seconds",
            "Model server round trip per image",
            registry=self.registry,
            buckets=buckets,
        )
        self.retries = Counter(
            "vinspect_processor_model_retries",
            "Inference attempts retried because the model server was unavailable",
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "vinspect_processor_in_flight",
            "Events being inspected now",
            registry=self.registry,
        )
        self.commits = Counter(
            "vinspect_processor_commits",
            "Kafka offset commits",
            registry=self.registry,
        )
        self.images = Counter(
            "vinspect_processor_annotated_images",
            "Annotated images by claim-check outcome (stored, failed, skipped)",
            ["outcome"],
            registry=self.registry,
        )
        self.produce_failures = Counter(
            "vinspect_processor_produce_failures",
            "Records the broker refused for good, by what was written instead (reference, dropped)",
            ["fallback"],
            registry=self.registry,
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
    max_pixels: int = DEFAULT_MAX_PIXELS  # header check before decoding (decompression bombs)
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    result_format: str = "vinspect"  # or "manuela": the original demo's reply for its dashboard

    def __post_init__(self) -> None:
        if self.result_format not in RESULT_FORMATS:
            raise ValueError(f"result_format {self.result_format!r}: choose one of {RESULT_FORMATS}")


def draw(img: np.ndarray, detections: list[det.Detection]) -> Any:
    """Boxes and labels drawn on an RGB image; returns a PIL image."""
    from PIL import Image, ImageDraw, ImageFont

    pil = Image.fromarray(img)
    draw_ = ImageDraw.Draw(pil)
    font = ImageFont.load_default()
    width = max(2, round(max(img.shape[:2]) / 250))
    for d in detections:
        color = _COLORS.get(d.class_id, (40, 120, 255))
        x1, y1, x2, y2 = d.box
        draw_.rectangle((x1, y1, x2, y2), outline=color, width=width)
        text = f"{d.class_name} {d.score:.2f}"
        tx, ty = x1, max(0, y1 - 12)
        bbox = draw_.textbbox((tx, ty), text, font=font)
        draw_.rectangle(bbox, fill=color)
        draw_.text((tx, ty), text, fill=(0, 0, 0), font=font)
    return pil


def annotate(img: np.ndarray, detections: list[det.Detection], quality: int = 85) -> bytes:
    """Draw boxes and labels on an RGB image and return JPEG bytes."""
    buf = io.BytesIO()
    draw(img, detections).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _key_part(text: str, limit: int = 64) -> str:
    return _KEY_UNSAFE.sub("_", text)[:limit].strip("._") or "_"


class AnnotatedImageStore:
    """Claim check: annotated JPEGs go to S3 on a bounded pool of background workers.

    The Kafka loop hands an image over and goes on inspecting; the result event is written
    once the put has finished (or failed), so an event never names an object that is not
    there. When S3 is slow, at most `max_pending` puts wait; beyond that an image is skipped
    (the result says so) instead of holding the line.

    Args:
        s3: A boto3 S3 client (short timeouts: a put must not hold a result for long).
        bucket: The bucket (the stack's data bucket).
        prefix: Key prefix; keys are `<prefix>/<YYYY-MM-DD>/<camera>/<event id>-<hash>.jpg`.
        workers: Puts running at once.
        max_pending: Puts queued or running before images are skipped.
    """

    def __init__(self, s3: Any, bucket: str, prefix: str = "annotated", *, workers: int = 2, max_pending: int = 16):
        self.s3 = s3
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.max_pending = max(1, max_pending)
        self._pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="s3-put")
        self._pending = 0
        self._lock = threading.Lock()

    def key_for(self, camera: str, event_id: str) -> str:
        """One key per event; ids from the network are made key-safe, a hash keeps them unique."""
        digest = hashlib.sha256(f"{camera}\0{event_id}".encode()).hexdigest()[:12]
        day = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
        return f"{self.prefix}/{day}/{_key_part(camera)}/{_key_part(event_id, 96)}-{digest}.jpg"

    @staticmethod
    def original_key(key: str) -> str:
        """Key of the camera's own frame stored beside an annotated image (`<key>.orig.jpg`)."""
        return key[: -len(".jpg")] + ".orig.jpg" if key.endswith(".jpg") else key + ".orig.jpg"

    def put(self, key: str, jpeg: bytes, original: bytes | None = None) -> dict[str, Any]:
        """Store one image now; returns the reference the event carries.

        Args:
            key: The annotated image's key.
            jpeg: The annotated image.
            original: The camera's frame when `jpeg` has boxes drawn on it: stored first under
                `original_key(key)`, so an operator's flag on the dashboard can send the clean
                frame to review (a drawn-on copy would teach the boxes to the next model).
        """
        ref: dict[str, Any] = {"bucket": self.bucket, "key": key, "content_type": "image/jpeg", "bytes": len(jpeg)}
        if original is not None:
            self.s3.put_object(Bucket=self.bucket, Key=self.original_key(key), Body=original, ContentType="image/jpeg")
            ref["original_key"] = self.original_key(key)
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=jpeg, ContentType="image/jpeg")
        return ref

    def submit(self, key: str, jpeg: bytes, original: bytes | None = None) -> Future | None:
        """Queue a put; None when `max_pending` puts are already waiting (the image is skipped)."""
        with self._lock:
            if self._pending >= self.max_pending:
                return None
            self._pending += 1

        def run() -> dict[str, Any]:
            try:
                return self.put(key, jpeg, original)
            finally:
                with self._lock:
                    self._pending -= 1

        return self._pool.submit(run)

    def close(self) -> None:
        """Finish queued puts and stop the workers."""
        self._pool.shutdown(wait=True)


@dataclass
class Inspection:
    """An inspected image before its result event is built (the claim check may be pending)."""

    parsed: ImageInput
    data: dict[str, Any]  # the result payload without the image reference
    jpeg: bytes | None = None  # the annotated image to store
    inline_image: str | None = None  # data URL for the original demo's reply format
    store: Future | None = None
    store_status: str = "disabled"
    original: bytes | None = None  # the camera's frame, stored beside an annotated (drawn-on) copy
    t_start: float = 0.0


def _thumbnail_data_url(pil: Any, limit: int) -> str:
    """A JPEG data URL of at most `limit` characters (smaller and coarser until it fits)."""
    side, quality = 640, 80
    while True:
        thumb = pil.copy()
        thumb.thumbnail((side, side))
        buf = io.BytesIO()
        thumb.save(buf, format="JPEG", quality=quality)
        url = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
        if len(url) <= limit or side <= 32:
            return url
        if quality > 40:
            quality -= 20
        else:
            side //= 2


class Inspector:
    """Turns image events into result events through a remote v2 model.

    Args:
        client: The v2 model client (retries of its own are kept short; the Kafka loop
            retries for longer).
        config: Thresholds, class names, annotation, limits, result format.
        metrics: Optional metrics to record into.
        store: Where annotated images go (claim check); None: results carry no image.
        hooks: The feedback loop's per-result work (`serving.feedback.LoopHooks`: metrics per
            camera and class, review selection, drift); None: off.
    """

    def __init__(
        self,
        client: ModelClient,
        config: InspectConfig | None = None,
        metrics: ProcessorMetrics | None = None,
        store: AnnotatedImageStore | None = None,
        hooks: Any = None,
    ):
        self.client = client
        self.config = config or InspectConfig()
        self.metrics = metrics
        self.store = store
        self.hooks = hooks
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
        """Inspect one image event and return its result event (the S3 put done inline).

        Args:
            event: A CloudEvent (`cloudevents.v1.http.CloudEvent`) as `parse_image_event`
                accepts.

        Returns:
            The result CloudEvent (`io.vinspect.inspection.result`), data:
            `camera`, `image_id`, `captured_at`, `label`, `passed`, `verdict`, `detections`
            (class_id, class_name, score, box xyxy in image pixels), `image` (width,
            height), `model` (name, version), `timings_ms`, `annotated_image` (the claim
            check: `{bucket, key, content_type, bytes}`, or null) and
            `annotated_image_status` (`stored`, `disabled`, `failed: ...`, `skipped: ...`).
            With `result_format="manuela"`: the original demo's reply instead.

        Raises:
            PoisonEvent: The event can never be processed.
            ModelUnavailable: The model server is down or failing; retry later.
        """
        inspection = self.analyse(event)
        if inspection.jpeg is not None and self.store is not None:
            try:
                ref = self.store.put(
                    self.store.key_for(inspection.parsed.camera_id, inspection.parsed.event_id),
                    inspection.jpeg,
                    inspection.original,
                )
            except Exception as exc:  # noqa: BLE001 - S3 down must never stop a result
                return self.finish(inspection, None, f"failed: {_short(exc)}")
            return self.finish(inspection, ref, "stored")
        return self.finish(inspection, None, inspection.store_status)

    def start_store(self, inspection: Inspection) -> None:
        """Hand the annotated image to the background store (the Kafka loop's path)."""
        if inspection.jpeg is None or self.store is None:
            return
        fut = self.store.submit(
            self.store.key_for(inspection.parsed.camera_id, inspection.parsed.event_id),
            inspection.jpeg,
            inspection.original,
        )
        if fut is None:
            inspection.store_status = "skipped: image store backlog is full"
        else:
            inspection.store = fut
            inspection.store_status = "pending"
        inspection.jpeg = inspection.original = None  # the worker holds them now

    def finish_stored(self, inspection: Inspection) -> Any:
        """The result event once the background put (if any) is done."""
        if inspection.store is None:
            return self.finish(inspection, None, inspection.store_status)
        try:
            return self.finish(inspection, inspection.store.result(), "stored")
        except Exception as exc:  # noqa: BLE001 - S3 down must never stop a result
            return self.finish(inspection, None, f"failed: {_short(exc)}")

    def analyse(self, event: Any) -> Inspection:
        """Everything up to the annotated JPEG: parse, check limits, decode, detect, draw.

        Raises:
            PoisonEvent: The event can never be processed.
            ModelUnavailable: The model server is down or failing; retry later.
        """
        t_start = time.perf_counter()
        parsed = parse_image_event(event)
        where = f"event {parsed.event_id}"
        if len(parsed.image) > self.config.max_image_bytes:
            raise PoisonEvent(
                f"{where}: image is {len(parsed.image):,} bytes, over the limit of {self.config.max_image_bytes:,}"
            )
        try:
            # The header only (~30 us): a decompression bomb never reaches the decoder.
            check_image_header(parsed.image, self.config.max_pixels, where)
        except ImageTooLarge as exc:
            raise PoisonEvent(str(exc)) from None
        try:
            # Decoded once, in OpenCV's BGR: the detector writes RGB tensor planes from it, and
            # an RGB copy is only made for drawing on a failed part.
            img = decode_bgr(parsed.image)
        except ValueError as exc:
            raise PoisonEvent(f"{where}: {exc}") from None
        t_decoded = time.perf_counter()
        model_version: dict[str, str | None] = {}

        class _Refused(Exception):
            pass

        def detect(refresh: bool) -> det.DetectionResult:
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
                None,
                conf=self.config.conf,
                iou=self.config.iou,
                names=list(self.config.names),
                imgsz=imgsz,
            )
            return detector.run(img, remote)

        try:
            found = detect(refresh=False)
        except _Refused:
            # A rollout may have swapped in a model with another input size or tensor
            # names: read the metadata again and redo the whole detection once.
            try:
                found = detect(refresh=True)
            except _Refused as exc:
                raise PoisonEvent(f"event {parsed.event_id}: model refused it: {exc}") from None
        detections = found.detections[: det.MAX_DETECTIONS]  # the result's size bound relies on it
        t_detected = time.perf_counter()
        inspection = Inspection(parsed=parsed, data={}, t_start=t_start)
        if self.config.result_format == "manuela":
            # The original dashboard shows the image from the event itself: a bounded thumbnail.
            inspection.inline_image = _thumbnail_data_url(draw(img.rgb(), detections), RESULT_MAX_BYTES - 8 * 1024)
        elif self.config.annotate and self.store is not None:
            # Nothing to draw on a good part: the camera's own JPEG is the annotated image,
            # which saves a full-size re-encode per passing image.
            own = not detections and parsed.image[:3] == b"\xff\xd8\xff"
            inspection.jpeg = parsed.image if own else annotate(img.rgb(), detections, self.config.jpeg_quality)
            if not own and self.hooks is not None and parsed.image[:3] == b"\xff\xd8\xff":
                # With the loop on, the clean frame goes beside the drawn-on copy (operator flags).
                inspection.original = parsed.image
        elif self.config.annotate:
            inspection.store_status = "disabled: no image store configured"
        t_end = time.perf_counter()
        passed = not detections
        inspection.data = {
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
                "preprocess": round(found.timings.get("preprocess", 0.0), 3),
                "inference": round(found.timings.get("inference", 0.0), 3),
                "postprocess": round(found.timings.get("postprocess", 0.0), 3),
                "annotate": round((t_end - t_detected) * 1e3, 3),
                "total": round((t_end - t_start) * 1e3, 3),
            },
        }
        if self.metrics:
            self.metrics.events.labels("pass" if passed else "fail").inc()
            self.metrics.latency.observe(t_end - t_start)
        if self.hooks is not None:
            # Metrics, review selection, drift: cheap inline parts only; S3 writes go to workers.
            self.hooks.on_result(inspection.data, parsed.image, img.array)
        return inspection

    def finish(self, inspection: Inspection, image_ref: dict[str, Any] | None, status: str) -> Any:
        """Build the result event from an inspection and the claim check's outcome."""
        from cloudevents.v1.http import CloudEvent

        parsed, data = inspection.parsed, inspection.data
        if self.metrics and status != "disabled" and not status.startswith("disabled"):
            self.metrics.images.labels(status.split(":", 1)[0]).inc()
        if status.startswith("failed") or status.startswith("skipped"):
            log.warning("result %s goes out without its annotated image: %s", parsed.event_id, status)
        if self.config.result_format == "manuela":
            # The original demo's reply (`text`, `id`, `status`, `image`) for its dashboard.
            return CloudEvent(
                {
                    "type": LEGACY_RESULT_EVENT_TYPE,
                    "source": LEGACY_RESULT_SOURCE,
                    "id": f"result-{parsed.event_id}",
                    "time": now_iso(),
                    "subject": parsed.camera_id,
                    "datacontenttype": "application/json",
                    "partitionkey": parsed.camera_id,
                },
                {
                    "text": parsed.time or now_iso(),
                    "id": parsed.camera_id,
                    "status": 0 if data["passed"] else 1,
                    "image": inspection.inline_image,
                },
            )
        return result_event(
            {**data, "annotated_image": image_ref, "annotated_image_status": status},
            parsed.event_id,
            parsed.camera_id,
            self.config.source,
        )


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


def _count(inspector: "Inspector", kind: str, dead_letter: str | None = None) -> None:
    """Count an error (and the dead letter it becomes) in the loop's metrics, when the loop is on."""
    hooks = inspector.hooks
    if hooks is None:
        return
    hooks.on_error(kind)
    if dead_letter is not None:
        hooks.on_dead_letter(dead_letter)


# --------------------------------------------------------------------------------------
# Adapter 1: HTTP CloudEvents receiver (Knative).
# --------------------------------------------------------------------------------------


def create_http_app(
    inspector: Inspector,
    metrics: ProcessorMetrics,
    *,
    token: str | None = None,
    max_body_bytes: int | None = None,
) -> Any:
    """The Knative adapter: POST a CloudEvent (binary or structured), get the result back.

    Replies follow the Knative reply contract (eventing-kafka-broker's dispatcher,
    `BaseResponseHandler.handle` and `WebClientCloudEventSender.isRetryableStatusCode`):
    200 with the result as a binary-mode CloudEvent; 400 (poison), 401 (token) and 413 (too
    large) are not retried and go to the Trigger's dead-letter sink; 503 (model down) is
    retried with the delivery's backoff.

    Args:
        inspector: The core.
        metrics: Metrics to record into.
        token: When set, `POST` needs `Authorization: Bearer <token>` (VINSPECT_PROCESSOR_TOKEN).
        max_body_bytes: Largest body read (default: the image limit plus base64 and JSON
            overhead, for the legacy JSON record in structured mode).

    Routes: `POST /` (the event), `GET /healthz` (live), `GET /readyz` (model reachable),
    `GET /metrics`.
    """
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response
    from starlette.concurrency import run_in_threadpool

    app = FastAPI(title="vinspect image processor")
    limit = max_body_bytes or (inspector.config.max_image_bytes * 4 // 3 + 64 * 1024)

    async def receive(request: Request) -> Response:
        from cloudevents.v1.exceptions import GenericException
        from cloudevents.v1.http import from_http

        if not bearer_ok(request.headers.get("authorization"), token):
            return JSONResponse(
                {"error": "missing or wrong bearer token"}, status_code=401, headers={"WWW-Authenticate": "Bearer"}
            )
        body = await read_limited(request, limit)
        if body is None:
            metrics.events.labels("dlq").inc()
            _count(inspector, "too_large", "over the limit")
            return JSONResponse({"error": f"body is over the limit of {limit} bytes"}, status_code=413)
        try:
            event = from_http(dict(request.headers), body)
        except (GenericException, ValueError) as exc:
            metrics.events.labels("dlq").inc()
            _count(inspector, "poison", "not a CloudEvent")
            return JSONResponse({"error": f"not a CloudEvent: {exc}"}, status_code=400)
        metrics.in_flight.inc()
        try:
            result = await run_in_threadpool(inspector.inspect, event)
        except PoisonEvent as exc:
            metrics.events.labels("dlq").inc()
            _count(inspector, "poison", str(exc))  # Knative sends it to the dead-letter sink
            log.warning("rejected event %s: %s", str(event.get("id"))[:200], exc)
            return JSONResponse({"error": str(exc)}, status_code=400)
        except ModelClientError as exc:
            _count(inspector, "model_unavailable")
            log.warning("model unavailable for event %s: %s", str(event.get("id"))[:200], exc)
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
    inspection: Inspection | None = None  # -> result event once its image is stored
    error: str | None = None  # poison reason -> DLQ


class _Pending:
    """One consumed record on its way to being committed."""

    __slots__ = ("message", "future", "outcome", "state")

    def __init__(self, message: Any):
        self.message = message
        self.future: Any = None
        self.outcome: _Outcome | None = None
        self.state = "inspecting"  # -> storing -> producing -> done, or aborted


_PERMANENT_ERRORS = (
    "MSG_SIZE_TOO_LARGE",
    "RECORD_LIST_TOO_LARGE",
    "INVALID_RECORD",
    "INVALID_MSG",
    "TOPIC_AUTHORIZATION_FAILED",
    "CLUSTER_AUTHORIZATION_FAILED",
    "POLICY_VIOLATION",
    "INVALID_REQUEST",
    "_INVALID_ARG",
    "TOPIC_EXCEPTION",
    "UNSUPPORTED_FOR_MESSAGE_FORMAT",
)


def _permanent(err: Any) -> bool:
    """A produce error that retrying cannot fix (the record itself, or no right to write)."""
    from confluent_kafka import KafkaError

    # Looked up by name: librdkafka versions differ in which of these codes they define.
    codes = {getattr(KafkaError, name) for name in _PERMANENT_ERRORS if hasattr(KafkaError, name)}
    code = err.code() if hasattr(err, "code") else None
    return code in codes


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
        dlq_copy_max_bytes: Dead letters up to this size copy the record; larger ones are
            a reference (topic, partition, offset, size, reason) without the payload.
        max_record_bytes: Records larger than this are dead-lettered without being parsed
            (default: twice the image limit, room for the legacy record's base64).
        max_storing: Results waiting for their image's S3 put before consumption pauses.
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
        dlq_copy_max_bytes: int = DEFAULT_DLQ_COPY_MAX_BYTES,
        max_record_bytes: int | None = None,
        max_storing: int = 32,
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
        self.dlq_copy_max_bytes = dlq_copy_max_bytes
        self.max_record_bytes = max_record_bytes or 2 * inspector.config.max_image_bytes
        self.max_storing = max(1, max_storing)
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
        size = record_size(message.key(), message.value(), message.headers())
        if size > self.max_record_bytes:
            return _Outcome(
                message, error=f"record is {size:,} bytes, over the limit of {self.max_record_bytes:,}; not parsed"
            )
        try:
            event = from_kafka(
                message.value(),
                message.headers(),
                message.key(),
                topic=message.topic(),
                partition=message.partition(),
                offset=message.offset(),
            )
        except PoisonEvent as exc:
            return _Outcome(message, error=str(exc))
        attempt = 0
        while True:
            try:
                inspection = self.inspector.analyse(event)
                self.model_ok = True
                self.inspector.start_store(inspection)  # the S3 put runs on its own workers
                return _Outcome(message, inspection=inspection)
            except PoisonEvent as exc:
                _count(self.inspector, "poison")
                return _Outcome(message, error=str(exc))
            except ModelClientError as exc:  # unavailable, or answering nonsense: retry
                self.model_ok = False
                self.metrics.retries.inc()
                _count(self.inspector, "model_unavailable")
                delay = min(self.max_backoff, self.backoff * 2 ** min(attempt, 16))
                if attempt % 10 == 0:
                    log.warning(
                        "model unavailable (%s); retrying %s[%d]@%d in %.2fs",
                        exc,
                        message.topic(),
                        message.partition(),
                        message.offset(),
                        delay,
                    )
                attempt += 1
                if self._abort.wait(delay):
                    raise _Stopped() from None
            except Exception as exc:  # a bug on this record must not stop the stream
                _count(self.inspector, "internal")
                log.exception("unexpected error on %s[%d]@%d", message.topic(), message.partition(), message.offset())
                return _Outcome(message, error=f"internal error: {exc!r}")

    def _submit(self, message: Any) -> None:
        pending = _Pending(message)
        key = (message.topic(), message.partition())
        self._partitions.setdefault(key, OrderedDict())[message.offset()] = pending
        pending.future = self._pool.submit(self._inspect_with_retry, message)
        self._inflight.append(pending)
        self.metrics.in_flight.inc()

    # -- writing: every failure ends in a written record or, at worst, a logged drop --------

    def _produce(self, pending: _Pending, outcome: _Outcome) -> None:
        if outcome.error is not None:
            self._dead_letter(pending, outcome.error)
            return
        try:
            result = self.inspector.finish_stored(outcome.inspection)  # type: ignore[arg-type]
            key, value, headers = to_kafka(result)
        except Exception as exc:  # noqa: BLE001 - a bug building one result must not stop the loop
            log.exception("cannot build the result of %s", self._where(pending.message))
            self._dead_letter(pending, f"internal error building the result: {exc!r}")
            return
        size = record_size(key, value, headers)
        if size > RESULT_MAX_BYTES:  # cannot happen by construction; never let it stop the line
            self._dead_letter(pending, f"result event is {size:,} bytes, over {RESULT_MAX_BYTES:,}", copy=False)
            return
        self._write(
            pending,
            self.results_topic,
            key,
            value,
            headers,
            lambda err: self._dead_letter(
                pending, f"result could not be written to {self.results_topic}: {err}", copy=False, refused=True
            ),
        )

    def _dead_letter(self, pending: _Pending, reason: str, copy: bool = True, refused: bool = False) -> None:
        """Dead-letter a record: a full copy when small enough, else (or when refused) a reference."""
        m = pending.message
        self.metrics.events.labels("dlq").inc()
        if self.inspector.hooks is not None:
            self.inspector.hooks.on_dead_letter(reason)
        log.warning("dead-lettering %s: %s", self._where(m), reason[:500])
        size = record_size(m.key(), m.value(), m.headers())
        key = m.key() if m.key() is None or len(m.key()) <= 256 else None
        if copy and size <= self.dlq_copy_max_bytes:
            headers = list(m.headers() or []) + [
                ("dlq_reason", reason[:1000].encode("utf-8")),
                ("dlq_source_topic", m.topic().encode()),
                ("dlq_source_partition", str(m.partition()).encode()),
                ("dlq_source_offset", str(m.offset()).encode()),
            ]
            self._write(
                pending,
                self.dlq_topic,
                key,
                m.value(),
                headers,
                lambda err: self._reference(
                    pending, f"{reason}; the full copy was refused: {err}", size, key, refused=True
                ),
            )
            return
        self._reference(pending, reason, size, key, refused)

    def _reference(self, pending: _Pending, reason: str, size: int, key: Any, refused: bool = False) -> None:
        m = pending.message
        if refused:  # a write the broker refused for good, replaced by this reference
            self.metrics.produce_failures.labels("reference").inc()
        value, headers = dlq_reference(m.topic(), m.partition(), m.offset(), size, reason, m.headers())
        self._write(pending, self.dlq_topic, key, value, headers, lambda err: self._drop(pending, reason, err))

    def _drop(self, pending: _Pending, reason: str, err: Any) -> None:
        # Even a small reference was refused for good (no right to write the DLQ, say): log it
        # where operators look and move on, rather than stopping every camera behind it.
        self.metrics.produce_failures.labels("dropped").inc()
        log.error(
            "DROPPED %s: %s; the dead-letter reference was refused too: %s",
            self._where(pending.message),
            reason[:500],
            err,
        )
        pending.state = "done"
        self.processed += 1

    @staticmethod
    def _where(m: Any) -> str:
        return f"{m.topic()}[{m.partition()}]@{m.offset()}"

    def _write(
        self, pending: _Pending, topic: str, key: Any, value: Any, headers: Any, on_permanent: Callable[[Any], None]
    ) -> None:
        """Produce; a transient failure writes again, a permanent one calls `on_permanent`."""

        def delivered(err: Any, _msg: Any) -> None:
            if err is None:
                pending.state = "done"
                self.processed += 1
            elif _permanent(err):
                log.error("%s refused a record for %s: %s", topic, self._where(pending.message), err)
                on_permanent(err)
            else:  # librdkafka gave up after its own retries (broker away): write it again
                log.error("delivery to %s failed (%s); producing again", topic, err)
                error = self._send(topic, key, value, headers, delivered)
                if error is not None:
                    on_permanent(error)

        pending.state = "producing"
        error = self._send(topic, key, value, headers, delivered)
        if error is not None:
            log.error("%s refused a record for %s: %s", topic, self._where(pending.message), error)
            on_permanent(error)

    def _send(self, topic: str, key: Any, value: Any, headers: Any, callback: Any) -> Any:
        """Hand a record to the producer; returns the error when it refuses it up front."""
        from confluent_kafka import KafkaException

        while True:
            try:
                self.producer.produce(topic, value=value, key=key, headers=headers, on_delivery=callback)
                return None
            except BufferError:  # local queue full: serve delivery reports first
                self.producer.poll(0.1)
            except KafkaException as exc:  # e.g. MSG_SIZE_TOO_LARGE: over message.max.bytes
                return exc.args[0] if exc.args else exc

    # -- the window ------------------------------------------------------------------

    def _inspecting(self) -> int:
        return sum(1 for p in self._inflight if p.outcome is None)

    def _window_full(self) -> bool:
        storing = len(self._inflight) - self._inspecting()
        return self._inspecting() >= self.concurrency or storing >= self.max_storing

    def _reap(self, block: bool) -> None:
        """Publish the outcome of every finished inspection whose image is stored."""
        if block and self._inflight:
            futures = [
                p.future if p.outcome is None else (p.outcome.inspection.store if p.outcome.inspection else None)
                for p in self._inflight
            ]
            if not any(f is None or f.done() for f in futures):
                wait([f for f in futures if f is not None], timeout=0.1, return_when=FIRST_COMPLETED)
        still = []
        for pending in self._inflight:
            if pending.outcome is None:
                if not pending.future.done():
                    still.append(pending)
                    continue
                self.metrics.in_flight.dec()
                try:
                    pending.outcome = pending.future.result()
                except _Stopped:
                    pending.state = "aborted"  # never committed: re-delivered after restart
                    continue
            inspection = pending.outcome.inspection
            if inspection is not None and inspection.store is not None and not inspection.store.done():
                pending.state = "storing"
                still.append(pending)
                continue
            self._produce(pending, pending.outcome)
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
                self._reap(block=self._window_full())
                self.producer.poll(0)
                self._commit_ready()
                if self._window_full():
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
    host: str,
    port: int,
    live: Callable[[], bool],
    ready: Callable[[], bool],
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
                body, ctype, code = (b'{"ok":true}' if ok else b'{"ok":false}', "application/json", 200 if ok else 503)
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
    consumer = Consumer(
        {
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
        }
    )
    producer = Producer({**base, "linger.ms": 5, "acks": "all", "message.max.bytes": 8 * 1024 * 1024})
    return consumer, producer
