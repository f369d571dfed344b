"""The model: one loaded version behind the detector's inference engine, with ``load()`` and ``infer()``.

As a kserve python server's ``Model`` subclass: :meth:`OnnxModel.load` builds the engine
(``serving.detector.open_engine``: OpenVINO, or ONNX Runtime) from a :class:`ModelSource`,
:meth:`OnnxModel.validate` checks a decoded v2 request against the graph's tensors, and
:meth:`OnnxModel.infer` runs it. Nothing here knows about HTTP.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from serving import v2
from serving.modelserver.errors import InvalidInput, ModelLoadError
from serving.modelserver.sources import ModelSource

log = logging.getLogger(__name__)

PLATFORM = "onnx_onnxv1"  # what ONNX Runtime serving reports
OPENVINO_PLATFORM = "OpenVINO"  # what OVMS reports for every model, ONNX included (specs/oip/README.md)


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output as the metadata endpoint reports it (-1 = dynamic dim)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        """Return the v2 `$metadata_tensor` object."""
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


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
        # Must catch everything: OpenVINO and ONNX Runtime raise their own untyped errors (RuntimeError,
        # pybind11 classes), a bad engine setting a ValueError; each means "not a loadable model".
        except Exception as exc:  # noqa: BLE001
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
