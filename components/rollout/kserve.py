"""The KServe target of the rollout: an InferenceService (and its OVMS ServingRuntime).

Deploying ensures the ServingRuntime (creating it when allowed), creates or patches the
InferenceService through :mod:`infra.kube`, and waits for ``Ready`` at the new generation.
Restoring puts the InferenceService back exactly as it was (or deletes it when the rollout
created it) and deletes a runtime the rollout created. The transaction around it is
:func:`components.rollout.deploy.roll_out`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from components.registry.core import TAG_STORAGE_URI, TAG_VARIANT, TAG_VARIANT_PRECISION
from components.rollout import render
from components.rollout.deploy import RolloutError
from infra import kube

ISVC_API = f"{render.GROUP}/{render.ISVC_VERSION}"
RUNTIME_API = f"{render.GROUP}/{render.RUNTIME_VERSION}"

# Metadata keys we own: when a desired object lacks one of these the patch removes it.
_OWNED_PREFIXES = ("vinspect.io/",)
# KServe's modelStatus.transitionStatus values that will not heal by waiting
# (pkg/apis/serving/v1beta1/inference_service_status.go in kserve/kserve).
_TERMINAL = ("BlockedByFailedLoad", "InvalidSpec")


def endpoint_url(isvc: dict, mode: str) -> str | None:
    """The v2 REST base URL of a ready InferenceService.

    RawDeployment: the in-cluster address (``status.address.url``), else ``status.url``.
    ModelMesh: the predictor's REST URL (``status.components.predictor.restUrl``); its
    ``status.url`` is gRPC.
    """
    status = isvc.get("status") or {}
    if mode == "modelmesh":
        rest = ((status.get("components") or {}).get("predictor") or {}).get("restUrl")
        return rest or None
    return ((status.get("address") or {}).get("url")) or status.get("url")


def _metadata_patch(live_meta: dict, desired_meta: dict) -> dict:
    """Labels and annotations to set; our own keys missing from ``desired`` are removed.

    Keys that others put there (controllers, the OpenShift AI dashboard) are left alone.
    """
    out: dict[str, Any] = {}
    for field in ("labels", "annotations"):
        live = live_meta.get(field) or {}
        want = desired_meta.get(field) or {}
        patch = {k: v for k, v in want.items() if live.get(k) != v}
        patch.update({k: None for k in live if k not in want and k.startswith(_OWNED_PREFIXES)})
        if patch:
            out[field] = patch
    return out


def owned_patch(live: dict, desired: dict) -> dict:
    """The rollout's ownership: ``spec`` whole (what it dropped is removed), and our own metadata.

    For :func:`infra.kube.apply`, which adds the live ``resourceVersion`` to it.
    """
    patch: dict[str, Any] = {}
    meta = _metadata_patch(live.get("metadata", {}), desired.get("metadata", {}))
    spec = kube.merge_patch(live.get("spec", {}), desired.get("spec", {}))
    if spec:
        patch["spec"] = spec
    if meta:
        patch["metadata"] = meta
    return patch


def inference_service_ready(obj: dict | None) -> tuple[bool, str]:
    """Readiness of an InferenceService: ``Ready=True`` at its current generation.

    Raises:
        RolloutError: It disappeared, or KServe reports a load failure that waiting will not fix.
    """
    if obj is None:
        raise RolloutError("the InferenceService disappeared while waiting for Ready")
    model_status = (obj.get("status") or {}).get("modelStatus") or {}
    if kube.observed_current(obj) and model_status.get("transitionStatus") in _TERMINAL:
        failure = model_status.get("lastFailureInfo") or {}
        raise RolloutError(
            f"InferenceService {obj['metadata']['name']}: model {model_status['transitionStatus']}: "
            f"{failure.get('reason', '')} {failure.get('message', '')}".strip()
        )
    return kube.condition_check("Ready")(obj)


class KServeTarget:
    """An InferenceService in ``namespace``, through a dynamic Kubernetes client.

    Args:
        client: ``kubernetes.dynamic.DynamicClient`` (see :func:`infra.kube.connect`) or the same shape.
        namespace: Target namespace.
        data_connection: Name of the data-connection Secret holding the S3 credentials.
        mode: ``raw`` (RawDeployment, OpenShift AI 3.x) or ``modelmesh`` (RHODS 2.x).
        service: InferenceService name (default: derived from the model name).
        storage_uri: ``s3://<bucket>/<model>/<version>/`` (None: the version's storage URI tag).
        runtime: ServingRuntime name (default by mode).
        create_runtime: Create the OVMS runtime when the namespace lacks it (else fail).
        runtime_image: OVMS image for a created runtime.
        resources: Predictor resources (raw mode).
        smoke_url: Base URL for the smoke test instead of the one in the status: the URL the
            image processor is configured with (the pipeline's rollout step passes its
            ConfigMap's ``VINSPECT_MODEL_URL``), so a version is deployed only when the processor
            can reach it; or a route, for a test run from outside the cluster.
        variant: The precision variant ``storage_uri`` points at (``onnx``: the ONNX; else an
            OpenVINO IR folder). None: the version's ``vinspect.variant`` tag.
        precision: The variant's declared inference precision, passed to OVMS as its
            ``plugin_config``. None: the version's ``vinspect.variant_precision`` tag.
        timeout_s: How long to wait for ``Ready``.
        poll_s: Poll interval while waiting.
        wait_restored: After a rollback, wait (same timeout) for the restored service to be
            Ready again and report whether it is.
        clock: Monotonic clock of the waits (tests pass the fake cluster's).
        sleep: Sleep of the waits (tests pass one that advances the fake cluster).
    """

    kind = "kserve"

    def __init__(
        self,
        client: Any,
        *,
        namespace: str,
        data_connection: str,
        mode: str = "raw",
        service: str | None = None,
        storage_uri: str | None = None,
        runtime: str | None = None,
        create_runtime: bool = True,
        runtime_image: str = render.DEFAULT_OVMS_IMAGE,
        resources: dict[str, Any] | None = None,
        smoke_url: str | None = None,
        variant: str | None = None,
        precision: str | None = None,
        timeout_s: float = 600.0,
        poll_s: float = 5.0,
        wait_restored: bool = True,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.data_connection = data_connection
        self.mode = mode
        self.service = service or ""
        self.storage_uri = storage_uri
        self.runtime = runtime or (render.RAW_RUNTIME if mode == "raw" else render.MODELMESH_RUNTIME)
        self.create_runtime = create_runtime
        self.runtime_image = runtime_image
        self.resources = resources
        self.smoke_url = smoke_url
        self.variant = variant
        self.precision = precision
        self.timeout_s = timeout_s
        self.poll_s = poll_s
        self.wait_restored = wait_restored
        self.clock = clock
        self.sleep = sleep
        self.action: str | None = None
        self._desired: dict[str, Any] = {}
        self._previous: dict[str, Any] | None = None
        self._created_runtime = False

    @property
    def location(self) -> str:
        return f"kserve:{self.namespace}/{self.service}"

    def prepare(self, mlflow_client: Any, model_name: str, version: str) -> None:
        """Render the InferenceService (validating every input) from the version's tags."""
        self.service = self.service or render.service_name(model_name)
        variant, precision = self.variant, self.precision
        tags: dict[str, str] = {}
        if variant is None or precision is None or self.storage_uri is None:
            # What the registration recorded: the variant the gate chose and the precision it was
            # measured at (OVMS reads IR natively; a declared precision must reach it explicitly).
            tags = mlflow_client.get_model_version(model_name, version).tags or {}
        variant = tags.get(TAG_VARIANT, "onnx") if variant is None else variant
        precision = tags.get(TAG_VARIANT_PRECISION, "") if precision is None else precision
        storage_uri = self.storage_uri or tags.get(TAG_STORAGE_URI)
        if not storage_uri:
            raise RolloutError(f"model {model_name!r} v{version} has no {TAG_STORAGE_URI} tag; register it first")
        self._desired = render.render_inference_service(
            name=self.service,
            namespace=self.namespace,
            model_name=model_name,
            version=version,
            storage_uri=storage_uri,
            data_connection=self.data_connection,
            mode=self.mode,
            runtime=self.runtime,
            resources=self.resources,
            model_format="openvino_ir" if variant and variant != "onnx" else "onnx",
            precision=precision or None,
        )

    def snapshot(self) -> str | None:
        self._previous = kube.get(self.client, ISVC_API, "InferenceService", self.service, self.namespace)
        if self._previous is None:
            return None
        return (self._previous.get("metadata", {}).get("labels") or {}).get(render.LABEL_VERSION)

    def roll(self, stage: Callable[[str], None]) -> str | None:
        stage("checking the ServingRuntime")
        if kube.get(self.client, RUNTIME_API, "ServingRuntime", self.runtime, self.namespace) is None:
            if not self.create_runtime:
                raise RolloutError(f"namespace {self.namespace} has no ServingRuntime {self.runtime!r}")
            stage("creating the ServingRuntime")
            runtime = render.render_serving_runtime(
                namespace=self.namespace, mode=self.mode, name=self.runtime, image=self.runtime_image
            )
            kube.apply(self.client, runtime, patch=owned_patch)
            self._created_runtime = True
        stage("applying the InferenceService")
        _, self.action = kube.apply(self.client, self._desired, patch=owned_patch)
        stage("waiting for Ready")
        ready = self._wait_ready()
        return self.smoke_url or endpoint_url(ready, self.mode)

    def _wait_ready(self) -> dict:
        what = kube.Wait(ISVC_API, "InferenceService", self.service, self.namespace, "Ready", inference_service_ready)
        found = kube.wait(
            self.client, [what], timeout=self.timeout_s, poll_interval=self.poll_s, clock=self.clock, sleep=self.sleep
        )
        return found[0] or {}

    def restore(self) -> str:
        problems = []
        done = ""
        try:
            done = self._restore_service()
        except kube.KubeError as exc:
            problems.append(f"restoring the InferenceService failed: {exc}")
        if self._created_runtime:
            try:
                kube.delete(self.client, RUNTIME_API, "ServingRuntime", self.runtime, self.namespace)
            except kube.KubeError as exc:
                problems.append(f"deleting the ServingRuntime it created failed: {exc}")
        if problems:
            raise RolloutError("; ".join(problems))
        return done

    def _restore_service(self) -> str:
        """Put the InferenceService back as it was (or delete it); say what was done."""
        previous = self._previous
        if previous is None:
            if kube.delete(self.client, ISVC_API, "InferenceService", self.service, self.namespace):
                return "deleted the InferenceService this rollout created"
            return "nothing to restore (no InferenceService existed or remains)"
        meta = previous.get("metadata", {})
        body = {k: previous[k] for k in ("apiVersion", "kind", "spec") if k in previous}
        body["metadata"] = {
            "name": self.service,
            "namespace": self.namespace,
            "labels": meta.get("labels") or {},
            "annotations": meta.get("annotations") or {},
        }
        _, outcome = kube.apply(self.client, body, patch=owned_patch)
        if outcome == "created":
            return "re-created the previous InferenceService"
        return "restored the previous InferenceService spec"

    def settle(self) -> str:
        if not self.wait_restored or self._previous is None:
            return ""
        try:
            self._wait_ready()
        except (kube.KubeError, RolloutError) as exc:
            return f"; it is not Ready yet: {exc}"
        return "; it is Ready"

    def close(self) -> None:
        """Nothing to release: the client belongs to the caller."""
