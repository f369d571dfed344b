"""Assembly of the processor: settings, clients and the core built from the environment, then served.

The one entry point that builds real clients (the model server's, S3, Kafka) for the processor;
``vinspect serve processor`` parses its options into :class:`ProcessorOptions` and calls
:func:`run`. Everything else in :mod:`serving.processor` takes its clients as arguments.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from typing import Any, Callable

from serving.processor.inspector import InspectConfig, Inspector, ProcessorConfigError
from serving.processor.metrics import ProcessorMetrics
from serving.processor.store import AnnotatedImageStore

MODES = ("kafka", "http")


@dataclass(frozen=True)
class ProcessorOptions:
    """What the operator chose on the command line (the rest comes from the environment).

    Attributes:
        mode: ``kafka`` (the consume/produce loop) or ``http`` (the Knative receiver).
        host / port: Bind address and port of the HTTP server (events in ``http`` mode; health and
            metrics always).
        concurrency: Images inspected in parallel.
        conf / iou: Detection thresholds.
        annotate: Store the annotated JPEG in S3 and put its key in each result.
        result_format: ``vinspect`` or ``manuela``; None: ``VINSPECT_RESULT_FORMAT``.
        group: Kafka consumer group; None: ``VINSPECT_KAFKA_GROUP``.
        loop: The feedback loop (metrics per camera, review queue, drift).
        metrics_port: Kafka mode: serve ``/metrics`` on this port too.
        log_level: The log level (uvicorn's, in ``http`` mode).
    """

    mode: str
    host: str
    port: int
    concurrency: int
    conf: float
    iou: float
    annotate: bool
    result_format: str | None
    group: str | None
    loop: bool
    metrics_port: int | None
    log_level: str


@dataclass
class Processor:
    """The assembled processor: the core and the clients it owns (:meth:`close` releases them)."""

    inspector: Inspector
    metrics: ProcessorMetrics
    client: Any
    store: AnnotatedImageStore | None
    hooks: Any
    runtime: Any

    def close(self) -> None:
        """Finish queued S3 puts and loop work, then close the model client."""
        if self.store is not None:
            self.store.close()
        if self.hooks is not None:
            self.hooks.close()
        self.client.close()


def assemble(options: ProcessorOptions, echo: Callable[[str], Any] = print) -> Processor:
    """Build the inspector and what it needs from the options and the environment.

    Args:
        options: The operator's choices.
        echo: Where the start-up lines go (the CLI's ``typer.echo``).

    Raises:
        ProcessorConfigError: An unknown mode or result format (the message names the option).
    """
    from serving.memory import keep_large_buffers
    from serving.model_client import ModelClient
    from vinspect.settings import ModelServerSettings, RuntimeSettings, S3Settings

    if options.mode not in MODES:
        raise ProcessorConfigError("--mode must be `kafka` or `http`")
    runtime = RuntimeSettings.from_env()
    fmt = options.result_format or runtime.result_format
    try:
        config = InspectConfig(
            conf=options.conf,
            iou=options.iou,
            annotate=options.annotate,
            result_format=fmt,
            max_pixels=runtime.max_image_pixels,
            max_image_bytes=runtime.max_image_bytes,
        )
    except ProcessorConfigError as exc:
        raise ProcessorConfigError(f"--result-format / VINSPECT_RESULT_FORMAT: {exc}") from None
    keep_large_buffers()  # a tensor per image is megabytes: no fresh pages for each one
    client = ModelClient.from_settings(ModelServerSettings.from_env(), retries=1)
    metrics = ProcessorMetrics()
    store = None
    s3 = S3Settings.from_env()
    if options.annotate and fmt == "vinspect" and not (s3.endpoint_url or s3.access_key_id):
        # No S3 configured: do not guess at AWS; results say "disabled: no image store configured".
        echo("no S3 settings (AWS_S3_ENDPOINT / AWS_ACCESS_KEY_ID): results carry no annotated image")
    elif options.annotate and fmt == "vinspect":
        # Short timeouts: a result waits for its put, and an S3 outage must cost seconds, not minutes.
        store = AnnotatedImageStore(
            s3.client(timeouts=(2.0, 10.0), attempts=2),
            s3.data_bucket,
            runtime.annotated_prefix,
            workers=max(2, options.concurrency),
            max_pending=4 * options.concurrency,
        )
        echo(f"annotated images -> s3://{s3.data_bucket}/{runtime.annotated_prefix}/")
    hooks = None
    if options.loop:
        from serving.feedback import from_settings as loop_hooks

        hooks = loop_hooks(metrics.loop)
        echo("feedback loop on: metrics per camera, review queue, drift")
    inspector = Inspector(client, config, metrics, store, hooks)
    return Processor(inspector, metrics, client, store, hooks, runtime)


def run(options: ProcessorOptions, echo: Callable[[str], Any] = print) -> None:
    """Assemble the processor and serve it until stopped (SIGTERM / SIGINT in Kafka mode).

    Raises:
        ProcessorConfigError: An unknown mode or result format.
    """
    processor = assemble(options, echo)
    echo(f"processor ({options.mode}) -> {processor.client!r}")
    try:
        if options.mode == "http":
            _serve_http(processor, options)
        else:
            _serve_kafka(processor, options, echo)
    finally:
        processor.close()


def _serve_http(processor: Processor, options: ProcessorOptions) -> None:
    import uvicorn

    from serving.processor.knative import create_http_app

    uvicorn.run(
        create_http_app(processor.inspector, processor.metrics, token=processor.runtime.token("processor")),
        host=options.host,
        port=options.port,
        log_level=options.log_level.lower(),
        access_log=False,
    )


def _serve_kafka(processor: Processor, options: ProcessorOptions, echo: Callable[[str], Any]) -> None:
    from serving.processor.health import serve_health
    from serving.processor.kafka_loop import KafkaLoop, kafka_clients
    from vinspect.settings import KafkaSettings

    kafka = KafkaSettings.from_env()
    consumer, producer = kafka_clients(kafka, options.group)
    kafka_loop = KafkaLoop(
        processor.inspector,
        consumer,
        producer,
        images_topic=kafka.images_topic,
        results_topic=kafka.results_topic,
        dlq_topic=kafka.dlq_topic,
        concurrency=options.concurrency,
        metrics=processor.metrics,
        dlq_copy_max_bytes=processor.runtime.dlq_copy_max_bytes,
    )
    health = serve_health(options.host, options.port, kafka_loop.live, kafka_loop.ready, processor.metrics)
    extra = None
    if options.metrics_port is not None and options.metrics_port != options.port:
        from serving.metrics import serve_metrics

        extra = serve_metrics(processor.metrics.loop, options.metrics_port, options.host)
        echo(f"metrics on http://{options.host}:{options.metrics_port}/metrics")
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: kafka_loop.stop())
    echo(
        f"{kafka.images_topic} -> {kafka.results_topic} (dlq {kafka.dlq_topic}); "
        f"health on http://{options.host}:{options.port}/healthz"
    )
    try:
        kafka_loop.run()
    finally:
        health.shutdown()
        if extra is not None:
            extra[0].shutdown()
