"""Health and metrics endpoints of the Kafka loop (the Knative adapter serves its own on its app)."""

from __future__ import annotations

import threading
from typing import Any, Callable

from serving.processor.metrics import ProcessorMetrics


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
