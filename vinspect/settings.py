"""Typed settings, one object per concern, built from the environment at start-up.

Environment variable names follow the conventions of the tools themselves, so that an OpenShift AI
data-connection Secret (``AWS_*``) or an MLflow client environment (``MLFLOW_*``) maps onto them
one to one through ``use_secret_as_env`` or ``envFrom``.

Values are read, lowest priority first, from ``<state dir>/stack.env`` (written by
``vinspect local up``), a git-ignored ``.env`` in the working directory (or ``$VINSPECT_DOTENV``),
then the process environment. Nothing is read at import time: call ``X.from_env()`` in an entry point.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from vinspect.errors import VinspectError

IMAGES_TOPIC = "visual-inspection-images"
RESULTS_TOPIC = "visual-inspection-results"
DLQ_TOPIC = "visual-inspection-dlq"


class SettingsError(VinspectError, RuntimeError):
    """A setting an entry point needs is missing (the message names the variable and how to set it)."""


def state_dir() -> Path:
    """Where the local stack keeps its state (``$VINSPECT_HOME``, default ``./.vinspect``)."""
    return Path(os.environ.get("VINSPECT_HOME") or (Path.cwd() / ".vinspect")).resolve()


def env_files() -> tuple[Path, ...]:
    """The dotenv files settings are read from, lowest priority first.

    ``$VINSPECT_DOTENV`` names another file than ``./.env``; set to an empty string it turns
    that file off (the test suite does, so a developer's ``.env`` never leaks into it).
    """
    dotenv = os.environ.get("VINSPECT_DOTENV")
    files = [state_dir() / "stack.env"]
    if dotenv is None:
        files.append(Path.cwd() / ".env")
    elif dotenv:
        files.append(Path(dotenv))
    return tuple(files)


class _Base(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    @classmethod
    def from_env(cls, **overrides: Any):
        """Build the settings from dotenv files and the environment; ``overrides`` win."""
        files = tuple(str(p) for p in env_files() if p.is_file())
        return cls(_env_file=files or None, **overrides)  # type: ignore[call-arg]

    def redacted(self) -> dict[str, Any]:
        """A dict safe to print or log: secrets are masked."""
        out = {}
        for name, value in self.model_dump().items():
            out[name] = (
                "****"
                if isinstance(value, SecretStr) and value.get_secret_value()
                else (None if isinstance(value, SecretStr) else value)
            )
        return out


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None


class S3Settings(_Base):
    """S3 / Minio, named as in an OpenShift AI S3 data connection."""

    endpoint_url: str | None = Field(None, validation_alias=AliasChoices("AWS_S3_ENDPOINT", "MLFLOW_S3_ENDPOINT_URL"))
    access_key_id: SecretStr | None = Field(None, validation_alias="AWS_ACCESS_KEY_ID")
    secret_access_key: SecretStr | None = Field(None, validation_alias="AWS_SECRET_ACCESS_KEY")
    region: str = Field("us-east-1", validation_alias="AWS_DEFAULT_REGION")
    bucket: str = Field("models", validation_alias="AWS_S3_BUCKET")
    data_bucket: str = Field("vinspect-data", validation_alias="VINSPECT_DATA_BUCKET")
    ca_bundle: str | None = Field(None, validation_alias="AWS_CA_BUNDLE")

    def client(self, timeouts: tuple[float, float] | None = None, attempts: int = 5):
        """A boto3 S3 client for these settings (TLS verification stays on).

        Args:
            timeouts: ``(connect, read)`` seconds; botocore's 60 s default when None. A
                service that must not wait long on S3 (the processor's claim check) passes short ones.
            attempts: Total attempts per call (standard retry mode).
        """
        import boto3
        from botocore.config import Config

        extra = {"connect_timeout": timeouts[0], "read_timeout": timeouts[1]} if timeouts else {}
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=_secret(self.access_key_id),
            aws_secret_access_key=_secret(self.secret_access_key),
            region_name=self.region,
            verify=self.ca_bundle or True,
            config=Config(
                s3={"addressing_style": "path"}, retries={"max_attempts": attempts, "mode": "standard"}, **extra
            ),
        )


class MLflowSettings(_Base):
    """MLflow tracking server and registry."""

    tracking_uri: str | None = Field(None, validation_alias="MLFLOW_TRACKING_URI")
    token: SecretStr | None = Field(None, validation_alias="MLFLOW_TRACKING_TOKEN")
    username: str | None = Field(None, validation_alias="MLFLOW_TRACKING_USERNAME")
    password: SecretStr | None = Field(None, validation_alias="MLFLOW_TRACKING_PASSWORD")
    # MLflow reads these two itself on every request: `kubernetes` sends the service-account token
    # of the pod (or the kubeconfig's token on a laptop) as a bearer token, which the OAuth proxy
    # in front of the cluster's MLflow checks; the CA file verifies the proxy's certificate.
    auth: str | None = Field(None, validation_alias="MLFLOW_TRACKING_AUTH")
    server_cert_path: str | None = Field(None, validation_alias="MLFLOW_TRACKING_SERVER_CERT_PATH")
    experiment: str = Field("vinspect", validation_alias="VINSPECT_EXPERIMENT")
    model_name: str = Field("metal-nut", validation_alias="VINSPECT_MODEL_NAME")

    def client(self):
        """An ``MlflowClient`` for this server (MLflow reads the auth variables itself)."""
        from mlflow.tracking import MlflowClient

        if not self.tracking_uri:
            raise SettingsError("MLFLOW_TRACKING_URI is not set: run `vinspect local up` or export it (see README)")
        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)


class CVATSettings(_Base):
    """CVAT server and its credentials (a token, or a user and password)."""

    url: str | None = Field(None, validation_alias="CVAT_URL")
    token: SecretStr | None = Field(None, validation_alias="CVAT_TOKEN")
    username: str | None = Field(None, validation_alias="CVAT_USERNAME")
    password: SecretStr | None = Field(None, validation_alias="CVAT_PASSWORD")
    ca_bundle: str | None = Field(None, validation_alias="CVAT_CA_BUNDLE")
    # The name CVAT is served under (its traefik routes only Host(`${CVAT_HOST}`)); sent as the
    # Host header when CVAT_URL reaches it by another name, such as the in-cluster Service.
    host: str | None = Field(None, validation_alias="CVAT_HOST")


class KFPSettings(_Base):
    """Kubeflow / Data Science Pipelines endpoint."""

    host: str | None = Field(None, validation_alias="KFP_HOST")
    token: SecretStr | None = Field(None, validation_alias="KFP_TOKEN")
    namespace: str | None = Field(None, validation_alias="KFP_NAMESPACE")
    ca_bundle: str | None = Field(None, validation_alias="KFP_CA_BUNDLE")
    # None: the image the cluster builds in the pipelines project (components.kfp.in_cluster_image).
    image: str | None = Field(None, validation_alias="VINSPECT_IMAGE")


class KafkaSettings(_Base):
    """Kafka (AMQ Streams on the cluster, tansu locally) and the runtime's topics."""

    bootstrap_servers: str = Field("127.0.0.1:9092", validation_alias="KAFKA_BOOTSTRAP_SERVERS")
    security_protocol: str = Field("PLAINTEXT", validation_alias="KAFKA_SECURITY_PROTOCOL")
    sasl_mechanism: str | None = Field(None, validation_alias="KAFKA_SASL_MECHANISM")
    sasl_username: str | None = Field(None, validation_alias="KAFKA_SASL_USERNAME")
    sasl_password: SecretStr | None = Field(None, validation_alias="KAFKA_SASL_PASSWORD")
    ca_location: str | None = Field(None, validation_alias="KAFKA_SSL_CA_LOCATION")
    images_topic: str = Field(IMAGES_TOPIC, validation_alias="VINSPECT_IMAGES_TOPIC")
    results_topic: str = Field(RESULTS_TOPIC, validation_alias="VINSPECT_RESULTS_TOPIC")
    dlq_topic: str = Field(DLQ_TOPIC, validation_alias="VINSPECT_DLQ_TOPIC")
    group_id: str = Field("vinspect-processor", validation_alias="VINSPECT_KAFKA_GROUP")

    def client_config(self) -> dict[str, Any]:
        """librdkafka configuration shared by producers, consumers and admin clients."""
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            conf["sasl.mechanism"] = self.sasl_mechanism
            conf["sasl.username"] = self.sasl_username or ""
            conf["sasl.password"] = _secret(self.sasl_password) or ""
        if self.ca_location:
            conf["ssl.ca.location"] = self.ca_location
        return conf


class ModelServerSettings(_Base):
    """The v2 (Open Inference Protocol) model endpoint the image processor calls."""

    url: str = Field("http://127.0.0.1:8080", validation_alias="VINSPECT_MODEL_URL")
    model_name: str = Field("metal-nut", validation_alias="VINSPECT_MODEL_NAME")
    token: SecretStr | None = Field(None, validation_alias="VINSPECT_MODEL_TOKEN")
    ca_bundle: str | None = Field(None, validation_alias="VINSPECT_MODEL_CA_BUNDLE")
    timeout_s: float = Field(10.0, validation_alias="VINSPECT_MODEL_TIMEOUT_S")


class RuntimeSettings(_Base):
    """Limits, formats and tokens of the runtime services (processor, camera, dashboard)."""

    max_image_pixels: int = Field(40_000_000, validation_alias="VINSPECT_MAX_IMAGE_PIXELS")
    max_image_bytes: int = Field(10 * 1024 * 1024, validation_alias="VINSPECT_MAX_IMAGE_BYTES")
    dlq_copy_max_bytes: int = Field(1024 * 1024, validation_alias="VINSPECT_DLQ_COPY_MAX_BYTES")
    result_format: str = Field("vinspect", validation_alias="VINSPECT_RESULT_FORMAT")
    annotated_prefix: str = Field("annotated", validation_alias="VINSPECT_ANNOTATED_PREFIX")
    # Where `vinspect serve camera` reads frames when no --source is given: s3://bucket/prefix/,
    # a folder or an archive; empty means synthetic frames (the cluster's ConfigMap vinspect-camera).
    camera_source: str = Field("", validation_alias="VINSPECT_CAMERA_SOURCE")
    processor_token: SecretStr | None = Field(None, validation_alias="VINSPECT_PROCESSOR_TOKEN")
    dashboard_token: SecretStr | None = Field(None, validation_alias="VINSPECT_DASHBOARD_TOKEN")
    # Which drift reference the processor compares with: `version` (<model>/<version>/, the version
    # the server reports: the local model server) or `serving` (<model>/serving/, written by the
    # rollout: KServe/OVMS report version 1 for every rollout; the cluster's ConfigMap).
    drift_reference: Literal["version", "serving"] = Field("version", validation_alias="VINSPECT_DRIFT_REFERENCE")

    def token(self, service: str) -> str | None:
        """The bearer token of ``processor`` or ``dashboard`` (None: no token required)."""
        return _secret(self.processor_token if service == "processor" else self.dashboard_token) or None


class NotifySettings(_Base):
    """Where model notifications (CloudEvents ``io.vinspect.model.*``) go.

    On the cluster the URL is the Knative Broker's ingress (the Kafka Broker:
    ``http://kafka-broker-ingress.knative-eventing.svc.cluster.local/<namespace>/<broker>``);
    locally any webhook. No URL: notifications are off (logged at debug level only).
    """

    url: str | None = Field(None, validation_alias="VINSPECT_NOTIFY_URL")
    mode: str = Field("binary", validation_alias="VINSPECT_NOTIFY_MODE")  # binary | structured
    token: SecretStr | None = Field(None, validation_alias="VINSPECT_NOTIFY_TOKEN")
    timeout_s: float = Field(5.0, validation_alias="VINSPECT_NOTIFY_TIMEOUT_S")
    source: str = Field("/vinspect", validation_alias="VINSPECT_NOTIFY_SOURCE")
    ca_bundle: str | None = Field(None, validation_alias="VINSPECT_NOTIFY_CA_BUNDLE")
