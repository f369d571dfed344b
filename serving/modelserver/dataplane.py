"""The data plane: what every REST route of the model server does, with no HTTP in it.

As kserve's ``DataPlane`` sits between its REST routes and its models, :class:`DataPlane` holds
the server's behaviour (access rules, the v2 inference flow, the repository API, the metrics)
over plain values: the ``Authorization`` header's text, the body as an awaitable, the
``Inference-Header-Content-Length`` header's text. The REST layer only reads the request and
writes the answer, so everything here is tested by calling it, without a server or a socket.

Errors are :mod:`serving.modelserver.errors` classes; each carries its HTTP status.
"""

from __future__ import annotations

import hmac
import logging
import time
from typing import Any, Awaitable, Callable

from serving import v2
from serving.modelserver.errors import Forbidden, InvalidInput, ModelServerError, Unauthorized
from serving.modelserver.model import OnnxModel
from serving.modelserver.repository import ModelRepository
from serving.modelserver.sources import ModelRoots

log = logging.getLogger(__name__)

SERVER_NAME = "vinspect-modelserver"
SERVER_VERSION = "0.1.0"
_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)

BodyReader = Callable[[], Awaitable[bytes]]
"""Reads a request's body when called: the transport applies its size and time limits there."""


class DataPlane:
    """The model server's operations over one repository, access rules and metrics included.

    Args:
        repository: The models to serve.
        token: Bearer token. When set, every operation but the health probes requires it.
            When None, inference is open and the repository API (index, load, unload) is
            refused with :class:`Forbidden`: it is never served without a token.
        model_roots: Where the repository API may load from (folders, ``s3://bucket[/prefix]``);
            none means only reloads of the models declared at start-up.

    Raises:
        ValueError: For a model root that is not an absolute folder or ``s3://bucket[/prefix]``.
    """

    def __init__(
        self,
        repository: ModelRepository,
        *,
        token: str | None = None,
        model_roots: ModelRoots | list[str] | None = None,
    ):
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.repository = repository
        self.roots = model_roots if isinstance(model_roots, ModelRoots) else ModelRoots.parse(model_roots)
        self._expected = token.encode("utf-8") if token else None
        # One registry per server, not prometheus_client's global one: several servers in one
        # process (tests, benchmarks) keep their own counts.
        self.metrics_registry = CollectorRegistry()
        self._requests_total = Counter(
            "vinspect_modelserver_requests",
            "Inference requests by model and HTTP status",
            ["model", "code"],
            registry=self.metrics_registry,
        )
        self._infer_seconds = Histogram(
            "vinspect_modelserver_infer_seconds",
            "Time spent in the inference engine",
            ["model"],
            registry=self.metrics_registry,
            buckets=_SECONDS_BUCKETS,
        )
        self._request_seconds = Histogram(
            "vinspect_modelserver_request_seconds",
            "Whole inference request time",
            ["model"],
            registry=self.metrics_registry,
            buckets=_SECONDS_BUCKETS,
        )

    # -- access ------------------------------------------------------------------------------

    def authorize(self, authorization: str | None, *, repository_api: bool = False) -> None:
        """Check the ``Authorization`` header's value against the token (constant-time).

        Args:
            authorization: The header's value (``Bearer <token>``), or None when absent.
            repository_api: The operation is index, load or unload.

        Raises:
            Forbidden: A repository operation on a server without a token.
            Unauthorized: A token is set and the header does not carry it.
        """
        if self._expected is None:
            if repository_api:
                raise Forbidden(
                    "the repository API (index, load, unload) is disabled: this server was started "
                    "without a token; set VINSPECT_MODEL_TOKEN to enable it"
                )
            return
        scheme, _, value = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode("utf-8"), self._expected):
            raise Unauthorized("missing or wrong bearer token (Authorization: Bearer $VINSPECT_MODEL_TOKEN)")

    # -- health and metadata (v2) ------------------------------------------------------------

    def live(self) -> dict[str, bool]:
        """The server is up (open to probes)."""
        return {"live": True}

    def ready(self) -> bool:
        """Every model meant to serve is serving (open to probes; see :meth:`ModelRepository.ready`)."""
        return self.repository.ready()

    def server_metadata(self, *, authorization: str | None = None) -> dict[str, Any]:
        """The v2 ``$metadata_server_response``."""
        self.authorize(authorization)
        return {
            "name": SERVER_NAME,
            "version": SERVER_VERSION,
            "extensions": ["binary_tensor_data", "model_repository"],
        }

    def model_metadata(
        self, name: str, version: str | None = None, *, authorization: str | None = None
    ) -> dict[str, Any]:
        """The v2 ``$metadata_model_response`` of the serving model.

        Raises:
            ModelNotFound / ModelNotReady: See :meth:`ModelRepository.get`.
        """
        self.authorize(authorization)
        return self.repository.get(name, version).metadata_response()

    def model_ready(self, name: str, version: str | None = None, *, authorization: str | None = None) -> dict[str, Any]:
        """``{"name", "ready": True}`` when the model serves.

        Raises:
            ModelNotFound / ModelNotReady: When it does not (the REST answer is then 404 / 503).
        """
        self.authorize(authorization)
        self.repository.get(name, version)
        return {"name": name, "ready": True}

    # -- inference ---------------------------------------------------------------------------

    async def infer(
        self,
        name: str,
        body: BodyReader,
        *,
        version: str | None = None,
        header_length: str | None = None,
        authorization: str | None = None,
    ) -> tuple[bytes, dict[str, str]]:
        """Run one v2 inference request: check access, find the model, decode, validate, run, encode.

        The model is looked up before the body is read, so a request for an unknown or loading
        model is answered without waiting for its body. The engine runs in a worker thread
        (both engines release the GIL); decoding and encoding stay on the caller's.

        Args:
            name: The model (the URL's ``{name}``).
            body: Reads the request body.
            version: The URL's ``{version}``, if any.
            header_length: The ``Inference-Header-Content-Length`` header's text (binary
                tensor extension), or None for a JSON body.
            authorization: The ``Authorization`` header's value.

        Returns:
            ``(body, headers)`` of the v2 response (JSON or binary extension).

        Raises:
            ModelServerError: Each with its HTTP status; a malformed body is :class:`InvalidInput`
                naming the field.
        """
        from anyio import to_thread

        started = time.perf_counter()
        code = "200"
        try:
            self.authorize(authorization)
            model = self.repository.get(name, version)
            data = await body()
            if header_length is not None:
                if not header_length.isdigit():
                    raise InvalidInput(f"{v2.HEADER_LENGTH} must be an integer")
                decoded = _decode(data, int(header_length))
            else:
                decoded = _decode(data, None)
            feeds = model.validate(decoded)
            if decoded.outputs is None:
                wanted = [(o.name, decoded.binary_data_output) for o in model.outputs]
            else:
                wanted = [(o.name, o.binary) for o in decoded.outputs]
            t0 = time.perf_counter()
            try:
                # anyio's worker threads, as Starlette's run_in_threadpool: one pool for the app.
                arrays = await to_thread.run_sync(model.infer, feeds, [n for n, _ in wanted])
            # Must catch everything: the input passed validation, so what the engines raise here (OpenVINO's
            # RuntimeError, ONNX Runtime's pybind11 classes) is a runtime input problem, a 400 naming the model.
            except Exception as exc:  # noqa: BLE001
                raise InvalidInput(f"model {name!r} rejected the input: {exc}") from None
            self._infer_seconds.labels(name).observe(time.perf_counter() - t0)
            return v2.encode_response(
                model.name,
                model.version,
                decoded.id,
                [(n, a, b) for (n, b), a in zip(wanted, arrays)],
            )
        except ModelServerError as exc:
            code = str(exc.status_code)
            raise
        finally:
            self._requests_total.labels(name, code).inc()
            self._request_seconds.labels(name).observe(time.perf_counter() - started)

    # -- repository API (Triton's repository extension) --------------------------------------

    def index(self, *, authorization: str | None = None) -> list[dict[str, str]]:
        """The repository index: name, version, state, reason of every model."""
        self.authorize(authorization, repository_api=True)
        return self.repository.index()

    async def load(self, name: str, body: BodyReader, *, authorization: str | None = None) -> dict[str, Any]:
        """Load (or reload) a model from the body's ``parameters.uri`` (confined to the roots).

        The load runs in a worker thread: building an engine takes seconds, and requests to the
        model already serving go on meanwhile.

        Raises:
            InvalidInput: A malformed body, naming the field.
            Forbidden: No token configured, or a uri outside the model roots.
            ModelLoadError: Nothing loadable at the uri.
        """
        from anyio import to_thread

        self.authorize(authorization, repository_api=True)
        uri, version = parse_load_request(await body())
        model: OnnxModel = await to_thread.run_sync(self.repository.load, name, uri, version, self.roots)
        return {"name": model.name, "version": model.version, "state": "READY"}

    def unload(self, name: str, *, authorization: str | None = None) -> dict[str, Any]:
        """Stop serving a model (it stays in the index as UNAVAILABLE)."""
        self.authorize(authorization, repository_api=True)
        self.repository.unload(name)
        return {"name": name, "state": "UNAVAILABLE"}

    # -- metrics -----------------------------------------------------------------------------

    def metrics(self, *, authorization: str | None = None) -> tuple[bytes, str]:
        """The Prometheus exposition and its content type.

        Per-model counters name the models, so they are behind the token when one is set.
        """
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        self.authorize(authorization)
        return generate_latest(self.metrics_registry), CONTENT_TYPE_LATEST


def _decode(data: bytes, header_length: int | None) -> v2.InferRequest:
    try:
        return v2.decode_request(data, header_length)
    except v2.V2ProtocolError as exc:
        raise InvalidInput(str(exc)) from None


def parse_load_request(body: bytes) -> tuple[str | None, str | None]:
    """The ``uri`` and ``version`` of a repository load request, each field checked.

    An empty body, or one without ``parameters``, reloads the model's current source.

    Raises:
        InvalidInput: Naming the field that is wrong.
    """
    if not body.strip():
        return None, None
    try:
        parsed = v2.json_object(body, "load request", like='{"parameters": {"uri": ...}}')
    except v2.V2ProtocolError as exc:
        raise InvalidInput(str(exc)) from None
    params = parsed.get("parameters")
    if params is None:
        return None, None
    if not isinstance(params, dict):
        raise InvalidInput(f"load request 'parameters' must be an object, not {type(params).__name__}")
    uri, version = params.get("uri"), params.get("version")
    if uri is not None and not isinstance(uri, str):
        raise InvalidInput(f"load request 'parameters.uri' must be a string, not {type(uri).__name__}")
    if version is not None and (isinstance(version, bool) or not isinstance(version, (str, int))):
        raise InvalidInput(
            f"load request 'parameters.version' must be a string or integer, not {type(version).__name__}"
        )
    return uri or None, str(version) if version is not None else None
