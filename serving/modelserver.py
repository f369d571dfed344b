"""Local KServe v2 (Open Inference Protocol) model server over OpenVINO (or ONNX Runtime).

What OpenVINO Model Server does for a model folder on the cluster, this does on a laptop or
in CI, with the same engine: OpenVINO by default (``serving.detector.open_engine``; ONNX Runtime
with ``engine="onnxruntime"`` or ``VINSPECT_ENGINE``), reading ``model.onnx`` or an OpenVINO IR
(``model.xml`` + ``model.bin``) from the version folder as OVMS does, at the precision an IR
variant declares (else the runtime's choice, as OVMS). The same URLs, the same tensor names
(the graph's, e.g. `images` / `output0`),
JSON tensors and the binary tensor extension, plus the Triton repository extension
(`POST /v2/repository/models/{name}/load`) that the rollout step uses to swap models.

Shape of the code follows KServe's python servers: one small model class with `load()` and
`infer()`, one exception class per HTTP status, and a thin FastAPI layer.

Swapping without dropping requests: a load builds the new engine completely
while the old one keeps serving, then replaces the repository's reference in one
assignment. Requests already running keep the object they started with.

Access: a bearer token (``VINSPECT_MODEL_TOKEN``, the setting the processor and the rollout
already send) guards the repository API always and every model endpoint when it is set; a server
started without a token serves inference but answers 403 to the repository API (it is disabled,
not open). ``load`` reads only under the server's model roots (local folders and
``s3://bucket[/prefix]``), checked before anything is opened, so its errors say nothing about
paths outside them. Health endpoints stay open for probes. Bodies are bounded in size (413) and
in time (408 when the client stops sending), and every malformed body is a 400 naming the field.
"""

import asyncio
import gzip
import hmac
import json
import logging
import os
import re
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

import numpy as np

from serving import v2

log = logging.getLogger(__name__)

SERVER_NAME = "vinspect-modelserver"
SERVER_VERSION = "0.1.0"
PLATFORM = "onnx_onnxv1"  # what ONNX Runtime serving reports
OPENVINO_PLATFORM = "OpenVINO"  # what OVMS reports for every model, ONNX included (specs/oip/README.md)
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
# A client that stops sending mid-body (Content-Length larger than what it sends) gets a 408
# after this many seconds without a byte, instead of holding a worker forever.
DEFAULT_BODY_TIMEOUT_S = 30.0


class ModelServerError(Exception):
    """Base of the errors that map to an HTTP status; the message is shown to the client."""

    status_code = 500


class InvalidInput(ModelServerError):
    """Bad request: wrong tensor name, shape, datatype, malformed or oversized body."""

    status_code = 400


class ModelNotFound(ModelServerError):
    """No model (or model version) of that name is configured."""

    status_code = 404


class ModelNotReady(ModelServerError):
    """The model is configured but still loading (or failed to load)."""

    status_code = 503


class ModelLoadError(ModelServerError):
    """A load request could not be satisfied (missing file, unreadable ONNX)."""

    status_code = 400


class Unauthorized(ModelServerError):
    """No bearer token, or the wrong one."""

    status_code = 401


class Forbidden(ModelServerError):
    """The request is not allowed here (repository API disabled, uri outside the model roots)."""

    status_code = 403


class RequestTimeout(ModelServerError):
    """The client stopped sending the body it announced."""

    status_code = 408


class PayloadTooLarge(ModelServerError):
    """The body (or its decompressed form) is larger than the server accepts."""

    status_code = 413


class _ClientGone(ModelServerError):
    """The client closed the connection mid-body; nobody reads the answer."""

    status_code = 400


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output as the metadata endpoint reports it (-1 = dynamic dim)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        """Return the v2 `$metadata_tensor` object."""
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


# --------------------------------------------------------------------------------------
# Locating and reading the ONNX file (local path or S3), OVMS layout aware.
# --------------------------------------------------------------------------------------


@dataclass
class ModelSource:
    """Where a model came from and its bytes (ONNX, or OpenVINO IR XML plus ``weights``)."""

    uri: str
    location: str  # the exact file read (path or s3 key)
    content: bytes
    version_folder: str | None  # OVMS-style numeric folder the file sat in, if any
    weights: bytes | None = None  # the IR's .bin when `location` is a model.xml

    @property
    def is_ir(self) -> bool:
        """True for an OpenVINO IR (``.xml`` + ``.bin``)."""
        return self.location.endswith(".xml")


def _model_file(names: list[str]) -> str | None:
    """The file OVMS would load from one folder's file names: IR first, then ONNX."""
    for preferred in ("model.xml", "model.onnx"):
        if preferred in names:
            return preferred
    for suffix in (".xml", ".onnx"):
        found = sorted(n for n in names if n.endswith(suffix))
        if found:
            return found[0]
    return None


def _ir_weights(xml: str) -> str:
    return xml[: -len(".xml")] + ".bin"


def _pick_version(candidates: dict[str, str], where: str) -> tuple[str, str]:
    """Pick the highest numeric version folder, as OVMS serves the latest version."""
    numeric = {k: v for k, v in candidates.items() if k.isdigit() and int(k) > 0}
    if not numeric:
        raise ModelLoadError(f"no model.onnx or model.xml and no numeric version folder holding one under {where}")
    best = max(numeric, key=int)
    return best, numeric[best]


def _local_source(uri: str, file: Path, folder: str | None) -> ModelSource:
    if file.suffix == ".xml":
        weights = file.with_suffix(".bin")
        if not weights.is_file():
            raise ModelLoadError(f"OpenVINO IR {file} has no weights file {weights.name} beside it")
        return ModelSource(uri, str(file), file.read_bytes(), folder, weights.read_bytes())
    return ModelSource(uri, str(file), file.read_bytes(), folder)


def _read_local(uri: str) -> ModelSource:
    path = Path(urlparse(uri).path if uri.startswith("file://") else uri)
    if path.is_file():
        return _local_source(uri, path, None)
    if not path.is_dir():
        raise ModelLoadError(f"model path {path} does not exist")
    direct = _model_file([p.name for p in path.iterdir() if p.is_file()])
    if direct:
        return _local_source(uri, path / direct, None)
    candidates = {}
    for sub in path.iterdir():
        chosen = _model_file([p.name for p in sub.iterdir() if p.is_file()]) if sub.is_dir() else None
        if chosen:
            candidates[sub.name] = str(sub / chosen)
    folder, file = _pick_version(candidates, str(path))
    return _local_source(uri, Path(file), folder)


def _read_s3(uri: str, s3_client: Any) -> ModelSource:
    parsed = urlparse(uri)
    bucket, key = parsed.netloc, parsed.path.lstrip("/")
    if not bucket:
        raise ModelLoadError(f"{uri!r} names no bucket")
    if key.endswith((".onnx", ".xml")):
        chosen, folder = key, None
    else:
        prefix = key.rstrip("/") + "/" if key else ""
        paginator = s3_client.get_paginator("list_objects_v2")
        keys = [
            obj["Key"] for page in paginator.paginate(Bucket=bucket, Prefix=prefix) for obj in page.get("Contents", [])
        ]
        rel = {k[len(prefix) :]: k for k in keys}
        direct = _model_file([r for r in rel if "/" not in r])
        if direct:
            chosen, folder = rel[direct], None
        else:
            by_folder: dict[str, list[str]] = {}
            for r in rel:
                m = re.fullmatch(r"([^/]+)/([^/]+)", r)
                if m:
                    by_folder.setdefault(m.group(1), []).append(m.group(2))
            candidates = {}
            for sub, names in by_folder.items():
                picked = _model_file(names)
                if picked:
                    candidates[sub] = rel[f"{sub}/{picked}"]
            folder, chosen = _pick_version(candidates, uri)

    def get(key: str) -> bytes:
        try:
            return s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except Exception as exc:  # botocore's errors are dynamic classes
            raise ModelLoadError(f"cannot read s3://{bucket}/{key}: {exc}") from None

    weights = get(_ir_weights(chosen)) if chosen.endswith(".xml") else None
    return ModelSource(uri, f"s3://{bucket}/{chosen}", get(chosen), folder, weights)


def read_model_source(uri: str, s3_client_factory: Callable[[], Any] | None = None) -> ModelSource:
    """Find and read the model a URI points at, as OVMS does.

    Accepts a file (`.onnx`, or an IR `.xml` with its `.bin` beside it), a directory holding
    one, or an OVMS repository directory with numeric version folders (`1/model.onnx` or
    `1/model.xml` + `1/model.bin`, IR first; the latest version is taken); the same for `s3://`.

    Args:
        uri: Local path, `file://` URI or `s3://bucket/prefix`.
        s3_client_factory: Builds a boto3 S3 client; required for `s3://` URIs.

    Raises:
        ModelLoadError: When nothing loadable is found.
    """
    if uri.startswith("s3://"):
        if s3_client_factory is None:
            raise ModelLoadError(f"{uri}: no S3 client configured (set AWS_S3_ENDPOINT etc.)")
        return _read_s3(uri, s3_client_factory())
    return _read_local(uri)


@dataclass(frozen=True)
class ModelRoots:
    """Where the repository API may load models from: local folders and S3 bucket/prefixes.

    A ``load`` names a URI; it is accepted only when it lies under one of these roots, decided
    from the URI's text (local paths with symlinks resolved) before anything is opened, so a
    refusal reads the same whether or not the path exists.

    Args:
        local: Absolute folders (resolved).
        s3: ``(bucket, prefix)`` pairs; an empty prefix allows the whole bucket.
    """

    local: tuple[Path, ...] = ()
    s3: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, roots: list[str] | tuple[str, ...] | None) -> "ModelRoots":
        """Build from strings: ``/models``, ``file:///models`` or ``s3://bucket[/prefix]``.

        Raises:
            ValueError: For a relative path, another scheme or an S3 root without a bucket.
        """
        local: list[Path] = []
        s3: list[tuple[str, str]] = []
        for root in roots or ():
            if root.startswith("s3://"):
                parsed = urlparse(root)
                prefix = parsed.path.strip("/")
                if not parsed.netloc or ".." in prefix.split("/"):
                    raise ValueError(f"model root {root!r}: expected s3://bucket[/prefix]")
                s3.append((parsed.netloc, prefix + "/" if prefix else ""))
                continue
            path = urlparse(root).path if root.startswith("file://") else root
            if "://" in path or not os.path.isabs(path):
                raise ValueError(f"model root {root!r}: expected an absolute folder or s3://bucket[/prefix]")
            local.append(Path(os.path.realpath(path)))
        return cls(tuple(local), tuple(s3))

    def describe(self) -> str:
        """The roots as a human reads them (for error messages)."""
        items = [str(p) for p in self.local] + [f"s3://{b}/{p}" for b, p in self.s3]
        return ", ".join(items) if items else "none configured"

    def check(self, uri: str) -> str:
        """Return ``uri`` if it lies under a root.

        Raises:
            Forbidden: Otherwise, with a message that never depends on what exists outside.
        """
        if uri.startswith("s3://"):
            parsed = urlparse(uri)
            key = parsed.path.lstrip("/")
            parts = key.split("/")
            # S3 keys are literal, but some servers normalise dot segments: refuse them outright.
            if "." not in parts and ".." not in parts:
                for bucket, prefix in self.s3:
                    if parsed.netloc == bucket and (key + "/").startswith(prefix):
                        return uri
        elif "://" not in uri or uri.startswith("file://"):
            raw = urlparse(uri).path if uri.startswith("file://") else uri
            if os.path.isabs(raw):
                resolved = Path(os.path.realpath(raw))
                if any(resolved == root or resolved.is_relative_to(root) for root in self.local):
                    return uri
        raise Forbidden(
            f"load refused: {uri!r} is not under this server's model roots ({self.describe()}); "
            "give the server another root with --model-root"
        )

    def check_file(self, uri: str, location: str) -> None:
        """Check the file a local load picked (a symlink inside a root may point outside it)."""
        if location.startswith("s3://"):
            return
        resolved = Path(os.path.realpath(location))
        if not any(resolved.is_relative_to(root) for root in self.local):
            raise Forbidden(f"load refused: {uri!r} resolves outside this server's model roots")


# --------------------------------------------------------------------------------------
# The model.
# --------------------------------------------------------------------------------------


class OnnxModel:
    """One loaded model version behind an inference engine (OpenVINO or ONNX Runtime).

    Args:
        name / version / source: What is served and where it came from.
        threads: Threads per inference (0: the engine's default, all cores).
        parallel: Inference runs at once (OpenVINO streams); others queue.
        spin: Assume dedicated cores: idle ONNX Runtime threads spin, OpenVINO pins its threads.
        engine: ``openvino`` / ``onnxruntime`` (default ``serving.detector.resolve_engine``).
        precision: OpenVINO inference precision; default what an IR variant declares, else the
            runtime's choice (as OVMS without a ``plugin_config``).
    """

    def __init__(
        self,
        name: str,
        version: str,
        source: ModelSource,
        threads: int = 0,
        parallel: int = 1,
        spin: bool = True,
        engine: str | None = None,
        precision: str | None = None,
    ):
        self.name = name
        self.version = version
        self.source = source
        self.threads = threads
        self.parallel = max(1, parallel)
        self.spin = spin
        self.engine_name = engine
        self.precision = precision
        # The engine already spreads one run over `threads` cores; running several at once
        # on a small CPU only makes them fight, so by default requests queue for one run.
        self._slots = threading.Semaphore(self.parallel)
        self.engine: Any = None
        self.inputs: list[TensorSpec] = []
        self.outputs: list[TensorSpec] = []
        self.metadata: dict[str, str] = {}

    @property
    def session(self) -> Any:
        """The backend object (``onnxruntime.InferenceSession`` or ``openvino.CompiledModel``)."""
        return self.engine.raw if self.engine is not None else None

    def load(self) -> None:
        """Build the engine and read the tensor specs.

        Raises:
            ModelLoadError: When the engine refuses the model (or the engine setting is wrong).
        """
        from serving.detector import open_engine

        kind = "OpenVINO IR" if self.source.is_ir else "ONNX"
        try:
            self.engine = open_engine(
                self.source.content,
                weights=self.source.weights,
                engine=self.engine_name,
                precision=self.precision,
                threads=self.threads or None,
                streams=self.parallel,
                spinning=self.spin,
            )
        except ValueError as exc:
            raise ModelLoadError(f"{self.source.location} is not a loadable {kind} model: {exc}") from None
        except Exception as exc:  # the engines raise their own untyped errors
            raise ModelLoadError(f"{self.source.location} is not a loadable {kind} model: {exc}") from None
        self.inputs = [TensorSpec(t.name, t.datatype, t.shape) for t in self.engine.inputs]
        self.outputs = [TensorSpec(t.name, t.datatype, t.shape) for t in self.engine.outputs]
        self.metadata = dict(self.engine.metadata)
        log.info("model %s: %s engine %s (%s)", self.name, kind, self.engine.label, self.source.location)
        # The bytes are in the engine now; keep memory lean.
        self.source.content = b""
        self.source.weights = None

    def metadata_response(self) -> dict[str, Any]:
        """Return the v2 `$metadata_model_response`."""
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": OPENVINO_PLATFORM if self.engine.backend == "openvino" else PLATFORM,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
        }

    def validate(self, request: v2.InferRequest) -> dict[str, np.ndarray]:
        """Check the request's tensors against the model's and return the feeds.

        Raises:
            InvalidInput: Naming the tensor and what was expected.
        """
        expected = {t.name: t for t in self.inputs}
        feeds: dict[str, np.ndarray] = {}
        for tensor in request.inputs:
            spec = expected.get(tensor.name)
            if spec is None:
                raise InvalidInput(
                    f"unexpected input {tensor.name!r} for model {self.name!r}; inputs are {sorted(expected)}"
                )
            if tensor.name in feeds:
                raise InvalidInput(f"input {tensor.name!r} given twice")
            if tensor.datatype != spec.datatype:
                raise InvalidInput(
                    f"input {tensor.name!r} has datatype {tensor.datatype}, model {self.name!r} expects {spec.datatype}"
                )
            shape = list(tensor.shape)
            if len(shape) != len(spec.shape) or any(want not in (-1, got) for want, got in zip(spec.shape, shape)):
                raise InvalidInput(
                    f"input {tensor.name!r} has shape {shape}, model {self.name!r} expects {list(spec.shape)}"
                )
            feeds[tensor.name] = tensor.array
        missing = sorted(set(expected) - set(feeds))
        if missing:
            raise InvalidInput(f"missing inputs {missing} for model {self.name!r}")
        if request.outputs is not None:
            known = {t.name for t in self.outputs}
            for out in request.outputs:
                if out.name not in known:
                    raise InvalidInput(
                        f"unknown output {out.name!r} for model {self.name!r}; outputs are {sorted(known)}"
                    )
        return feeds

    def infer(self, feeds: dict[str, np.ndarray], output_names: list[str]) -> list[np.ndarray]:
        """Run the engine; at most `parallel` runs at once (both engines release the GIL)."""
        with self._slots:
            return self.engine.run(feeds, output_names)


# --------------------------------------------------------------------------------------
# The repository: which models exist, which version serves, loading state.
# --------------------------------------------------------------------------------------


@dataclass
class _Entry:
    name: str
    uri: str | None = None
    version: str | None = None
    model: OnnxModel | None = None
    state: str = "UNAVAILABLE"  # LOADING | READY | UNAVAILABLE
    reason: str = ""
    # Meant to serve: declared at start-up, or loaded successfully since (and not unloaded).
    # Readiness looks only at these, so a failed load of a made-up name is reported in the
    # index but does not take a healthy server out of service.
    required: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


class ModelRepository:
    """The models one server serves, with atomic swaps on reload.

    Args:
        s3_client_factory: Builds a boto3 S3 client for `s3://` URIs (called per load).
        threads: Threads per inference (0 = the engine's default).
        parallel: Inference runs executed at once per model (more queue).
        spin: Let idle ONNX Runtime threads spin (its default; turn off on shared CPUs).
        engine: ``openvino`` (default where installed, as OVMS) or ``onnxruntime``.
        precision: OpenVINO inference precision for every model (default: what an IR variant
            declares, else the runtime's choice).
    """

    def __init__(
        self,
        s3_client_factory: Callable[[], Any] | None = None,
        threads: int = 0,
        parallel: int = 1,
        spin: bool = True,
        engine: str | None = None,
        precision: str | None = None,
    ):
        from serving.detector import resolve_engine, resolve_precision

        self._s3 = s3_client_factory
        self._threads = threads
        self._parallel = parallel
        self._spin = spin
        # Checked here, so a wrong setting stops the server at start-up, not at the first load.
        self.engine = resolve_engine(engine)
        self.precision = resolve_precision(precision)
        self._entries: dict[str, _Entry] = {}
        self._guard = threading.Lock()

    def _entry(self, name: str, create: bool = False) -> _Entry:
        with self._guard:
            entry = self._entries.get(name)
            if entry is None:
                if not create:
                    raise ModelNotFound(f"model {name!r} is not served here")
                entry = self._entries[name] = _Entry(name)
            return entry

    def register(self, name: str, uri: str, version: str | None = None) -> None:
        """Declare a model that will be loaded later (it answers 503 until then)."""
        entry = self._entry(name, create=True)
        entry.uri, entry.version = uri, version
        entry.required = True
        if entry.model is None:
            entry.state = "LOADING"

    def load(
        self,
        name: str,
        uri: str | None = None,
        version: str | None = None,
        roots: ModelRoots | None = None,
    ) -> OnnxModel:
        """Load (or reload) a model and swap it in once fully ready.

        The previous version keeps answering during the load; a failed load leaves it
        serving. Loads of the same model are serialized.

        Args:
            name: Model name (the URL's `{name}`).
            uri: Path or `s3://` URI; defaults to the model's current source.
            version: Version to report; defaults to the OVMS version folder, else "1".
            roots: When given (the repository API), a new ``uri`` must lie under them; a
                reload of the source declared at start-up is always allowed.

        Raises:
            Forbidden: The uri is outside ``roots`` (checked before anything is read).
            ModelLoadError: When the source cannot be read or loaded.
        """
        entry = self._entry(name, create=True)
        with entry.lock:
            if version is None and (uri is None or uri == entry.uri):
                version = entry.version  # a (re)load of the declared source keeps its declared version
            if roots is not None and uri is not None and uri != entry.uri:
                roots.check(uri)
            uri = uri or entry.uri
            if not uri:
                raise ModelLoadError(f"model {name!r} has no uri to load from")
            if entry.model is None:
                entry.state = "LOADING"
            started = time.monotonic()
            try:
                source = read_model_source(uri, self._s3)
                if roots is not None and uri != entry.uri:
                    roots.check_file(uri, source.location)
                model = OnnxModel(
                    name,
                    version or source.version_folder or "1",
                    source,
                    self._threads,
                    self._parallel,
                    self._spin,
                    self.engine,
                    self.precision,
                )
                model.load()
            except ModelServerError as exc:
                if entry.model is None:
                    entry.state, entry.reason = "UNAVAILABLE", str(exc)
                raise
            # The swap: one reference assignment, atomic for readers.
            entry.model = model
            entry.uri, entry.version = uri, model.version
            entry.state, entry.reason = "READY", ""
            entry.required = True
            log.info(
                "model %s version %s loaded from %s in %.2fs",
                name,
                model.version,
                source.location,
                time.monotonic() - started,
            )
            return model

    def unload(self, name: str) -> None:
        """Stop serving a model (it stays listed as UNAVAILABLE)."""
        entry = self._entry(name)
        with entry.lock:
            entry.model, entry.state, entry.reason = None, "UNAVAILABLE", "unloaded"
            entry.required = False  # unloaded on purpose: no longer meant to serve

    def get(self, name: str, version: str | None = None) -> OnnxModel:
        """Return the serving model.

        Raises:
            ModelNotFound: Unknown name, or a version other than the one served.
            ModelNotReady: Still loading or failed to load.
        """
        entry = self._entry(name)
        model = entry.model
        if model is None:
            detail = f": {entry.reason}" if entry.reason else ""
            raise ModelNotReady(f"model {name!r} is {entry.state.lower()}{detail}")
        if version is not None and version != model.version:
            raise ModelNotFound(f"model {name!r} has no version {version!r}; serving version {model.version!r}")
        return model

    def ready(self) -> bool:
        """True when at least one model is meant to serve and every such model is serving.

        Meant to serve: declared at start-up or loaded successfully since, and not unloaded.
        A failed load of a name that never served leaves an UNAVAILABLE entry in the index
        (with its reason) but does not count, so it cannot make a healthy server unready.
        """
        with self._guard:
            required = [e for e in self._entries.values() if e.required]
        return bool(required) and all(e.model is not None for e in required)

    def index(self) -> list[dict[str, str]]:
        """The Triton repository index: name, version, state, reason."""
        with self._guard:
            entries = list(self._entries.values())
        out = []
        for e in entries:
            item = {"name": e.name, "state": e.state}
            if e.model is not None:
                item["version"] = e.model.version
            if e.reason:
                item["reason"] = e.reason
            out.append(item)
        return out


# --------------------------------------------------------------------------------------
# HTTP layer.
# --------------------------------------------------------------------------------------


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
            raise _ClientGone("client disconnected") from None
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


def _parse_load_body(body: bytes) -> tuple[str | None, str | None]:
    """The ``uri`` and ``version`` of a repository load request, each field checked.

    Raises:
        InvalidInput: Naming the field that is wrong.
    """
    if not body.strip():
        return None, None
    try:
        parsed = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"load request is not JSON: {exc}") from None
    except RecursionError:
        raise InvalidInput("load request is nested too deeply to be a load request") from None
    if not isinstance(parsed, dict):
        raise InvalidInput(
            f'load request body must be a JSON object like {{"parameters": {{"uri": ...}}}}, '
            f"not {type(parsed).__name__}"
        )
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
        The ASGI app.
    """
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
    from starlette.concurrency import run_in_threadpool

    registry = CollectorRegistry()
    requests_total = Counter(
        "vinspect_modelserver_requests",
        "Inference requests by model and HTTP status",
        ["model", "code"],
        registry=registry,
    )
    infer_seconds = Histogram(
        "vinspect_modelserver_infer_seconds",
        "Time spent in the inference engine",
        ["model"],
        registry=registry,
        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
    )
    request_seconds = Histogram(
        "vinspect_modelserver_request_seconds",
        "Whole inference request time",
        ["model"],
        registry=registry,
        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
    )

    def _background_load() -> None:
        for item in repository.index():
            if item["state"] == "LOADING":
                try:
                    repository.load(item["name"])
                except ModelLoadError as exc:
                    log.error("loading model %s failed: %s", item["name"], exc)

    @asynccontextmanager
    async def lifespan(_app: Any):
        if load_on_startup:
            threading.Thread(target=_background_load, name="model-load", daemon=True).start()
        yield

    roots = model_roots if isinstance(model_roots, ModelRoots) else ModelRoots.parse(model_roots)
    expected = token.encode("utf-8") if token else None

    def authorize(request: Request, repository_api: bool = False) -> None:
        if expected is None:
            if repository_api:
                raise Forbidden(
                    "the repository API (index, load, unload) is disabled: this server was started "
                    "without a token; set VINSPECT_MODEL_TOKEN to enable it"
                )
            return
        given = request.headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode("utf-8"), expected):
            raise Unauthorized("missing or wrong bearer token (Authorization: Bearer $VINSPECT_MODEL_TOKEN)")

    app = FastAPI(title=SERVER_NAME, version=SERVER_VERSION, lifespan=lifespan)
    app.state.repository = repository

    @app.exception_handler(ModelServerError)
    async def _error(_request: Request, exc: ModelServerError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        return JSONResponse({"error": str(exc)}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(v2.V2ProtocolError)
    async def _protocol_error(_request: Request, exc: v2.V2ProtocolError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=400)

    @app.get("/v2/health/live")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready() -> JSONResponse:
        ok = repository.ready()
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @app.get("/v2")
    async def server_metadata(request: Request) -> dict[str, Any]:
        authorize(request)
        return {
            "name": SERVER_NAME,
            "version": SERVER_VERSION,
            "extensions": ["binary_tensor_data", "model_repository"],
        }

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    async def model_metadata(request: Request, name: str, version: str | None = None) -> dict[str, Any]:
        authorize(request)
        return repository.get(name, version).metadata_response()

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(request: Request, name: str, version: str | None = None) -> dict[str, Any]:
        authorize(request)
        repository.get(name, version)
        return {"name": name, "ready": True}

    @app.post("/v2/models/{name}/infer")
    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer(name: str, request: Request, version: str | None = None) -> Response:
        started = time.perf_counter()
        code = "200"
        try:
            authorize(request)
            model = repository.get(name, version)
            body = await _read_body(request, max_body_bytes, body_timeout_s)
            header_length = request.headers.get(v2.HEADER_LENGTH.lower())
            if header_length is not None:
                if not header_length.isdigit():
                    raise InvalidInput(f"{v2.HEADER_LENGTH} must be an integer")
                header_length = int(header_length)
            try:
                decoded = v2.decode_request(body, header_length)
            except v2.V2ProtocolError as exc:
                raise InvalidInput(str(exc)) from None
            feeds = model.validate(decoded)
            if decoded.outputs is None:
                wanted = [(o.name, decoded.binary_data_output) for o in model.outputs]
            else:
                wanted = [(o.name, o.binary) for o in decoded.outputs]
            t0 = time.perf_counter()
            try:
                arrays = await run_in_threadpool(model.infer, feeds, [n for n, _ in wanted])
            except Exception as exc:  # the engines' own errors are runtime input problems
                raise InvalidInput(f"model {name!r} rejected the input: {exc}") from None
            infer_seconds.labels(name).observe(time.perf_counter() - t0)
            payload, headers = v2.encode_response(
                model.name,
                model.version,
                decoded.id,
                [(n, a, b) for (n, b), a in zip(wanted, arrays)],
            )
            return Response(payload, headers=headers)
        except ModelServerError as exc:
            code = str(exc.status_code)
            raise
        finally:
            requests_total.labels(name, code).inc()
            request_seconds.labels(name).observe(time.perf_counter() - started)

    @app.post("/v2/repository/index")
    async def repository_index(request: Request) -> list[dict[str, str]]:
        authorize(request, repository_api=True)
        return repository.index()

    @app.post("/v2/repository/models/{name}/load")
    async def load(name: str, request: Request) -> dict[str, Any]:
        authorize(request, repository_api=True)
        uri, version = _parse_load_body(await _read_body(request, 1024 * 1024, body_timeout_s))
        model = await run_in_threadpool(repository.load, name, uri, version, roots)
        return {"name": model.name, "version": model.version, "state": "READY"}

    @app.post("/v2/repository/models/{name}/unload")
    async def unload(name: str, request: Request) -> dict[str, Any]:
        authorize(request, repository_api=True)
        repository.unload(name)
        return {"name": name, "state": "UNAVAILABLE"}

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        authorize(request)  # per-model counters name the models: behind the token when one is set
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app


def s3_client_factory_from_env() -> Callable[[], Any]:
    """Return a factory building the S3 client from `vinspect.settings.S3Settings`."""

    def factory() -> Any:
        from vinspect.settings import S3Settings

        return S3Settings.from_env().client()

    return factory


def default_model_roots(extra: list[str] | None = None) -> list[str]:
    """The roots a server allows loads from when none are given: the models bucket and ``extra``.

    The configured S3 models bucket (``AWS_S3_BUCKET``) is where the registry writes every
    version, so rollouts load from it; local folders must be named (``--model-root``). The
    URIs served at start-up are not added: reloading them needs no root.
    """
    roots = list(extra or [])
    try:
        from vinspect.settings import S3Settings

        bucket = S3Settings.from_env().bucket
    except Exception:  # noqa: BLE001 - no S3 configured: local roots only
        bucket = None
    if bucket:
        roots.append(f"s3://{bucket}")
    return roots


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
