"""Helpers for the runtime wiring tests: a container's environment as the kubelet builds it, the
settings classes built from exactly that environment, and the subset of IAM evaluation MinIO applies."""

from __future__ import annotations

import fnmatch
import os

from tests.fake_kube import FakeCluster
from tests.infra.conftest import find, secret_values

S3_ENV = ("AWS_S3_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "VINSPECT_DATA_BUCKET")


def _container(obj: dict, name: str) -> dict:
    template = obj["spec"]["template"]["spec"]
    return next(c for c in template["containers"] if c["name"] == name)


def resolved_env(objects: list[dict], cluster: FakeCluster, container: dict) -> dict[str, str]:
    """A container's environment as the kubelet builds it: envFrom in order, then env on top."""
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        if "configMapRef" in source:
            env.update(find(objects, "ConfigMap", source["configMapRef"]["name"]).get("data") or {})
        else:
            env.update(secret_values(cluster, source["secretRef"]["name"]))
    for item in container.get("env") or []:
        if "value" in item:
            env[item["name"]] = item["value"]
            continue
        ref = item["valueFrom"]["secretKeyRef"] if "secretKeyRef" in item["valueFrom"] else None
        if ref is None:
            ref = item["valueFrom"]["configMapKeyRef"]
            env[item["name"]] = find(objects, "ConfigMap", ref["name"])["data"][ref["key"]]
            continue
        found = cluster.find("Secret", ref["name"], "vinspect")
        if found is None and ref.get("optional"):
            continue
        env[item["name"]] = secret_values(cluster, ref["name"])[ref["key"]]
    return env


def _settings(cls, env: dict[str, str], monkeypatch):
    """Build a settings class from exactly this environment (no dotenv, no host variables)."""
    for key in list(os.environ):
        if key.startswith(("AWS_", "VINSPECT_", "MLFLOW_", "KAFKA_")):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return cls(_env_file=None)


FAKE_MC = r"""#!/bin/sh
# Stand-in for MinIO's client: records each call, and each policy document it is given.
printf '%s\n' "$*" >> "$MC_LOG"
if [ "$1 $2 $3" = "admin policy create" ]; then cp "$6" "$MC_POLICIES/$5.json"; fi
"""


def _allows(policy: dict, action: str, resource: str, prefix: str | None = None) -> bool:
    """IAM evaluation for Allow statements with wildcard resources and a StringLike s3:prefix.

    The subset of AWS IAM policy evaluation (and MinIO's, which follows it: minio/pkg policy
    package) these policies use: an action is allowed when a statement names it, a resource
    pattern matches (``*`` spans ``/``), and its ``StringLike`` condition on ``s3:prefix`` holds.
    """
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow" and set(statement) <= {"Effect", "Action", "Resource", "Condition"}
        if action not in statement["Action"]:
            continue
        if not any(fnmatch.fnmatchcase(resource, pattern) for pattern in statement["Resource"]):
            continue
        condition = statement.get("Condition")
        if condition:
            assert set(condition) == {"StringLike"} and set(condition["StringLike"]) == {"s3:prefix"}
            if prefix is None or not any(fnmatch.fnmatchcase(prefix, p) for p in condition["StringLike"]["s3:prefix"]):
                continue
        return True
    return False
