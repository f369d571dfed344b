"""Dashboard server: result events in (HTTP CloudEvents or the results topic), SSE out.

Feeds:
* `POST /` with a result CloudEvent (binary or structured): what a Knative Trigger on the
  Broker delivers. It answers by the Knative reply contract (eventing-kafka-broker's
  dispatcher, `BaseResponseHandler.handle`): 202 with an *empty* body (a non-empty body that
  is not a CloudEvent counts as a failed delivery and is retried, then dead-lettered), 400
  for an event that is not a result, 401 without the bearer token when one is configured
  (VINSPECT_DASHBOARD_TOKEN), 413 over the body limit;
* optionally a Kafka consumer on `visual-inspection-results` (local and edge use).

Out: `GET /` (the page), `GET /events` (Server-Sent Events: one `snapshot`, then one
`result` per update), `GET /api/cameras` (JSON), `GET /images/<key>` (annotated images
from S3: the claim check is redeemed here, since the server has S3 credentials and the
browser does not), `/healthz`, `/metrics`.

Per camera the state keeps the defect rate over time (one bucket a minute, the last
`HISTORY_MINUTES`) and the most recent failures. With a review desk (`ReviewDesk`: the review
queue in S3), `GET /api/review` gives the queue size and `POST /api/flag` (`{"image_id": ...}`)
sends a recent frame to review as an operator flag (`serving.review.queue_frame(...,
flagged=True)`), behind the dashboard token when one is set (the page asks for it once).

Every value shown comes from the network, so the server keeps only known fields with
checked types, and the page writes text with `textContent` only; a strict
Content-Security-Policy forbids inline script as a second line of defence.
"""

import asyncio
import json
import logging
import math
import re
import threading
import time
from collections import OrderedDict, deque
from pathlib import Path
from typing import Any

from vinspect.errors import VinspectError


class FrameUnavailable(VinspectError, LookupError):
    """A recent frame whose clean image cannot be sent to review (not stored, or gone from S3)."""


class ResultRejected(VinspectError, ValueError):
    """A result event the dashboard cannot show (e.g. no camera)."""


log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
_IMAGE_URL = re.compile(r"^data:image/(jpeg|png);base64,[A-Za-z0-9+/]+={0,2}$")
# Keys the processor writes (`AnnotatedImageStore.key_for`): key-safe parts, a .jpg at the end.
_IMAGE_KEY = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}(/[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}){1,6}\.jpg$")
MAX_EVENT_BYTES = 256 * 1024
HISTORY_MINUTES = 60  # defect-rate buckets (one a minute) kept per camera
RECENT_FAILURES = 8  # failed frames listed per camera
# Recent frames an operator can flag (what the server remembers of them); results are under 64 KiB by
# construction (serving.processor).
FLAGGABLE_FRAMES = 2000
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _text(value: Any, limit: int = 200) -> str | None:
    if value is None:
        return None
    return str(value)[:limit]


def _num(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


class ImageSource:
    """Where the dashboard fetches annotated images: one bucket and key prefix, read-only.

    Only keys under `prefix` in `bucket` are served, whatever an event names, so the page can
    never be used to read other objects with the dashboard's credentials.

    Args:
        s3: A boto3 S3 client.
        bucket: The data bucket the processor writes to.
        prefix: The processor's key prefix (VINSPECT_ANNOTATED_PREFIX).
    """

    def __init__(self, s3: Any, bucket: str, prefix: str = "annotated"):
        self.s3 = s3
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/"

    def allows(self, bucket: Any, key: Any) -> bool:
        """True for a key this source serves."""
        return (
            bucket == self.bucket
            and isinstance(key, str)
            and key.startswith(self.prefix)
            and bool(_IMAGE_KEY.match(key))
            and "/../" not in f"/{key}/"
        )

    def get(self, key: str) -> bytes | None:
        """The image bytes, or None when there is no such object."""
        try:
            return self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except self.s3.exceptions.NoSuchKey:
            return None


class ReviewDesk:
    """The review queue as the dashboard uses it: its size, and operator flags.

    Args:
        selector: A `serving.review.ReviewSelector` (flags bypass its caps, not its de-duplication).
        store: The `serving.review.ReviewStore` in the data bucket.
        images: Where the flagged frame's bytes are read (the processor's claim check).
        size_ttl_s: How long a queue size is reused (a size is an S3 listing).
    """

    def __init__(self, selector: Any, store: Any, images: ImageSource, size_ttl_s: float = 10.0):
        self.selector, self.store, self.images = selector, store, images
        self.size_ttl_s = size_ttl_s
        self._size: tuple[float, int] | None = None
        self._lock = threading.Lock()

    def size(self) -> int:
        """Frames waiting in the queue (cached for `size_ttl_s`)."""
        with self._lock:
            cached = self._size
        if cached is not None and time.monotonic() - cached[0] < self.size_ttl_s:
            return cached[1]
        n = self.store.size()
        with self._lock:
            self._size = (time.monotonic(), n)
        return n

    def flag(self, frame: dict[str, Any]) -> dict[str, Any]:
        """Queue one remembered frame as flagged; returns what happened (for the JSON answer).

        Raises:
            FrameUnavailable: The frame's clean image is not in S3 (the message says why).
        """
        from serving.review import queue_frame

        key = frame.get("clean_key")
        if not key:
            raise FrameUnavailable(
                f"image {frame['result'].get('image_id')}: the camera's frame was not stored "
                "(only the copy with boxes drawn on it, or no image at all)"
            )
        image = self.images.get(key)
        if image is None:
            raise FrameUnavailable(f"image {frame['result'].get('image_id')}: s3://{self.images.bucket}/{key} is gone")
        selection = queue_frame(self.selector, self.store, frame["result"], image, flagged=True)
        with self._lock:
            self._size = None
        if selection is None:
            return {"queued": False, "reason": "already queued or reviewed"}
        return {"queued": True, "key": selection.key, "reasons": list(selection.reasons)}


def _clean_key(data: dict[str, Any], images: "ImageSource | None") -> str | None:
    """S3 key of the camera's own frame of a result: the stored clean copy of a failed frame, or the
    stored image of a passed one (nothing was drawn on it)."""
    ref = data.get("annotated_image")
    if images is None or not isinstance(ref, dict):
        return None
    original = ref.get("original_key")
    if images.allows(ref.get("bucket"), original):
        return original
    if not data.get("detections") and images.allows(ref.get("bucket"), ref.get("key")):
        return ref.get("key")
    return None


def _picture(value: Any, images: "ImageSource | None") -> str | None:
    if isinstance(value, str):  # the legacy inline data URL
        return value if _IMAGE_URL.match(value) else None
    if isinstance(value, dict) and images is not None and images.allows(value.get("bucket"), value.get("key")):
        return "/images/" + value["key"]
    return None


def sanitize_result(
    data: dict[str, Any], event_id: str | None = None, images: "ImageSource | None" = None
) -> dict[str, Any]:
    """Reduce a result payload to the fields the page shows, with checked types.

    Args:
        data: The result event's data (see `serving.processor.Inspector.inspect`).
        event_id: The result event id.
        images: The image source; a claim-check reference it serves becomes `/images/<key>`.

    Returns:
        A JSON-ready dict; `image` is a base64 image data URL or a `/images/` path, else None.

    Raises:
        ResultRejected: When the payload has no camera.
    """
    camera = _text(data.get("camera"), 100)
    if not camera:
        raise ResultRejected("result has no 'camera'")
    detections = []
    for d in (data.get("detections") or [])[:100]:
        if not isinstance(d, dict):
            continue
        box = d.get("box") or []
        box_n = [_num(v) for v in box] if isinstance(box, list) and len(box) == 4 else None
        detections.append(
            {
                "class_id": int(_num(d.get("class_id")) or 0),
                "class_name": _text(d.get("class_name"), 50) or "?",
                "score": _num(d.get("score")) or 0.0,
                "box": box_n if box_n and None not in box_n else None,
            }
        )
    image = data.get("image") if isinstance(data.get("image"), dict) else {}
    model = data.get("model") if isinstance(data.get("model"), dict) else {}
    timings = data.get("timings_ms") if isinstance(data.get("timings_ms"), dict) else {}
    picture = data.get("annotated_image")
    passed = data.get("passed")
    if not isinstance(passed, bool):
        passed = not detections
    return {
        "id": _text(event_id, 200),
        "camera": camera,
        "image_id": _text(data.get("image_id"), 200),
        "captured_at": _text(data.get("captured_at"), 64),
        "label": _text(data.get("label"), 50),
        "passed": passed,
        "detections": detections,
        "width": _num(image.get("width")),
        "height": _num(image.get("height")),
        "model_name": _text(model.get("name"), 100),
        "model_version": _text(model.get("version"), 50),
        "latency_ms": _num(timings.get("total")),
        "inference_ms": _num(timings.get("inference")),
        "image": _picture(picture, images),
        "image_status": _text(data.get("annotated_image_status"), 100),
        "received_at": time.time(),
    }


class DashboardState:
    """Latest result per camera, counters, and the SSE subscribers.

    Updates may come from any thread (the Kafka feed); they are handed to the event loop.

    Args:
        max_cameras: Cameras kept (the least recently updated is dropped beyond it).
        dedupe: How many recent event ids to remember (results are at-least-once).
    """

    def __init__(
        self,
        max_cameras: int = 64,
        dedupe: int = 10000,
        images: ImageSource | None = None,
        review: ReviewDesk | None = None,
    ):
        self.images = images
        self.review = review
        self.cameras: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.counts: dict[str, dict[str, int]] = {}
        self.history: dict[str, deque] = {}  # camera -> [[minute start (Unix s), total, fail], ...]
        self.failures: dict[str, deque] = {}  # camera -> recent failed views, newest first
        self.frames: OrderedDict[str, dict[str, Any]] = OrderedDict()  # image id -> what a flag needs
        self.max_cameras = max_cameras
        self._seen: set[str] = set()
        self._seen_order: deque[str] = deque(maxlen=dedupe)
        self._subscribers: set[asyncio.Queue] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.received = 0

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Attach to the server's event loop."""
        self._loop = loop

    def snapshot(self) -> dict[str, Any]:
        """All cameras' latest view, counts, defect-rate history and recent failures."""
        return {
            "cameras": list(self.cameras.values()),
            "counts": self.counts,
            "history": {c: [list(b) for b in h] for c, h in self.history.items()},
            "failures": {c: list(f) for c, f in self.failures.items()},
        }

    def frame(self, image_id: str) -> dict[str, Any] | None:
        """What the server remembers of a recent frame (for a flag), or None."""
        return self.frames.get(image_id)

    def _apply(self, view: dict[str, Any], frame: dict[str, Any] | None = None) -> None:
        event_id = view.get("id")
        if event_id:
            if event_id in self._seen:
                return
            if len(self._seen_order) == self._seen_order.maxlen:
                self._seen.discard(self._seen_order[0])
            self._seen_order.append(event_id)
            self._seen.add(event_id)
        camera = view["camera"]
        self.cameras[camera] = view
        self.cameras.move_to_end(camera)
        while len(self.cameras) > self.max_cameras:
            dropped, _ = self.cameras.popitem(last=False)
            self.counts.pop(dropped, None)
            self.history.pop(dropped, None)
            self.failures.pop(dropped, None)
        c = self.counts.setdefault(camera, {"total": 0, "pass": 0, "fail": 0})
        c["total"] += 1
        c["pass" if view["passed"] else "fail"] += 1
        # Defect rate over time: buckets by the time the result arrived (camera clocks vary).
        minute = int(view["received_at"] // 60 * 60)
        history = self.history.setdefault(camera, deque(maxlen=HISTORY_MINUTES))
        if not history or history[-1][0] != minute:
            history.append([minute, 0, 0])
        history[-1][1] += 1
        history[-1][2] += 0 if view["passed"] else 1
        failures = self.failures.setdefault(camera, deque(maxlen=RECENT_FAILURES))
        if not view["passed"]:
            failures.appendleft(view)
        if frame is not None and view.get("image_id"):
            self.frames[view["image_id"]] = frame
            self.frames.move_to_end(view["image_id"])
            while len(self.frames) > FLAGGABLE_FRAMES:
                self.frames.popitem(last=False)
        self.received += 1
        message = {"view": view, "counts": c, "history": [list(b) for b in history], "failures": list(failures)}
        for queue in list(self._subscribers):
            if queue.full():  # a slow browser skips frames rather than growing memory
                try:
                    queue.get_nowait()
                except asyncio.QueueEmpty:
                    pass
            queue.put_nowait(message)

    def publish(self, data: dict[str, Any], event_id: str | None = None) -> dict[str, Any]:
        """Record a result (thread-safe); returns the sanitized view."""
        view = sanitize_result(data, event_id, self.images)
        frame = None
        if self.review is not None:
            # What queue_frame needs of the result (the review record's fields), checked types only.
            frame = {
                "clean_key": _clean_key(data, self.images),
                "result": {
                    "camera": view["camera"],
                    "image_id": view["image_id"],
                    "captured_at": view["captured_at"],
                    "label": view["label"],
                    "verdict": "pass" if view["passed"] else "fail",
                    "detections": view["detections"],
                    "image": {"width": view["width"], "height": view["height"]},
                    "model": {"name": view["model_name"], "version": view["model_version"]},
                },
            }
        loop = self._loop
        if loop is not None and loop.is_running():
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is loop:
                self._apply(view, frame)
            else:
                loop.call_soon_threadsafe(self._apply, view, frame)
        else:
            self._apply(view, frame)
        return view

    def subscribe(self) -> asyncio.Queue:
        """A queue receiving every update from now on."""
        queue: asyncio.Queue = asyncio.Queue(maxsize=256)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue) -> None:
        """Stop delivering to a queue."""
        self._subscribers.discard(queue)


class ResultsFeed:
    """Consume the results topic into a `DashboardState` on a background thread.

    Args:
        consumer: A `confluent_kafka.Consumer` (its own group; offsets need not be shared).
        topic: The results topic.
        state: Where results go.
    """

    def __init__(self, consumer: Any, topic: str, state: DashboardState):
        self.consumer = consumer
        self.topic = topic
        self.state = state
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="results-feed", daemon=True)

    def start(self) -> None:
        """Start consuming."""
        self._thread.start()

    def stop(self) -> None:
        """Stop and close the consumer."""
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        from serving.events import RESULT_EVENT_TYPE, PoisonEvent, from_kafka, result_data

        self.consumer.subscribe([self.topic])
        try:
            while not self._stop.is_set():
                msg = self.consumer.poll(0.5)
                if msg is None:
                    continue
                if msg.error():
                    log.warning("results feed: %s", msg.error())
                    continue
                try:
                    event = from_kafka(
                        msg.value(),
                        msg.headers(),
                        msg.key(),
                        topic=msg.topic(),
                        partition=msg.partition(),
                        offset=msg.offset(),
                    )
                    if event.get("type") != RESULT_EVENT_TYPE:
                        raise PoisonEvent(f"type {str(event.get('type'))[:100]!r} is not a result")
                    self.state.publish(result_data(event), event.get("id"))
                except (PoisonEvent, ValueError) as exc:
                    log.warning("results feed: skipping %s@%d: %s", msg.topic(), msg.offset(), exc)
        finally:
            self.consumer.close()


def create_app(
    state: DashboardState | None = None, feed: ResultsFeed | None = None, *, token: str | None = None
) -> Any:
    """Build the dashboard app.

    Args:
        state: The state to serve (a new one by default); its `images` serves `/images/`.
        feed: Optional Kafka feed, started and stopped with the app.
        token: When set, `POST /` needs `Authorization: Bearer <token>`. The page, its events
            and images are for browsers, which cannot send one: protect them at the route
            (OpenShift OAuth proxy) instead.
    """
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.responses import FileResponse, JSONResponse, Response
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
    from sse_starlette.sse import EventSourceResponse

    state = state or DashboardState()
    registry = CollectorRegistry()
    received = Counter("vinspect_dashboard_results", "Result events received", ["feed"], registry=registry)
    flagged = Counter("vinspect_dashboard_flags", "Frames operators sent to review", registry=registry)

    @asynccontextmanager
    async def lifespan(_app: Any):
        state.bind(asyncio.get_running_loop())
        if feed is not None:
            feed.start()
        try:
            yield
        finally:
            if feed is not None:
                await asyncio.to_thread(feed.stop)

    app = FastAPI(title="vinspect dashboard", lifespan=lifespan)
    app.state.dashboard = state

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Response:
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = _CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    @app.get("/")
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/static/{name}")
    async def static(name: str) -> Response:
        files = {"app.js": "text/javascript", "style.css": "text/css"}
        if name not in files:
            return JSONResponse({"error": "not found"}, status_code=404)
        return FileResponse(STATIC / name, media_type=files[name])

    @app.post("/")
    async def receive(request: Request) -> Response:
        from cloudevents.v1.exceptions import GenericException
        from cloudevents.v1.http import from_http

        from serving.events import RESULT_EVENT_TYPE, PoisonEvent, result_data
        from serving.httputil import bearer_ok, read_limited

        if not bearer_ok(request.headers.get("authorization"), token):
            return JSONResponse(
                {"error": "missing or wrong bearer token"}, status_code=401, headers={"WWW-Authenticate": "Bearer"}
            )
        body = await read_limited(request, MAX_EVENT_BYTES)
        if body is None:
            return JSONResponse({"error": f"body is over {MAX_EVENT_BYTES} bytes"}, status_code=413)
        try:
            event = from_http(dict(request.headers), body)
            if event.get("type") != RESULT_EVENT_TYPE:
                raise PoisonEvent(f"type {str(event.get('type'))[:100]!r} is not {RESULT_EVENT_TYPE}")
            state.publish(result_data(event), event.get("id"))
        except (GenericException, PoisonEvent, ValueError) as exc:
            return JSONResponse({"error": f"not a result event: {exc}"}, status_code=400)
        received.labels("http").inc()
        # Knative reply contract: an empty 2xx body acknowledges without replying; any other
        # body must parse as a CloudEvent or the Broker counts the delivery as failed.
        return Response(status_code=202)

    @app.get("/images/{key:path}")
    async def image(key: str) -> Response:
        images = state.images
        if images is None or not images.allows(images.bucket, key):
            return JSONResponse({"error": "not found"}, status_code=404)
        try:
            data = await asyncio.to_thread(images.get, key)
        except Exception as exc:  # noqa: BLE001 - S3 down: the page shows no picture, not an error
            log.warning("image %s: %s", key, type(exc).__name__)
            return JSONResponse({"error": "image store unavailable"}, status_code=503)
        if data is None:
            return JSONResponse({"error": "not found"}, status_code=404)
        # One key per event: the object never changes, so the browser may keep it.
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400, immutable"})

    @app.get("/api/cameras")
    async def cameras() -> dict[str, Any]:
        return state.snapshot()

    @app.get("/api/review")
    async def review() -> Response:
        if state.review is None:
            return JSONResponse({"enabled": False, "queue_size": None})
        try:
            size = await asyncio.to_thread(state.review.size)
        except Exception as exc:  # noqa: BLE001 - S3 down: the page says so, the server goes on
            log.warning("review queue size: %s", type(exc).__name__)
            return JSONResponse(
                {"enabled": True, "queue_size": None, "error": "review queue unavailable"}, status_code=503
            )
        return JSONResponse({"enabled": True, "queue_size": size})

    @app.post("/api/flag")
    async def flag(request: Request) -> Response:
        from serving.httputil import bearer_ok, read_limited

        if not bearer_ok(request.headers.get("authorization"), token):
            # No WWW-Authenticate: the page asks for the token itself, not the browser's dialog.
            return JSONResponse({"error": "missing or wrong bearer token"}, status_code=401)
        if state.review is None:
            return JSONResponse({"error": "no review queue configured"}, status_code=404)
        body = await read_limited(request, 4096)
        try:
            image_id = json.loads(body or b"")["image_id"]
            if not isinstance(image_id, str):
                raise TypeError("image_id is not a string")
        except (ValueError, KeyError, TypeError) as exc:
            return JSONResponse({"error": f'body must be {{"image_id": "..."}}: {exc}'}, status_code=400)
        frame = state.frame(image_id)
        if frame is None:
            return JSONResponse({"error": f"image {image_id[:200]!r} is not among the recent frames"}, status_code=404)
        try:
            outcome = await asyncio.to_thread(state.review.flag, frame)
        except LookupError as exc:
            return JSONResponse({"error": str(exc)}, status_code=409)
        except Exception as exc:  # noqa: BLE001 - S3 down: say so, keep serving
            log.warning("flag %s: %s", image_id[:200], type(exc).__name__)
            return JSONResponse({"error": "review queue unavailable"}, status_code=503)
        if outcome["queued"]:
            flagged.inc()
        return JSONResponse(outcome, status_code=201 if outcome["queued"] else 200)

    @app.get("/events")
    async def events(request: Request) -> EventSourceResponse:
        queue = state.subscribe()

        async def stream():
            try:
                yield {"event": "snapshot", "data": json.dumps(state.snapshot())}
                while True:
                    if await request.is_disconnected():
                        break
                    try:
                        message = await asyncio.wait_for(queue.get(), timeout=15)
                    except asyncio.TimeoutError:
                        continue  # sse-starlette sends its own keep-alive pings
                    yield {"event": "result", "data": json.dumps(message)}
            finally:
                state.unsubscribe(queue)

        return EventSourceResponse(stream(), ping=10)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "received": state.received}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app


def kafka_feed(kafka_settings: Any, state: DashboardState, from_beginning: bool = False) -> ResultsFeed:
    """A `ResultsFeed` on the results topic from `KafkaSettings` (a private consumer group)."""
    import uuid

    from confluent_kafka import Consumer

    consumer = Consumer(
        {
            **kafka_settings.client_config(),
            "group.id": f"vinspect-dashboard-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest" if from_beginning else "latest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
            "fetch.wait.max.ms": 100,  # a live view: do not wait 500 ms per fetch
        }
    )
    return ResultsFeed(consumer, kafka_settings.results_topic, state)
