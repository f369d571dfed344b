"""Prometheus metrics of the image processor, in their own registry, and how to expose them.

Every name starts with ``vinspect_``; the alert rules in ``infra/manifests/base/monitoring`` use
these names, and a test checks that every metric an alert reads is defined here
(:func:`exposed_names`). Labels stay of bounded cardinality: camera ids, class names, verdicts,
stages, error kinds, drift signals (never image ids).

==========================================  =========  =================================================
metric                                      type       labels
==========================================  =========  =================================================
``vinspect_images_total``                   counter    camera
``vinspect_verdicts_total``                 counter    camera, verdict (pass / fail)
``vinspect_detections_total``               counter    camera, class_name
``vinspect_detection_confidence``           histogram  camera, class_name
``vinspect_stage_seconds``                  histogram  stage (decode, preprocess, inference, postprocess,
                                                       annotate, total)
``vinspect_model_info``                     gauge      model, version (1 for the model now answering)
``vinspect_errors_total``                   counter    kind (model_unavailable, poison, internal, review,
                                                       review_backlog, drift, notify_backlog)
``vinspect_dead_letters_total``             counter    reason (poison, too_large, model_refused, internal,
                                                       result_refused, result_too_large, not_a_cloudevent)
``vinspect_review_queue_size``              gauge      (frames waiting in ``review/queue/``)
``vinspect_review_selected_total``          counter    camera, reason
``vinspect_drift_score``                    gauge      camera, signal, method (psi / ks)
``vinspect_last_image_timestamp_seconds``   gauge      camera (Unix time of the last image)
==========================================  =========  =================================================
"""

from __future__ import annotations

import time
from typing import Any, Mapping

CONFIDENCE_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
STAGES = ("decode", "preprocess", "inference", "postprocess", "annotate", "total")


class InspectionMetrics:
    """The processor's metrics in a private ``CollectorRegistry`` (tests and several processors in
    one process never collide)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry()
        self.images = Counter("vinspect_images", "Images inspected", ["camera"], registry=r)
        self.verdicts = Counter(
            "vinspect_verdicts", "Verdicts per camera (pass, fail)", ["camera", "verdict"], registry=r
        )
        self.detections = Counter(
            "vinspect_detections", "Detections per camera and class", ["camera", "class_name"], registry=r
        )
        self.confidence = Histogram(
            "vinspect_detection_confidence",
            "Scores of the detections",
            ["camera", "class_name"],
            buckets=CONFIDENCE_BUCKETS,
            registry=r,
        )
        self.stage_seconds = Histogram(
            "vinspect_stage_seconds", "Time per processing stage", ["stage"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.model_info = Gauge(
            "vinspect_model_info", "The model answering now (value 1)", ["model", "version"], registry=r
        )
        self.errors = Counter("vinspect_errors", "Errors by kind", ["kind"], registry=r)
        self.dead_letters = Counter(
            "vinspect_dead_letters", "Records sent to the dead-letter topic", ["reason"], registry=r
        )
        self.review_queue_size = Gauge("vinspect_review_queue_size", "Frames waiting for review", registry=r)
        self.review_selected = Counter(
            "vinspect_review_selected", "Frames selected for review", ["camera", "reason"], registry=r
        )
        self.drift_score = Gauge(
            "vinspect_drift_score",
            "Drift of the live window against the model's reference",
            ["camera", "signal", "method"],
            registry=r,
        )
        self.last_image = Gauge(
            "vinspect_last_image_timestamp_seconds", "Unix time of the last image per camera", ["camera"], registry=r
        )
        self._model: tuple[str, str] | None = None

    # ------------------------------------------------------------------ recording

    def record_result(self, result: Mapping[str, Any], now: float | None = None) -> None:
        """Count one inspection result (the processor's result data).

        Args:
            result: ``camera``, ``verdict``, ``detections`` (``class_name``, ``score``),
                ``timings_ms`` per stage, ``model`` (``name``, ``version``).
            now: Unix time of the image (default: now).
        """
        camera = str(result.get("camera") or "unknown")
        self.images.labels(camera).inc()
        self.verdicts.labels(camera, str(result.get("verdict") or "unknown")).inc()
        for d in result.get("detections") or []:
            name = str(d.get("class_name"))
            self.detections.labels(camera, name).inc()
            self.confidence.labels(camera, name).observe(float(d.get("score", 0.0)))
        for stage, ms in (result.get("timings_ms") or {}).items():
            if stage in STAGES:
                self.stage_seconds.labels(stage).observe(float(ms) / 1000.0)
        model = result.get("model") or {}
        if model.get("name"):
            self.set_model(str(model["name"]), str(model.get("version") or ""))
        self.last_image.labels(camera).set(time.time() if now is None else now)

    def set_model(self, name: str, version: str) -> None:
        """Mark the model version answering now (the previous one's series is removed)."""
        if self._model == (name, version):
            return
        if self._model is not None:
            self.model_info.remove(*self._model)
        self.model_info.labels(name, version).set(1)
        self._model = (name, version)

    def record_error(self, kind: str) -> None:
        """Count an error of one kind (``model_unavailable``, ``poison``, ``review`` ...)."""
        self.errors.labels(kind).inc()

    def record_dead_letter(self, reason: str) -> None:
        """Count a record sent to the dead-letter topic."""
        self.dead_letters.labels(reason).inc()

    def record_review(self, camera: str, reasons: Any, queue_size: int | None = None) -> None:
        """Count a frame selected for review (once per reason) and, when known, the queue size."""
        for reason in reasons:
            self.review_selected.labels(camera, reason).inc()
        if queue_size is not None:
            self.review_queue_size.set(queue_size)

    def record_drift(self, camera: str, scores: Mapping[str, Mapping[str, float]]) -> None:
        """Set the drift gauges of a camera from :meth:`serving.drift.DriftMonitor.scores`."""
        for signal, s in scores.items():
            for method in ("psi", "ks"):
                if method in s:
                    self.drift_score.labels(camera, signal, method).set(float(s[method]))

    # ------------------------------------------------------------------ exposition

    def render(self) -> tuple[bytes, str]:
        """Exposition text and its content type (for a ``/metrics`` route of an existing app)."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def serve_metrics(metrics: InspectionMetrics, port: int, addr: str = "0.0.0.0"):
    """Expose the metrics over HTTP (``GET /metrics``) on a background thread.

    Args:
        metrics: The metrics.
        port: TCP port (0: a free one).
        addr: Address to bind.

    Returns:
        ``(server, thread)``; ``server.server_address[1]`` is the port, ``server.shutdown()`` stops it.
    """
    from prometheus_client import start_http_server

    return start_http_server(port, addr=addr, registry=metrics.registry)


def exposed_names(metrics: InspectionMetrics | None = None) -> set[str]:
    """Every series name the registry can expose (``_total``, ``_bucket``, ``_sum``, ``_count`` included)."""
    metrics = metrics or InspectionMetrics()
    names = set()
    for family in metrics.registry.collect():
        names.add(family.name)
        if family.type == "counter":
            names |= {family.name + "_total", family.name + "_created"}
        elif family.type == "histogram":
            names |= {family.name + s for s in ("_bucket", "_sum", "_count", "_created")}
    return names


def metric_labels(metrics: InspectionMetrics | None = None) -> dict[str, tuple[str, ...]]:
    """``{metric family name: its label names}`` (for checks of alert rules against the definitions)."""
    metrics = metrics or InspectionMetrics()
    out = {}
    for value in vars(metrics).values():
        name = getattr(value, "_name", None)
        if name is not None and hasattr(value, "_labelnames"):
            out[name] = tuple(value._labelnames)
    return out
