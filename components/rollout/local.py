"""The same rollout against the local model server (``serving.modelserver``).

The server's repository extension (``POST /v2/repository/models/{name}/load``) swaps the served
model once the new one is fully loaded, so requests are not dropped. Sequence: load the version
from S3, check the server reports it, smoke-test over v2, move ``champion``; on failure reload
the version that served before (or unload, when nothing did) and put the alias back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from components.registry import champion_state, promote, undo_move
from components.registry.core import TAG_STORAGE_URI
from components.rollout.kserve import publish_reference
from components.rollout.kube import RolloutError

log = logging.getLogger(__name__)

TAG_DEPLOYED = "vinspect.deployed_to"


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


def rollout_local(
    http_client_or_base_url,
    mlflow_client,
    *,
    model_name: str,
    version: str | int,
    storage_uri: str | None = None,
    served_name: str | None = None,
    smoke: Callable[[str, str], Any] | None = None,
    timeout_s: float = 120.0,
    token: str | None = None,
    move_alias: Callable[[Any, str, str], Any] = promote,
    drift_reference: Callable[[str, str], Any] | None = None,
) -> dict:
    """Deploy ``version`` on the local model server, check it, make it the champion.

    Args:
        http_client_or_base_url: The server's base URL, or an ``httpx.Client`` whose
            ``base_url`` is the server.
        mlflow_client: ``MlflowClient``.
        model_name: Registered model name.
        version: MLflow version to deploy.
        storage_uri: Where the server loads it from (``s3://<bucket>/<model>/<version>/``); read
            from the version's ``vinspect.storage_uri`` tag when None. The server reads S3 with
            its own credentials.
        served_name: Model name on the server (default: ``model_name``).
        smoke: ``smoke(base_url, model) -> report`` raising on failure; None skips it.
        timeout_s: HTTP timeout of the load call (a load reads and compiles the model).
        token: Bearer token, if the server requires one.

        move_alias: ``move_alias(mlflow_client, model_name, version)`` moves ``champion``
            after every check passed (default :func:`~components.registry.promote`; a
            deployed rollback passes one that pops the history instead).
        drift_reference: ``publish(model_name, version)`` once the version serves and is the
            champion (see :func:`components.rollout.kserve.rollout_kserve`; the local server
            reports the registry version, so a processor here needs it only when it is set to
            read the served reference). None: nothing is published.

    Returns:
        ``{"status": "deployed" | "rolled_back", "reason", "served_name", "version",
        "previous_version", "url", "smoke", "restore"}`` (plus ``drift_reference`` when one was
        to be published).

    Raises:
        RolloutError: When the rollback itself fails.
    """
    import httpx

    version = str(version)
    name = served_name or model_name
    if storage_uri is None:
        tags = mlflow_client.get_model_version(model_name, version).tags or {}
        storage_uri = tags.get(TAG_STORAGE_URI)
        if not storage_uri:
            raise RolloutError(f"model {model_name!r} v{version} has no {TAG_STORAGE_URI} tag; register it first")
    own = isinstance(http_client_or_base_url, str)
    http = (
        httpx.Client(base_url=http_client_or_base_url.rstrip("/"), timeout=timeout_s)
        if own
        else http_client_or_base_url
    )
    base_url = str(http.base_url).rstrip("/")
    result: dict[str, Any] = {
        "status": "rolled_back",
        "reason": None,
        "served_name": name,
        "version": version,
        "previous_version": None,
        "url": base_url,
        "smoke": None,
        "restore": None,
    }
    started = time.monotonic()
    moved = before_move = None
    try:
        previous = _served_version(http, name, token)
        result["previous_version"] = previous
        stage = "loading the model"
        try:
            _load(http, name, storage_uri, version, token)
            stage = "checking the served version"
            served = _served_version(http, name, token)
            if served != version:
                raise RolloutError(f"server reports version {served} after loading {version}")
            if smoke is not None:
                stage = "smoke-testing"
                result["smoke"] = smoke(base_url, name)
            stage = "moving the champion alias"
            before_move = champion_state(mlflow_client, model_name)
            moved = move_alias(mlflow_client, model_name, version)
            mlflow_client.set_model_version_tag(model_name, version, TAG_DEPLOYED, f"local:{base_url}/{name}")
        except Exception as exc:
            result["reason"] = f"{stage} failed: {exc}"
            log.warning("local rollout of %s v%s failed while %s: %s", model_name, version, stage, exc)
            result["restore"] = _restore(http, mlflow_client, model_name, name, previous, token)
            # Only this call's own alias move is undone, and only if nobody moved it since:
            # a failure here must never undo another promote's success.
            result["alias"] = undo_move(mlflow_client, model_name, moved, before=before_move, target=version)
            result["elapsed_s"] = round(time.monotonic() - started, 3)
            return result
    finally:
        if own:
            http.close()
    result["status"] = "deployed"
    publish_reference(drift_reference, model_name, str(version), result)
    result["elapsed_s"] = round(time.monotonic() - started, 3)
    return result


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
    except Exception as exc:
        raise RolloutError(f"rollback: cannot find where version {previous} is stored: {exc}") from exc
    if not uri:
        raise RolloutError(f"rollback: version {previous} has no {TAG_STORAGE_URI} tag to reload from")
    _load(http, name, uri, previous, token)
    return f"reloaded version {previous} from {uri}"
