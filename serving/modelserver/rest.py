"""The REST routes of the model server: a thin FastAPI layer over :class:`DataPlane`.

Each route reads what HTTP carries (path parameters, the ``Authorization`` and
``Inference-Header-Content-Length`` headers, the body) and hands it to the data plane; the
answer goes back as JSON or as the binary tensor extension's bytes. What HTTP alone decides
lives here: bodies are bounded in size (413, decompressed size included) and in time (408 when
the client stops sending), ``Content-Encoding`` gzip/deflate is undone, and every
:class:`ModelServerError` becomes ``{"error": message}`` with its status.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the routes' annotations at run
# time, and ``Request`` is imported inside create_app (FastAPI stays out of import time).
import asyncio
import gzip
import logging
import threading
import zlib
from typing import Any

from serving import v2
from serving.modelserver.dataplane import SERVER_NAME, SERVER_VERSION, DataPlane
from serving.modelserver.errors import ClientGone, InvalidInput, ModelServerError, PayloadTooLarge, RequestTimeout
from serving.modelserver.repository import ModelRepository
from serving.modelserver.sources import ModelRoots

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
# A client that stops sending mid-body (Content-Length larger than what it sends) gets a 408
# after this many seconds without a byte, instead of holding a worker forever.
DEFAULT_BODY_TIMEOUT_S = 30.0
# A load request is a few hundred bytes of JSON; a megabyte is generous.
_LOAD_BODY_BYTES = 1024 * 1024


async def _read_body(request: Any, max_bytes: int, timeout_s: float = DEFAULT_BODY_TIMEOUT_S) -> bytes:
    """Read the whole body, bounded in size (413) and in idle time between chunks (408).

    Raises:
        PayloadTooLarge: Declared, received or decompressed size over ``max_bytes``.
        RequestTimeout: No byte for ``timeout_s`` seconds before the announced end.
        InvalidInput: A bad or unsupported Content-Encoding.
    """
    from starlette.requests import ClientDisconnect

    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {max_bytes}")
    chunks, size = [], 0
    stream = request.stream().__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), timeout_s)
        except StopAsyncIteration:
            break
        except asyncio.TimeoutError:
            # One line, no traceback: a stalled client is the client's problem, not ours.
            log.warning(
                "%s %s: body stalled (%d of %s bytes after %.0fs without data); answered 408",
                request.method,
                request.url.path,
                size,
                declared or "?",
                timeout_s,
            )
            raise RequestTimeout(
                f"request body incomplete: received {size} of {declared or 'the announced'} bytes, "
                f"then nothing for {timeout_s:.0f}s"
            ) from None
        except ClientDisconnect:
            log.warning(
                "%s %s: client closed the connection after %d of %s body bytes",
                request.method,
                request.url.path,
                size,
                declared or "?",
            )
            raise ClientGone("client disconnected") from None
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(f"request body exceeds the limit of {max_bytes} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "").lower()
    if encoding in ("gzip", "deflate"):
        try:
            raw = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
            body = raw.decompress(body, max_bytes + 1)
        except (zlib.error, gzip.BadGzipFile) as exc:
            raise InvalidInput(f"body is not valid {encoding}: {exc}") from None
        if len(body) > max_bytes:
            raise PayloadTooLarge(f"decompressed body exceeds the limit of {max_bytes} bytes")
    elif encoding not in ("", "identity"):
        raise InvalidInput(f"unsupported Content-Encoding {encoding!r}")
    return body


def create_app(
    repository: ModelRepository,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    load_on_startup: bool = True,
    token: str | None = None,
    model_roots: ModelRoots | list[str] | None = None,
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S,
) -> Any:
    """Build the FastAPI application.

    Args:
        repository: The models to serve. Models registered but not loaded are loaded in
            a background thread at start-up, so the server answers 503 while loading.
        max_body_bytes: Largest accepted request body (after decompression).
        load_on_startup: Load registered models when the app starts.
        token: Bearer token. When set, every endpoint but the two health probes requires
            it. When None, inference is open and the repository API (index, load, unload)
            answers 403: it is never served without a token.
        model_roots: Where the repository API may load from (folders, ``s3://bucket[/prefix]``);
            none means only reloads of the models declared at start-up.
        body_timeout_s: Seconds without a body byte before a request is answered 408.

    Returns:
        The ASGI app; its ``state.repository`` and ``state.dataplane`` are the objects it serves.
    """
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response

    plane = DataPlane(repository, token=token, model_roots=model_roots)

    @asynccontextmanager
    async def lifespan(_app: Any):
        if load_on_startup:
            threading.Thread(target=repository.load_pending, name="model-load", daemon=True).start()
        yield

    app = FastAPI(title=SERVER_NAME, version=SERVER_VERSION, lifespan=lifespan)
    app.state.repository = repository
    app.state.dataplane = plane

    def body_of(request: Request, limit: int) -> Any:
        return lambda: _read_body(request, limit, body_timeout_s)

    def auth(request: Request) -> str | None:
        return request.headers.get("authorization")

    @app.exception_handler(ModelServerError)
    async def _error(_request: Request, exc: ModelServerError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        return JSONResponse({"error": str(exc)}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(v2.V2ProtocolError)
    async def _protocol_error(_request: Request, exc: v2.V2ProtocolError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=400)

    @app.get("/v2/health/live")
    async def live() -> dict[str, bool]:
        return plane.live()

    @app.get("/v2/health/ready")
    async def ready() -> JSONResponse:
        ok = plane.ready()
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @app.get("/v2")
    async def server_metadata(request: Request) -> dict[str, Any]:
        return plane.server_metadata(authorization=auth(request))

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    async def model_metadata(request: Request, name: str, version: str | None = None) -> dict[str, Any]:
        return plane.model_metadata(name, version, authorization=auth(request))

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(request: Request, name: str, version: str | None = None) -> dict[str, Any]:
        return plane.model_ready(name, version, authorization=auth(request))

    @app.post("/v2/models/{name}/infer")
    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer(name: str, request: Request, version: str | None = None) -> Response:
        payload, headers = await plane.infer(
            name,
            body_of(request, max_body_bytes),
            version=version,
            header_length=request.headers.get(v2.HEADER_LENGTH.lower()),
            authorization=auth(request),
        )
        return Response(payload, headers=headers)

    @app.post("/v2/repository/index")
    async def repository_index(request: Request) -> list[dict[str, str]]:
        return plane.index(authorization=auth(request))

    @app.post("/v2/repository/models/{name}/load")
    async def load(name: str, request: Request) -> dict[str, Any]:
        return await plane.load(name, body_of(request, _LOAD_BODY_BYTES), authorization=auth(request))

    @app.post("/v2/repository/models/{name}/unload")
    async def unload(name: str, request: Request) -> dict[str, Any]:
        return plane.unload(name, authorization=auth(request))

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        text, content_type = plane.metrics(authorization=auth(request))
        return Response(text, media_type=content_type)

    return app
