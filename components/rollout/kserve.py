"""Roll a model version out to KServe, and roll it back when anything fails.

Sequence: ensure the OVMS ServingRuntime, create or patch the InferenceService, wait for
``Ready`` at the new generation, smoke-test over v2, then move the MLflow ``champion`` alias.
Any failure restores the InferenceService exactly as it was (or deletes it when the rollout
created it), deletes a runtime the rollout created, puts the alias back, and reports why.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from components.registry import champion_state, promote, undo_move
from components.registry.core import TAG_VARIANT, TAG_VARIANT_PRECISION
from components.rollout import render
from components.rollout.kube import (
    RolloutError,
    apply_object,
    delete_object,
    get_object,
    object_patch,
    wait_ready,
)

log = logging.getLogger(__name__)

_ISVC = {"group": render.GROUP, "version": render.ISVC_VERSION, "plural": render.ISVC_PLURAL}
_RUNTIME = {"group": render.GROUP, "version": render.RUNTIME_VERSION, "plural": render.RUNTIME_PLURAL}
TAG_DEPLOYED = "vinspect.deployed_to"


def s3_reference_publisher(s3, bucket: str) -> Callable[[str, str], Any]:
    """``publish(model_name, version)``: copy the version's drift reference to the served key.

    See :func:`serving.drift.publish_served_reference` (the processor on KServe/OVMS, where every
    version answers as ``1``, reads that key).
    """
    from serving.drift import publish_served_reference

    return lambda model_name, version: publish_served_reference(s3, bucket, model_name, version)


def publish_reference(publish: Callable[[str, str], Any] | None, model_name: str, version: str, result: dict) -> None:
    """Publish the now-serving version's drift reference; a failure only warns.

    Drift is an observation of the served model, not a condition of serving it: the rollout
    stands, and ``result["drift_reference"]`` says what happened.
    """
    if publish is None:
        return
    try:
        uri = publish(model_name, version)
        result["drift_reference"] = uri or f"none: version {version} has no drift reference (drift off)"
    except Exception as exc:  # noqa: BLE001 - see above
        result["drift_reference"] = f"not published: {type(exc).__name__}: {exc}"
        log.warning("drift reference of %s v%s not published: %s", model_name, version, exc)


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


def _restore(custom_api, namespace: str, name: str, previous: dict | None) -> str:
    """Put the InferenceService back as ``previous`` (or delete it); say what was done."""
    ids = dict(namespace=namespace, name=name, **_ISVC)
    live = get_object(custom_api, **ids)
    if previous is None:
        if live is None:
            return "nothing to restore (no InferenceService existed or remains)"
        delete_object(custom_api, **ids)
        return "deleted the InferenceService this rollout created"
    if live is None:
        body = {k: previous[k] for k in ("apiVersion", "kind", "spec") if k in previous}
        meta = previous.get("metadata", {})
        body["metadata"] = {
            "name": name,
            "namespace": namespace,
            "labels": meta.get("labels") or {},
            "annotations": meta.get("annotations") or {},
        }
        custom_api.create_namespaced_custom_object(_ISVC["group"], _ISVC["version"], namespace, _ISVC["plural"], body)
        return "re-created the previous InferenceService"
    patch = object_patch(live, previous)
    if patch:
        custom_api.patch_namespaced_custom_object(
            _ISVC["group"], _ISVC["version"], namespace, _ISVC["plural"], name, patch
        )
    return "restored the previous InferenceService spec"


def rollout_kserve(
    custom_api,
    mlflow_client,
    *,
    namespace: str,
    model_name: str,
    version: str | int,
    storage_uri: str,
    data_connection: str,
    mode: str = "raw",
    smoke: Callable[[str, str], Any] | None = None,
    timeout_s: float = 600.0,
    poll_s: float = 5.0,
    service: str | None = None,
    runtime: str | None = None,
    create_runtime: bool = True,
    runtime_image: str = render.DEFAULT_OVMS_IMAGE,
    resources: dict[str, Any] | None = None,
    smoke_url: str | None = None,
    wait_restored: bool = True,
    move_alias: Callable[[Any, str, str], Any] = promote,
    variant: str | None = None,
    precision: str | None = None,
    drift_reference: Callable[[str, str], Any] | None = None,
) -> dict:
    """Deploy ``version`` on KServe, check it, and make it the champion; roll back on failure.

    Args:
        custom_api: ``kubernetes.client.CustomObjectsApi`` (or the same interface).
        mlflow_client: ``MlflowClient``; ``champion`` moves only after every check passed.
        namespace: Target namespace.
        model_name: Registered model name.
        version: MLflow version to deploy.
        storage_uri: ``s3://<bucket>/<model>/<version>/`` (the version's storage URI).
        data_connection: Name of the data-connection Secret holding the S3 credentials.
        mode: ``raw`` (RawDeployment, OpenShift AI 3.x) or ``modelmesh`` (RHODS 2.x).
        smoke: ``smoke(base_url, model) -> report`` raising on failure (see
            :func:`components.rollout.smoke.make_v2_smoke`); None skips the smoke test.
        timeout_s: How long to wait for ``Ready``.
        poll_s: Poll interval while waiting.
        service: InferenceService name (default: derived from ``model_name``).
        runtime: ServingRuntime name (default by mode).
        create_runtime: Create the OVMS runtime when the namespace lacks it (else fail).
        runtime_image: OVMS image for a created runtime.
        resources: Predictor resources (raw mode).
        smoke_url: Base URL for the smoke test instead of the one in the status: the URL the
            image processor is configured with (the pipeline's rollout step passes its
            ConfigMap's ``VINSPECT_MODEL_URL``), so a version is deployed only when the processor
            can reach it; or a route, for a test run from outside the cluster.
        wait_restored: After a rollback, wait (same timeout) for the restored service to be
            Ready again and report whether it is.

        move_alias: ``move_alias(mlflow_client, model_name, version)`` moves ``champion``
            after every check passed (default :func:`~components.registry.promote`; a
            deployed rollback passes one that pops the history instead).
        variant: The precision variant ``storage_uri`` points at (``onnx``: the ONNX; else an
            OpenVINO IR folder). None: the version's ``vinspect.variant`` tag.
        precision: The variant's declared inference precision, passed to OVMS as its
            ``plugin_config``. None: the version's ``vinspect.variant_precision`` tag.
        drift_reference: ``publish(model_name, version)`` called once the version serves and is
            the champion (:func:`s3_reference_publisher`): OVMS answers as version ``1`` for
            every rollout, so the processor finds the served version's drift reference under a
            stable key only. A failure there only warns. None: nothing is published.

    Returns:
        ``{"status": "deployed" | "rolled_back", "reason", "service", "namespace", "version",
        "previous_version", "url", "action", "smoke", "restore"}`` (plus ``drift_reference``
        when one was to be published); ``reason`` is None when deployed.

    Raises:
        RolloutError: Only when the rollback itself fails (the cluster state then needs a
            person: the message says what was tried).
    """
    version = str(version)
    name = service or render.service_name(model_name)
    runtime_name = runtime or (render.RAW_RUNTIME if mode == "raw" else render.MODELMESH_RUNTIME)
    ids = dict(namespace=namespace, name=name, **_ISVC)
    result: dict[str, Any] = {
        "status": "rolled_back",
        "reason": None,
        "service": name,
        "namespace": namespace,
        "version": version,
        "previous_version": None,
        "url": None,
        "action": None,
        "smoke": None,
        "restore": None,
    }
    if variant is None or precision is None:
        # What the registration recorded: the variant the gate chose and the precision it was
        # measured at (OVMS reads IR natively; a declared precision must reach it explicitly).
        tags = mlflow_client.get_model_version(model_name, version).tags or {}
        variant = tags.get(TAG_VARIANT, "onnx") if variant is None else variant
        precision = tags.get(TAG_VARIANT_PRECISION, "") if precision is None else precision
    # Validate the inputs before touching anything, so a typo changes nothing.
    desired = render.render_inference_service(
        name=name,
        namespace=namespace,
        model_name=model_name,
        version=version,
        storage_uri=storage_uri,
        data_connection=data_connection,
        mode=mode,
        runtime=runtime_name,
        resources=resources,
        model_format="openvino_ir" if variant and variant != "onnx" else "onnx",
        precision=precision or None,
    )
    moved = before_move = None
    previous = get_object(custom_api, **ids)
    if previous is not None:
        result["previous_version"] = (previous.get("metadata", {}).get("labels") or {}).get(render.LABEL_VERSION)
    created_runtime = False
    stage = "checking the ServingRuntime"
    started = time.monotonic()
    try:
        if get_object(custom_api, namespace=namespace, name=runtime_name, **_RUNTIME) is None:
            if not create_runtime:
                raise RolloutError(f"namespace {namespace} has no ServingRuntime {runtime_name!r}")
            stage = "creating the ServingRuntime"
            apply_object(
                custom_api,
                render.render_serving_runtime(namespace=namespace, mode=mode, name=runtime_name, image=runtime_image),
                **_RUNTIME,
            )
            created_runtime = True
        stage = "applying the InferenceService"
        _, result["action"] = apply_object(custom_api, desired, **_ISVC)
        stage = "waiting for Ready"
        ready = wait_ready(custom_api, timeout_s=timeout_s, poll_s=poll_s, **ids)
        url = smoke_url or endpoint_url(ready, mode)
        result["url"] = url
        if smoke is not None:
            stage = "smoke-testing"
            if not url:
                raise RolloutError(f"InferenceService {name} is Ready but reports no URL to test")
            result["smoke"] = smoke(url, name)
        stage = "moving the champion alias"
        before_move = champion_state(mlflow_client, model_name)
        moved = move_alias(mlflow_client, model_name, version)
        mlflow_client.set_model_version_tag(model_name, version, TAG_DEPLOYED, f"kserve:{namespace}/{name}")
    except Exception as exc:
        result["reason"] = f"{stage} failed: {exc}"
        log.warning("rollout of %s v%s failed while %s: %s; rolling back", model_name, version, stage, exc)
        problems = []
        try:
            result["restore"] = _restore(custom_api, namespace, name, previous)
        except Exception as restore_exc:
            problems.append(f"restoring the InferenceService failed: {restore_exc}")
        if created_runtime:
            try:
                delete_object(custom_api, namespace=namespace, name=runtime_name, **_RUNTIME)
            except Exception as rt_exc:
                problems.append(f"deleting the ServingRuntime it created failed: {rt_exc}")
        try:
            # Only this call's own alias move is undone, and only if nobody moved it since.
            result["alias"] = undo_move(mlflow_client, model_name, moved, before=before_move, target=version)
        except Exception as alias_exc:
            problems.append(f"restoring the champion alias failed: {alias_exc}")
        if problems:
            raise RolloutError(f"{result['reason']}; rollback incomplete: {'; '.join(problems)}") from exc
        if wait_restored and previous is not None:
            try:
                wait_ready(custom_api, timeout_s=timeout_s, poll_s=poll_s, **ids)
                result["restore"] += "; it is Ready"
            except RolloutError as wait_exc:
                result["restore"] += f"; it is not Ready yet: {wait_exc}"
        result["elapsed_s"] = round(time.monotonic() - started, 3)
        return result
    result["status"] = "deployed"
    publish_reference(drift_reference, model_name, version, result)
    result["elapsed_s"] = round(time.monotonic() - started, 3)
    log.info("%s v%s deployed as %s/%s (%s)", model_name, version, namespace, name, result["action"])
    return result
