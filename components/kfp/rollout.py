"""KFP step 7: serve the registered version, smoke-test it, then make it the champion."""

from typing import NamedTuple

from kfp.dsl import Dataset, Input


def rollout(
    dataset: Input[Dataset],
    model_name: str,
    version: str,
    storage_uri: str,
    serving_mode: str,
    namespace: str,
    inference_service: str,
    data_connection: str,
    smoke_images: int,
    timeout_s: float,
) -> NamedTuple("RolloutOutputs", [("status", str), ("url", str)]):
    """Roll ``version`` out and move ``champion``; on any failure roll back and fail the step.

    Args:
        dataset: The training dataset: its first validation images are the smoke-test images
            (the served model must answer them through the v2 protocol and the detector core;
            the quality gate has already judged accuracy).
        model_name: Registered model name.
        version: Version to deploy.
        storage_uri: ``s3://<bucket>/<model>/<version>/``.
        serving_mode: ``raw`` (KServe RawDeployment + OVMS, OpenShift AI 3.x), ``modelmesh``
            (RHODS 2.x) or ``local`` (the local model server at ``$VINSPECT_MODEL_URL``).
        namespace: Namespace of the InferenceService (empty: the pod's own namespace); the
            pipeline's service account needs rights on InferenceServices there.
        inference_service: InferenceService name (empty: derived from the model name).
        data_connection: Name of the data-connection Secret the model server reads S3 with.
        smoke_images: How many validation images the smoke test sends.
        timeout_s: How long to wait for the model to be ready.

    Returns:
        ``deployed`` and the serving URL.

    Raises:
        RuntimeError: When the rollout failed and was rolled back (the reason is in the message).
    """
    from collections import namedtuple
    from pathlib import Path

    from components.data.manifest import read_manifest
    from components.kfp.outcome import record_outcome
    from components.model.evaluate import split_images
    from components.rollout import GoldenImage, make_v2_smoke, rollout_kserve, rollout_local
    from vinspect.settings import MLflowSettings, ModelServerSettings

    data_dir = Path(dataset.path)
    classes = list(read_manifest(data_dir)["classes"])
    golden = [GoldenImage(p) for p in split_images(data_dir, "val")[: max(1, smoke_images)]]
    mlflow_client = MLflowSettings.from_env().client()
    if serving_mode == "local":
        server = ModelServerSettings.from_env()
        token = server.token.get_secret_value() if server.token else None
        smoke = make_v2_smoke(golden, names=classes, token=token, expect_version=version,
                              verify=server.ca_bundle or True)
        result = rollout_local(server.url, mlflow_client, model_name=model_name, version=version,
                               storage_uri=storage_uri, smoke=smoke, timeout_s=timeout_s, token=token)
    elif serving_mode in ("raw", "modelmesh"):
        from kubernetes import client, config

        config.load_incluster_config()
        if not namespace:
            namespace = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace").read_text().strip()
        smoke = make_v2_smoke(golden, names=classes, expect_version=None)
        result = rollout_kserve(client.CustomObjectsApi(), mlflow_client, namespace=namespace,
                                model_name=model_name, version=version, storage_uri=storage_uri,
                                data_connection=data_connection, mode=serving_mode, smoke=smoke,
                                timeout_s=timeout_s, service=inference_service or None)
    else:
        raise ValueError(f"serving_mode {serving_mode!r}: expected 'raw', 'modelmesh' or 'local'")

    if result["status"] != "deployed":
        record_outcome("rolled_back", f"rollout of {model_name} v{version} failed and was rolled back: "
                       f"{result.get('reason')}", model_name=model_name, version=version)
        raise RuntimeError(f"rollout of {model_name} v{version} rolled back: {result.get('reason')}")
    url = str(result.get("url") or "")
    record_outcome("deployed", f"{model_name} v{version} is serving at {url} and is the champion",
                   model_name=model_name, version=version, url=url, storage_uri=storage_uri)
    return namedtuple("RolloutOutputs", ["status", "url"])("deployed", url)
