"""Pure renderers for the KServe ``InferenceService`` and the OVMS ``ServingRuntime``.

Two deployment modes, as OpenShift AI offers them:

- ``raw`` (default, OpenShift AI 3.x): single-model KServe in RawDeployment mode with the
  ``kserve-ovms`` runtime (OVMS REST on 8888, gRPC on 8001, ``--model_name={{.Name}}``, so the
  v2 model name is the InferenceService name). The model comes from a data-connection Secret,
  referenced by name only (``opendatahub.io/connections`` plus ``storage.key``); its keys never
  appear in a manifest.
- ``modelmesh`` (RHODS 2.x, as the original Manuela demo deployed): multi-model ModelMesh with
  an OVMS runtime using the built-in ``ovms`` adapter; ``storage.key`` names the data
  connection as the ``storage-config`` Secret knows it.

Both point at the versioned path ``<model>/<version>/`` that holds ``1/model.onnx``, or at the
precision variant the gate chose, ``<model>/<version>/<variant>/`` holding ``1/model.xml`` +
``1/model.bin`` (model format ``openvino_ir``). A variant that declares its inference precision
(the FP32 one) gets it as OVMS's ``--plugin_config`` (``INFERENCE_PRECISION_HINT``), since OVMS
otherwise runs at the CPU's default (bf16 on CPUs that have it).
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

from vinspect.errors import VinspectError

GROUP = "serving.kserve.io"
ISVC_VERSION = "v1beta1"
ISVC_PLURAL = "inferenceservices"
RUNTIME_VERSION = "v1alpha1"
RUNTIME_PLURAL = "servingruntimes"

MODES = ("raw", "modelmesh")
RAW_RUNTIME = "kserve-ovms"
MODELMESH_RUNTIME = "ovms"
# The OVMS image of OpenShift AI's kserve-ovms template, pinned by digest (never a moving tag);
# infra/images.yaml lists it, and the infra tests keep the two equal.
DEFAULT_OVMS_IMAGE = (
    "quay.io/modh/openvino_model_server@sha256:53b7fcf95de9b81e4c8652d0bf4e84e22d5b696827a5d951d863420c68b9cfe8"
)

LABEL_MODEL = "vinspect.io/model-name"
LABEL_VERSION = "vinspect.io/model-version"
ANNOTATION_STORAGE_URI = "vinspect.io/storage-uri"
ANNOTATION_MLFLOW_VERSION = "vinspect.io/mlflow-model-version"

_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DEFAULT_RESOURCES = {
    "requests": {"cpu": "1", "memory": "2Gi"},
    "limits": {"cpu": "2", "memory": "4Gi"},
}


class ServingSpecError(VinspectError, ValueError):
    """Arguments that cannot make a valid InferenceService or ServingRuntime (the message names the argument).

    (Not ``infra.render``'s error, which is about rendering the kustomize overlays.)
    """


def service_name(model_name: str) -> str:
    """A DNS-1035 InferenceService name from a registered model name (``metal_nut`` -> ``metal-nut``)."""
    name = re.sub(r"[^a-z0-9-]+", "-", model_name.lower()).strip("-")
    if not name or not name[0].isalpha():
        name = f"m-{name}".rstrip("-")
    name = name[:63].rstrip("-")
    if not _DNS1035.match(name):
        raise ServingSpecError(f"cannot derive a Kubernetes name from model name {model_name!r}")
    return name


def storage_path(storage_uri: str) -> str:
    """The path inside the bucket of an ``s3://bucket/path/`` URI (``path/``)."""
    if not storage_uri.startswith("s3://"):
        raise ServingSpecError(f"storage_uri {storage_uri!r} is not an s3:// URI")
    bucket_and_path = storage_uri[len("s3://") :]
    bucket, _, path = bucket_and_path.partition("/")
    if not bucket or not path.strip("/"):
        raise ServingSpecError(f"storage_uri {storage_uri!r} needs a bucket and a path")
    return path.rstrip("/") + "/"


def _label_value(value: str) -> str:
    # Label values: at most 63 characters of [A-Za-z0-9_.-], alphanumeric at both ends.
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "-", value)[:63]
    return cleaned.strip("-_.")


def render_inference_service(
    *,
    name: str,
    namespace: str,
    model_name: str,
    version: str | int,
    storage_uri: str,
    data_connection: str,
    mode: str = "raw",
    runtime: str | None = None,
    resources: dict[str, Any] | None = None,
    min_replicas: int = 1,
    max_replicas: int = 1,
    expose_route: bool = False,
    auth: bool = False,
    extra_labels: dict[str, str] | None = None,
    model_format: str = "onnx",
    precision: str | None = None,
) -> dict[str, Any]:
    """Render a KServe ``InferenceService`` serving one model version (ONNX or OpenVINO IR) with OVMS.

    Args:
        name: InferenceService name (also the v2 model name OVMS answers to).
        namespace: Target namespace (a Data Science project).
        model_name: Registered MLflow model name (recorded in labels).
        version: MLflow model version (recorded in labels and annotations).
        storage_uri: ``s3://<bucket>/<model>/<version>/`` holding ``1/model.onnx``.
        data_connection: Name of the data-connection Secret (never its contents).
        mode: ``raw`` (RawDeployment, OpenShift AI 3.x) or ``modelmesh`` (RHODS 2.x).
        runtime: ServingRuntime name; defaults to ``kserve-ovms`` / ``ovms`` by mode.
        resources: Container resources (raw mode only; ModelMesh sizes the runtime instead).
        min_replicas: Minimum predictor replicas (raw mode).
        max_replicas: Maximum predictor replicas (raw mode).
        expose_route: Make an external route (``networking.kserve.io/visibility: exposed``).
        auth: Require a bearer token (``security.opendatahub.io/enable-auth``).
        extra_labels: Added to the metadata labels.
        model_format: ``onnx`` or ``openvino_ir`` (a precision variant's folder).
        precision: Inference precision the variant must run at (``f32``, ``bf16``), passed to
            OVMS as ``--plugin_config``; None: OVMS's default (the CPU's choice).

    Returns:
        The manifest as a dict.

    Raises:
        ServingSpecError: For an invalid name, mode, URI or replica count.
    """
    if mode not in MODES:
        raise ServingSpecError(f"mode {mode!r} is not one of {MODES}")
    if not _DNS1035.match(name) or len(name) > 63:
        raise ServingSpecError(f"name {name!r} is not a DNS-1035 label (lowercase, digits, '-')")
    if not data_connection:
        raise ServingSpecError("data_connection is empty: name the data-connection Secret")
    if min_replicas < 0 or max_replicas < max(min_replicas, 1):
        raise ServingSpecError(f"replicas min={min_replicas} max={max_replicas} are inconsistent")
    path = storage_path(storage_uri)
    version = str(version)
    formats = {"onnx": "1", "openvino_ir": "opset13" if mode == "raw" else "opset1"}
    if model_format not in formats:
        raise ServingSpecError(f"model_format {model_format!r} is not one of {sorted(formats)}")
    if precision and mode != "raw":
        raise ServingSpecError(
            f"precision {precision!r} needs a per-model --plugin_config, which ModelMesh cannot pass; "
            "serve a variant without a declared precision, or use mode 'raw'"
        )
    labels = {
        LABEL_MODEL: _label_value(model_name),
        LABEL_VERSION: _label_value(version),
        "app.kubernetes.io/name": name,
        "app.kubernetes.io/component": "model",
        "app.kubernetes.io/part-of": "vinspect",
        "app.kubernetes.io/managed-by": "vinspect",
        "opendatahub.io/dashboard": "true",
        **(extra_labels or {}),
    }
    annotations = {
        "openshift.io/display-name": f"{model_name} v{version}",
        ANNOTATION_MLFLOW_VERSION: version,
        ANNOTATION_STORAGE_URI: storage_uri,
    }
    model: dict[str, Any] = {
        "modelFormat": {"name": model_format, "version": formats[model_format]},
        "runtime": runtime or (RAW_RUNTIME if mode == "raw" else MODELMESH_RUNTIME),
        "storage": {"key": data_connection, "path": path},
    }
    predictor: dict[str, Any] = {"model": model}
    if mode == "raw":
        annotations.update(
            {
                "serving.kserve.io/deploymentMode": "RawDeployment",
                # OpenShift AI's connections webhook resolves the Secret by name.
                "opendatahub.io/connections": data_connection,
                "opendatahub.io/connection-path": path,
                "security.opendatahub.io/enable-auth": "true" if auth else "false",
            }
        )
        if expose_route:
            labels["networking.kserve.io/visibility"] = "exposed"
        model["protocolVersion"] = "v2"
        if precision:
            # Appended to the runtime's container args by KServe (the predictor's model spec is a
            # container spec); OVMS applies it to the model's CPU plugin.
            model["args"] = [f"--plugin_config={json.dumps({'INFERENCE_PRECISION_HINT': precision})}"]
        model["resources"] = copy.deepcopy(resources if resources is not None else _DEFAULT_RESOURCES)
        predictor["minReplicas"] = min_replicas
        predictor["maxReplicas"] = max_replicas
    else:
        annotations["serving.kserve.io/deploymentMode"] = "ModelMesh"
        if expose_route:
            annotations["enable-route"] = "true"
        if auth:
            annotations["enable-auth"] = "true"
    return {
        "apiVersion": f"{GROUP}/{ISVC_VERSION}",
        "kind": "InferenceService",
        "metadata": {"name": name, "namespace": namespace, "labels": labels, "annotations": annotations},
        "spec": {"predictor": predictor},
    }


def render_serving_runtime(
    *,
    namespace: str,
    mode: str = "raw",
    name: str | None = None,
    image: str = DEFAULT_OVMS_IMAGE,
    resources: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Render the OVMS ``ServingRuntime`` for a namespace that lacks one.

    Args:
        namespace: Target namespace.
        mode: ``raw`` (single-model KServe, OpenShift AI's ``kserve-ovms`` template) or
            ``modelmesh`` (multi-model, ``ovms`` built-in adapter).
        name: Runtime name; defaults to ``kserve-ovms`` / ``ovms`` by mode.
        image: The OpenVINO Model Server image.
        resources: Container resources (ModelMesh sizes the shared runtime here).

    Returns:
        The manifest as a dict.

    Raises:
        ServingSpecError: For an unknown mode.
    """
    if mode not in MODES:
        raise ServingSpecError(f"mode {mode!r} is not one of {MODES}")
    common_labels = {
        "opendatahub.io/dashboard": "true",
        "app.kubernetes.io/part-of": "vinspect",
        "app.kubernetes.io/managed-by": "vinspect",
    }
    if mode == "raw":
        return {
            "apiVersion": f"{GROUP}/{RUNTIME_VERSION}",
            "kind": "ServingRuntime",
            "metadata": {
                "name": name or RAW_RUNTIME,
                "namespace": namespace,
                "labels": common_labels,
                "annotations": {
                    "openshift.io/display-name": "OpenVINO Model Server",
                    "opendatahub.io/template-name": "kserve-ovms",
                    "opendatahub.io/apiProtocol": "REST",
                    "opendatahub.io/recommended-accelerators": '["nvidia.com/gpu"]',
                },
            },
            "spec": {
                "annotations": {"prometheus.io/port": "8888", "prometheus.io/path": "/metrics"},
                "multiModel": False,
                "protocolVersions": ["v2", "grpc-v2"],
                "supportedModelFormats": [
                    {"name": "openvino_ir", "version": "opset13", "autoSelect": True},
                    {"name": "onnx", "version": "1", "autoSelect": True},
                ],
                "containers": [
                    {
                        "name": "kserve-container",
                        "image": image,
                        "args": [
                            "--model_name={{.Name}}",
                            "--port=8001",
                            "--rest_port=8888",
                            "--model_path=/mnt/models",
                            "--file_system_poll_wait_seconds=0",
                            "--grpc_bind_address=0.0.0.0",
                            "--rest_bind_address=0.0.0.0",
                            "--metrics_enable",
                        ],
                        # gRPC first, REST second: KServe turns the first container port into
                        # Service port 80 and keeps the others' numbers, so REST is at :8888
                        # on headless and headed predictor Services alike (docs/infra.md).
                        "ports": [
                            {"name": "grpc", "containerPort": 8001, "protocol": "TCP"},
                            {"name": "http", "containerPort": 8888, "protocol": "TCP"},
                        ],
                        "resources": copy.deepcopy(resources or _DEFAULT_RESOURCES),
                        "securityContext": {
                            "allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]},
                            "runAsNonRoot": True,
                        },
                    }
                ],
            },
        }
    return {
        "apiVersion": f"{GROUP}/{RUNTIME_VERSION}",
        "kind": "ServingRuntime",
        "metadata": {
            "name": name or MODELMESH_RUNTIME,
            "namespace": namespace,
            "labels": {**common_labels, "name": "modelmesh-serving-ovms-1.x-SR"},
            "annotations": {
                "openshift.io/display-name": "OpenVINO Model Server (ModelMesh)",
                "opendatahub.io/template-name": "ovms",
                "maxLoadingConcurrency": "2",
            },
        },
        "spec": {
            "builtInAdapter": {
                "serverType": "ovms",
                "runtimeManagementPort": 8888,
                "memBufferBytes": 134217728,
                "modelLoadingTimeoutMillis": 90000,
            },
            "multiModel": True,
            "protocolVersions": ["grpc-v1"],
            "grpcEndpoint": "port:8085",
            "grpcDataEndpoint": "port:8001",
            "replicas": 1,
            "supportedModelFormats": [
                {"name": "openvino_ir", "version": "opset1", "autoSelect": True},
                {"name": "onnx", "version": "1", "autoSelect": True},
            ],
            "containers": [
                {
                    "name": "ovms",
                    "image": image,
                    "args": [
                        "--port=8001",
                        "--rest_port=8888",
                        "--config_path=/models/model_config_list.json",
                        "--file_system_poll_wait_seconds=0",
                        "--grpc_bind_address=127.0.0.1",
                        "--rest_bind_address=127.0.0.1",
                    ],
                    "resources": copy.deepcopy(resources or _DEFAULT_RESOURCES),
                }
            ],
        },
    }
