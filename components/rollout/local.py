"""The local target of the rollout: the local model server (``serving.modelserver``).

The server's repository extension (``POST /v2/repository/models/{name}/load``) swaps the served
model once the new one is fully loaded, so requests are not dropped. Deploying loads the version
from S3 and checks the server reports it; restoring reloads the version that served before (or
unloads, when nothing did). The transaction around it is :func:`components.rollout.deploy.roll_out`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from components.registry.core import TAG_STORAGE_URI
from components.rollout.deploy import RolloutError


def _served_version(http, name: str, token: str | None) -> str | None:
    resp = http.get(f"/v2/models/{name}", headers=_auth(token))
    if resp.status_code in (404, 503):  # unknown, or declared but not serving
        return None
    if resp.status_code != 200:
        raise RolloutError(f"GET /v2/models/{name}: HTTP {resp.status_code}: {resp.text[:300]}")
    versions = resp.json().get("versions") or []
    return str(versions[-1]) if versions else None


def _auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def _load(http, name: str, uri: str, version: str, token: str | None) -> dict:
    resp = http.post(
        f"/v2/repository/models/{name}/load",
        json={"parameters": {"uri": uri, "version": version}},
        headers=_auth(token),
    )
    if resp.status_code != 200:
        detail = resp.text[:500]
        raise RolloutError(f"loading {uri} as {name} v{version}: HTTP {resp.status_code}: {detail}")
    return resp.json()


class LocalServerTarget:
    """The local model server (``serving.modelserver``), through its repository API.

    Args:
        http_client_or_base_url: The server's base URL, or an ``httpx.Client`` whose
            ``base_url`` is the server (a client given here is not closed).
        served_name: Model name on the server (default: the registered model name).
        storage_uri: Where the server loads the version from (``s3://<bucket>/<model>/<version>/``);
            None: the version's ``vinspect.storage_uri`` tag. The server reads S3 with its own
            credentials.
        timeout_s: HTTP timeout of the load call (a load reads and compiles the model).
        token: Bearer token, if the server requires one.
    """

    kind = "local"
    namespace = None
    action = None

    def __init__(
        self,
        http_client_or_base_url: Any,
        *,
        served_name: str | None = None,
        storage_uri: str | None = None,
        timeout_s: float = 120.0,
        token: str | None = None,
    ) -> None:
        self._http_or_url = http_client_or_base_url
        self.service = served_name or ""
        self.storage_uri = storage_uri
        self.timeout_s = timeout_s
        self.token = token
        self._http: Any = None
        self._own = False
        self._mlflow: Any = None
        self._model_name = ""
        self._version = ""
        self._previous: str | None = None

    @property
    def base_url(self) -> str:
        return str(self._http.base_url).rstrip("/") if self._http is not None else str(self._http_or_url).rstrip("/")

    @property
    def location(self) -> str:
        return f"local:{self.base_url}/{self.service}"

    def prepare(self, mlflow_client: Any, model_name: str, version: str) -> None:
        """Find where the version is stored; open the HTTP client when given a URL."""
        import httpx

        self._mlflow, self._model_name, self._version = mlflow_client, model_name, version
        self.service = self.service or model_name
        if self.storage_uri is None:
            tags = mlflow_client.get_model_version(model_name, version).tags or {}
            self.storage_uri = tags.get(TAG_STORAGE_URI)
            if not self.storage_uri:
                raise RolloutError(f"model {model_name!r} v{version} has no {TAG_STORAGE_URI} tag; register it first")
        self._own = isinstance(self._http_or_url, str)
        self._http = (
            httpx.Client(base_url=self._http_or_url.rstrip("/"), timeout=self.timeout_s)
            if self._own
            else self._http_or_url
        )

    def snapshot(self) -> str | None:
        self._previous = _served_version(self._http, self.service, self.token)
        return self._previous

    def roll(self, stage: Callable[[str], None]) -> str | None:
        stage("loading the model")
        _load(self._http, self.service, self.storage_uri, self._version, self.token)
        stage("checking the served version")
        served = _served_version(self._http, self.service, self.token)
        if served != self._version:
            raise RolloutError(f"server reports version {served} after loading {self._version}")
        return self.base_url

    def restore(self) -> str:
        try:
            return _restore(self._http, self._mlflow, self._model_name, self.service, self._previous, self.token)
        except RolloutError:
            raise
        except Exception as exc:  # noqa: BLE001 - an HTTP failure of the restore: reported as the rollback's
            raise RolloutError(f"restoring the model server failed: {type(exc).__name__}: {exc}") from exc

    def settle(self) -> str:
        """Nothing to wait for: the server swaps a model only once it is fully loaded."""
        return ""

    def close(self) -> None:
        if self._own and self._http is not None:
            self._http.close()
            self._http = None


def _restore(http, mlflow_client, model_name: str, name: str, previous: str | None, token: str | None) -> str:
    served = _served_version(http, name, token)
    if previous is None:
        if served is None:
            return "nothing was serving before; nothing to restore"
        resp = http.post(f"/v2/repository/models/{name}/unload", headers=_auth(token))
        if resp.status_code != 200:
            raise RolloutError(f"rollback: unloading {name} failed: HTTP {resp.status_code}: {resp.text[:300]}")
        return "unloaded the model (nothing was serving before)"
    if served == previous:
        # The failed load never replaced it (the server swaps only after a full load).
        return f"version {previous} kept serving"
    try:
        uri = (mlflow_client.get_model_version(model_name, previous).tags or {}).get(TAG_STORAGE_URI)
    except Exception as exc:  # noqa: BLE001 - MLflow raises several types; the message is kept
        raise RolloutError(f"rollback: cannot find where version {previous} is stored: {exc}") from exc
    if not uri:
        raise RolloutError(f"rollback: version {previous} has no {TAG_STORAGE_URI} tag to reload from")
    _load(http, name, uri, previous, token)
    return f"reloaded version {previous} from {uri}"
