"""Reading the registry: the champion, one version's record, every version, the champion's metrics."""

from __future__ import annotations

import logging

from components.registry.core import (
    CHAMPION,
    TAG_DATASET,
    TAG_PIPELINE_RUN,
    TAG_S3_URI,
    TAG_SHA256,
    TAG_STORAGE_URI,
    TAG_VARIANT,
    TAG_VARIANT_PRECISION,
    RegistryError,
    not_found,
    quote,
    read_aliases,
    read_history,
)

log = logging.getLogger(__name__)


def get_champion(mlflow_client, model_name: str) -> str | None:
    """The version the ``champion`` alias points at, or None."""
    return read_aliases(mlflow_client, model_name).get(CHAMPION)


def version_info(mlflow_client, model_name: str, version: str | int) -> dict:
    """One version as a dict: tags, S3 and storage URIs, run id, metrics."""
    mv = mlflow_client.get_model_version(model_name, str(version))
    aliases = [a for a, v in read_aliases(mlflow_client, model_name).items() if v == str(mv.version)]
    return _version_dict(mlflow_client, mv, aliases)


def _version_dict(mlflow_client, mv, aliases: list[str], metrics_cache: dict | None = None) -> dict:
    tags = dict(mv.tags or {})
    metrics: dict[str, float] = {}
    if mv.run_id:
        if metrics_cache is not None and mv.run_id in metrics_cache:
            metrics = metrics_cache[mv.run_id]
        else:
            try:
                metrics = dict(mlflow_client.get_run(mv.run_id).data.metrics)
            except Exception as exc:  # a deleted run should not hide the version
                log.warning("version %s: run %s unreadable: %s", mv.version, mv.run_id, exc)
            if metrics_cache is not None:
                metrics_cache[mv.run_id] = metrics
    return {
        "name": mv.name,
        "version": str(mv.version),
        "aliases": sorted(aliases),
        "run_id": mv.run_id,
        "created": int(mv.creation_timestamp or 0),
        "status": mv.status,
        "dataset_id": tags.get(TAG_DATASET),
        "s3_uri": tags.get(TAG_S3_URI),
        "storage_uri": tags.get(TAG_STORAGE_URI),
        "pipeline_run_id": tags.get(TAG_PIPELINE_RUN),
        "onnx_sha256": tags.get(TAG_SHA256),
        "variant": tags.get(TAG_VARIANT) or "onnx",
        "variant_precision": tags.get(TAG_VARIANT_PRECISION) or "",
        "tags": tags,
        "metrics": metrics,
    }


def list_versions(mlflow_client, model_name: str) -> list[dict]:
    """All versions of a registered model, newest first.

    Returns:
        One dict per version: ``name, version, aliases, run_id, created (ms), status,
        dataset_id, s3_uri, storage_uri, pipeline_run_id, onnx_sha256, tags, metrics``.

    Raises:
        RegistryError: When the registered model does not exist.
    """
    from mlflow.exceptions import MlflowException

    try:
        aliases = read_aliases(mlflow_client, model_name)
    except MlflowException as exc:
        if not_found(exc):
            raise RegistryError(
                f"no registered model {model_name!r} in MLflow; register one first "
                f"(pipeline run, or check VINSPECT_MODEL_NAME)"
            ) from None
        raise
    by_version: dict[str, list[str]] = {}
    for alias, version in aliases.items():
        by_version.setdefault(version, []).append(alias)
    versions = []
    token = None
    while True:
        page = mlflow_client.search_model_versions(f"name = {quote(model_name)}", max_results=200, page_token=token)
        versions.extend(page)
        token = getattr(page, "token", None)
        if not token:
            break
    cache: dict[str, dict] = {}
    out = [_version_dict(mlflow_client, mv, by_version.get(str(mv.version), []), cache) for mv in versions]
    return sorted(out, key=lambda d: int(d["version"]), reverse=True)


def champion_metrics(mlflow_client, model_name: str, dataset_id: str) -> dict | None:
    """The current champion's metrics, when it was evaluated on the same dataset.

    The quality gate compares a candidate with the champion only on the same data: metrics
    measured on another dataset are not comparable, so they are not returned.

    Args:
        mlflow_client: ``MlflowClient``.
        model_name: Registered model name.
        dataset_id: The candidate's dataset id.

    Returns:
        ``{metric name: value}`` of the champion's run (the keys the registration logged), or
        None when there is no registered model, no champion, or the champion was evaluated on
        another dataset.
    """
    from mlflow.exceptions import MlflowException

    try:
        champion = get_champion(mlflow_client, model_name)
    except MlflowException as exc:
        if not_found(exc):
            return None
        raise
    if champion is None:
        return None
    mv = mlflow_client.get_model_version(model_name, champion)
    if (mv.tags or {}).get(TAG_DATASET) != dataset_id or not mv.run_id:
        return None
    return dict(mlflow_client.get_run(mv.run_id).data.metrics)


def champion_state(mlflow_client, model_name: str) -> tuple[str | None, list[str]]:
    """(champion version, history) as they are now, for :func:`restore_champion`."""
    return get_champion(mlflow_client, model_name), read_history(mlflow_client, model_name)
