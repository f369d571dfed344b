"""The cluster gives the training pipeline what it reads: RBAC, the runtime ConfigMap, Secrets, buckets.

What the pipeline needs is taken from the code, not restated here: the training pipeline is
compiled with its defaults and its Kubernetes platform spec (the Secrets and ConfigMaps each step
maps into its environment, by name and key) is read back; the rollout's Kubernetes calls are read
from ``components/rollout``. These are then checked against the rendered default overlay and the
Secrets ``vinspect infra bootstrap`` generates.
"""

from __future__ import annotations

import base64
import os
import re
import stat
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import urlparse

import pytest

from infra.bootstrap import Namespaces, plan
from tests.infra.conftest import find

REPO = Path(__file__).resolve().parents[2]
ROLLOUT_DIR = REPO / "components" / "rollout"
INFRA_DOC = REPO / "docs" / "infra.md"

# CustomObjectsApi method prefix -> the RBAC verb the API server checks for it.
_CALL_VERBS = {
    "get": "get",
    "list": "list",
    "create": "create",
    "patch": "patch",
    "replace": "update",
    "delete": "delete",
}


@pytest.fixture(scope="module")
def compiled() -> dict:
    """The training pipeline compiled with its defaults: ``{"spec": ..., "platform": ...}``."""
    pytest.importorskip("kfp.kubernetes", reason="kfp-kubernetes is needed to compile the pipeline")
    import yaml
    from kfp import compiler

    from pipelines.training import build_training_pipeline

    pipeline = build_training_pipeline(image="registry.example/vinspect-pipeline:test", revision="test")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "training.yaml"
        compiler.Compiler().compile(pipeline, str(path))
        docs = list(yaml.safe_load_all(path.read_text()))
    assert len(docs) == 2, "the compiled pipeline has no Kubernetes platform spec"
    return {"spec": docs[0], "platform": docs[1]["platforms"]["kubernetes"]}


def _executors(compiled: dict) -> dict[str, dict]:
    return compiled["platform"]["deploymentSpec"]["executors"]


def env_sources(compiled: dict, field: str, key_field: str) -> dict[tuple[str, bool], set[str]]:
    """``(name, optional) -> keys`` over every step, for ``secretAsEnv`` or ``configMapAsEnv``."""
    found: dict[tuple[str, bool], set[str]] = {}
    for executor in _executors(compiled).values():
        for source in executor.get(field, []):
            name = source.get("secretName") or source.get("configMapName")
            keys = {pair[key_field] for pair in source["keyToEnv"]}
            found.setdefault((name, bool(source.get("optional"))), set()).update(keys)
    return found


def default_parameter(compiled: dict, name: str):
    return compiled["spec"]["root"]["inputDefinitions"]["parameters"][name]["defaultValue"]


@pytest.fixture(scope="module")
def objects(rendered) -> list[dict]:
    return rendered["default"]


@pytest.fixture(scope="module")
def dspa(objects) -> dict:
    found = [o for o in objects if o["kind"] == "DataSciencePipelinesApplication"]
    assert len(found) == 1, f"expected one DataSciencePipelinesApplication, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def runner(dspa) -> tuple[str, str]:
    """The pipeline run service account, as OpenShift AI names it: ``pipeline-runner-<dspa>``."""
    return f"pipeline-runner-{dspa['metadata']['name']}", dspa["metadata"]["namespace"]


@pytest.fixture(scope="module")
def generated(objects) -> dict[tuple[str, str], dict[str, str]]:
    """``(namespace, name) -> data`` of the Secrets the bootstrap generates (values are placeholders)."""
    return {
        (step.obj["metadata"]["namespace"], step.obj["metadata"]["name"]): {
            k: base64.b64decode(v).decode() for k, v in step.obj["data"].items()
        }
        for phase in plan(objects)
        for step in phase.steps
        if step.action == "generate"
    }


def runtime_config(objects, compiled, dspa) -> dict[str, str]:
    names = {name for name, _ in env_sources(compiled, "configMapAsEnv", "configMapKey")}
    assert len(names) == 1, f"expected the pipeline to read one ConfigMap, it reads {sorted(names)}"
    config = find(objects, "ConfigMap", names.pop())
    assert config["metadata"]["namespace"] == dspa["metadata"]["namespace"], "ConfigMap not in the pipelines project"
    return config["data"]


# ----------------------------------------------------------------------------------------------
# 1. RBAC for the rollout step


# infra.kube function -> the RBAC verbs of the API requests it makes (the rollout reaches the API
# only through infra.kube; functions that make no request map to nothing).
_KUBE_VERBS: dict[str, set[str]] = {
    "get": {"get"},
    "apply": {"get", "create", "patch"},
    "delete": {"delete"},
    "wait": {"get"},
    "connect": set(),  # discovery only, which every authenticated user may read
    "merge_patch": set(),
    "condition_check": set(),
    "observed_current": set(),
    "Wait": set(),
}


def rollout_calls() -> set[str]:
    """RBAC verbs of the Kubernetes requests the rollout code makes (through :mod:`infra.kube`)."""
    verbs = set()
    for path in ROLLOUT_DIR.glob("*.py"):
        for function in re.findall(r"\bkube\.(\w+)\(", path.read_text()):
            assert function in _KUBE_VERBS, f"{path.name}: no RBAC verbs known for infra.kube.{function}"
            verbs |= _KUBE_VERBS[function]
    assert verbs, f"found no Kubernetes calls under {ROLLOUT_DIR}"
    # The table above holds only while infra.kube makes these requests, and no others.
    source = (REPO / "infra" / "kube.py").read_text()
    made = {_CALL_VERBS[m] for m in re.findall(r"\bres\.(get|create|patch|delete|replace|list)\(", source)}
    assert made == {"get", "create", "patch", "delete"}, made
    return verbs


def _bound_rules(objects, runner, namespace) -> list[dict]:
    sa, sa_namespace = runner
    rules = []
    for binding in objects:
        if binding["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        if not any(
            s.get("kind") == "ServiceAccount" and s.get("name") == sa and s.get("namespace") == sa_namespace
            for s in binding.get("subjects", [])
        ):
            continue
        # Least privilege: bound in the models project only, to a namespaced Role.
        assert binding["kind"] == "RoleBinding", f"{sa} gets cluster-wide rights from {binding['metadata']['name']}"
        assert binding["metadata"]["namespace"] == namespace, f"{sa} is bound in {binding['metadata']['namespace']}"
        assert binding["roleRef"]["kind"] == "Role", f"{binding['metadata']['name']} binds a ClusterRole"
        role = next(
            o
            for o in objects
            if o["kind"] == "Role"
            and o["metadata"]["name"] == binding["roleRef"]["name"]
            and o["metadata"]["namespace"] == namespace
        )
        rules.extend(role["rules"])
    return rules


def test_pipeline_runner_may_roll_out_in_the_models_project_and_nothing_more(objects, compiled, runner):
    from components.rollout import render

    models = Namespaces.from_objects(objects).models
    assert models == default_parameter(compiled, "serving_namespace") == "vinspect-models"
    rules = _bound_rules(objects, runner, models)
    assert rules, f"no RoleBinding in {models} for ServiceAccount {runner[1]}/{runner[0]}"

    grants: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        assert "resourceNames" not in rule and "nonResourceURLs" not in rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                grants.setdefault((group, resource), set()).update(rule["verbs"])
    crud = {"get", "list", "watch", "create", "patch", "update", "delete"}
    assert grants == {
        (render.GROUP, render.ISVC_PLURAL): crud,
        (render.GROUP, render.RUNTIME_PLURAL): crud,
        ("", "pods"): {"get", "list"},
    }
    # What the rollout code actually calls is covered.
    assert rollout_calls() <= grants[(render.GROUP, render.ISVC_PLURAL)]


def test_a_cluster_role_binding_would_be_caught(objects, runner):
    bad = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "too-much"},
        "roleRef": {"kind": "ClusterRole", "name": "admin"},
        "subjects": [{"kind": "ServiceAccount", "name": runner[0], "namespace": runner[1]}],
    }
    with pytest.raises(AssertionError, match="cluster-wide"):
        _bound_rules(objects + [bad], runner, "vinspect-models")


def test_rollout_call_scan_sees_every_method():
    verbs = rollout_calls()
    # The KServe target reads, creates, patches and deletes; the scan must see all of it.
    assert {"get", "create", "patch", "delete"} <= verbs


# ----------------------------------------------------------------------------------------------
# 2. The runtime ConfigMap and the Secrets the steps read


def settings_env_names() -> set[str]:
    """Every environment name ``vinspect.settings`` reads."""
    from pydantic import AliasChoices
    from pydantic_settings import BaseSettings

    import vinspect.settings as settings

    names = set()
    for value in vars(settings).values():
        if isinstance(value, type) and issubclass(value, BaseSettings):
            for field in value.model_fields.values():
                alias = field.validation_alias
                if isinstance(alias, AliasChoices):
                    names.update(c for c in alias.choices if isinstance(c, str))
                elif isinstance(alias, str):
                    names.add(alias)
    return names


def test_runtime_config_map_has_every_key_the_pipeline_maps(objects, compiled, dspa):
    sources = env_sources(compiled, "configMapAsEnv", "configMapKey")
    data = runtime_config(objects, compiled, dspa)
    for (name, _optional), keys in sources.items():
        assert keys <= set(data), f"ConfigMap {name} lacks {sorted(keys - set(data))} that the pipeline maps"
    from pipelines.training import MLFLOW_CONFIG_KEYS

    assert set(MLFLOW_CONFIG_KEYS) <= set(data)
    # Keys are names the settings read (a typo would be silently ignored in the pods).
    unknown = set(data) - settings_env_names()
    assert not unknown, f"ConfigMap keys no setting reads: {sorted(unknown)}"
    assert data["VINSPECT_MODEL_NAME"] == default_parameter(compiled, "model_name")


def test_mlflow_tracking_uri_is_the_in_cluster_service(objects, compiled, dspa):
    uri = urlparse(runtime_config(objects, compiled, dspa)["MLFLOW_TRACKING_URI"])
    assert uri.scheme == "https"  # the OAuth proxy, with a service-CA certificate
    service_name, service_namespace, *_ = uri.hostname.split(".")
    service = find(objects, "Service", service_name, api_prefix="v1")
    assert service["metadata"]["namespace"] == service_namespace
    assert uri.hostname == f"{service_name}.{service_namespace}.svc.cluster.local"
    assert uri.port in [p["port"] for p in service["spec"]["ports"]]
    # The Service selects the MLflow server, which accepts this Host header.
    deployment = find(objects, "Deployment", "mlflow")
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    allowed = env["MLFLOW_SERVER_ALLOWED_HOSTS"]["value"].split(",")
    assert f"{uri.hostname}:*" in allowed and uri.hostname in allowed


def test_required_secrets_are_generated_in_the_pipelines_project(compiled, generated, dspa):
    namespace = dspa["metadata"]["namespace"]
    required = {
        name: keys
        for (name, optional), keys in env_sources(compiled, "secretAsEnv", "secretKey").items()
        if not optional
    }
    assert "aws-connection-models" in required
    for name, keys in required.items():
        assert (namespace, name) in generated, f"the pipeline needs Secret {namespace}/{name}; bootstrap never makes it"
        missing = keys - set(generated[(namespace, name)])
        assert not missing, f"Secret {namespace}/{name} lacks {sorted(missing)} that the pipeline maps"
    # The rollout's data connection (the storage initializer's credentials) in the models project.
    connection = default_parameter(compiled, "data_connection")
    assert (default_parameter(compiled, "serving_namespace"), connection) in generated


def test_optional_secrets_are_generated_or_documented(objects, compiled, generated, dspa):
    namespace = dspa["metadata"]["namespace"]
    doc = INFRA_DOC.read_text()
    optional = {name: keys for (name, opt), keys in env_sources(compiled, "secretAsEnv", "secretKey").items() if opt}
    assert {"cvat-admin", "vinspect-mlflow"} <= set(optional)
    for name, keys in optional.items():
        if (namespace, name) in generated:
            assert keys & set(generated[(namespace, name)]), f"Secret {name} has none of {sorted(keys)}"
        else:
            assert f"`{name}`" in doc, f"optional Secret {name} is neither generated nor documented in docs/infra.md"
    # CVAT: a URL plus a complete credential (user and password, or a token).
    cvat = set(generated[(namespace, "cvat-admin")])
    assert "CVAT_URL" in cvat and ({"CVAT_USERNAME", "CVAT_PASSWORD"} <= cvat or "CVAT_TOKEN" in cvat)
    # vinspect-mlflow is not generated: the steps authenticate to MLflow's OAuth proxy with their own
    # service-account token (MLFLOW_TRACKING_AUTH=kubernetes from the ConfigMap); the Secret is for
    # an external MLflow with static credentials.
    assert (namespace, "vinspect-mlflow") not in generated
    args = " ".join(find(objects, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]["args"])
    assert "--app-name" not in args, "MLflow's basic-auth app is on: bootstrap must generate vinspect-mlflow"


def test_config_map_carries_no_credential(objects, compiled, dspa):
    from infra.validate import find_literal_credentials

    data = runtime_config(objects, compiled, dspa)
    secret_keys = {k for (_, _), keys in env_sources(compiled, "secretAsEnv", "secretKey").items() for k in keys}
    assert not (set(data) & (secret_keys - {"AWS_S3_BUCKET"})), "a Secret key is also in the ConfigMap"
    bad = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "x", "namespace": "vinspect"},
        "data": {"MLFLOW_TRACKING_PASSWORD": "x"},
    }
    issues = find_literal_credentials([bad])
    assert [i.path for i in issues] == ["data.MLFLOW_TRACKING_PASSWORD"]


# ----------------------------------------------------------------------------------------------
# 3. Buckets


def created_buckets(objects, tmp_path: Path) -> set[str]:
    """Run the bucket Job's script with a recording ``mc`` and return the buckets it makes."""
    job = find(objects, "Job", "minio-buckets")
    container = job["spec"]["template"]["spec"]["containers"][0]
    script = container["args"][0]
    log = tmp_path / "mc.log"
    mc = tmp_path / "bin" / "mc"
    mc.parent.mkdir()
    mc.write_text(f'#!/bin/sh\necho "$@" >> "{log}"\n')
    mc.chmod(mc.stat().st_mode | stat.S_IEXEC)
    env = {"PATH": f"{mc.parent}:{os.environ['PATH']}", "MINIO_ROOT_USER": "u", "MINIO_ROOT_PASSWORD": "p"}
    done = subprocess.run([*container["command"], script], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    buckets = set()
    for line in log.read_text().splitlines():
        words = line.split()
        if words[0] == "mb":
            buckets.add(words[-1].split("/", 1)[1])
    return buckets


def test_bucket_job_creates_the_buckets_the_pipeline_and_mlflow_use(objects, compiled, generated, dspa, tmp_path):
    buckets = created_buckets(objects, tmp_path)
    data = runtime_config(objects, compiled, dspa)
    connection = generated[(dspa["metadata"]["namespace"], "aws-connection-models")]
    assert data["AWS_S3_BUCKET"] == connection["AWS_S3_BUCKET"] == "models"
    args = find(objects, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]["args"]
    artifacts = urlparse(next(a.split("=", 1)[1] for a in args if a.startswith("--artifacts-destination=")))
    wanted = {
        data["AWS_S3_BUCKET"],
        data["VINSPECT_DATA_BUCKET"],
        artifacts.netloc,
        dspa["spec"]["objectStorage"]["externalStorage"]["bucket"],
    }
    assert wanted >= {"models", "vinspect-data", "mlflow"}
    assert wanted <= buckets, f"the minio-buckets Job does not create {sorted(wanted - buckets)}"
