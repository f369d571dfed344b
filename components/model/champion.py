"""The current champion's metrics on the candidate's own validation split.

The quality gate's non-regression check is only meaningful on the same data. When the champion was
evaluated on this very dataset with the same thresholds, its recorded metrics are used as they are
(no download). Otherwise,
typically after new data arrived, the champion's ONNX is fetched from the S3 URI recorded on its
MLflow model version and evaluated through the same detector core, on the same split, with the
same thresholds as the candidate.

A champion that exists but cannot be evaluated raises :class:`ChampionUnavailable`; the caller
decides (the pipeline fails the gate closed unless told to fall back to the floors).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from serving.detector import CORE_VERSION
from vinspect.defaults import EVAL
from vinspect.errors import VinspectError

log = logging.getLogger(__name__)

# The overall figures the gate compares; recorded metrics missing one of them are not trusted.
COMPARED = ("map50", "map50_95")
RECORDED = "recorded"
RE_EVALUATED = "re-evaluated"
GIVEN = "given"


class ChampionUnavailable(VinspectError, RuntimeError):
    """A champion exists but its metrics on this data cannot be had (the message says why)."""

    def __init__(self, message: str, *, version: str | None = None) -> None:
        super().__init__(message)
        self.version = version


@dataclass
class ChampionMetrics:
    """The champion's metrics on the candidate's evaluation data.

    Attributes:
        version: The champion's MLflow model version.
        dataset_id: The dataset the metrics were measured on (the candidate's).
        source: :data:`RECORDED` (logged when the champion was registered on this same dataset),
            :data:`RE_EVALUATED` (its ONNX evaluated on this dataset now) or :data:`GIVEN` (figures
            an operator passed, ``vinspect model evaluate --champion``).
        metrics: ``map50``, ``map50_95``, ``precision``, ``recall`` (and ``per_class`` when
            re-evaluated), as :func:`components.model.evaluate_onnx` returns them.
        trained_on: The dataset the champion was trained on.
        s3_uri: Where its ONNX was read from (re-evaluated only).
    """

    version: str
    dataset_id: str
    source: str
    metrics: dict[str, Any]
    trained_on: str | None = None
    s3_uri: str | None = None

    @property
    def label(self) -> str:
        """How the gate names this champion in its reasons."""
        if self.source == GIVEN:
            return "champion"
        how = "recorded" if self.source == RECORDED else "re-evaluated"
        return f"champion v{self.version} ({how} on this data)"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (with :attr:`label`)."""
        return {**asdict(self), "label": self.label}


def _dataset_names(dataset_dir: Path) -> list[str] | None:
    path = dataset_dir / "data.yaml"
    if not path.is_file():
        return None
    names = (yaml.safe_load(path.read_text()) or {}).get("names")
    if isinstance(names, dict):
        return [str(names[k]) for k in sorted(names, key=int)]
    if isinstance(names, list):
        return [str(n) for n in names]
    return None


def _parse_s3_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://"):
        raise ValueError(uri)
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket or not key or key.endswith("/"):
        raise ValueError(uri)
    return bucket, key


def _fetch_onnx(s3_client, uri: str, dest: Path, version: str) -> None:
    from botocore.exceptions import ClientError

    try:
        bucket, key = _parse_s3_uri(uri)
    except ValueError:
        raise ChampionUnavailable(
            f"champion v{version}: recorded S3 URI {uri!r} is not s3://<bucket>/<key>", version=version
        ) from None
    tmp = dest.with_name(dest.name + ".part")
    try:
        s3_client.download_file(bucket, key, str(tmp))
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code"))
        tmp.unlink(missing_ok=True)
        if code in ("404", "NoSuchKey", "NotFound", "NoSuchBucket"):
            raise ChampionUnavailable(
                f"champion v{version}: its ONNX {uri} is missing from S3 ({code})", version=version
            ) from None
        raise  # credentials, permissions, a server error: a broken step, not a verdict
    tmp.replace(dest)


def champion_metrics_on(
    dataset_dir: Path,
    *,
    mlflow_client,
    s3_client,
    model_name: str,
    version: str | None = None,
    split: str = EVAL.split,
    conf: float = EVAL.conf,
    iou: float = EVAL.iou,
    work_dir: Path | None = None,
) -> ChampionMetrics | None:
    """The champion's metrics on ``dataset_dir``'s ``split``, comparable with a candidate's.

    Fast path: when the champion version is tagged with this dataset's id and its MLflow run
    holds the compared metrics measured with the same ``conf`` and ``iou`` by the same detector
    core (``eval_conf``, ``eval_iou``, ``eval_core``, logged by the evaluate step), those are returned (``source``
    :data:`RECORDED`). Otherwise the
    champion's ONNX is downloaded from the ``vinspect.s3_uri`` recorded on the model version,
    its sha256 checked against the recorded one, and it is evaluated with
    :func:`components.model.evaluate_onnx` exactly as the candidate was (``source``
    :data:`RE_EVALUATED`).

    Args:
        dataset_dir: The candidate's dataset directory (CONTRACTS.md layout, with its manifest).
        mlflow_client: ``MlflowClient``.
        s3_client: boto3 S3 client able to read the models bucket.
        model_name: Registered model name.
        version: The champion version to use (the pipeline passes the one ``check_dataset`` saw,
            so the gate compares with the champion the run started against); default: whatever
            the ``champion`` alias points at now.
        split: The evaluated split.
        conf: Confidence threshold, as for the candidate.
        iou: NMS IoU threshold, as for the candidate.
        work_dir: Where the ONNX is downloaded (default: a temporary directory, removed after).

    Returns:
        A :class:`ChampionMetrics`, or None when the model has no champion.

    Raises:
        ChampionUnavailable: The champion exists but cannot be evaluated here: the version is
            gone, no S3 URI is recorded, the object is missing or not the registered file, its
            classes differ from the dataset's, or the evaluation failed.
        botocore.exceptions.ClientError: S3 errors other than a missing object (access, server).
    """
    from mlflow.exceptions import MlflowException

    from components.data.errors import DatasetError
    from components.data.manifest import read_manifest
    from components.registry.queries import get_champion, version_info

    dataset_dir = Path(dataset_dir)
    dataset_id = read_manifest(dataset_dir).dataset_id
    if not dataset_id:  # the champion's record is matched to the candidate's data by this id
        raise DatasetError("manifest has no dataset_id", file=dataset_dir / "manifest.json")
    if version is None:
        try:
            version = get_champion(mlflow_client, model_name)
        except MlflowException as exc:  # a model never registered has no champion
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            return None
        if version is None:
            return None
    version = str(version)
    try:
        info = version_info(mlflow_client, model_name, version)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise ChampionUnavailable(
                f"champion v{version} of {model_name!r} no longer exists in the registry", version=version
            ) from None
        raise
    trained_on = info.get("dataset_id")
    recorded = info.get("metrics") or {}

    if trained_on == dataset_id and all(k in recorded for k in COMPARED):
        if _measured_alike(recorded, conf, iou):
            flat = {k: float(recorded[k]) for k in ("map50", "map50_95", "precision", "recall") if k in recorded}
            return ChampionMetrics(
                version,
                dataset_id,
                RECORDED,
                {**flat, "eval_dataset_id": dataset_id, "conf": conf, "iou": iou},
                trained_on=trained_on,
            )
        log.info(
            "champion v%s was evaluated on this dataset with conf %s / IoU %s / detector core %s, the "
            "candidate with %s / %s / %s: re-evaluating it",
            version,
            recorded.get("eval_conf", "unrecorded"),
            recorded.get("eval_iou", "unrecorded"),
            recorded.get("eval_core", "unrecorded"),
            conf,
            iou,
            CORE_VERSION,
        )

    uri = info.get("s3_uri")
    if not uri:
        raise ChampionUnavailable(
            f"champion v{version}: no S3 URI is recorded on the model version (tag vinspect.s3_uri)",
            version=version,
        )
    from components.model.evaluate import evaluate_onnx
    from components.registry.core import sha256_file

    with tempfile.TemporaryDirectory(prefix="champion-", dir=work_dir) as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        _fetch_onnx(s3_client, uri, onnx_path, version)
        expected = info.get("onnx_sha256")
        if expected and sha256_file(onnx_path) != expected:
            raise ChampionUnavailable(
                f"champion v{version}: {uri} is not the registered file (sha256 differs from {expected[:12]})",
                version=version,
            )
        names = _dataset_names(dataset_dir)
        try:
            model_names = _model_names(onnx_path)
            if names is not None and model_names is not None and model_names != names:
                raise ChampionUnavailable(
                    f"champion v{version} detects classes {model_names}, the data has {names}: not comparable",
                    version=version,
                )
            metrics = evaluate_onnx(onnx_path, dataset_dir, split=split, conf=conf, iou=iou)
        except ChampionUnavailable:
            raise
        except Exception as exc:  # a model the detector core cannot run says nothing about regression
            raise ChampionUnavailable(
                f"champion v{version}: evaluating {uri} on dataset {dataset_id} failed: {type(exc).__name__}: {exc}",
                version=version,
            ) from exc
    metrics.pop("plots", None)
    log.info("champion v%s re-evaluated on dataset %s: mAP50 %.4f", version, dataset_id, metrics.get("map50") or 0)
    return ChampionMetrics(version, dataset_id, RE_EVALUATED, metrics, trained_on=trained_on, s3_uri=uri)


def _measured_alike(recorded: dict[str, Any], conf: float, iou: float) -> bool:
    """Were the recorded figures measured with these thresholds, by this detector core?

    Unrecorded values never match (figures from older registrations are re-measured).
    """
    try:
        return (
            abs(float(recorded["eval_conf"]) - conf) < 1e-9
            and abs(float(recorded["eval_iou"]) - iou) < 1e-9
            and int(recorded["eval_core"]) == CORE_VERSION
        )
    except (KeyError, TypeError, ValueError):
        return False


def _model_names(onnx_path: Path) -> list[str] | None:
    import onnx

    from serving.detector import parse_metadata

    model = onnx.load(str(onnx_path), load_external_data=False)
    return parse_metadata({p.key: p.value for p in model.metadata_props})["names"]
