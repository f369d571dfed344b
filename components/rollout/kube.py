"""Create-or-patch and readiness for custom resources, over a ``CustomObjectsApi``-shaped client.

Only these methods of ``kubernetes.client.CustomObjectsApi`` are used, so any object with the same
signatures (the fake in the tests, a dynamic-client adapter) works:
``get_namespaced_custom_object``, ``create_namespaced_custom_object``,
``patch_namespaced_custom_object`` (a dict body is sent as a JSON merge patch),
``delete_namespaced_custom_object``.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

# Metadata keys we own: when a desired object lacks one of these the patch removes it.
_OWNED_PREFIXES = ("vinspect.io/",)


class RolloutError(RuntimeError):
    """A rollout step failed; the message says which and why."""


def _status(exc: BaseException) -> int | None:
    return getattr(exc, "status", None)


def get_object(custom_api, *, group: str, version: str, namespace: str, plural: str, name: str) -> dict | None:
    """The live object, or None when it does not exist (404)."""
    try:
        return custom_api.get_namespaced_custom_object(group, version, namespace, plural, name)
    except Exception as exc:
        if _status(exc) == 404:
            return None
        raise


def merge_patch(live: Any, desired: Any) -> Any:
    """RFC 7386 merge patch turning ``live`` into ``desired`` (keys only in ``live`` become null).

    Lists are replaced whole, as merge patch does. Returns ``{}`` when nothing differs.
    """
    if not isinstance(live, dict) or not isinstance(desired, dict):
        return copy.deepcopy(desired)
    patch: dict[str, Any] = {}
    for key, value in desired.items():
        if key not in live:
            patch[key] = copy.deepcopy(value)
        elif isinstance(value, dict) and isinstance(live[key], dict):
            sub = merge_patch(live[key], value)
            if sub:
                patch[key] = sub
        elif live[key] != value:
            patch[key] = copy.deepcopy(value)
    for key in live:
        if key not in desired:
            patch[key] = None
    return patch


def _metadata_patch(live_meta: dict, desired_meta: dict) -> dict:
    """Labels and annotations to set; our own keys missing from ``desired`` are removed.

    Keys that others put there (controllers, the OpenShift AI dashboard) are left alone.
    """
    out: dict[str, Any] = {}
    for field in ("labels", "annotations"):
        live = live_meta.get(field) or {}
        want = desired_meta.get(field) or {}
        patch = {k: v for k, v in want.items() if live.get(k) != v}
        patch.update({k: None for k in live if k not in want and k.startswith(_OWNED_PREFIXES)})
        if patch:
            out[field] = patch
    return out


def object_patch(live: dict, desired: dict) -> dict:
    """The merge patch that makes ``live``'s spec and our metadata equal to ``desired``.

    The patch carries ``live``'s ``resourceVersion``, so the API server refuses it (409) when
    someone changed the object in between instead of silently overwriting their change.
    """
    patch: dict[str, Any] = {}
    meta = _metadata_patch(live.get("metadata", {}), desired.get("metadata", {}))
    spec = merge_patch(live.get("spec", {}), desired.get("spec", {}))
    if spec:
        patch["spec"] = spec
    if meta or spec:
        meta["resourceVersion"] = live["metadata"]["resourceVersion"]
        patch["metadata"] = meta
    return patch


def apply_object(
    custom_api, body: dict, *, group: str, version: str, plural: str, retries: int = 3
) -> tuple[dict, str]:
    """Create the object, or patch it to ``body`` when it exists.

    Args:
        custom_api: ``CustomObjectsApi``-shaped client.
        body: The desired object (``metadata.name`` and ``metadata.namespace`` set).
        group: API group.
        version: API version.
        plural: Resource plural.
        retries: Times to retry on a 409 (created or changed concurrently).

    Returns:
        (live object after the call, ``"created" | "patched" | "unchanged"``).
    """
    namespace = body["metadata"]["namespace"]
    name = body["metadata"]["name"]
    for attempt in range(retries + 1):
        live = get_object(custom_api, group=group, version=version, namespace=namespace, plural=plural, name=name)
        try:
            if live is None:
                created = custom_api.create_namespaced_custom_object(group, version, namespace, plural, body)
                return created, "created"
            patch = object_patch(live, body)
            if not patch:
                return live, "unchanged"
            patched = custom_api.patch_namespaced_custom_object(group, version, namespace, plural, name, patch)
            return patched, "patched"
        except Exception as exc:
            if _status(exc) == 409 and attempt < retries:
                log.info("%s/%s changed while applying (409); retrying", plural, name)
                continue
            raise
    raise AssertionError("unreachable")  # pragma: no cover


def delete_object(custom_api, *, group: str, version: str, namespace: str, plural: str, name: str) -> bool:
    """Delete the object; False when it was already gone."""
    try:
        custom_api.delete_namespaced_custom_object(group, version, namespace, plural, name)
        return True
    except Exception as exc:
        if _status(exc) == 404:
            return False
        raise


def condition(obj: dict, kind: str) -> dict | None:
    """The status condition of type ``kind``, or None."""
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return cond
    return None


# KServe's modelStatus.transitionStatus values that will not heal by waiting.
_TERMINAL = ("BlockedByFailedLoad", "InvalidSpec")


def wait_ready(
    custom_api,
    *,
    group: str,
    version: str,
    namespace: str,
    plural: str,
    name: str,
    timeout_s: float,
    poll_s: float = 5.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict:
    """Poll until the object's ``Ready`` condition is True for its current generation.

    A ``Ready`` from before the last change does not count: the controller must have observed
    the current ``metadata.generation`` (``status.observedGeneration``).

    Returns:
        The ready object.

    Raises:
        RolloutError: On timeout (with the last conditions), when the object disappears, or when
            KServe reports a load failure that waiting will not fix.
    """
    deadline = clock() + timeout_s
    last: dict | None = None
    while True:
        obj = get_object(custom_api, group=group, version=version, namespace=namespace, plural=plural, name=name)
        if obj is None:
            raise RolloutError(f"{plural}/{name} in {namespace} disappeared while waiting for Ready")
        last = obj
        status = obj.get("status") or {}
        generation = obj.get("metadata", {}).get("generation")
        observed = status.get("observedGeneration")
        current = observed is None or generation is None or observed >= generation
        ready = condition(obj, "Ready")
        if current and ready and str(ready.get("status")) == "True":
            return obj
        model_status = status.get("modelStatus") or {}
        if current and model_status.get("transitionStatus") in _TERMINAL:
            failure = model_status.get("lastFailureInfo") or {}
            raise RolloutError(
                f"{plural}/{name}: model {model_status['transitionStatus']}: "
                f"{failure.get('reason', '')} {failure.get('message', '')}".strip()
            )
        if clock() >= deadline:
            break
        sleep(min(poll_s, max(0.0, deadline - clock())))
    conds = [
        f"{c.get('type')}={c.get('status')}" + (f" ({c.get('reason')}: {c.get('message')})" if c.get("reason") else "")
        for c in ((last or {}).get("status") or {}).get("conditions") or []
    ]
    raise RolloutError(
        f"{plural}/{name} in {namespace} not Ready after {timeout_s:g}s; "
        f"conditions: {', '.join(conds) or 'none reported'}"
    )
