"""Dashboard server: result events in (HTTP CloudEvents or the results topic), SSE out.

Feeds:
* `POST /` with a result CloudEvent (binary or structured): what a Knative Trigger on the
  Broker delivers;
* optionally a Kafka consumer on `visual-inspection-results` (local and edge use).

Out: `GET /` (the page), `GET /events` (Server-Sent Events: one `snapshot`, then one
`result` per update), `GET /api/cameras` (JSON), `/healthz`, `/metrics`.

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

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
_IMAGE_URL = re.compile(r"^data:image/(jpeg|png);base64,[A-Za-z0-9+/]+={0,2}$")
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


def sanitize_result(data: dict[str, Any], event_id: str | None = None) -> dict[str, Any]:
    """Reduce a result payload to the fields the page shows, with checked types.

    Args:
        data: The result event's data (see `serving.processor.Inspector.inspect`).
        event_id: The result event id.

    Returns:
        A JSON-ready dict; `annotated_image` is kept only if it is a base64 image data URL.

    Raises:
        ValueError: When the payload has no camera.
    """
    camera = _text(data.get("camera"), 100)
    if not camera:
        raise ValueError("result has no 'camera'")
    detections = []
    for d in (data.get("detections") or [])[:100]:
        if not isinstance(d, dict):
            continue
        box = d.get("box") or []
        box_n = [_num(v) for v in box] if isinstance(box, list) and len(box) == 4 else None
        detections.append({
            "class_id": int(_num(d.get("class_id")) or 0),
            "class_name": _text(d.get("class_name"), 50) or "?",
            "score": _num(d.get("score")) or 0.0,
            "box": box_n if box_n and None not in box_n else None,
        })
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
        "image": picture if isinstance(picture, str) and _IMAGE_URL.match(picture) else None,
        "received_at": time.time(),
    }


class DashboardState:
    """Latest result per camera, counters, and the SSE subscribers.

    Updates may come from any thread (the Kafka feed); they are handed to the event loop.

    Args:
        max_cameras: Cameras kept (the least recently updated is dropped beyond it).
        dedupe: How many recent event ids to remember (results are at-least-once).
    """

    def __init__(self, max_cameras: int = 64, dedupe: int = 10000):
        self.cameras: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.counts: dict[str, dict[str, int]] = {}
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
        """All cameras' latest view and counts."""
        return {"cameras": list(self.cameras.values()), "counts": self.counts}

    def _apply(self, view: dict[str, Any]) -> None:
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
        c = self.counts.setdefault(camera, {"total": 0, "pass": 0, "fail": 0})
        c["total"] += 1
        c["pass" if view["passed"] else "fail"] += 1
        self.received += 1
        message = {"view": view, "counts": c}
        for queue in list(self._subscribers):
            if queue.full():  # a slow browser skips frames rather than growing memory
                try:
                    queue.get_nowait()
                except asyncio.QueueEmpty:
                    pass
            queue.put_nowait(message)

    def publish(self, data: dict[str, Any], event_id: str | None = None) -> dict[str, Any]:
        """Record a result (thread-safe); returns the sanitized view."""
        view = sanitize_result(data, event_id)
        loop = self._loop
        if loop is not None and loop.is_running():
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is loop:
                self._apply(view)
            else:
                loop.call_soon_threadsafe(self._apply, view)
        else:
            self._apply(view)
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
        from serving.events import PoisonEvent, from_kafka, result_data

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
                    event = from_kafka(msg.value(), msg.headers(), msg.key(), topic=msg.topic(),
                                       partition=msg.partition(), offset=msg.offset())
                    self.state.publish(result_data(event), event.get("id"))
                except (PoisonEvent, ValueError) as exc:
                    log.warning("results feed: skipping %s@%d: %s", msg.topic(), msg.offset(), exc)
        finally:
            self.consumer.close()


def create_app(state: DashboardState | None = None, feed: ResultsFeed | None = None) -> Any:
    """Build the dashboard app.

    Args:
        state: The state to serve (a new one by default).
        feed: Optional Kafka feed, started and stopped with the app.
    """
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.responses import FileResponse, JSONResponse, Response
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
    from sse_starlette.sse import EventSourceResponse

    state = state or DashboardState()
    registry = CollectorRegistry()
    received = Counter("vinspect_dashboard_results", "Result events received", ["feed"],
                       registry=registry)

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

        from serving.events import PoisonEvent, result_data

        body = await request.body()
        try:
            event = from_http(dict(request.headers), body)
            view = state.publish(result_data(event), event.get("id"))
        except (GenericException, PoisonEvent, ValueError) as exc:
            return JSONResponse({"error": f"not a result event: {exc}"}, status_code=400)
        received.labels("http").inc()
        return JSONResponse({"camera": view["camera"]}, status_code=202)

    @app.get("/api/cameras")
    async def cameras() -> dict[str, Any]:
        return state.snapshot()

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

    consumer = Consumer({
        **kafka_settings.client_config(),
        "group.id": f"vinspect-dashboard-{uuid.uuid4().hex[:8]}",
        "auto.offset.reset": "earliest" if from_beginning else "latest",
        "enable.auto.commit": False,
        "session.timeout.ms": 6000,
        "fetch.wait.max.ms": 100,  # a live view: do not wait 500 ms per fetch
    })
    return ResultsFeed(consumer, kafka_settings.results_topic, state)
