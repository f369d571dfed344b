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
    from components.rollout import GoldenImage
    from components.rollout.deploy import deploy
    from components.rollout.smoke import cluster_tls_verify, golden_from_split, processor_endpoint
    from vinspect.settings import MLflowSettings

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
    processor_url = processor_model = verify = None
    if serving_mode != "local":
        # Predictor URLs are https on OpenShift AI (service-CA-signed, or a route with a public
        # certificate): verify against the system bundle plus the mounted service CA (unless
        # VINSPECT_MODEL_CA_BUNDLE names one). The smoke test calls the model the way the image
        # processor will, at the URL and name of its ConfigMap.
        verify = cluster_tls_verify()
        processor_url, processor_model = processor_endpoint()
        if processor_url:
            print(
                f"[vinspect] smoke test through the processor's endpoint: {processor_url}"
                + (f" (model {processor_model})" if processor_model else "")
            )
        else:
            print(
                "[vinspect] warning: VINSPECT_PROCESSOR_MODEL_URL is not set; the smoke test uses the "
                "InferenceService's status URL, which the image processor may not be configured with"
            )
    result = deploy(
        MLflowSettings.from_env().client(),
        model_name=model_name,
        version=version,
        mode=serving_mode,
        storage_uri=storage_uri,
        golden=golden,
        smoke_rule={"names": classes, "conf": smoke_conf, "min_classes": smoke_min_classes},
        smoke_model=processor_model,
        verify=verify,
        namespace=namespace or None,
        data_connection=data_connection,
        service=inference_service or None,
        model_url=processor_url,
        timeout_s=timeout_s,
        in_cluster=True,
    )

    from serving.notify import notify

    target = f"{serving_mode}:{result.url or result.service or ''}"
    if not result.deployed:
        # Serving is back on the version that served before (or on nothing, for a first model).
        notify(
            "rolled_back",
            model_name,
            result.previous_version or "",
            from_version=version,
            reason=str(result.reason or ""),
            target=target,
        )
        record_outcome(
            "rolled_back",
            f"rollout of {model_name} v{version} failed and was rolled back: {result.reason}",
            model_name=model_name,
            version=version,
        )
        raise RuntimeError(f"rollout of {model_name} v{version} rolled back: {result.reason}")
    url = str(result.url or "")
    print(f"[vinspect] drift reference: {result.drift_reference}")
    notify("promoted", model_name, version, previous_version=result.previous_version, target=target)
    record_outcome(
        "deployed",
        f"{model_name} v{version} is serving at {url} and is the champion",
        model_name=model_name,
        version=version,
        url=url,
        storage_uri=storage_uri,
    )
    return namedtuple("RolloutOutputs", ["status", "url"])("deployed", url)
