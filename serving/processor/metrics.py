"""Prometheus metrics of the processor (its adapters' own, and the feedback loop's in one registry)."""

from __future__ import annotations


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
