"""The Knative adapter: an HTTP CloudEvents receiver in front of the inspection core.

No ``from __future__ import annotations`` here: FastAPI reads the route functions' annotations
(``Request``, imported inside :func:`create_http_app`) at run time.

Knative wiring: KafkaSource -> Broker -> Trigger -> this service, whose reply (the result event)
the Broker routes on to the dashboard. A poison event answers 400 (Knative sends it to the
Trigger's dead-letter sink), a model outage 503 (Knative retries with its delivery backoff); a
body over the image size limit 413, a missing or wrong bearer token (when one is configured) 401.
"""

import logging
from typing import Any

from serving.events import PoisonEvent, http_binary
from serving.httputil import bearer_ok, read_limited
from serving.model_client import ModelClientError
from serving.processor.inspector import Inspector
from serving.processor.metrics import ProcessorMetrics

log = logging.getLogger(__name__)


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
            inspector.count_error("too_large", "over the limit")
            return JSONResponse({"error": f"body is over the limit of {limit} bytes"}, status_code=413)
        try:
            event = from_http(dict(request.headers), body)
        except (GenericException, ValueError) as exc:
            metrics.events.labels("dlq").inc()
            inspector.count_error("poison", "not a CloudEvent")
            return JSONResponse({"error": f"not a CloudEvent: {exc}"}, status_code=400)
        metrics.in_flight.inc()
        try:
            result = await run_in_threadpool(inspector.inspect, event)
        except PoisonEvent as exc:
            metrics.events.labels("dlq").inc()
            inspector.count_error("poison", str(exc))  # Knative sends it to the dead-letter sink
            log.warning("rejected event %s: %s", str(event.get("id"))[:200], exc)
            return JSONResponse({"error": str(exc)}, status_code=400)
        except ModelClientError as exc:
            inspector.count_error("model_unavailable")
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
