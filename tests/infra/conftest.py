"""Fixtures for the infra tests: rendered overlays and the schema store (both rendered once)."""

from __future__ import annotations

import base64
import copy
import json
import shutil
import stat
import subprocess

import pytest

from infra.bootstrap import bootstrap
from infra.render import list_overlays, render
from infra.validate import SchemasMissingError, default_store
from tests.fake_kube import FakeCluster


@pytest.fixture(scope="session")
def kubectl() -> str:
    """kubectl (it carries kustomize).

    A missing kubectl fails rather than skips: every manifest test depends on rendering, and a
    silently skipped infra suite would let broken manifests through CI.
    """
    found = shutil.which("kubectl") or shutil.which("oc")
    if not found:
        pytest.fail(
            "kubectl (with kustomize) is not installed: the infra tests need it to render "
            "the overlays (see docs/infra.md)"
        )
    return found


@pytest.fixture(scope="session")
def store():
    """The schema store over ../shared/schemas/crds; skip with the reason when it is absent."""
    try:
        return default_store()
    except SchemasMissingError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def rendered(kubectl) -> dict[str, list[dict]]:
    """Every overlay rendered once: name -> objects."""
    return {name: render(name) for name in list_overlays()}


def find(objects: list[dict], kind: str, name: str, api_prefix: str | None = None) -> dict:
    """The object of that kind and name (optionally of an apiVersion starting with api_prefix)."""
    for obj in objects:
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            if api_prefix is None or obj["apiVersion"].startswith(api_prefix):
                return obj
    raise AssertionError(f"no {kind} {name} in the rendered objects")


def run_bootstrap(cluster: FakeCluster, objects: list[dict], **options):
    """``vinspect infra bootstrap`` of a copy of ``objects`` onto the fake, on the fake's clock."""
    options.setdefault("timeout", 120)
    options.setdefault("builder", cluster.start_build)
    return bootstrap(
        cluster, copy.deepcopy(objects), clock=cluster.clock, sleep=cluster.sleep, poll_interval=1.0, **options
    )


def secret_values(cluster: FakeCluster, name: str, namespace: str = "vinspect") -> dict[str, str]:
    """The decoded data of a Secret the bootstrap generated."""
    secret = cluster.find("Secret", name, namespace)
    assert secret is not None, f"Secret {namespace}/{name} was not created"
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


@pytest.fixture(scope="module")
def cluster(rendered) -> FakeCluster:
    """A fake cluster the default overlay was bootstrapped onto (its generated Secrets included)."""
    fake = FakeCluster(delay=1.0)
    run_bootstrap(fake, rendered["default"])
    return fake


@pytest.fixture(scope="module")
def bucket_job_run(rendered, cluster, tmp_path_factory):
    """The bucket Job's script run against a stand-in for MinIO's client: (calls, policies, output)."""
    from tests.infra.runtime_env import FAKE_MC, _container, resolved_env

    objects = rendered["default"]
    job = find(objects, "Job", "minio-buckets")
    container = _container(job, "mc")
    env = resolved_env(objects, cluster, container)
    work = tmp_path_factory.mktemp("mc")
    (work / "bin").mkdir()
    (work / "policies").mkdir()
    mc = work / "bin" / "mc"
    mc.write_text(FAKE_MC)
    mc.chmod(mc.stat().st_mode | stat.S_IEXEC)
    run_env = {
        "PATH": f"{work / 'bin'}:/usr/bin:/bin",
        "MC_LOG": str(work / "calls"),
        "MC_POLICIES": str(work / "policies"),
        **env,
    }
    script = container["args"][0].replace("/tmp/", f"{work}/")
    done = subprocess.run(["/bin/sh", "-ec", script], env=run_env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    policies = {p.stem: json.loads(p.read_text()) for p in (work / "policies").glob("*.json")}
    return (work / "calls").read_text().splitlines(), policies, done.stdout + done.stderr
