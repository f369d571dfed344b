"""The inspection core: image event -> decode -> detect -> :class:`InspectionResult` -> result event.

One :class:`Inspector` per processor, shared by the adapters that feed it (the Kafka loop in
:mod:`serving.processor.kafka_loop`, the Knative receiver in :mod:`serving.processor.knative`).
Inference is a v2 call to the model server; pre- and post-processing are the detector core's,
with one :class:`serving.detector.Detector` per model version, built from the model's metadata
and reused for every event until a rollout changes the model.

Claim check: the annotated JPEG goes to S3 (:class:`serving.processor.store.AnnotatedImageStore`)
and the result event carries its key. Results stay under :data:`RESULT_MAX_BYTES` by construction
(no image bytes, bounded attributes, at most 300 detections).

No torch, no Ultralytics: decoding comes from :mod:`serving.images`, letterbox and NMS from
:mod:`serving.detector`.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from serving import detector as det
from serving.events import (
    LEGACY_RESULT_EVENT_TYPE,
    LEGACY_RESULT_SOURCE,
    ImageInput,
    InspectionResult,
    PoisonEvent,
    now_iso,
    parse_image_event,
    result_event,
)
from serving.imagelimits import DEFAULT_MAX_PIXELS, ImageTooLarge
from serving.images import ImageDecodeError, decode_bgr
from serving.model_client import ModelClient, ModelClientError, ModelRequestRejected, ModelUnavailable
from serving.processor.drawing import annotate, draw, thumbnail_data_url
from serving.processor.metrics import ProcessorMetrics
from serving.processor.store import AnnotatedImageStore
from vinspect.defaults import SERVE
from vinspect.errors import VinspectError

log = logging.getLogger(__name__)

DEFAULT_SOURCE = "/vinspect/processor"
# A result event (key, value and headers) is at most this big: far under Kafka's default
# 1 MiB `max.message.bytes` and the Knative Kafka data plane's producer `max.request.size`
# (1048576 in eventing-kafka-broker's data-plane/config/broker/100-config-kafka-broker-data-plane.yaml).
RESULT_MAX_BYTES = 64 * 1024
# The largest image accepted: the images topic's `max.message.bytes` (10 MiB).
DEFAULT_MAX_IMAGE_BYTES = 10 * 1024 * 1024
RESULT_FORMATS = ("vinspect", "manuela")


class ProcessorConfigError(VinspectError, ValueError):
    """A processor setting out of its allowed values (the message names the setting)."""


@dataclass
class InspectConfig:
    """Knobs of the inspection (defaults: the original demo's conf 0.2 / IoU 0.4)."""

    conf: float = SERVE.inspect_conf
    iou: float = SERVE.inspect_iou
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
            raise ProcessorConfigError(f"result_format {self.result_format!r}: choose one of {RESULT_FORMATS}")


@dataclass
class Inspection:
    """An inspected image before its result event is built (the claim check may be pending)."""

    parsed: ImageInput
    result: InspectionResult  # the verdict; its claim check is filled in by `Inspector.finish`
    jpeg: bytes | None = None  # the annotated image to store
    inline_image: str | None = None  # data URL for the original demo's reply format
    store: Future | None = None
    store_status: str = "disabled"
    original: bytes | None = None  # the camera's frame, stored beside an annotated (drawn-on) copy
    t_start: float = 0.0


@dataclass(frozen=True)
class RemoteModel:
    """The served model as the inspector calls it: tensor names and the detector for its input.

    Built from the model's v2 metadata once, and again only when a rollout swaps in a model that
    refuses the old input, so every event of one model version goes through the same
    :class:`serving.detector.Detector` (it keeps no per-call state and is shared by threads).
    """

    input_name: str
    output_name: str
    detector: det.Detector


class _Refused(VinspectError):
    """The model refused the input tensor (e.g. another input size after a rollout); never leaves `analyse`."""


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
        self._model: RemoteModel | None = None

    def model(self, refresh: bool = False) -> RemoteModel:
        """The served model's tensor names and detector, from `GET /v2/models/{name}` (cached).

        Args:
            refresh: Read the metadata again (a rollout may have changed the input).

        Raises:
            ModelUnavailable: No such model (yet), or metadata that cannot be read.
        """
        with self._meta_lock:
            if refresh or self._model is None:
                try:
                    meta = self.client.metadata()
                    inp, out = meta["inputs"][0], meta["outputs"][0]
                    shape = list(inp.get("shape") or [])
                    input_name, output_name = inp["name"], out["name"]
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
                detector = det.Detector(
                    None, conf=self.config.conf, iou=self.config.iou, names=list(self.config.names), imgsz=imgsz
                )
                self._model = RemoteModel(input_name, output_name, detector)
            return self._model

    def ready(self) -> bool:
        """True when the model answers on its ready endpoint."""
        return self.client.ready()

    def count_error(self, kind: str, dead_letter: str | None = None) -> None:
        """Count an error (and the dead letter it becomes) in the loop's metrics, when the loop is on."""
        if self.hooks is None:
            return
        self.hooks.on_error(kind)
        if dead_letter is not None:
            self.hooks.on_dead_letter(dead_letter)

    def inspect(self, event: Any) -> Any:
        """Inspect one image event and return its result event (the S3 put done inline).

        Args:
            event: A CloudEvent (`cloudevents.v1.http.CloudEvent`) as `parse_image_event`
                accepts.

        Returns:
            The result CloudEvent (`io.vinspect.inspection.result`), data
            :meth:`serving.events.InspectionResult.to_dict`: `camera`, `image_id`, `captured_at`,
            `label`, `passed`, `verdict`, `detections` (class_id, class_name, score, box xyxy in
            image pixels), `image` (width, height), `model` (name, version), `timings_ms`,
            `annotated_image` (the claim check: `{bucket, key, content_type, bytes}`, or null)
            and `annotated_image_status` (`stored`, `disabled`, `failed: ...`, `skipped: ...`).
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
            except Exception as exc:  # noqa: BLE001 - S3 down (botocore's errors share no base) must never stop a result
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
        except Exception as exc:  # noqa: BLE001 - S3 down (botocore's errors share no base) must never stop a result
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
            # Decoded once, in OpenCV's BGR: the detector writes RGB tensor planes from it, and
            # an RGB copy is only made for drawing on a failed part. The header is checked
            # against the pixel limit first (~30 us): a decompression bomb never reaches OpenCV.
            img = decode_bgr(parsed.image, self.config.max_pixels, where)
        except ImageTooLarge as exc:
            raise PoisonEvent(str(exc)) from None
        except ImageDecodeError as exc:
            raise PoisonEvent(f"{where}: {exc}") from None
        t_decoded = time.perf_counter()
        answered: dict[str, str | None] = {}
        try:
            found = self._detect(img, self.model(), answered)
        except _Refused:
            # A rollout may have swapped in a model with another input size or tensor
            # names: read the metadata again and redo the whole detection once.
            try:
                found = self._detect(img, self.model(refresh=True), answered)
            except _Refused as exc:
                raise PoisonEvent(f"event {parsed.event_id}: model refused it: {exc}") from None
        detections = found.detections[: det.MAX_DETECTIONS]  # the result's size bound relies on it
        t_detected = time.perf_counter()
        inspection = Inspection(parsed=parsed, result=self._verdict(parsed, img, detections, answered), t_start=t_start)
        if self.config.result_format == "manuela":
            # The original dashboard shows the image from the event itself: a bounded thumbnail.
            inspection.inline_image = thumbnail_data_url(draw(img.rgb(), detections), RESULT_MAX_BYTES - 8 * 1024)
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
        inspection.result.timings_ms = {
            "decode": round((t_decoded - t_start) * 1e3, 3),
            "preprocess": round(found.timings.get("preprocess", 0.0), 3),
            "inference": round(found.timings.get("inference", 0.0), 3),
            "postprocess": round(found.timings.get("postprocess", 0.0), 3),
            "annotate": round((t_end - t_detected) * 1e3, 3),
            "total": round((t_end - t_start) * 1e3, 3),
        }
        if self.metrics:
            self.metrics.events.labels("pass" if inspection.result.passed else "fail").inc()
            self.metrics.latency.observe(t_end - t_start)
        if self.hooks is not None:
            # Metrics, review selection, drift: cheap inline parts only; S3 writes go to workers.
            self.hooks.on_result(inspection.result.to_dict(claim_check=False), parsed.image, img.array)
        return inspection

    def _verdict(
        self, parsed: ImageInput, img: Any, detections: list[det.Detection], answered: dict[str, str | None]
    ) -> InspectionResult:
        """The result of one image; its timings are filled in once the annotation is done."""
        return InspectionResult(
            camera=parsed.camera_id,
            image_id=parsed.event_id,
            image_source=parsed.source,
            captured_at=parsed.time,
            label=parsed.label,
            detections=[d.to_dict() for d in detections],
            width=int(img.shape[1]),
            height=int(img.shape[0]),
            model_name=answered.get("name"),
            model_version=answered.get("version"),
            conf=self.config.conf,
            iou=self.config.iou,
            timings_ms={},
        )

    def _detect(self, img: Any, model: RemoteModel, answered: dict[str, str | None]) -> det.DetectionResult:
        """One detection through the model server; ``answered`` gets the model's name and version.

        Raises:
            _Refused: The model refused the input (the caller re-reads the metadata once).
            ModelUnavailable: The model server is down, not serving the model, or answering nonsense.
        """

        def remote(tensor: np.ndarray) -> np.ndarray:
            try:
                t0 = time.perf_counter()
                response = self.client.infer({model.input_name: tensor}, [model.output_name])
                if self.metrics:
                    self.metrics.inference.observe(time.perf_counter() - t0)
                answered["version"] = response.model_version
                answered["name"] = response.model_name or self.client.model_name
                return response.outputs[model.output_name].array
            except ModelRequestRejected as exc:
                if exc.status_code in (404, 503):
                    # Model not (yet) deployed under that name: an outage, not bad data.
                    raise ModelUnavailable(str(exc)) from None
                raise _Refused(str(exc)) from None
            except ModelClientError as exc:  # malformed answer: the server's problem
                raise ModelUnavailable(str(exc)) from None
            except KeyError:
                raise ModelUnavailable(f"response has no output {model.output_name!r}") from None

        return model.detector.run(img, remote)

    def finish(self, inspection: Inspection, image_ref: dict[str, Any] | None, status: str) -> Any:
        """Build the result event from an inspection and the claim check's outcome."""
        from cloudevents.v1.http import CloudEvent

        parsed, result = inspection.parsed, inspection.result
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
                    "status": 0 if result.passed else 1,
                    "image": inspection.inline_image,
                },
            )
        claimed = dataclasses.replace(result, annotated_image=image_ref, annotated_image_status=status)
        return result_event(claimed, parsed.event_id, parsed.camera_id, self.config.source)


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]
