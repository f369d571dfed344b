"""The one Kubernetes layer: read, create-or-patch, delete and wait, over a dynamic client.

Both the cluster bootstrap (:mod:`infra.bootstrap`) and the KServe rollout target
(:mod:`components.rollout.kserve`) talk to the API through these functions, so there is one set
of rules for what an apply does and what "ready" means:

- **client**: ``kubernetes.dynamic.DynamicClient`` or anything of its shape:
  ``client.resources.get(api_version=, kind=)`` returns a resource with ``get(name=, namespace=)``,
  ``create(body=, namespace=)``, ``patch(body=, name=, namespace=, content_type=)`` and
  ``delete(name=, namespace=)``. :func:`connect` builds the real one; the tests use
  ``tests/fake_kube.py``.
- **apply** (:func:`apply`): read the object; create it when absent (404); otherwise send a JSON
  merge patch (RFC 7386) that carries the ``metadata.resourceVersion`` just read, so the API
  server refuses it with 409 Conflict when someone changed the object in between instead of
  silently overwriting their change. A 409 (from that, or from a create that lost a race) is
  retried from a fresh read. What the patch contains is the caller's ownership policy
  (``patch=``): by default what the desired object says, so server defaults and fields set by
  others stay (:func:`overlay_patch`); the rollout owns its InferenceService's spec whole and
  passes a patch that also removes what it dropped.
- **wait** (:func:`wait`): poll objects until a check passes; a condition counts only once the
  controller has observed the object's current ``metadata.generation``
  (``status.observedGeneration``, when the kind reports one), so a ``Ready`` from before the
  last change is not taken for the new one.

Errors are :class:`KubeError` (with the HTTP ``status`` when there was one) and
:class:`KubeTimeout`; the message names the object.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vinspect.errors import VinspectError

MERGE_PATCH = "application/merge-patch+json"


class KubeError(VinspectError, RuntimeError):
    """A Kubernetes API call failed; the message names the object and the API's answer.

    Attributes:
        status: The HTTP status of the API's answer (None when there was none, e.g. a kind the
            cluster does not serve).
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class KindNotServed(KubeError):
    """API discovery does not list the kind (its CRD is not installed or not yet established)."""


class KubeTimeout(KubeError):
    """A wait ran out of time; the message names the object and its last status."""


def connect(*, in_cluster: bool = False) -> Any:
    """A ``DynamicClient`` for the cluster this process is configured for.

    Args:
        in_cluster: Use the pod's service account only (a pipeline step); otherwise the
            kubeconfig (``oc login``), falling back to the service account.

    Raises:
        KubeError: No configuration found.
    """
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException
    from kubernetes.dynamic import DynamicClient

    try:
        if in_cluster:
            config.load_incluster_config()
        else:
            config.load_config()
    except ConfigException as exc:
        raise KubeError(f"no Kubernetes configuration found ({exc}); log in with `oc login` first") from exc
    return DynamicClient(client.ApiClient())


def status_code(exc: BaseException) -> int | None:
    """The HTTP status of an API exception (``ApiException`` or the dynamic client's), else None."""
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) else None


def is_kind_missing(exc: BaseException) -> bool:
    """Whether discovery does not list the kind (the dynamic client's ``ResourceNotFoundError``)."""
    # Matched by name: importing kubernetes.dynamic here would make every import of this module heavy.
    return type(exc).__name__ == "ResourceNotFoundError"


def api_message(exc: BaseException) -> str:
    """The API's own message (its ``Status.message``) when it sent one, else the status and reason."""
    summary = getattr(exc, "summary", None)
    if callable(summary):
        try:
            return str(summary())
        except ValueError:  # a JSON content type with a body that is not JSON: fall back below
            pass
    body = getattr(exc, "body", None)
    if isinstance(body, (str, bytes)) and body:
        try:
            message = json.loads(body).get("message")
        except (ValueError, AttributeError):
            message = body.decode() if isinstance(body, bytes) else body
        if message:
            return f"{status_code(exc) or ''} {message}".strip()
    return f"{status_code(exc) or ''} {getattr(exc, 'reason', '') or exc}".strip()


def ref(api_version: str, kind: str, name: str, namespace: str | None) -> str:
    """``Kind ns/name`` (``Kind name`` for a cluster-scoped object), as messages and logs name it."""
    return f"{kind} {namespace + '/' if namespace else ''}{name}"


def as_dict(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if hasattr(value, "to_dict"):  # the dynamic client's ResourceInstance
        return value.to_dict()
    return dict(value)


def resource(client: Any, api_version: str, kind: str) -> Any:
    """The client's resource for a kind.

    Raises:
        KubeError: The cluster does not serve the kind (its CRD is not installed yet).
    """
    try:
        return client.resources.get(api_version=api_version, kind=kind)
    except Exception as exc:  # noqa: BLE001 - discovery raises its own types; classified here
        if is_kind_missing(exc):
            raise KindNotServed(f"the cluster does not serve {kind} {api_version}") from exc
        raise KubeError(f"discovering {kind} {api_version}: {api_message(exc)}", status=status_code(exc)) from exc


def get(client: Any, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
    """The live object, or None when it does not exist (404) or its kind is not served.

    Raises:
        KubeError: Any other failure.
    """
    try:
        res = client.resources.get(api_version=api_version, kind=kind)
        return as_dict(res.get(name=name, namespace=namespace))
    except Exception as exc:  # noqa: BLE001 - the client raises its own types; classified here
        if status_code(exc) == 404 or is_kind_missing(exc):
            return None
        raise KubeError(f"reading {kind} {name}: {api_message(exc)}", status=status_code(exc)) from exc


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


def contains(actual: Any, desired: Any) -> bool:
    """Whether ``actual`` already holds everything ``desired`` says (server defaults may add more)."""
    if isinstance(desired, dict):
        return isinstance(actual, dict) and all(k in actual and contains(actual[k], v) for k, v in desired.items())
    if isinstance(desired, list):
        return isinstance(actual, list) and len(actual) == len(desired) and all(map(contains, actual, desired))
    return actual == desired


def overlay_patch(live: dict[str, Any], desired: dict[str, Any]) -> dict[str, Any]:
    """The default ownership: set what ``desired`` says, leave everything else as it is.

    Returns ``{}`` when ``live`` already holds it all (``status`` is the controller's, never sent).
    """
    body = {k: v for k, v in desired.items() if k != "status"}
    return {} if contains(live, body) else copy.deepcopy(body)


Patcher = Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]]


def apply(
    client: Any, obj: dict[str, Any], *, patch: Patcher = overlay_patch, retries: int = 3
) -> tuple[dict[str, Any], str]:
    """Create ``obj``, or merge-patch the live object towards it.

    Args:
        client: Dynamic-client-shaped client.
        obj: The desired object (``apiVersion``, ``kind``, ``metadata.name``, and
            ``metadata.namespace`` for a namespaced kind).
        patch: ``patch(live, desired) -> merge patch`` (``{}``: nothing to change); see
            :func:`overlay_patch`. The live ``resourceVersion`` is added to what it returns.
        retries: Times a 409 Conflict is retried from a fresh read.

    Returns:
        (the live object after the call, ``"created" | "configured" | "unchanged"``), the words
        ``kubectl apply`` uses.

    Raises:
        KubeError: The kind is not served, or the API refused the create or the patch (the
            message names the object and quotes the API).
    """
    meta = obj["metadata"]
    name, namespace = meta["name"], meta.get("namespace")
    where = ref(obj["apiVersion"], obj["kind"], name, namespace)
    try:
        res = resource(client, obj["apiVersion"], obj["kind"])
    except KubeError as exc:
        raise type(exc)(f"{where}: {exc}", status=exc.status) from exc
    for attempt in range(retries + 1):
        live = get(client, obj["apiVersion"], obj["kind"], name, namespace)
        verb = "create"
        try:
            if live is None:
                return as_dict(res.create(body=obj, namespace=namespace)), "created"
            body = patch(live, obj)
            if not body:
                return live, "unchanged"
            verb = "patch"
            body = dict(body)
            body["metadata"] = {**(body.get("metadata") or {}), "resourceVersion": live["metadata"]["resourceVersion"]}
            return as_dict(res.patch(body=body, name=name, namespace=namespace, content_type=MERGE_PATCH)), "configured"
        except Exception as exc:  # noqa: BLE001 - the client raises its own types; classified here
            if status_code(exc) == 409 and attempt < retries:
                continue  # created or changed since our read: read again and redo the patch
            raise KubeError(f"{where}: {verb} failed: {api_message(exc)}", status=status_code(exc)) from exc
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


def delete(client: Any, api_version: str, kind: str, name: str, namespace: str | None = None) -> bool:
    """Delete the object; False when it was already gone (404).

    Raises:
        KubeError: The API refused the delete.
    """
    res = resource(client, api_version, kind)
    try:
        res.delete(name=name, namespace=namespace)
        return True
    except Exception as exc:  # noqa: BLE001 - the client raises its own types; classified here
        if status_code(exc) == 404:
            return False
        where = ref(api_version, kind, name, namespace)
        raise KubeError(f"{where}: delete failed: {api_message(exc)}", status=status_code(exc)) from exc


# --------------------------------------------------------------------------------------------
# Readiness


def conditions(obj: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The object's ``status.conditions`` (empty when none)."""
    return list(((obj or {}).get("status") or {}).get("conditions") or [])


def condition_summary(obj: dict[str, Any] | None) -> str:
    """``Type=Status (reason message), ...`` of the object's conditions, or its phase."""
    if obj is None:
        return "not found"
    conds = conditions(obj)
    if not conds:
        status = obj.get("status") or {}
        if status.get("phase") or status.get("state"):
            return f"phase {status.get('phase') or status.get('state')}"
        return "no status reported yet"
    parts = []
    for cond in conds:
        text = f"{cond.get('type')}={cond.get('status')}"
        detail = " ".join(str(cond[k]) for k in ("reason", "message") if cond.get(k))
        parts.append(f"{text} ({detail})" if detail else text)
    return ", ".join(parts)


def observed_current(obj: dict[str, Any] | None) -> bool:
    """Whether the controller has seen the current spec (``observedGeneration >= generation``).

    Kinds that report no ``observedGeneration`` count as current: their conditions are all there is.
    """
    generation = ((obj or {}).get("metadata") or {}).get("generation")
    observed = ((obj or {}).get("status") or {}).get("observedGeneration")
    return observed is None or generation is None or observed >= generation


Check = Callable[[dict[str, Any] | None], tuple[bool, str]]


def condition_check(cond_type: str, *, fail_on: str | None = None) -> Check:
    """A check that passes when condition ``cond_type`` is ``True`` for the current generation.

    Args:
        cond_type: Condition type (``Ready``, ``Available``, ``Established``, ``Complete``).
        fail_on: A condition type that means definite failure (``Failed`` for Jobs): raises
            :class:`KubeError` instead of waiting on.
    """

    def check(obj: dict[str, Any] | None) -> tuple[bool, str]:
        current = observed_current(obj)
        for cond in conditions(obj):
            if fail_on and cond.get("type") == fail_on and cond.get("status") == "True":
                meta = (obj or {}).get("metadata") or {}
                where = ref("", (obj or {}).get("kind", ""), meta.get("name", ""), meta.get("namespace"))
                raise KubeError(f"{where} failed: {condition_summary(obj)}")
            if cond.get("type") == cond_type and cond.get("status") == "True":
                if current:
                    return True, f"{cond_type}=True"
                return False, f"{cond_type}=True of an older generation; {condition_summary(obj)}"
        return False, condition_summary(obj)

    return check


@dataclass
class Wait:
    """Something to wait for: an object reaching a state, checked by ``check(obj) -> (ok, status)``.

    ``check`` gets None while the object does not exist; it may raise to stop waiting (a state
    that waiting will not fix).
    """

    api_version: str
    kind: str
    name: str
    namespace: str | None
    what: str
    check: Check

    @property
    def ref(self) -> str:
        return ref(self.api_version, self.kind, self.name, self.namespace)


def wait(
    client: Any,
    waits: list[Wait],
    *,
    timeout: float,
    poll_interval: float = 5.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    log: Callable[[str], None] = lambda line: None,
    quiet: bool = False,
) -> list[dict[str, Any] | None]:
    """Poll until every wait passes.

    Args:
        client: Dynamic-client-shaped client.
        waits: What to wait for.
        timeout: Seconds before giving up.
        poll_interval: Seconds between polls.
        clock: Monotonic clock (tests pass the fake cluster's).
        sleep: Sleep function (tests pass one that advances the fake cluster).
        log: Called with one line per object that becomes ready or is waited on.
        quiet: Log nothing when everything is ready at the first poll.

    Returns:
        The objects as last read, in the order of ``waits``.

    Raises:
        KubeTimeout: Time ran out; the message names the first object left and its last status.
        KubeError: Reading failed, or a check raised it.
    """
    pending = list(range(len(waits)))
    found: list[dict[str, Any] | None] = [None] * len(waits)
    last: dict[int, str] = {}
    deadline = clock() + timeout
    first_poll = True
    while True:
        still = []
        for index in pending:
            item = waits[index]
            obj = get(client, item.api_version, item.kind, item.name, item.namespace)
            ok, status = item.check(obj)
            found[index], last[index] = obj, status
            if ok:
                if not (quiet and first_poll):
                    log(f"  ready    {item.ref} ({status})")
            else:
                still.append(index)
        pending = still
        if not pending:
            return found
        if first_poll:
            first_poll = False
            for index in pending:
                log(f"  waiting  {waits[index].ref} to be {waits[index].what}")
        if clock() >= deadline:
            first = waits[pending[0]]
            others = f" (and {len(pending) - 1} more)" if len(pending) > 1 else ""
            raise KubeTimeout(
                f"timed out after {timeout:g}s waiting for {first.ref} to be {first.what}{others}; "
                f"last status: {last[pending[0]]}"
            )
        sleep(poll_interval)
