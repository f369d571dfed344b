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
    smoke_min_classes: int = -1,
    smoke_conf: float = 0.1,
) -> NamedTuple("RolloutOutputs", [("status", str), ("url", str)]):
    """Roll ``version`` out and move ``champion``; on any failure roll back and fail the step.

    Args:
        dataset: The training dataset: the smoke test's golden images come from its validation
            split (see ``smoke_images``), and their label files say which classes they show.
        model_name: Registered model name.
        version: Version to deploy.
        storage_uri: ``s3://<bucket>/<model>/<version>/``.
        serving_mode: ``raw`` (KServe RawDeployment + OVMS, OpenShift AI 3.x), ``modelmesh``
            (RHODS 2.x) or ``local`` (the local model server at ``$VINSPECT_MODEL_URL``). On the
            cluster the smoke test calls the model the way the image processor will: at the URL
            and model name of the processor's ConfigMap (``VINSPECT_MODEL_URL`` and
            ``VINSPECT_MODEL_NAME`` of ``vinspect-runtime``, which the pipeline maps into this step
            as ``VINSPECT_PROCESSOR_MODEL_URL`` / ``_NAME``), not at the InferenceService's
            ``status.address.url``: a processor URL that reaches nothing rolls the version back.
        namespace: Namespace of the InferenceService (empty: the pod's own namespace); the
            pipeline's service account needs rights on InferenceServices there.
        inference_service: InferenceService name (empty: derived from the model name).
        data_connection: Name of the data-connection Secret the model server reads S3 with.
        smoke_images: Golden images per class: for each class, the first validation images (by
            file name) whose labels have a box of it; each image expects every class it shows.
        timeout_s: How long to wait for the model to be ready.
        smoke_min_classes: The smoke rule. The served model must answer every golden image over
            v2 (through the detector core), and a class counts as found when the model detects
            it, at ``smoke_conf``, on at least one golden image that shows it; at least this many
            classes must be found. ``-1`` (default): every class that has a golden image, i.e. the
            model sees each defect somewhere; ``0``: only that the server answers well-formed
            (for barely trained test models). The rule is deliberately lenient per image (the
            quality gate has judged accuracy on the whole split); it catches a model that is
            wired wrongly (wrong class order, input size, pre-processing) or detects nothing.
        smoke_conf: Score threshold of the smoke test's detections (low on purpose: the rule asks
            "does it see the class at all", not "is it confident").

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
    from components.rollout.kserve import s3_reference_publisher
    from components.rollout.smoke import cluster_tls_verify, golden_from_split, processor_endpoint, smoke_as
    from vinspect.settings import MLflowSettings, ModelServerSettings, S3Settings

    data_dir = Path(dataset.path)
    classes = list(read_manifest(data_dir).classes)
    golden = golden_from_split(data_dir, classes, per_class=smoke_images)
    if not golden:
        if smoke_min_classes != 0:
            raise ValueError(
                f"no image of the validation split in {data_dir} has a box, so the smoke test has no "
                "class to expect; label some, or set smoke_min_classes=0 to check only that the model answers"
            )
        golden = [GoldenImage(p) for p in split_images(data_dir, "val")[: max(1, smoke_images)]]
    print(
        f"[vinspect] smoke test: {len(golden)} golden image(s), "
        + ", ".join(f"{g.path.name} {sorted(g.expected)}" for g in golden)
    )
    smoke_rule = {"names": classes, "conf": smoke_conf, "min_classes": smoke_min_classes}
    mlflow_client = MLflowSettings.from_env().client()
    # The served version's drift reference goes to the stable key the processor reads on
    # KServe/OVMS (which reports version 1 for every rollout): serving.drift.publish_served_reference.
    s3s = S3Settings.from_env()
    publish = s3_reference_publisher(s3s.client(), s3s.bucket) if (s3s.endpoint_url or s3s.access_key_id) else None
    server = ModelServerSettings.from_env()
    token = server.token.get_secret_value() if server.token else None
    if serving_mode == "local":
        smoke = make_v2_smoke(
            golden, token=token, expect_version=version, verify=server.ca_bundle or True, **smoke_rule
        )
        result = rollout_local(
            server.url,
            mlflow_client,
            model_name=model_name,
            version=version,
            storage_uri=storage_uri,
            smoke=smoke,
            timeout_s=timeout_s,
            token=token,
            drift_reference=publish,
        )
    elif serving_mode in ("raw", "modelmesh"):
        from kubernetes import client, config

        config.load_incluster_config()
        if not namespace:
            namespace = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace").read_text().strip()
        # Predictor URLs are https on OpenShift AI (service-CA-signed, or a route with a public
        # certificate) and may require a token: verify against the system bundle plus the
        # mounted service CA (or VINSPECT_MODEL_CA_BUNDLE when given), bearer token from
        # VINSPECT_MODEL_TOKEN when set.
        smoke = make_v2_smoke(
            golden, token=token, expect_version=None, verify=server.ca_bundle or cluster_tls_verify(), **smoke_rule
        )
        processor_url, processor_model = processor_endpoint()
        if processor_url:
            print(
                f"[vinspect] smoke test through the processor's endpoint: {processor_url}"
                + (f" (model {processor_model})" if processor_model else "")
            )
            if processor_model:
                smoke = smoke_as(smoke, processor_model)
        else:
            print(
                "[vinspect] warning: VINSPECT_PROCESSOR_MODEL_URL is not set; the smoke test uses the "
                "InferenceService's status URL, which the image processor may not be configured with"
            )
        result = rollout_kserve(
            client.CustomObjectsApi(),
            mlflow_client,
            namespace=namespace,
            model_name=model_name,
            version=version,
            storage_uri=storage_uri,
            data_connection=data_connection,
            mode=serving_mode,
            smoke=smoke,
            timeout_s=timeout_s,
            service=inference_service or None,
            smoke_url=processor_url,
            drift_reference=publish,
        )
    else:
        raise ValueError(f"serving_mode {serving_mode!r}: expected 'raw', 'modelmesh' or 'local'")

    from serving.notify import notify

    target = f"{serving_mode}:{result.get('url') or result.get('service') or ''}"
    if result["status"] != "deployed":
        # Serving is back on the version that served before (or on nothing, for a first model).
        notify(
            "rolled_back",
            model_name,
            result.get("previous_version") or "",
            from_version=version,
            reason=str(result.get("reason") or ""),
            target=target,
        )
        record_outcome(
            "rolled_back",
            f"rollout of {model_name} v{version} failed and was rolled back: {result.get('reason')}",
            model_name=model_name,
            version=version,
        )
        raise RuntimeError(f"rollout of {model_name} v{version} rolled back: {result.get('reason')}")
    url = str(result.get("url") or "")
    print(f"[vinspect] drift reference: {result.get('drift_reference')}")
    notify("promoted", model_name, version, previous_version=result.get("previous_version"), target=target)
    record_outcome(
        "deployed",
        f"{model_name} v{version} is serving at {url} and is the champion",
        model_name=model_name,
        version=version,
        url=url,
        storage_uri=storage_uri,
    )
    return namedtuple("RolloutOutputs", ["status", "url"])("deployed", url)
