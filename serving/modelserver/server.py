"""``serve``: run the model server until interrupted (what ``vinspect serve model`` calls).

Builds the repository from the process's settings (S3 client, engine, precision), declares the
models to serve, and runs the REST app under uvicorn; the models load in the background while
the server already answers (503 until ready).
"""

from __future__ import annotations

import logging

from serving.modelserver.repository import ModelRepository
from serving.modelserver.rest import DEFAULT_BODY_TIMEOUT_S, DEFAULT_MAX_BODY_BYTES, create_app
from serving.modelserver.sources import ModelRoots, s3_client_factory_from_env

log = logging.getLogger(__name__)


def serve(
    models: list[tuple[str, str, str | None]],
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    threads: int = 0,
    parallel: int = 1,
    spin: bool = True,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    log_level: str = "info",
    engine: str | None = None,
    precision: str | None = None,
    token: str | None = None,
    model_roots: list[str] | None = None,
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S,
) -> None:
    """Run the model server until interrupted.

    Args:
        models: (name, uri, version-or-None) of each model to serve.
        host: Bind address: loopback by default; a container or edge box widens it explicitly.
        port: REST port (OVMS on KServe uses 8080; the OpenShift AI template 8888).
        threads: Threads per inference (0: the engine's default).
        parallel: Inference runs executed at once per model.
        spin: Let idle ONNX Runtime threads spin (off when sharing the CPU).
        max_body_bytes: Largest accepted request body.
        log_level: uvicorn log level.
        engine: ``openvino`` (default where installed) or ``onnxruntime``; ``$VINSPECT_ENGINE``.
        precision: OpenVINO inference precision; ``$VINSPECT_PRECISION`` (default: the variant's
            declared one, else the runtime's choice).
        token: Bearer token (see :func:`create_app`); None disables the repository API.
        model_roots: Where ``load`` may read from (see :class:`ModelRoots`).
        body_timeout_s: Seconds without a body byte before a request is answered 408.
    """
    import uvicorn

    from serving.memory import keep_large_buffers

    roots = ModelRoots.parse(model_roots)  # a bad root fails before anything starts
    keep_large_buffers()  # request bodies and tensors are megabytes: no fresh pages per request
    repository = ModelRepository(
        s3_client_factory_from_env(),
        threads=threads,
        parallel=parallel,
        spin=spin,
        engine=engine,
        precision=precision,
    )
    for name, uri, version in models:
        repository.register(name, uri, version)
    if token is None:
        log.warning("no VINSPECT_MODEL_TOKEN: inference is open and the repository API is disabled")
    app = create_app(
        repository, max_body_bytes=max_body_bytes, token=token, model_roots=roots, body_timeout_s=body_timeout_s
    )
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)
