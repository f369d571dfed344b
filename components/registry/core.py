"""MLflow + S3 model registration, aliases, promote and roll back.

Every function takes its clients as arguments (an ``MlflowClient`` and a boto3 S3 client); only
entry points build them from settings. The registry uses aliases, never the deprecated stages:

- ``challenger``: the latest registered version (set by :func:`register_model`);
- ``champion``: the version in service; it moves only through :func:`promote` (called by a
  successful rollout or by a user) and :func:`rollback`.

Each promotion pushes the previous champion onto a history kept as a tag on the registered model,
so a rollback is a pointer change, never a re-upload.

Concurrent alias moves are serialized by :func:`alias_lock`. MLflow has no compare-and-set on
aliases or tags, but it does refuse to create a registered model whose name exists (a unique
key in its store, answered ``RESOURCE_ALREADY_EXISTS``), so creating a companion registered
model ``<name>.alias-lock`` is an atomic test-and-set and deleting it releases the lock. Every
read-modify-write of ``champion`` and its history happens inside it; a failed call undoes only
its own change, which nobody else can have touched while it held the lock. The lock is a lease
(``vinspect.lock_expires``): a holder killed mid-move blocks the next caller until the lease
runs out, then the lock is taken over. What this does not cover: a holder that stalls longer
than the lease (two minutes for a move that takes well under a second) and a writer that moves
the alias around vinspect (the MLflow UI or API directly).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import math
import os
import re
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"

# Tags on runs and model versions. Dots keep them apart from user tags; MLflow's own git tag is
# set as well so the MLflow UI shows the revision.
TAG_PIPELINE_RUN = "vinspect.pipeline_run_id"
TAG_SHA256 = "vinspect.onnx_sha256"
TAG_DATASET = "vinspect.dataset_id"
TAG_GIT = "vinspect.git_revision"
TAG_S3_URI = "vinspect.s3_uri"
TAG_STORAGE_URI = "vinspect.storage_uri"
TAG_LOGGED = "vinspect.logged"
TAG_MODEL_URI = "vinspect.model_uri"
TAG_HISTORY = "vinspect.champion_history"
TAG_PROMOTED_AT = "vinspect.promoted_at"
TAG_VARIANT = "vinspect.variant"
TAG_VARIANT_PRECISION = "vinspect.variant_precision"
MLFLOW_GIT_TAG = "mlflow.source.git.commit"

# The history only needs to be as deep as anyone would roll back; the tag value is bounded.
_HISTORY_DEPTH = 50
# MLflow's limit on one log_batch call.
_BATCH = 1000


class RegistryError(RuntimeError):
    """A registry operation that cannot be done as asked (the message says why and what to do)."""


class AliasLockTimeout(RegistryError):
    """Another promote / rollback held the alias lock for longer than this call would wait."""


# --------------------------------------------------------------------------------------------
# The alias lock
# --------------------------------------------------------------------------------------------

LOCK_SUFFIX = ".alias-lock"
TAG_LOCK_OWNER = "vinspect.lock_owner"
TAG_LOCK_EXPIRES = "vinspect.lock_expires"
# A move takes well under a second; the lease only matters when a holder died.
LOCK_LEASE_S = 120.0
LOCK_WAIT_S = 60.0


def _already_exists(exc: BaseException) -> bool:
    code = getattr(exc, "error_code", "") or ""
    return "RESOURCE_ALREADY_EXISTS" in str(code) or "already exists" in str(exc)


def lock_name(model_name: str) -> str:
    """The registered-model name that is the alias lock of ``model_name``."""
    return model_name + LOCK_SUFFIX


def _lock_tags(mlflow_client, name: str) -> dict[str, str] | None:
    try:
        return dict(mlflow_client.get_registered_model(name).tags or {})
    except Exception as exc:
        if _not_found(exc):
            return None
        raise


@contextlib.contextmanager
def alias_lock(
    mlflow_client,
    model_name: str,
    *,
    wait_s: float = LOCK_WAIT_S,
    lease_s: float = LOCK_LEASE_S,
) -> Iterator[str]:
    """Hold the lock that serializes every move of ``model_name``'s aliases and history.

    Args:
        mlflow_client: ``MlflowClient``.
        model_name: Registered model whose aliases are about to move.
        wait_s: How long to wait for another holder before giving up.
        lease_s: How long this hold counts as alive; after that another caller may take over.

    Yields:
        This holder's owner id.

    Raises:
        AliasLockTimeout: Another holder kept the lock for ``wait_s`` seconds.
    """
    import random
    import socket
    import uuid

    name = lock_name(model_name)
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"
    deadline = time.monotonic() + wait_s
    while True:
        try:
            mlflow_client.create_registered_model(
                name,
                tags={TAG_LOCK_OWNER: owner, TAG_LOCK_EXPIRES: f"{time.time() + lease_s:.3f}"},
                description=f"vinspect: lock serializing moves of {model_name}'s champion alias; "
                "held for well under a second, removed when released",
            )
            break
        except Exception as exc:
            # MLflow's SQL store answers a duplicate name by looking the existing model up: when
            # the holder released it in between, that lookup says "does not exist". Both mean
            # "held a moment ago": try again.
            if not (_already_exists(exc) or _not_found(exc)):
                raise
        tags = _lock_tags(mlflow_client, name)
        if tags is not None:
            try:
                expires = float(tags.get(TAG_LOCK_EXPIRES, "0"))
            except ValueError:
                expires = 0.0
            if time.time() > expires:
                # The holder died (or stalled past its lease): take over, unless it was
                # released or renewed in the meantime (re-read right before the delete).
                again = _lock_tags(mlflow_client, name)
                if again is not None and again.get(TAG_LOCK_OWNER) == tags.get(TAG_LOCK_OWNER):
                    log.warning("%s: alias lock of %s expired; taking it over", model_name, tags.get(TAG_LOCK_OWNER))
                    with contextlib.suppress(Exception):
                        mlflow_client.delete_registered_model(name)
                continue
        if time.monotonic() > deadline:
            holder = (tags or {}).get(TAG_LOCK_OWNER, "unknown")
            raise AliasLockTimeout(
                f"model {model_name!r}: another promote or rollback ({holder}) held the alias lock for "
                f"{wait_s:.0f}s; retry later (a crashed holder's lock expires {lease_s:.0f}s after it "
                f"was taken, or delete the registered model {name!r})"
            )
        time.sleep(random.uniform(0.02, 0.15))
    try:
        yield owner
    finally:
        tags = _lock_tags(mlflow_client, name)
        if tags is not None and tags.get(TAG_LOCK_OWNER) == owner:
            with contextlib.suppress(Exception):
                mlflow_client.delete_registered_model(name)
        else:
            log.warning("%s: the alias lock was taken over after this call's lease expired", model_name)


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


_KEY_BAD = re.compile(r"[^\w./\- :]")


def metric_key(name: str) -> str:
    """An MLflow-safe metric or parameter key.

    Ultralytics names metrics like ``metrics/mAP50-95(B)``; MLflow refuses parentheses. Like the
    Ultralytics MLflow callback, parentheses are dropped (``metrics/mAP50-95B``); any other
    refused character becomes ``_``.
    """
    return _KEY_BAD.sub("_", name.strip().replace("(", "").replace(")", ""))


def s3_key(model_name: str, version: str | int) -> str:
    """Key of a version's ONNX file in the layout OVMS serves: ``<model>/<version>/1/model.onnx``."""
    return f"{model_name}/{version}/1/model.onnx"


def storage_uri(bucket: str, model_name: str, version: str | int, variant: str | None = None) -> str:
    """The KServe ``storageUri`` of a version: ``s3://<bucket>/<model>/<version>/``.

    With a precision ``variant`` (not ``onnx``): ``s3://<bucket>/<model>/<version>/<variant>/``,
    the OVMS model folder holding ``1/model.xml`` + ``1/model.bin``.
    """
    if variant and variant != "onnx":
        return f"s3://{bucket}/{model_name}/{version}/{variant}/"
    return f"s3://{bucket}/{model_name}/{version}/"


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


def _not_found(exc: BaseException) -> bool:
    """True for MLflow's "does not exist" errors (local and REST stores alike)."""
    return getattr(exc, "error_code", None) == "RESOURCE_DOES_NOT_EXIST"


def _quote(value: str) -> str:
    # MLflow filter strings are single-quoted SQL-like literals.
    return "'" + str(value).replace("'", "\\'") + "'"


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


def _aliases(mlflow_client, model_name: str) -> dict[str, str]:
    """alias -> version of a registered model."""
    rm = mlflow_client.get_registered_model(model_name)
    aliases = rm.aliases or {}
    # MLflow returns a dict alias -> version; older servers a list of objects.
    if isinstance(aliases, Mapping):
        return {str(k): str(v) for k, v in aliases.items()}
    return {str(a.alias): str(a.version) for a in aliases}


def _history(mlflow_client, model_name: str) -> list[str]:
    rm = mlflow_client.get_registered_model(model_name)
    raw = (rm.tags or {}).get(TAG_HISTORY)
    if not raw:
        return []
    try:
        history = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise RegistryError(
            f"registered model {model_name!r}: tag {TAG_HISTORY} is not JSON ({exc}); "
            f"fix it in the MLflow UI or delete it"
        ) from None
    return [str(v) for v in history]


# --------------------------------------------------------------------------------------------
# ONNX signature
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Registration
# --------------------------------------------------------------------------------------------


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
        filter_string=(
            f"tags.`{TAG_PIPELINE_RUN}` = {_quote(pipeline_run_id)} and tags.`{TAG_SHA256}` = {_quote(sha)}"
        ),
        max_results=5,
    )
    return runs[0] if runs else None


def _find_version(mlflow_client, model_name: str, run_id: str):
    try:
        versions = mlflow_client.search_model_versions(f"name = {_quote(model_name)} and run_id = {_quote(run_id)}")
    except Exception as exc:  # the registered model may not exist yet
        if _not_found(exc):
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
) -> dict:
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
        ``{"name", "version", "s3_uri", "storage_uri", "run_id", "variant", "variant_precision"}``.

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
    return {
        "name": model_name,
        "version": version,
        "s3_uri": s3_uri,
        "storage_uri": st_uri,
        "run_id": run_id,
        "variant": variant,
        "variant_precision": variant_precision,
    }


def _serving_requirements() -> list[str]:
    from importlib.metadata import version

    return [f"onnx=={version('onnx')}", f"onnxruntime=={version('onnxruntime')}"]


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


# --------------------------------------------------------------------------------------------
# Aliases
# --------------------------------------------------------------------------------------------


def get_champion(mlflow_client, model_name: str) -> str | None:
    """The version the ``champion`` alias points at, or None."""
    return _aliases(mlflow_client, model_name).get(CHAMPION)


def version_info(mlflow_client, model_name: str, version: str | int) -> dict:
    """One version as a dict: tags, S3 and storage URIs, run id, metrics."""
    mv = mlflow_client.get_model_version(model_name, str(version))
    aliases = [a for a, v in _aliases(mlflow_client, model_name).items() if v == str(mv.version)]
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
    try:
        aliases = _aliases(mlflow_client, model_name)
    except Exception as exc:
        if _not_found(exc):
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
        page = mlflow_client.search_model_versions(f"name = {_quote(model_name)}", max_results=200, page_token=token)
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
    try:
        champion = get_champion(mlflow_client, model_name)
    except Exception as exc:
        if _not_found(exc):
            return None
        raise
    if champion is None:
        return None
    mv = mlflow_client.get_model_version(model_name, champion)
    if (mv.tags or {}).get(TAG_DATASET) != dataset_id or not mv.run_id:
        return None
    return dict(mlflow_client.get_run(mv.run_id).data.metrics)


def promote(mlflow_client, model_name: str, version: str | int) -> dict:
    """Point ``champion`` at ``version``, remembering the previous champion for a rollback.

    Serialized with every other alias move of the model (:func:`alias_lock`), so concurrent
    calls end in a state some sequential order gives, and a failed call puts back only what it
    changed itself.

    Args:
        mlflow_client: ``MlflowClient``.
        model_name: Registered model name.
        version: The version to promote (must exist and be READY).

    Returns:
        ``{"name", "champion", "previous", "changed", "history"}`` (``previous`` is None for the
        first champion; ``history`` as left by this call).

    Raises:
        RegistryError: The version does not exist or failed registration.
        AliasLockTimeout: Another move held the lock too long.
    """
    version = str(version)
    with alias_lock(mlflow_client, model_name):
        try:
            mv = mlflow_client.get_model_version(model_name, version)
        except Exception as exc:
            if _not_found(exc):
                raise RegistryError(
                    f"model {model_name!r} has no version {version}; see `vinspect model list`"
                ) from None
            raise
        if mv.status not in (None, "READY"):
            raise RegistryError(f"model {model_name!r} version {version} is {mv.status}, not READY")
        current = get_champion(mlflow_client, model_name)
        history = _history(mlflow_client, model_name)
        if current == version:
            return {
                "name": model_name,
                "champion": version,
                "previous": None,
                "changed": False,
                "history": history,
                "undo": None,
            }
        new_history = history
        if current is not None and (not history or history[-1] != current):
            new_history = (history + [current])[-_HISTORY_DEPTH:]
        if new_history != history:
            # History first: should this process die before the alias moves, the champion is
            # unchanged and the extra entry is harmless; the other order could lose the way back.
            mlflow_client.set_registered_model_tag(model_name, TAG_HISTORY, json.dumps(new_history))
        try:
            mlflow_client.set_registered_model_alias(model_name, CHAMPION, version)
        except Exception:
            if new_history != history:
                mlflow_client.set_registered_model_tag(model_name, TAG_HISTORY, json.dumps(history))
            raise
        mlflow_client.set_model_version_tag(
            model_name, version, TAG_PROMOTED_AT, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        )
    log.info("%s: champion %s -> %s", model_name, current, version)
    return {
        "name": model_name,
        "champion": version,
        "previous": current,
        "changed": True,
        "history": new_history,
        "undo": (current, history),
    }


def rollback(mlflow_client, model_name: str, expect: str | None = None) -> dict:
    """Point ``champion`` back at the previous champion (a pointer change, no upload).

    Args:
        mlflow_client: ``MlflowClient``.
        model_name: Registered model name.
        expect: When given, the version the caller means to roll back to; if the history says
            otherwise (another move came in between), nothing changes and RegistryError is raised.

    Returns:
        ``{"name", "champion", "rolled_back_from", "history"}``.

    Raises:
        RegistryError: When no previous champion is recorded, or it is not ``expect``.
        AliasLockTimeout: Another move held the lock too long.
    """
    with alias_lock(mlflow_client, model_name):
        history = _history(mlflow_client, model_name)
        current = get_champion(mlflow_client, model_name)
        if not history:
            raise RegistryError(
                f"model {model_name!r}: no previous champion recorded (current: {current}); "
                f"use `vinspect model promote VERSION` to choose one"
            )
        if expect is not None and history[-1] != str(expect):
            raise RegistryError(
                f"model {model_name!r}: the previous champion is now {history[-1]}, not {expect} "
                f"(another promote or rollback came in between); nothing changed"
            )
        before = list(history)
        previous = history.pop()
        # Alias first: should this process die before the history is written, the popped entry
        # is still there and a second rollback lands on the same version.
        mlflow_client.set_registered_model_alias(model_name, CHAMPION, previous)
        try:
            mlflow_client.set_registered_model_tag(model_name, TAG_HISTORY, json.dumps(history))
        except Exception:
            if current is not None:
                mlflow_client.set_registered_model_alias(model_name, CHAMPION, current)
            raise
    log.info("%s: champion rolled back %s -> %s", model_name, current, previous)
    return {
        "name": model_name,
        "champion": previous,
        "rolled_back_from": current,
        "history": history,
        "undo": (current, before),
    }


def undo_move(
    mlflow_client,
    model_name: str,
    moved: Any,
    *,
    before: tuple[str | None, list[str]] | None = None,
    target: str | None = None,
) -> str:
    """Undo an alias move this caller made (the result of :func:`promote` or :func:`rollback`).

    Only the caller's own move is undone, and only while the state is still the one it left:
    a later promote by someone else stands.

    Args:
        mlflow_client: ``MlflowClient``.
        model_name: Registered model name.
        moved: What the move returned (None when it raised).
        before: ``(champion, history)`` read just before a move that raised; with ``target``,
            a half-done move (``champion`` already at ``target``) is put back to it.
        target: The version the failed move was moving to.

    Returns:
        What happened, for the rollout's report.
    """
    if isinstance(moved, Mapping) and moved.get("undo"):
        before_champion, before_history = moved["undo"]
        if restore_champion(
            mlflow_client, model_name, before_champion, before_history, expect=(moved["champion"], moved["history"])
        ):
            return f"champion put back to {before_champion}"
        return "champion left alone: another call moved it since"
    if moved is None and before is not None and target is not None:
        # A move that raised part-way (a custom mover): undo only if it left its own target.
        with alias_lock(mlflow_client, model_name):
            now = champion_state(mlflow_client, model_name)
            if now[0] == str(target) and (now[0], list(now[1])) != (before[0], list(before[1])):
                _restore_unlocked(mlflow_client, model_name, before[0], before[1])
                return f"champion put back to {before[0]}"
    return "the champion alias had not moved"


def _restore_unlocked(mlflow_client, model_name: str, version: str | None, history: list[str]) -> None:
    mlflow_client.set_registered_model_tag(model_name, TAG_HISTORY, json.dumps(history))
    if version is None:
        with contextlib.suppress(Exception):
            mlflow_client.delete_registered_model_alias(model_name, CHAMPION)
    else:
        mlflow_client.set_registered_model_alias(model_name, CHAMPION, version)


def restore_champion(
    mlflow_client,
    model_name: str,
    version: str | None,
    history: list[str],
    expect: tuple[str | None, list[str]] | None = None,
) -> bool:
    """Put ``champion`` and its history back as they were (used by a failed rollout).

    Args:
        mlflow_client: ``MlflowClient``.
        model_name: Registered model name.
        version: Champion to restore (None removes the alias).
        history: History to restore.
        expect: ``(champion, history)`` this caller left; when the state is no longer that
            (another call moved the alias since), nothing is restored: undoing would throw
            away that call's success.

    Returns:
        True when restored, False when skipped because of ``expect``.
    """
    with alias_lock(mlflow_client, model_name):
        if expect is not None:
            now = champion_state(mlflow_client, model_name)
            if (now[0], list(now[1])) != (expect[0], list(expect[1])):
                log.warning(
                    "%s: not restoring champion %s: another call moved it since (now %s)", model_name, version, now[0]
                )
                return False
        _restore_unlocked(mlflow_client, model_name, version, history)
    return True


def champion_state(mlflow_client, model_name: str) -> tuple[str | None, list[str]]:
    """(champion version, history) as they are now, for :func:`restore_champion`."""
    return get_champion(mlflow_client, model_name), _history(mlflow_client, model_name)
