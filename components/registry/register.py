"""Registering a trained model: an MLflow run, a registered version, the ONNX (and variants) on S3.

:func:`register_model` is idempotent per pipeline run and ONNX file, and leaves the new version
as the ``challenger``; moving ``champion`` is :mod:`components.registry.aliases`.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from components.registry.core import (
    CHALLENGER,
    MLFLOW_GIT_TAG,
    TAG_DATASET,
    TAG_GIT,
    TAG_LOGGED,
    TAG_MODEL_URI,
    TAG_PIPELINE_RUN,
    TAG_S3_URI,
    TAG_SHA256,
    TAG_STORAGE_URI,
    TAG_VARIANT,
    TAG_VARIANT_PRECISION,
    RegistryError,
    metric_key,
    not_found,
    quote,
    s3_key,
    sha256_file,
    storage_uri,
)

log = logging.getLogger(__name__)

# MLflow's limit on one log_batch call.
_BATCH = 1000


@dataclass(frozen=True)
class Registration:
    """What :func:`register_model` recorded.

    Attributes:
        name: Registered model name.
        version: The new (or, on a retry, the same) model version.
        s3_uri: ``s3://<bucket>/<model>/<version>/1/model.onnx``.
        storage_uri: The KServe ``storageUri`` of the serving variant.
        run_id: The MLflow run holding parameters, metrics and plots.
        variant: The variant that serves (``onnx`` or an OpenVINO IR variant).
        variant_precision: Its declared precision ("" for the runtime's).
    """

    name: str
    version: str
    s3_uri: str
    storage_uri: str
    run_id: str
    variant: str
    variant_precision: str

    def to_dict(self) -> dict[str, str]:
        """JSON-ready form."""
        return asdict(self)


@contextlib.contextmanager
def _fluent(mlflow_client) -> Iterator[None]:
    """Point MLflow's fluent API at the same server as ``mlflow_client`` for a block.

    ``mlflow.onnx.log_model`` and ``mlflow.register_model`` only exist in the fluent API, which
    reads process-global URIs. ``mlflow.set_tracking_uri`` also exports them as environment
    variables, so the raw globals and the variables are both put back exactly as they were:
    restoring through ``mlflow.get_tracking_uri()`` would instead pin the process to MLflow's
    default (a ``sqlite:///mlflow.db`` in the working directory).
    """
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    saved_env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    old_tracking = tracking_utils._tracking_uri
    old_registry = registry_utils._registry_uri
    mlflow.set_tracking_uri(mlflow_client.tracking_uri)
    mlflow.set_registry_uri(getattr(mlflow_client, "_registry_uri", None) or mlflow_client.tracking_uri)
    try:
        yield
    finally:
        tracking_utils.set_tracking_uri(old_tracking)
        registry_utils._registry_uri = old_registry
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def onnx_signature(onnx_model):
    """An explicit MLflow signature from an ONNX graph's inputs and outputs.

    Dimensions without a fixed size (``dim_param``) become ``-1``.
    """
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec
    from onnx import helper

    def specs(values) -> Schema:
        out = []
        for v in values:
            tt = v.type.tensor_type
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type))
            shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim)
            out.append(TensorSpec(dtype, shape, v.name))
        return Schema(out)

    graph = onnx_model.graph
    initializers = {i.name for i in graph.initializer}
    inputs = [v for v in graph.input if v.name not in initializers]
    return ModelSignature(inputs=specs(inputs), outputs=specs(graph.output))


def _epoch_metrics(csv_path: Path) -> list[tuple[str, float, int]]:
    """(key, value, step) for every numeric column of an Ultralytics ``results.csv``."""
    rows: list[tuple[str, float, int]] = []
    with open(csv_path, newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames:
            raise RegistryError(f"{csv_path}: empty file, expected a header row (epoch,...)")
        fields = [f.strip() for f in reader.fieldnames]
        if "epoch" not in fields:
            raise RegistryError(f"{csv_path}: no 'epoch' column in header {fields}")
        for lineno, raw in enumerate(reader, start=2):
            row = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
            try:
                step = int(float(row["epoch"]))
            except ValueError:
                raise RegistryError(f"{csv_path}:{lineno}: epoch {row['epoch']!r} is not a number") from None
            for key, value in row.items():
                if key == "epoch" or value == "":
                    continue
                try:
                    number = float(value)
                except ValueError:
                    raise RegistryError(
                        f"{csv_path}:{lineno}: column {key!r} value {value!r} is not a number"
                    ) from None
                if math.isfinite(number):
                    rows.append((metric_key(key), number, step))
    return rows


def _find_run(mlflow_client, experiment_id: str, pipeline_run_id: str, sha: str):
    runs = mlflow_client.search_runs(
        [experiment_id],
        filter_string=(f"tags.`{TAG_PIPELINE_RUN}` = {quote(pipeline_run_id)} and tags.`{TAG_SHA256}` = {quote(sha)}"),
        max_results=5,
    )
    return runs[0] if runs else None


def _find_version(mlflow_client, model_name: str, run_id: str):
    from mlflow.exceptions import MlflowException

    try:
        versions = mlflow_client.search_model_versions(f"name = {quote(model_name)} and run_id = {quote(run_id)}")
    except MlflowException as exc:  # the registered model may not exist yet
        if not_found(exc):
            return None
        raise
    versions = [v for v in versions if v.status != "FAILED_REGISTRATION"]
    return min(versions, key=lambda v: int(v.version)) if versions else None


def _log_run_contents(
    mlflow_client,
    run_id: str,
    *,
    params: Mapping[str, Any],
    metrics: Mapping[str, float],
    epoch_metrics_csv: Path | None,
    plots: list[Path],
    dataset_id: str,
    dataset_uri: str | None,
) -> None:
    from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param

    now = int(time.time() * 1000)
    param_list = [Param(metric_key(str(k)), str(v)[:6000]) for k, v in params.items()]
    metric_list = []
    for key, value in metrics.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise RegistryError(f"metric {key!r} = {value!r} is not a number") from None
        if not math.isfinite(number):
            raise RegistryError(f"metric {key!r} = {value!r} is not finite")
        metric_list.append(Metric(metric_key(str(key)), number, now, 0))
    if epoch_metrics_csv is not None:
        metric_list.extend(Metric(k, v, now, step) for k, v, step in _epoch_metrics(Path(epoch_metrics_csv)))
    for start in range(0, len(param_list), 100):  # MLflow takes at most 100 params a batch
        mlflow_client.log_batch(run_id, params=param_list[start : start + 100])
    for start in range(0, len(metric_list), _BATCH):
        mlflow_client.log_batch(run_id, metrics=metric_list[start : start + _BATCH])

    for plot in plots:
        plot = Path(plot)
        if not plot.is_file():
            raise RegistryError(f"plot {plot} does not exist")
        mlflow_client.log_artifact(run_id, str(plot), artifact_path="plots")

    if not dataset_id:
        return  # an imported ONNX registered without an evaluation: no dataset to record
    # MLflow caps a dataset digest at 36 characters; the full id goes into the profile and tags.
    source = dataset_uri or f"vinspect-dataset:{dataset_id}"
    dataset = Dataset(
        name=f"dataset-{dataset_id[:12]}",
        digest=dataset_id[:36],
        source_type="s3" if source.startswith("s3://") else ("local" if "://" not in source else "http"),
        source=json.dumps({"uri": source}),
        profile=json.dumps({"dataset_id": dataset_id}),
    )
    mlflow_client.log_inputs(
        run_id, datasets=[DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "training")])]
    )


def register_model(
    mlflow_client,
    s3_client,
    *,
    onnx_path: Path,
    model_name: str,
    bucket: str,
    params: dict,
    metrics: dict,
    epoch_metrics_csv: Path | None,
    plots: list[Path],
    dataset_id: str,
    dataset_uri: str | None,
    git_revision: str | None,
    pipeline_run_id: str,
    experiment: str = "vinspect",
    variants_dir: Path | None = None,
    variant: str | None = None,
) -> Registration:
    """Record a trained model in MLflow and S3, and make it the ``challenger``.

    One MLflow run per pipeline run holds the parameters, final and per-epoch metrics, plots, the
    dataset as an MLflow dataset input, the git revision and the pipeline run id. The ONNX is
    logged with ``mlflow.onnx.log_model`` (explicit signature, CPU provider) and registered as a
    model version; the same file goes to ``s3://<bucket>/<model>/<version>/1/model.onnx`` (the
    layout OpenVINO Model Server serves) and that URI is tagged on the version.

    With ``variants_dir`` (``components.model.export.export_variants``), every OpenVINO IR
    variant goes under the same version, ``<model>/<version>/<variant>/1/model.{xml,bin}``, and
    ``variant`` (the one the gate chose) becomes the version's storage URI and ``vinspect.variant``
    tag, with its declared precision in ``vinspect.variant_precision`` (empty: the runtime's).

    Idempotent: calling again with the same ``pipeline_run_id`` and the same ONNX file (by
    sha256) finishes whatever a previous, interrupted call left undone and returns the same
    version; it never creates a second one.

    Args:
        mlflow_client: ``mlflow.MlflowClient`` (tracking and registry).
        s3_client: boto3 S3 client.
        onnx_path: The exported ONNX model.
        model_name: Registered model name (also the S3 prefix).
        bucket: Models bucket (must exist).
        params: Training parameters.
        metrics: Final evaluation metrics (name -> number).
        epoch_metrics_csv: Ultralytics ``results.csv`` (one row per epoch), or None.
        plots: Image files logged under the run's ``plots/`` artifacts.
        dataset_id: The dataset manifest hash.
        dataset_uri: Where the dataset lives, if anywhere addressable.
        git_revision: Source revision of the code that trained the model.
        pipeline_run_id: The KFP (or local) pipeline run id.
        experiment: MLflow experiment name (created when missing).
        variants_dir: The precision variants to store beside the ONNX (optional).
        variant: The variant that serves (default ``onnx``: the version's ONNX).

    Returns:
        The :class:`Registration`.

    Raises:
        RegistryError: A missing file or bucket, or malformed metrics (named in the message).
    """
    import onnx
    from botocore.exceptions import ClientError

    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise RegistryError(f"ONNX model {onnx_path} does not exist")
    if not pipeline_run_id:
        raise RegistryError("pipeline_run_id is empty: registration needs it to stay idempotent")
    try:
        s3_client.head_bucket(Bucket=bucket)
    except ClientError as exc:
        raise RegistryError(
            f"S3 bucket {bucket!r} is not reachable ({exc.response.get('Error', {}).get('Code')}); "
            f"create it or set AWS_S3_BUCKET"
        ) from None
    sha = sha256_file(onnx_path)
    variant = variant or "onnx"
    variant_precision = ""
    if variant != "onnx":
        if variants_dir is None:
            raise RegistryError(f"variant {variant!r} chosen but no variants_dir given to register it from")
        from components.model.export import read_variants

        known = read_variants(Path(variants_dir))
        if variant not in known:
            raise RegistryError(f"variant {variant!r} is not in {variants_dir} (have: {', '.join(known)})")
        variant_precision = known[variant].get("precision") or ""

    exp = mlflow_client.get_experiment_by_name(experiment)
    experiment_id = exp.experiment_id if exp else mlflow_client.create_experiment(experiment)

    tags = {
        TAG_PIPELINE_RUN: pipeline_run_id,
        TAG_SHA256: sha,
        TAG_DATASET: dataset_id,
        "vinspect.model_name": model_name,
    }
    if git_revision:
        tags[TAG_GIT] = git_revision
        tags[MLFLOW_GIT_TAG] = git_revision
    run = _find_run(mlflow_client, experiment_id, pipeline_run_id, sha)
    if run is None:
        run = mlflow_client.create_run(experiment_id, run_name=f"{model_name}-{pipeline_run_id}"[:250], tags=tags)
    run_id = run.info.run_id
    run_tags = run.data.tags or {}

    if run_tags.get(TAG_LOGGED) != "1":
        _log_run_contents(
            mlflow_client,
            run_id,
            params=params,
            metrics=metrics,
            epoch_metrics_csv=epoch_metrics_csv,
            plots=plots,
            dataset_id=dataset_id,
            dataset_uri=dataset_uri,
        )
        mlflow_client.set_tag(run_id, TAG_LOGGED, "1")

    model_uri = run_tags.get(TAG_MODEL_URI)
    if not model_uri:
        import mlflow
        import mlflow.onnx

        onnx_model = onnx.load(str(onnx_path))
        meta = {p.key: p.value for p in onnx_model.metadata_props}
        with _fluent(mlflow_client), mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None):
            info = mlflow.onnx.log_model(
                onnx_model,
                name="model",
                signature=onnx_signature(onnx_model),
                onnx_execution_providers=["CPUExecutionProvider"],
                metadata={"onnx_sha256": sha, "dataset_id": dataset_id, **meta},
                save_as_external_data=False,
                # Pinned explicitly: inferring them spawns a Python subprocess that imports
                # the model (seconds per registration) only to find these same two packages.
                pip_requirements=_serving_requirements(),
            )
        model_uri = info.model_uri
        mlflow_client.set_tag(run_id, TAG_MODEL_URI, model_uri)

    mv = _find_version(mlflow_client, model_name, run_id)
    if mv is None:
        import mlflow

        with _fluent(mlflow_client):
            mv = mlflow.register_model(
                model_uri,
                model_name,
                tags={TAG_PIPELINE_RUN: pipeline_run_id, TAG_SHA256: sha, TAG_DATASET: dataset_id},
            )
    version = str(mv.version)

    key = s3_key(model_name, version)
    s3_uri = f"s3://{bucket}/{key}"
    st_uri = storage_uri(bucket, model_name, version, variant)
    if not _s3_has(s3_client, bucket, key, sha):
        s3_client.upload_file(str(onnx_path), bucket, key, ExtraArgs={"Metadata": {"sha256": sha}})
        log.info("uploaded %s (sha256 %s)", s3_uri, sha[:12])
    if variants_dir is not None:
        uploaded = _upload_variants(s3_client, bucket, model_name, version, Path(variants_dir))
        log.info("stored %d variant files under s3://%s/%s/%s/", len(uploaded), bucket, model_name, version)

    for tag, value in {
        TAG_PIPELINE_RUN: pipeline_run_id,
        TAG_SHA256: sha,
        TAG_DATASET: dataset_id,
        TAG_S3_URI: s3_uri,
        TAG_STORAGE_URI: st_uri,
        TAG_VARIANT: variant,
        TAG_VARIANT_PRECISION: variant_precision,
        **({TAG_GIT: git_revision} if git_revision else {}),
    }.items():
        mlflow_client.set_model_version_tag(model_name, version, tag, value)
    mlflow_client.set_tag(run_id, TAG_VARIANT, variant)
    mlflow_client.set_registered_model_alias(model_name, CHALLENGER, version)
    run_status = mlflow_client.get_run(run_id).info.status
    if run_status != "FINISHED":
        mlflow_client.set_terminated(run_id, "FINISHED")
    return Registration(
        name=model_name,
        version=version,
        s3_uri=s3_uri,
        storage_uri=st_uri,
        run_id=run_id,
        variant=variant,
        variant_precision=variant_precision,
    )


def _serving_requirements() -> list[str]:
    from importlib.metadata import version

    return [f"onnx=={version('onnx')}", f"onnxruntime=={version('onnxruntime')}"]


def _upload_variants(s3_client, bucket: str, model_name: str, version: str, variants_dir: Path) -> list[str]:
    """Put every IR variant's OVMS folder under the version: ``<model>/<version>/<variant>/1/...``.

    Each file carries its sha256 as S3 metadata; files already there with that digest are
    skipped, so a retried registration uploads only what is missing.
    """
    from components.model.export import ONNX_VARIANT, read_variants

    keys = []
    for name, entry in read_variants(variants_dir).items():
        if name == ONNX_VARIANT:
            continue  # the ONNX is the version's own 1/model.onnx
        folder = Path(entry["path"]).parent
        for file in sorted(p for p in folder.iterdir() if p.is_file()):
            key = f"{model_name}/{version}/{name}/1/{file.name}"
            sha = sha256_file(file)
            if not _s3_has(s3_client, bucket, key, sha):
                s3_client.upload_file(str(file), bucket, key, ExtraArgs={"Metadata": {"sha256": sha}})
            keys.append(key)
    return keys


def _s3_has(s3_client, bucket: str, key: str, sha: str) -> bool:
    from botocore.exceptions import ClientError

    try:
        head = s3_client.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
    # User-metadata keys come back capitalised from MinIO and rclone ("Sha256", minio/minio#6471),
    # lowercase from AWS: compare case-insensitively, or the skip never fires on our own stores.
    metadata = {str(k).lower(): v for k, v in (head.get("Metadata") or {}).items()}
    return metadata.get("sha256") == sha
