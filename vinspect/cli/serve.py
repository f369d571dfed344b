"""`vinspect serve model|processor|camera|dashboard`: the runtime services.

Heavy imports (onnxruntime, confluent-kafka, FastAPI) stay inside the command bodies so that
`vinspect --help` is instant.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Optional

import typer

from vinspect.defaults import SERVE


def _logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if logging.getLevelName(level.upper()) != logging.DEBUG:
        # httpx logs every request at INFO: one line per image would drown the service's own log
        # (the processor's metrics count requests and retries instead).
        for noisy in ("httpx", "httpcore"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def champion_uri(model_name: str, bucket: str, alias: str = "champion") -> tuple[str, str]:
    """Resolve a registry alias to (`s3://<bucket>/<model>/<version>/`, version).

    Uses MLflow's REST API through ``serving.registry_client`` (``requests`` only): the serving
    extra and the model-server image do not carry the ``mlflow`` package. Credentials come from
    ``MLFLOW_TRACKING_TOKEN`` or ``MLFLOW_TRACKING_USERNAME``/``PASSWORD``, or, with
    ``MLFLOW_TRACKING_AUTH=kubernetes``, the pod's service-account token; a private CA from
    ``MLFLOW_TRACKING_SERVER_CERT_PATH`` (MLflow's own variable).

    Raises:
        serving.registry_client.AliasNotFound: No such model or alias.
        serving.registry_client.AliasLookupError: Registry unset, unreachable or refusing.
    """
    import os

    from serving.registry_client import AliasLookupError, RegistryAuth
    from serving.registry_client import champion_uri as resolve
    from vinspect.settings import MLflowSettings

    settings = MLflowSettings.from_env()
    if not settings.tracking_uri:
        raise AliasLookupError("MLFLOW_TRACKING_URI is not set: run `vinspect local up` or export it (see README)")
    return resolve(
        settings.tracking_uri,
        model_name,
        bucket,
        alias,
        auth=RegistryAuth.from_settings(settings),
        verify=os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or True,
    )


def model(
    uri: Optional[str] = typer.Option(
        None, "--uri", help="ONNX file, model folder (OVMS layout ok) or s3://bucket/model/version/."
    ),
    champion: bool = typer.Option(
        False,
        "--champion",
        help="Serve the registry's `champion` version from S3 (looked up over MLflow's REST API).",
    ),
    champion_if_any: bool = typer.Option(
        False,
        "--champion-if-any",
        help="Like --champion, but start empty when there is no champion yet (the first rollout loads one).",
    ),
    name: Optional[str] = typer.Option(None, "--name", help="Model name in the URLs [VINSPECT_MODEL_NAME]."),
    version: Optional[str] = typer.Option(None, "--version", help="Version to report (default: the folder's)."),
    host: str = typer.Option(
        "127.0.0.1", help="Bind address: loopback by default; 0.0.0.0 in a container or to serve other hosts."
    ),
    port: int = typer.Option(8080, help="REST port."),
    engine: Optional[str] = typer.Option(
        None,
        "--engine",
        help="Inference engine: openvino (OVMS's; the default where installed) or onnxruntime [VINSPECT_ENGINE].",
    ),
    precision: Optional[str] = typer.Option(
        None,
        "--precision",
        help="OpenVINO inference precision: f32, bf16 or auto (default: what an IR "
        "variant declares, else the runtime's choice, bf16 on CPUs that have it) [VINSPECT_PRECISION].",
    ),
    model_root: list[str] = typer.Option(
        [],
        "--model-root",
        envvar="VINSPECT_MODEL_ROOTS",
        help="Folder, s3://BUCKET or s3://BUCKET/PREFIX the repository API may load from (repeatable; the S3 "
        "models bucket AWS_S3_BUCKET is always allowed) [VINSPECT_MODEL_ROOTS, space-separated].",
    ),
    body_timeout_s: float = typer.Option(
        30.0, "--body-timeout", help="Seconds without a request-body byte before answering 408."
    ),
    threads: int = typer.Option(
        0,
        help="Threads per inference (0: one per core). Best "
        "single-image latency; for throughput under concurrent requests on a few "
        "cores, --threads 1 --parallel <cores> is faster (benchmarks/stream.py).",
    ),
    parallel: int = typer.Option(1, help="Inference runs at once per model (others queue)."),
    spin: bool = typer.Option(
        True,
        help="Assume dedicated cores (idle ONNX Runtime threads spin, OpenVINO pins its threads): "
        "fastest there; use --no-spin when the CPU is shared (local stack, processor on the same node).",
    ),
    max_body_mb: int = typer.Option(64, help="Largest request body accepted, MiB."),
    log_level: str = typer.Option("info", help="Log level."),
) -> None:
    """Serve an ONNX or OpenVINO IR model over the KServe v2 protocol (what OVMS does on the cluster).

    With VINSPECT_MODEL_TOKEN set, every endpoint but the health probes needs
    `Authorization: Bearer <token>`; without it inference is open and the repository API
    (load / unload, which rollouts use) is disabled.
    """
    from serving.modelserver import default_model_roots, serve
    from vinspect.settings import MLflowSettings, ModelServerSettings, S3Settings

    _logging(log_level)
    model_name = name or MLflowSettings.from_env().model_name
    if champion:
        if uri:
            raise typer.BadParameter("give either --uri or --champion, not both")
        from serving.registry_client import AliasLookupError

        try:
            uri, version = champion_uri(model_name, S3Settings.from_env().bucket)
        except AliasLookupError as exc:
            # Kept: not a print-and-exit but a usage error naming --champion (exit 2), where the root
            # group would report the VinspectError with exit 1; --champion-if-any below starts empty instead.
            raise typer.BadParameter(f"--champion: {exc}") from None
        typer.echo(f"champion of {model_name} is version {version}: {uri}")
    if champion_if_any and not uri:
        try:
            uri, version = champion_uri(model_name, S3Settings.from_env().bucket)
            typer.echo(f"champion of {model_name} is version {version}: {uri}")
        except Exception as exc:  # noqa: BLE001 - no model, no alias, or registry unreachable
            typer.echo(f"no champion of {model_name} to serve yet ({type(exc).__name__}); starting empty")
    if not uri and not champion_if_any:
        raise typer.BadParameter("--uri, --champion or --champion-if-any is required")
    if uri:
        typer.echo(f"serving {model_name} from {uri} on http://{host}:{port}/v2/models/{model_name}")
    else:
        typer.echo(
            f"serving no model yet on http://{host}:{port}; a rollout loads one with "
            f"POST /v2/repository/models/{model_name}/load"
        )
    token = ModelServerSettings.from_env().token
    models = [(model_name, uri, version)] if uri else []
    try:
        serve(
            models,
            host,
            port,
            threads=threads,
            parallel=parallel,
            spin=spin,
            max_body_bytes=max_body_mb * 1024 * 1024,
            log_level=log_level.lower(),
            engine=engine,
            precision=precision,
            token=token.get_secret_value() if token else None,
            model_roots=default_model_roots(model_root),
            body_timeout_s=body_timeout_s,
        )
    except ValueError as exc:  # a malformed --model-root
        raise typer.BadParameter(str(exc)) from None


def processor(
    mode: str = typer.Option("kafka", help="`kafka` (consume/produce loop) or `http` (Knative receiver)."),
    host: str = typer.Option("0.0.0.0", help="Bind address of the HTTP/health server."),
    port: int = typer.Option(8080, help="HTTP port (events in `http` mode; health and metrics always)."),
    concurrency: int = typer.Option(4, help="Images inspected in parallel."),
    conf: float = typer.Option(SERVE.inspect_conf, help="Confidence threshold (the demo used 0.2)."),
    iou: float = typer.Option(SERVE.inspect_iou, help="NMS IoU threshold (the demo used 0.4)."),
    annotate: bool = typer.Option(
        True, help="Store the annotated JPEG in S3 (VINSPECT_DATA_BUCKET) and put its key in each result."
    ),
    result_format: Optional[str] = typer.Option(
        None,
        help="`vinspect` (default) or `manuela`: the original demo's reply "
        "(manuela.image-processor.response, {text, id, status, image}) [VINSPECT_RESULT_FORMAT].",
    ),
    group: Optional[str] = typer.Option(None, help="Kafka consumer group [VINSPECT_KAFKA_GROUP]."),
    loop: bool = typer.Option(
        True,
        "--loop/--no-loop",
        help="Feedback loop: per-camera metrics, review queue (s3://$VINSPECT_DATA_BUCKET/"
        "review/) and drift against the model version's reference (s3://$AWS_S3_BUCKET/<model>/<version>/).",
    ),
    metrics_port: Optional[int] = typer.Option(
        None,
        envvar="VINSPECT_METRICS_PORT",
        help="Kafka mode: serve /metrics on this port too (the PodMonitor's `user-port`); /metrics is "
        "always on --port as well. HTTP mode serves /metrics on the app.",
    ),
    log_level: str = typer.Option("info", help="Log level."),
) -> None:
    """Run the image processor: images -> model (v2) -> result events."""
    from serving.processor.app import ProcessorOptions, run
    from serving.processor.inspector import ProcessorConfigError

    _logging(log_level)
    options = ProcessorOptions(
        mode=mode,
        host=host,
        port=port,
        concurrency=concurrency,
        conf=conf,
        iou=iou,
        annotate=annotate,
        result_format=result_format,
        group=group,
        loop=loop,
        metrics_port=metrics_port,
        log_level=log_level,
    )
    try:
        run(options, echo=typer.echo)
    except ProcessorConfigError as exc:
        raise typer.BadParameter(str(exc)) from None


def camera(
    source_arg: Optional[str] = typer.Argument(
        None, metavar="[SOURCE]", help="Same as --source (kept for existing scripts)."
    ),
    source: Optional[str] = typer.Option(
        None,
        "--source",
        help="s3://bucket/prefix/ (real frames from S3, AWS_* settings), a folder "
        "(a mounted volume on the cluster), a zip/tar archive, or `synthetic[:N]`. Default: "
        "VINSPECT_CAMERA_SOURCE, else synthetic.",
    ),
    cameras: int = typer.Option(1, help="Number of simulated cameras."),
    fps: float = typer.Option(1.0, help="Frames per second per camera (0: as fast as possible)."),
    count: Optional[int] = typer.Option(None, help="Stop after this many frames (default: one pass)."),
    loop: bool = typer.Option(False, "--loop", help="Repeat the source forever."),
    shuffle: bool = typer.Option(False, "--shuffle", help="Shuffle each pass."),
    legacy: bool = typer.Option(False, "--legacy", help="Produce the original demo's JSON record."),
    scale: float = typer.Option(1.0, help="Resize factor before JPEG encoding."),
    quality: int = typer.Option(90, help="JPEG quality."),
    seed: int = typer.Option(0, help="Seed for shuffle and the synthetic generator."),
) -> None:
    """Stream images to Kafka as CloudEvents (binary mode), like the demo's camera."""
    from confluent_kafka import Producer
    from tqdm import tqdm

    from serving.camera import frame_stream, load_frames, produce_frames
    from vinspect.settings import KafkaSettings, RuntimeSettings, S3Settings

    if source and source_arg and source != source_arg:
        raise typer.BadParameter(f"two sources given: {source_arg!r} and --source {source!r}")
    kafka = KafkaSettings.from_env()
    runtime = RuntimeSettings.from_env()
    # An explicit source wins; the setting is how the cluster's Deployment chooses (ConfigMap).
    where = source or source_arg or runtime.camera_source.strip() or "synthetic"
    s3 = S3Settings.from_env().client() if where.startswith("s3://") else None
    try:
        frames = load_frames(where, seed=seed, s3=s3)
    except ValueError as exc:
        raise typer.BadParameter(f"--source / VINSPECT_CAMERA_SOURCE: {exc}") from None
    total = count if count is not None else (None if loop else len(frames))
    producer = Producer({**kafka.client_config(), "linger.ms": 5, "message.max.bytes": 8 * 1024 * 1024})
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with tqdm(total=total, unit="img", desc=f"-> {kafka.images_topic}") as bar:
        sent = produce_frames(
            producer,
            kafka.images_topic,
            frame_stream(frames, loop=loop, shuffle=shuffle, seed=seed),
            cameras=cameras,
            fps=fps,
            count=count,
            legacy=legacy,
            quality=quality,
            scale=scale,
            on_sent=lambda *_: bar.update(1),
            stop=stop.is_set,
            max_pixels=runtime.max_image_pixels,
            max_record_bytes=runtime.max_image_bytes,
        )
    typer.echo(f"sent {sent} frames from {cameras} camera(s)")


def dashboard(
    host: str = typer.Option("0.0.0.0", help="Bind address."),
    port: int = typer.Option(8088, help="HTTP port."),
    kafka: bool = typer.Option(True, help="Also consume the results topic (off: HTTP events only)."),
    from_beginning: bool = typer.Option(False, help="Replay the results topic from its start."),
    log_level: str = typer.Option("info", help="Log level."),
) -> None:
    """Serve the live dashboard (result events via POST / from a Knative Trigger, or Kafka)."""
    import uvicorn

    from serving.dashboard.app import DashboardState, ImageSource, create_app, kafka_feed
    from vinspect.settings import KafkaSettings, RuntimeSettings, S3Settings

    _logging(log_level)
    runtime = RuntimeSettings.from_env()
    s3 = S3Settings.from_env()
    # The browser has no S3 credentials: annotated images are fetched through this server.
    images = ImageSource(s3.client(timeouts=(2.0, 10.0), attempts=2), s3.data_bucket, runtime.annotated_prefix)
    from serving.dashboard.app import ReviewDesk
    from serving.review import ReviewSelector, ReviewStore

    # Operator flags and the queue size: the review queue in the data bucket (serving.review).
    review = ReviewDesk(ReviewSelector(), ReviewStore(images.s3, s3.data_bucket), images)
    state = DashboardState(images=images, review=review)
    feed = kafka_feed(KafkaSettings.from_env(), state, from_beginning) if kafka else None
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    typer.echo(f"dashboard on http://{shown}:{port}/")
    uvicorn.run(
        create_app(state, feed, token=runtime.token("dashboard")),
        host=host,
        port=port,
        log_level=log_level.lower(),
        access_log=False,
    )


def register(app: typer.Typer) -> None:
    """Add the runtime commands to the `serve` sub-app."""
    app.command("model")(model)
    app.command("processor")(processor)
    app.command("camera")(camera)
    app.command("dashboard")(dashboard)
