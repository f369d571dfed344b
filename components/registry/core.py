"""The registry's vocabulary and the helpers every registry verb shares.

The alias names, the tags vinspect puts on runs and versions, the errors, the S3 layout OVMS serves
(:func:`s3_key`, :func:`storage_uri`), and the reads of a registered model's aliases and champion
history. The verbs live beside it, one file each: :mod:`~components.registry.register` (a trained
model -> an MLflow run, a version, the ONNX on S3), :mod:`~components.registry.aliases` (promote,
rollback and the alias lock that serializes them), :mod:`~components.registry.queries` (list,
champion, a version's record) and :mod:`~components.registry.onnx_import`.

The registry uses aliases, never the deprecated stages:

- ``challenger``: the latest registered version (set by ``register_model``);
- ``champion``: the version in service; it moves only through ``promote`` (called by a
  successful rollout or by a user) and ``rollback``.

Each promotion pushes the previous champion onto a history kept as a tag on the registered model,
so a rollback is a pointer change, never a re-upload.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path

from vinspect.errors import VinspectError

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


class RegistryError(VinspectError, RuntimeError):
    """A registry operation that cannot be done as asked (the message says why and what to do)."""


class AliasLockTimeout(RegistryError):
    """Another promote / rollback held the alias lock for longer than this call would wait."""


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


def not_found(exc: BaseException) -> bool:
    """True for MLflow's "does not exist" errors (local and REST stores alike)."""
    return getattr(exc, "error_code", None) == "RESOURCE_DOES_NOT_EXIST"


def quote(value: str) -> str:
    """``value`` as an MLflow filter-string literal."""
    # MLflow filter strings are single-quoted SQL-like literals.
    return "'" + str(value).replace("'", "\\'") + "'"


def read_aliases(mlflow_client, model_name: str) -> dict[str, str]:
    """alias -> version of a registered model."""
    rm = mlflow_client.get_registered_model(model_name)
    aliases = rm.aliases or {}
    # MLflow returns a dict alias -> version; older servers a list of objects.
    if isinstance(aliases, Mapping):
        return {str(k): str(v) for k, v in aliases.items()}
    return {str(a.alias): str(a.version) for a in aliases}


def read_history(mlflow_client, model_name: str) -> list[str]:
    """The champion history (oldest first) kept in the registered model's tag."""
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
