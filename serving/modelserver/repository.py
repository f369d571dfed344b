"""The model repository: which models one server serves, which version answers, and loading state.

As Triton's and kserve's model repository: models are registered (declared at start-up) or
loaded through the repository API; a load builds the new engine completely while the old one keeps
serving, then replaces the entry's reference in one assignment, so requests already running keep
the object they started with and a failed load leaves the previous version serving.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from serving.modelserver.errors import ModelLoadError, ModelNotFound, ModelNotReady, ModelServerError
from serving.modelserver.model import OnnxModel
from serving.modelserver.sources import ModelRoots, read_model_source

log = logging.getLogger(__name__)


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

    def load_pending(self) -> None:
        """Load every model registered but not loaded yet (what a server does at start-up).

        A model that fails to load is logged and stays UNAVAILABLE with its reason in the
        index; the others load regardless.
        """
        for item in self.index():
            if item["state"] == "LOADING":
                try:
                    self.load(item["name"])
                except ModelLoadError as exc:
                    log.error("loading model %s failed: %s", item["name"], exc)

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
