"""Retraining on drift: a CloudEvents receiver that starts the training pipeline.

The ``retrain-on-drift`` Trigger (optional overlay ``retrain-on-drift``, off by default) routes
``io.vinspect.model.drift.detected`` events (:mod:`serving.notify`) from the Broker to this
receiver, which submits one training run per cooldown period. The run is data-aware: it is
submitted with ``skip_if_unchanged`` on, so drift without newly labelled data (the review queue
not yet labelled) ends the run early instead of training the same model again.

Knative reply contract: 2xx with an empty body when handled or deliberately ignored (another
event type, inside the cooldown, a score under the threshold); 400 for an event that can never be
handled (not a CloudEvent); 503 when the pipelines server refused, so the Broker retries.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Mapping

log = logging.getLogger(__name__)

DRIFT_EVENT = "io.vinspect.model.drift.detected"


@dataclass
class RetrainOnDrift:
    """Decides, per drift event, whether to submit a training run.

    Attributes:
        submit: Starts a run with these pipeline arguments; returns its id.
        arguments: Pipeline arguments of every run (e.g. ``cvat_project_id``); ``skip_if_unchanged``
            is set unless given.
        cooldown_s: Least time between two submitted runs.
        min_psi: Lowest PSI, on any signal, that starts a run.
        clock: Seconds (tests).
    """

    submit: Callable[[dict[str, Any]], str]
    arguments: Mapping[str, Any] = field(default_factory=dict)
    cooldown_s: float = 6 * 3600.0
    min_psi: float = 0.2
    clock: Callable[[], float] = time.monotonic
    runs: list[str] = field(default_factory=list)
    _last: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, event_type: str, data: Any) -> tuple[int, str]:
        """``(HTTP status, what happened)`` for one event."""
        if event_type != DRIFT_EVENT:
            return 202, f"ignored event type {event_type!r}"
        signals = (data or {}).get("signals") if isinstance(data, Mapping) else None
        worst = max((float(s.get("psi", 0.0)) for s in (signals or {}).values() if isinstance(s, Mapping)), default=0.0)
        if worst < self.min_psi:
            return 202, f"drift {worst:.3f} under {self.min_psi}: no run"
        with self._lock:
            now = self.clock()
            if self._last is not None and now - self._last < self.cooldown_s:
                return 202, f"a run was submitted {now - self._last:.0f}s ago (cooldown {self.cooldown_s:.0f}s)"
            args = {"skip_if_unchanged": True, **dict(self.arguments)}
            try:
                run_id = self.submit(args)
            except Exception as exc:  # the Broker retries on 503
                log.warning("retrain on drift: submit failed: %s", exc)
                return 503, f"submit failed: {type(exc).__name__}"
            self._last = now
            self.runs.append(run_id)
        log.info("retrain on drift (camera %s, psi %.3f): run %s", (data or {}).get("camera"), worst, run_id)
        return 202, f"run {run_id}"


def serve(decider: RetrainOnDrift, port: int, addr: str = "0.0.0.0") -> ThreadingHTTPServer:
    """An HTTP CloudEvents receiver (binary or structured mode) on a background thread.

    Returns:
        The server (``server_address[1]`` is the port; ``shutdown()`` stops it).
    """

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, status: int) -> None:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:  # noqa: N802 (health probe)
            self._answer(200 if self.path in ("/healthz", "/readyz") else 404)

        def do_POST(self) -> None:  # noqa: N802
            from cloudevents.v1.exceptions import GenericException
            from cloudevents.v1.http import from_http

            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                event = from_http({k.lower(): v for k, v in self.headers.items()}, body)
            except (GenericException, ValueError) as exc:
                log.info("retrain on drift: not a CloudEvent: %s", exc)
                return self._answer(400)
            data = event.get_data()
            if isinstance(data, (bytes, str)):
                try:
                    data = json.loads(data)
                except (ValueError, UnicodeDecodeError):
                    data = None
            status, what = decider.handle(str(event["type"]), data)
            log.info("retrain on drift: event %s: %s", event["id"], what)
            self._answer(status)

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer((addr, port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
