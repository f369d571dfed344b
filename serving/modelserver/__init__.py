"""Local KServe v2 (Open Inference Protocol) model server over OpenVINO (or ONNX Runtime).

What OpenVINO Model Server does for a model folder on the cluster, this does on a laptop or
in CI, with the same engine: OpenVINO by default (``serving.detector.open_engine``; ONNX Runtime
with ``engine="onnxruntime"`` or ``VINSPECT_ENGINE``), reading ``model.onnx`` or an OpenVINO IR
(``model.xml`` + ``model.bin``) from the version folder as OVMS does, at the precision an IR
variant declares (else the runtime's choice, as OVMS). The same URLs, the same tensor names
(the graph's, e.g. `images` / `output0`),
JSON tensors and the binary tensor extension, plus the Triton repository extension
(`POST /v2/repository/models/{name}/load`) that the rollout step uses to swap models.

The package follows kserve's python server, one job per module:

- :mod:`~serving.modelserver.errors`: one exception class per HTTP status.
- :mod:`~serving.modelserver.sources`: finding and reading a model (disk, S3, OVMS layout) and
  the model roots that confine the repository API.
- :mod:`~serving.modelserver.model`: one loaded model version, ``load()`` / ``validate()`` /
  ``infer()`` over the detector's engine.
- :mod:`~serving.modelserver.repository`: which models are served, loading state, atomic swaps.
- :mod:`~serving.modelserver.dataplane`: what every route does, over plain values (no HTTP).
- :mod:`~serving.modelserver.rest`: the thin FastAPI routes and the bounded body reader.
- :mod:`~serving.modelserver.server`: ``serve()``, the process entry point.

This module re-exports the names the CLI, the tests, the rollout and the benchmarks import from
``serving.modelserver`` (that public path predates the split and keeps working); new code may
import from either.

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

from serving.modelserver.dataplane import SERVER_NAME, SERVER_VERSION, DataPlane, parse_load_request
from serving.modelserver.errors import (
    ClientGone,
    Forbidden,
    InvalidInput,
    ModelLoadError,
    ModelNotFound,
    ModelNotReady,
    ModelServerError,
    PayloadTooLarge,
    RequestTimeout,
    Unauthorized,
)
from serving.modelserver.model import OPENVINO_PLATFORM, PLATFORM, OnnxModel, TensorSpec
from serving.modelserver.repository import ModelRepository
from serving.modelserver.rest import DEFAULT_BODY_TIMEOUT_S, DEFAULT_MAX_BODY_BYTES, create_app
from serving.modelserver.server import serve
from serving.modelserver.sources import (
    ModelRoots,
    ModelSource,
    default_model_roots,
    read_model_source,
    s3_client_factory_from_env,
)

__all__ = [
    "DEFAULT_BODY_TIMEOUT_S",
    "DEFAULT_MAX_BODY_BYTES",
    "OPENVINO_PLATFORM",
    "PLATFORM",
    "SERVER_NAME",
    "SERVER_VERSION",
    "ClientGone",
    "DataPlane",
    "Forbidden",
    "InvalidInput",
    "ModelLoadError",
    "ModelNotFound",
    "ModelNotReady",
    "ModelRepository",
    "ModelRoots",
    "ModelServerError",
    "ModelSource",
    "OnnxModel",
    "PayloadTooLarge",
    "RequestTimeout",
    "TensorSpec",
    "Unauthorized",
    "create_app",
    "default_model_roots",
    "parse_load_request",
    "read_model_source",
    "s3_client_factory_from_env",
    "serve",
]
