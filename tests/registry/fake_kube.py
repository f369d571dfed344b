"""An in-memory stand-in for ``kubernetes.client.CustomObjectsApi`` that keeps the API's semantics.

What it keeps, because the rollout code depends on it:

- ``create`` of an existing name answers 409 Conflict; ``get``/``patch``/``delete`` of a missing
  one 404 Not Found; errors are the real ``kubernetes.client.exceptions.ApiException``;
- ``metadata.resourceVersion`` changes on every write and a write that carries a stale one is
  refused with 409 (optimistic concurrency); ``metadata.generation`` counts spec changes;
- a dict ``patch`` is a JSON merge patch (RFC 7386: ``None`` deletes a key), as the real client
  sends it for a dict body;
- a small "controller" for InferenceServices: after a spec change the ``Ready`` condition is
  False and ``status.observedGeneration`` lags; it turns True after ``ready_after`` reads.
  ``never_ready(obj)`` keeps chosen objects from ever becoming ready (a readiness timeout), and
  ``fail_load(obj)`` reports KServe's ``BlockedByFailedLoad``.
"""

from __future__ import annotations

import copy
import itertools
import json
import uuid
from collections.abc import Callable
from typing import Any

from kubernetes.client.exceptions import ApiException


def _error(status: int, reason: str, message: str) -> ApiException:
    exc = ApiException(status=status, reason=reason)
    exc.body = json.dumps(
        {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": status,
        }
    )
    return exc


def apply_merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = apply_merge_patch(result.get(key), value)
    return result


class FakeCustomObjectsApi:
    """The ``CustomObjectsApi`` methods the rollout uses, over an in-memory store.

    Args:
        ready_after: Reads of an InferenceService after a spec change before it turns Ready.
        never_ready: Objects for which this returns True never become Ready.
        fail_load: Objects for which this returns True report ``BlockedByFailedLoad``.
    """

    def __init__(
        self,
        *,
        ready_after: int = 2,
        never_ready: Callable[[dict], bool] | None = None,
        fail_load: Callable[[dict], bool] | None = None,
    ):
        self.objects: dict[tuple[str, str, str, str], dict] = {}
        self.ready_after = ready_after
        self.never_ready = never_ready or (lambda obj: False)
        self.fail_load = fail_load or (lambda obj: False)
        self.calls: list[tuple[str, str, str]] = []  # (verb, plural, name)
        self._rv = itertools.count(1000)
        self._polls: dict[tuple[str, str, str, str], int] = {}
        # Runs before each write; tests use it to simulate a concurrent writer.
        self.before_write: Callable[[str, tuple[str, str, str, str]], None] | None = None

    # -- helpers -----------------------------------------------------------------------------

    def _key(self, group: str, namespace: str, plural: str, name: str) -> tuple[str, str, str, str]:
        return (group, plural, namespace, name)

    def _bump(self, obj: dict) -> None:
        obj["metadata"]["resourceVersion"] = str(next(self._rv))

    def _hook(self, verb: str, key) -> None:
        if self.before_write is not None:
            hook, self.before_write = self.before_write, None  # one-shot
            hook(verb, key)

    def _missing(self, plural: str, name: str) -> ApiException:
        return _error(404, "NotFound", f'{plural} "{name}" not found')

    def _spec_changed(self, key, obj: dict) -> None:
        obj["metadata"]["generation"] = obj["metadata"].get("generation", 0) + 1
        self._polls[key] = 0
        if key[1] == "inferenceservices":
            status = obj.setdefault("status", {})
            status["conditions"] = [
                {"type": "PredictorReady", "status": "False", "reason": "Progressing"},
                {"type": "Ready", "status": "False", "reason": "Progressing"},
            ]

    def _reconcile(self, key, obj: dict) -> None:
        """One controller step for an InferenceService, driven by reads (polls)."""
        if key[1] != "inferenceservices":
            return
        self._polls[key] = self._polls.get(key, 0) + 1
        status = obj.setdefault("status", {})
        meta = obj["metadata"]
        if self.fail_load(obj):
            status["observedGeneration"] = meta["generation"]
            status["modelStatus"] = {
                "transitionStatus": "BlockedByFailedLoad",
                "lastFailureInfo": {"reason": "ModelLoadFailed", "message": "failed to load model.onnx"},
            }
            return
        if self.never_ready(obj) or self._polls[key] < self.ready_after:
            return
        name, ns = meta["name"], meta["namespace"]
        status.update(
            {
                "observedGeneration": meta["generation"],
                "conditions": [
                    {"type": "IngressReady", "status": "True"},
                    {"type": "PredictorReady", "status": "True"},
                    {"type": "Ready", "status": "True"},
                ],
                "url": f"https://{name}-{ns}.apps.example.com",
                "address": {"url": f"http://{name}-predictor.{ns}.svc.cluster.local"},
                "components": {"predictor": {"restUrl": f"http://modelmesh-serving.{ns}:8008"}},
                "modelStatus": {"transitionStatus": "UpToDate", "states": {"activeModelState": "Loaded"}},
            }
        )
        status.pop("lastFailureInfo", None)

    # -- the API -----------------------------------------------------------------------------

    def get_namespaced_custom_object(self, group, version, namespace, plural, name, **_kw) -> dict:
        self.calls.append(("get", plural, name))
        key = self._key(group, namespace, plural, name)
        if key not in self.objects:
            raise self._missing(plural, name)
        self._reconcile(key, self.objects[key])
        return copy.deepcopy(self.objects[key])

    def list_namespaced_custom_object(self, group, version, namespace, plural, **_kw) -> dict:
        self.calls.append(("list", plural, ""))
        items = [
            copy.deepcopy(o) for (g, p, ns, _), o in self.objects.items() if (g, p, ns) == (group, plural, namespace)
        ]
        return {"apiVersion": f"{group}/{version}", "kind": "List", "items": items}

    def create_namespaced_custom_object(self, group, version, namespace, plural, body, **_kw) -> dict:
        name = (body.get("metadata") or {}).get("name")
        self.calls.append(("create", plural, name or ""))
        if not name:
            raise _error(422, "Invalid", "metadata.name: Required value")
        if body["metadata"].get("namespace", namespace) != namespace:
            raise _error(400, "BadRequest", "the namespace of the object does not match the request")
        if body.get("apiVersion") != f"{group}/{version}":
            raise _error(400, "BadRequest", f"apiVersion {body.get('apiVersion')} does not match {group}/{version}")
        key = self._key(group, namespace, plural, name)
        self._hook("create", key)
        if key in self.objects:
            raise _error(409, "AlreadyExists", f'{plural} "{name}" already exists')
        obj = copy.deepcopy(body)
        obj.pop("status", None)  # status is a subresource: ignored on create
        meta = obj["metadata"]
        meta.update(namespace=namespace, uid=str(uuid.uuid4()), creationTimestamp="2026-01-01T00:00:00Z")
        meta.pop("resourceVersion", None)
        self._bump(obj)
        self._spec_changed(key, obj)
        self.objects[key] = obj
        return copy.deepcopy(obj)

    def patch_namespaced_custom_object(self, group, version, namespace, plural, name, body, **_kw) -> dict:
        self.calls.append(("patch", plural, name))
        if isinstance(body, list):
            raise _error(415, "UnsupportedMediaType", "this fake only speaks JSON merge patch (a dict body)")
        key = self._key(group, namespace, plural, name)
        self._hook("patch", key)
        if key not in self.objects:
            raise self._missing(plural, name)
        obj = self.objects[key]
        want_rv = (body.get("metadata") or {}).get("resourceVersion")
        if want_rv is not None and want_rv != obj["metadata"]["resourceVersion"]:
            raise _error(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {plural} "{name}": the object has been modified; '
                f"please apply your changes to the latest version and try again",
            )
        patch = copy.deepcopy(body)
        patch.pop("status", None)
        for field in ("name", "namespace", "uid", "resourceVersion", "generation", "creationTimestamp"):
            (patch.get("metadata") or {}).pop(field, None)
        new = apply_merge_patch(obj, patch)
        if new == obj:
            return copy.deepcopy(obj)
        spec_changed = new.get("spec") != obj.get("spec")
        self._bump(new)
        if spec_changed:
            self._spec_changed(key, new)
        self.objects[key] = new
        return copy.deepcopy(new)

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name, **_kw) -> dict:
        self.calls.append(("delete", plural, name))
        key = self._key(group, namespace, plural, name)
        self._hook("delete", key)
        if key not in self.objects:
            raise self._missing(plural, name)
        del self.objects[key]
        self._polls.pop(key, None)
        return {"kind": "Status", "status": "Success"}

    # -- test conveniences -------------------------------------------------------------------

    def stored(self, plural: str, namespace: str, name: str, group: str = "serving.kserve.io") -> dict | None:
        """The stored object without advancing the controller (None when absent)."""
        obj = self.objects.get(self._key(group, namespace, plural, name))
        return copy.deepcopy(obj) if obj is not None else None
