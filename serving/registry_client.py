"""Resolve a registry alias over MLflow's REST API, without the ``mlflow`` package.

The model server (``vinspect serve model --champion``) runs from the lean ``serving`` extra and
image, which do not carry MLflow (hundreds of MiB of dependencies for one GET). The registry's
REST endpoint ``GET /api/2.0/mlflow/registered-models/alias`` is all it needs; ``requests`` is a
core dependency.

Storage layout (the registry core's, see docs/CONTRACTS.md): version ``V`` of model ``M`` lives at
``s3://<bucket>/M/V/`` (OVMS layout, ``1/model.onnx`` inside); the precision variant the gate
chose for it is the version's ``vinspect.storage_uri`` tag (``s3://<bucket>/M/V/<variant>/``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from vinspect.errors import VinspectError

ALIAS_PATH = "/api/2.0/mlflow/registered-models/alias"
# Where Kubernetes mounts a pod's service-account token (rotated in place by the kubelet).
SERVICE_ACCOUNT_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


class AliasLookupError(VinspectError, RuntimeError):
    """The runtime's lookup of an alias over MLflow's REST API failed.

    The registry could not be reached, refused us, answered something else than a version, or has
    no such model or alias. (Registering and moving aliases is ``components.registry``, whose
    errors are ``components.registry.RegistryError``; this runtime side never imports it.)
    """


class AliasNotFound(AliasLookupError):
    """The model or the alias does not exist (yet): there is no such version to serve."""


@dataclass(frozen=True)
class RegistryAuth:
    """How to authenticate to the MLflow server: a bearer token, or a user and password.

    Attributes:
        token: Bearer token (``MLFLOW_TRACKING_TOKEN``); wins over basic auth.
        username: Basic-auth user (``MLFLOW_TRACKING_USERNAME``).
        password: Basic-auth password (``MLFLOW_TRACKING_PASSWORD``).
    """

    token: str | None = None
    username: str | None = None
    password: str | None = None

    def __repr__(self) -> str:  # never print a secret
        kind = "token" if self.token else "basic" if self.username else "none"
        return f"RegistryAuth({kind})"

    def apply(self, session: requests.Session) -> None:
        """Set this auth on ``session``."""
        if self.token:
            session.headers["Authorization"] = f"Bearer {self.token}"
        elif self.username:
            session.auth = (self.username, self.password or "")

    @classmethod
    def from_settings(cls, settings: Any, *, token_file: Path = SERVICE_ACCOUNT_TOKEN) -> RegistryAuth:
        """From :class:`vinspect.settings.MLflowSettings` (secrets unwrapped only here).

        With ``MLFLOW_TRACKING_AUTH=kubernetes`` and no token, the pod's service-account token is
        the bearer token, as MLflow's own ``kubernetes`` auth provider sends it (the cluster's
        MLflow sits behind an OAuth proxy that checks it).

        Args:
            settings: The MLflow settings.
            token_file: The service-account token file (the pod's projected token).
        """
        token = settings.token.get_secret_value() if settings.token else None
        password = settings.password.get_secret_value() if settings.password else None
        if not token and (getattr(settings, "auth", None) or "").lower() == "kubernetes":
            try:
                token = token_file.read_text().strip() or None
            except OSError as exc:
                raise AliasLookupError(
                    f"MLFLOW_TRACKING_AUTH=kubernetes but the service-account token {token_file} "
                    f"cannot be read ({exc.strerror}); run in a pod, or set MLFLOW_TRACKING_TOKEN"
                )
        return cls(token=token or None, username=settings.username or None, password=password)


def alias_version(
    tracking_uri: str,
    model_name: str,
    alias: str = "champion",
    **kwargs: Any,
) -> str:
    """The version a registry alias points at (see :func:`alias_model_version` for the arguments)."""
    return str(alias_model_version(tracking_uri, model_name, alias, **kwargs)["version"])


def alias_model_version(
    tracking_uri: str,
    model_name: str,
    alias: str = "champion",
    *,
    session: requests.Session | None = None,
    auth: RegistryAuth | None = None,
    timeout_s: float = 10.0,
    verify: bool | str = True,
) -> dict[str, Any]:
    """The version a registry alias points at, read from MLflow's REST API.

    Args:
        tracking_uri: MLflow server root (``http(s)://host:port[/prefix]``).
        model_name: Registered model name.
        alias: Alias to resolve.
        session: HTTP session to use (tests, connection reuse); one is made when None.
        auth: Credentials; none when None.
        timeout_s: Request timeout.
        verify: TLS verification (True or a CA bundle path); never disabled.

    Returns:
        MLflow's ``model_version`` object (``version``, ``tags`` as ``[{"key", "value"}]``, ...).

    Raises:
        AliasNotFound: When the model or the alias does not exist.
        AliasLookupError: On any other failure (unreachable, auth refused, malformed answer); the
            message names the server and the model, never a credential.
    """
    if not tracking_uri or not tracking_uri.startswith(("http://", "https://")):
        raise AliasLookupError(
            f"MLflow tracking URI {tracking_uri!r} is not an http(s) server: the model server resolves "
            "aliases over the REST API (set MLFLOW_TRACKING_URI)"
        )
    own = session is None
    http = session or requests.Session()
    if auth is not None:
        auth.apply(http)
    url = tracking_uri.rstrip("/") + ALIAS_PATH
    where = f"{model_name}@{alias} at {tracking_uri}"
    try:
        resp = http.get(url, params={"name": model_name, "alias": alias}, timeout=timeout_s, verify=verify)
    except requests.RequestException as exc:
        raise AliasLookupError(f"registry lookup of {where} failed: {type(exc).__name__}: {exc}") from None
    finally:
        if own:
            http.close()
    # MLflow answers a missing model with 404 RESOURCE_DOES_NOT_EXIST, a missing alias with
    # 400 INVALID_PARAMETER_VALUE "Registered model alias ... not found".
    if resp.status_code == 404 or (
        resp.status_code == 400 and ("RESOURCE_DOES_NOT_EXIST" in resp.text or "not found" in resp.text.lower())
    ):
        raise AliasNotFound(f"registry has no {where}: {_error_message(resp)}")
    if resp.status_code in (401, 403):
        raise AliasLookupError(
            f"registry refused the lookup of {where}: HTTP {resp.status_code} "
            "(check MLFLOW_TRACKING_TOKEN or MLFLOW_TRACKING_USERNAME/PASSWORD)"
        )
    if resp.status_code != 200:
        raise AliasLookupError(f"registry lookup of {where}: HTTP {resp.status_code}: {_error_message(resp)}")
    try:
        model_version = resp.json()["model_version"]
        str(model_version["version"])
    except (ValueError, KeyError, TypeError):
        raise AliasLookupError(f"registry lookup of {where}: unexpected answer {resp.text[:200]!r}") from None
    return model_version


def _error_message(resp: requests.Response) -> str:
    try:
        body = resp.json()
        return f"{body.get('error_code', '')}: {body.get('message', '')}".strip(": ")
    except ValueError:
        return resp.text[:200]


def storage_uri(bucket: str, model_name: str, version: str) -> str:
    """``s3://<bucket>/<model>/<version>/``: where the registry core put that version."""
    return f"s3://{bucket}/{model_name}/{version}/"


def champion_uri(
    tracking_uri: str,
    model_name: str,
    bucket: str,
    alias: str = "champion",
    **kwargs: Any,
) -> tuple[str, str]:
    """Resolve ``alias`` to (its storage URI, version).

    The storage URI is the version's ``vinspect.storage_uri`` tag (the precision variant the gate
    chose), else ``s3://<bucket>/<model>/<version>/`` (the version's ONNX).

    Keyword arguments go to :func:`alias_model_version` (``session``, ``auth``, ``timeout_s``, ``verify``).

    Raises:
        AliasNotFound: No such model or alias.
        AliasLookupError: Any other lookup failure.
    """
    model_version = alias_model_version(tracking_uri, model_name, alias, **kwargs)
    version = str(model_version["version"])
    tags = {t.get("key"): t.get("value") for t in model_version.get("tags") or [] if isinstance(t, dict)}
    tagged = tags.get("vinspect.storage_uri")
    if isinstance(tagged, str) and tagged.startswith("s3://"):
        return tagged, version
    return storage_uri(bucket, model_name, version), version
