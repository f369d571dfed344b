"""What a real OpenShift AI cluster needs beyond the schemas (issue 13, the platform side).

Each test here models one behaviour of the platform (OLM channels, the operator's own objects,
OpenShift builds, odh-model-controller's connection webhook, structural pruning of dropped
fields, optional parts that never become ready) against the manifests and the bootstrap.
"""

from __future__ import annotations

import base64
import copy

import pytest

from tests.fake_kube import FakeCluster
from tests.infra.conftest import find, run_bootstrap

DELAY = 3.0


def writes(cluster: FakeCluster, since: int = 0) -> list[tuple[float, str, str]]:
    return [e for e in cluster.events[since:] if e[1] in ("create", "patch", "patch-request", "build")]


# ----------------------------------------------------------------------------------------------
# Defect 9: data connections carry the Connections API annotations


def test_data_connections_carry_the_connection_api_annotations(rendered):
    cluster = FakeCluster(delay=DELAY)
    run_bootstrap(cluster, rendered["default"])
    for namespace in ("vinspect", "vinspect-models"):
        annotations = cluster.find("Secret", "aws-connection-models", namespace)["metadata"]["annotations"]
        # odh-model-controller's connection webhook reads -protocol (and the deprecated -ref);
        # the dashboard still lists connections by the legacy annotation.
        assert annotations["opendatahub.io/connection-type-protocol"] == "s3"
        assert annotations["opendatahub.io/connection-type-ref"] == "s3"
        assert annotations["opendatahub.io/connection-type"] == "s3"


def test_a_connection_from_an_older_bootstrap_gains_the_annotations(rendered):
    cluster = FakeCluster(delay=DELAY)
    run_bootstrap(cluster, rendered["default"])
    secret = cluster.find("Secret", "aws-connection-models", "vinspect-models")
    for key in ("opendatahub.io/connection-type-protocol", "opendatahub.io/connection-type-ref"):
        del secret["metadata"]["annotations"][key]
    before = base64.b64decode(secret["data"]["AWS_SECRET_ACCESS_KEY"])
    run_bootstrap(cluster, rendered["default"])
    secret = cluster.find("Secret", "aws-connection-models", "vinspect-models")
    assert secret["metadata"]["annotations"]["opendatahub.io/connection-type-protocol"] == "s3"
    assert base64.b64decode(secret["data"]["AWS_SECRET_ACCESS_KEY"]) == before  # never rotated


# ----------------------------------------------------------------------------------------------
# Defect 8: the OpenShift AI channel is the version the manifests target


def _rhoai(objects) -> tuple[str, dict, dict]:
    sub = find(objects, "Subscription", "rhods-operator")
    return (
        sub["spec"]["channel"],
        find(objects, "DataScienceCluster", "default-dsc"),
        find(objects, "DSCInitialization", "default-dsci"),
    )


@pytest.mark.parametrize(("overlay", "major"), [("default", 2), ("gpu", 2), ("sno", 2), ("rhoai3", 3)])
def test_openshift_ai_channel_matches_the_api_the_manifests_use(rendered, overlay, major):
    channel, dsc, dsci = _rhoai(rendered[overlay])
    # A versioned channel: `stable` or `fast` follow the catalog into the next major version.
    assert channel not in ("stable", "fast"), f"{overlay}: channel {channel!r} is not pinned to a version"
    assert channel.endswith((f"-{major}.x",)) or channel.startswith((f"stable-{major}.", f"eus-{major}.")), channel
    version = "v1" if major == 2 else "v2"
    assert dsc["apiVersion"].endswith(f"/{version}") and dsci["apiVersion"].endswith(f"/{version}")


def test_raw_serving_on_2x_has_no_service_mesh(rendered):
    _, dsc, dsci = _rhoai(rendered["default"])
    kserve = dsc["spec"]["components"]["kserve"]
    assert kserve["defaultDeploymentMode"] == "RawDeployment" and kserve["serving"]["managementState"] == "Removed"
    assert dsci["spec"]["serviceMesh"]["managementState"] == "Removed"


def test_dsci_is_applied_before_the_datasciencecluster(rendered):
    from infra.bootstrap import plan

    steps = [(p.name, s.ref) for p in plan(rendered["default"]) for s in p.steps if s.action == "apply"]
    assert steps.index(("platform", "DSCInitialization default-dsci")) < steps.index(
        ("platform", "DataScienceCluster default-dsc")
    )


def test_bootstrap_patches_the_operators_dsci_to_no_service_mesh(rendered):
    cluster = FakeCluster(delay=DELAY)
    run_bootstrap(cluster, rendered["default"])
    dsci = cluster.find("DSCInitialization", "default-dsci")
    assert dsci["spec"]["serviceMesh"]["managementState"] == "Removed"
    assert any(v == "patch" and r == "DSCInitialization default-dsci" for _, v, r in cluster.events)


def test_rhoai3_overlay_is_idempotent_on_a_3x_cluster(rendered):
    cluster = FakeCluster(delay=DELAY)
    run_bootstrap(cluster, rendered["rhoai3"])
    assert cluster.rhoai_major == 3
    since = len(cluster.events)
    report = run_bootstrap(cluster, rendered["rhoai3"])
    assert writes(cluster, since) == [], "a second bootstrap run re-patched objects"
    assert report.count("configured") == 0


def test_v1_fields_on_a_3x_cluster_would_be_repatched_every_run(rendered):
    """The failure mode rhoai3 avoids, shown against the same fake: 2.x fields on 3.x never stick."""
    objects = copy.deepcopy(rendered["default"])
    find(objects, "Subscription", "rhods-operator")["spec"]["channel"] = "fast-3.x"
    cluster = FakeCluster(delay=DELAY)
    run_bootstrap(cluster, objects)
    since = len(cluster.events)
    report = run_bootstrap(cluster, objects)
    assert ("patch-request", "DataScienceCluster default-dsc") in [(v, r) for _, v, r in writes(cluster, since)]
    assert ("platform", "DataScienceCluster default-dsc", "configured") in report.results


def test_a_channel_the_catalog_lacks_is_named_in_the_timeout(rendered):
    objects = copy.deepcopy(rendered["default"])
    find(objects, "Subscription", "rhods-operator")["spec"]["channel"] = "stable-9.9"
    with pytest.raises(Exception, match=r"no operators found in channel stable-9.9 of package rhods-operator"):
        run_bootstrap(cluster := FakeCluster(delay=DELAY), objects, timeout=20)
    assert cluster.find("DataScienceCluster", "default-dsc") is None


# ----------------------------------------------------------------------------------------------
# Defect 11: the OVMS image is the template's; the registry storage is replaced, never merged


def test_serving_runtime_image_is_the_pinned_template_image(rendered):
    from components.rollout.render import DEFAULT_OVMS_IMAGE
    from infra.image_policy import is_pinned, load_allowed

    for overlay, objects in rendered.items():
        image = find(objects, "ServingRuntime", "kserve-ovms")["spec"]["containers"][0]["image"]
        assert "@sha256:" in image and is_pinned(image), f"{overlay}: {image} is a moving tag"
        assert image == DEFAULT_OVMS_IMAGE, "the rollout would create the runtime with another image"
        assert image in load_allowed()["upstream"]


def test_bootstrap_takes_the_ovms_image_from_the_clusters_template(rendered):
    from tests.fake_kube import TEMPLATE_OVMS_IMAGE

    cluster = FakeCluster(delay=DELAY)
    run_bootstrap(cluster, rendered["default"])
    runtime = cluster.find("ServingRuntime", "kserve-ovms", "vinspect-models")
    assert runtime["spec"]["containers"][0]["image"] == TEMPLATE_OVMS_IMAGE
    since = len(cluster.events)
    run_bootstrap(cluster, rendered["default"])
    assert writes(cluster, since) == []


def test_registry_storage_replaces_an_existing_empty_dir(rendered):
    cluster = FakeCluster(delay=DELAY, registry_storage={"emptyDir": {}})
    run_bootstrap(cluster, rendered["default"])
    storage = cluster.find("Config", "cluster")["spec"]["storage"]
    assert storage == {"pvc": {"claim": "image-registry-storage"}}, storage
    since = len(cluster.events)
    run_bootstrap(cluster, rendered["default"])
    assert writes(cluster, since) == []


# ----------------------------------------------------------------------------------------------
# Defect 6: every image is built in the cluster or pinned in infra/images.yaml


@pytest.fixture(scope="module")
def compiled_default(tmp_path_factory) -> list[dict]:
    """The training pipeline compiled with no image given (what `vinspect pipeline compile` does)."""
    import os

    import yaml

    from pipelines.compile import compile_pipeline

    saved = {k: os.environ.pop(k) for k in ("VINSPECT_IMAGE", "KFP_NAMESPACE") if k in os.environ}
    try:
        out = compile_pipeline(tmp_path_factory.mktemp("compiled") / "training.yaml", revision="test")
    finally:
        os.environ.update(saved)
    return list(yaml.safe_load_all(out.read_text()))


@pytest.mark.parametrize("overlay", ["default", "gpu", "sno", "rhoai3"])
def test_every_manifest_image_is_built_here_or_pinned_upstream(rendered, overlay):
    from infra.image_policy import check_images, manifest_images

    objects = rendered[overlay]
    assert check_images(manifest_images(objects), objects, require_all_used=False) == []


def test_the_compiled_pipeline_runs_the_image_the_cluster_builds(rendered, compiled_default):
    from infra.image_policy import INTERNAL_REGISTRY, check_images, pipeline_images

    refs = pipeline_images(compiled_default)
    assert refs and {r.image for r in refs} == {f"{INTERNAL_REGISTRY}/vinspect/vinspect-pipeline:latest"}
    assert check_images(refs, rendered["default"], require_all_used=False) == []


def test_every_listed_image_is_used(rendered, compiled_default):
    from infra.image_policy import check_images, manifest_images, pipeline_images

    refs = pipeline_images(compiled_default) + [r for objects in rendered.values() for r in manifest_images(objects)]
    everything = [o for objects in rendered.values() for o in objects]
    assert check_images(refs, everything) == []


def test_image_rule_catches_floating_unlisted_and_unbuilt_images():
    from infra.image_policy import INTERNAL_REGISTRY, ImageRef, check_images

    allowed = {"upstream": {"quay.io/x/y:latest", "quay.io/x/z:1.2"}, "platform": set()}
    objects = [
        {"apiVersion": "image.openshift.io/v1", "kind": "ImageStream", "metadata": {"name": "a", "namespace": "ns"}},
        {
            "apiVersion": "build.openshift.io/v1",
            "kind": "BuildConfig",
            "metadata": {"name": "a", "namespace": "ns"},
            "spec": {"output": {"to": {"kind": "ImageStreamTag", "name": "a:v1"}}},
        },
    ]
    refs = [
        ImageRef("Deployment ns/d", "spec.containers[0].image", image)
        for image in (
            "quay.io/x/y:latest",
            "quay.io/x/z:1.2",
            "docker.io/library/nginx:1.27",
            f"{INTERNAL_REGISTRY}/ns/a:v1",
            f"{INTERNAL_REGISTRY}/ns/a:v2",
            f"{INTERNAL_REGISTRY}/other/b:1",
        )
    ]
    problems = check_images(refs, objects, allowed)
    assert len(problems) == 4, problems
    assert "quay.io/x/y:latest' is listed in images.yaml but not pinned" in problems[0]
    assert "nginx:1.27' is neither built in the cluster nor listed" in problems[1]
    assert "ns/a:v2' is in the internal registry, but no BuildConfig of this overlay builds it" in problems[2]
    assert "other/b:1' is in the internal registry" in problems[3]


def test_pipeline_image_defaults_follow_the_pipelines_project(monkeypatch):
    from components.kfp import INTERNAL_REGISTRY, pipeline_image

    monkeypatch.delenv("VINSPECT_IMAGE", raising=False)
    monkeypatch.delenv("KFP_NAMESPACE", raising=False)
    assert pipeline_image() == f"{INTERNAL_REGISTRY}/vinspect/vinspect-pipeline:latest"
    monkeypatch.setenv("KFP_NAMESPACE", "team-a")
    assert pipeline_image() == f"{INTERNAL_REGISTRY}/team-a/vinspect-pipeline:latest"
    assert pipeline_image("team-b") == f"{INTERNAL_REGISTRY}/team-b/vinspect-pipeline:latest"
    monkeypatch.setenv("VINSPECT_IMAGE", "quay.io/me/vinspect-pipeline@sha256:" + "0" * 64)
    assert pipeline_image("team-b").startswith("quay.io/me/")


def test_bootstrap_builds_every_image_before_what_runs_it(rendered):
    cluster = FakeCluster(delay=DELAY)
    run_bootstrap(cluster, rendered["default"])
    for build in cluster.builds:
        assert cluster.find("Build", build)["status"]["phase"] == "Complete"
    # The pipeline image exists before the pipelines server that will run it.
    assert cluster.first("create", "DataSciencePipelinesApplication vinspect/dspa") > cluster.first(
        "build", "Build vinspect/vinspect-pipeline-1"
    )
    stream = cluster.find("ImageStream", "vinspect-pipeline", "vinspect")
    assert [t["tag"] for t in stream["status"]["tags"]] == ["latest"]


# ----------------------------------------------------------------------------------------------
# Defect 7: an optional part that never comes up is reported and blocks nothing


def test_a_vm_that_never_gets_ready_blocks_nothing_else(rendered):
    # KubeVirt on nodes without KVM: the VirtualMachine stays Ready=False forever.
    cluster = FakeCluster(delay=DELAY, stuck={"VirtualMachine cvat"})
    report = run_bootstrap(cluster, rendered["gpu"], timeout=60)
    assert set(report.skipped) == {"cvat"}
    assert "VirtualMachine vinspect/cvat" in report.skipped["cvat"] and "timed out" in report.skipped["cvat"]
    # Everything that is not CVAT is there: buckets, pipelines server, eventing, triggers, GPU stack.
    for kind, name in [
        ("Job", "minio-buckets"),
        ("DataSciencePipelinesApplication", "dspa"),
        ("Broker", "default"),
        ("Trigger", "results-to-dashboard"),
        ("ClusterPolicy", "gpu-cluster-policy"),
    ]:
        assert cluster.find(kind, name) is not None, f"{kind} {name} was not applied"
    assert cluster.find("Trigger", "results-to-dashboard")["status"]["conditions"][0]["status"] == "True"


def test_a_gpu_stack_that_never_gets_ready_is_skipped_and_named(rendered):
    cluster = FakeCluster(delay=DELAY, stuck={"Subscription gpu-operator-certified"})
    report = run_bootstrap(cluster, rendered["gpu"], timeout=60)
    assert set(report.skipped) == {"gpu"}
    assert "gpu: operators" in report.skipped["gpu"] and "CSV gpu-operator-certified" in report.skipped["gpu"]
    # The later GPU phases are skipped, not attempted.
    assert cluster.find("ClusterPolicy", "gpu-cluster-policy") is None
    assert ("gpu: services", "ClusterPolicy gpu-cluster-policy", "skipped") in report.results
    assert cluster.find("Trigger", "images-to-processor", "vinspect") is not None


def test_a_required_part_still_stops_the_bootstrap(rendered):
    from infra.bootstrap import BootstrapTimeout

    cluster = FakeCluster(delay=DELAY, stuck={"Kafka vinspect"})
    with pytest.raises(BootstrapTimeout, match="Kafka vinspect/vinspect"):
        run_bootstrap(cluster, rendered["default"], timeout=30)


def test_cli_exit_status_names_what_was_skipped(capsys):
    import typer

    from infra.bootstrap import Report
    from vinspect.cli.infra import OPTIONAL_SKIPPED_EXIT, finish

    finish(Report(results=[("config", "ConfigMap vinspect/x", "created")]), "gpu")  # nothing skipped: no exit
    report = Report(skipped={"cvat": "cvat: services: timed out after 60s waiting for VirtualMachine vinspect/cvat"})
    with pytest.raises(typer.Exit) as exited:
        finish(report, "gpu")
    assert exited.value.exit_code == OPTIONAL_SKIPPED_EXIT == 3
    err = capsys.readouterr().err
    assert "optional part 'cvat' skipped: cvat: services: timed out" in err and "run the bootstrap again" in err


# ----------------------------------------------------------------------------------------------
# Precondition: a default StorageClass (single-node clusters need LVMS)


def test_bootstrap_without_a_default_storage_class_stops_before_anything(rendered):
    from infra.bootstrap import BootstrapError

    cluster = FakeCluster(delay=DELAY, storage_classes={"local-manual": False})
    with pytest.raises(BootstrapError) as err:
        run_bootstrap(cluster, rendered["sno"])
    message = str(err.value)
    assert "no default StorageClass (classes: local-manual)" in message
    assert "PersistentVolumeClaim vinspect/minio-data" in message and "LVM Storage" in message
    assert writes(cluster) == [], "nothing may be applied before the precondition holds"


def test_bootstrap_accepts_a_default_class_such_as_lvms(rendered):
    cluster = FakeCluster(delay=DELAY, storage_classes={"lvms-vg1": True})
    run_bootstrap(cluster, rendered["sno"])
    assert cluster.find("PersistentVolumeClaim", "minio-data", "vinspect") is not None


# ----------------------------------------------------------------------------------------------
# Defect 5: CVAT answers the in-cluster Service name too


def test_cvat_vm_routes_the_service_host_the_pipeline_uses(rendered):
    import re
    from urllib.parse import urlsplit

    import yaml

    vm = find(rendered["default"], "VirtualMachine", "cvat")
    userdata = next(
        v["cloudInitNoCloud"]["userData"] for v in vm["spec"]["template"]["spec"]["volumes"] if "cloudInitNoCloud" in v
    )
    script = yaml.safe_load(userdata)["write_files"][0]["content"]
    override = yaml.safe_load(re.search(r"<<'OVERRIDE'\n(.*?)\nOVERRIDE\n", script, re.S).group(1))
    labels = dict(label.split("=", 1) for label in override["services"]["cvat_server"]["labels"])
    hosts = re.findall(r"Host\(`([^`]+)`\)", labels["traefik.http.routers.cvat-incluster.rule"])
    assert labels["traefik.http.routers.cvat-incluster.service"] == "cvat"  # CVAT's own service name
    # The URL bootstrap writes into Secret cvat-admin (what pipeline pods use) is one of them.
    cluster = FakeCluster(delay=DELAY)
    run_bootstrap(cluster, rendered["default"])
    secret = cluster.find("Secret", "cvat-admin", "vinspect")
    url = base64.b64decode(secret["data"]["CVAT_URL"]).decode()
    assert urlsplit(url).hostname in hosts


def test_pipeline_pull_step_gets_cvat_host():
    from pipelines.training import CVAT_KEYS

    assert "CVAT_HOST" in CVAT_KEYS


# ----------------------------------------------------------------------------------------------
# Defect 10: MLflow only behind OpenShift's OAuth proxy; pipeline steps send their token


def _containers(deployment) -> dict[str, dict]:
    return {c["name"]: c for c in deployment["spec"]["template"]["spec"]["containers"]}


@pytest.mark.parametrize("overlay", ["default", "gpu", "sno", "rhoai3"])
def test_mlflow_is_reachable_only_through_the_oauth_proxy(rendered, overlay):
    import json

    objects = rendered[overlay]
    deployment = find(objects, "Deployment", "mlflow")
    containers = _containers(deployment)
    mlflow, proxy = containers["mlflow"], containers["oauth-proxy"]
    assert "--host=127.0.0.1" in mlflow["args"] and not mlflow.get("ports"), "MLflow listens beyond loopback"
    args = dict(a.lstrip("-").split("=", 1) for a in proxy["args"])
    assert args["upstream"] == "http://127.0.0.1:5000" and args["provider"] == "openshift"
    # Bearer tokens (service accounts, `oc whoami -t`) on every path, checked by a SAR the
    # pipeline runner's Role (services: * in its project) satisfies.
    delegate = json.loads(args["openshift-delegate-urls"])["/"]
    assert delegate == {"namespace": "vinspect", "resource": "services", "resourceName": "mlflow", "verb": "get"}
    assert "skip-auth-regex" not in args
    service = find(objects, "Service", "mlflow", api_prefix="v1")
    proxy_ports = {p["name"]: p["containerPort"] for p in proxy["ports"]}
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["https"] and "https" in proxy_ports
    route = find(objects, "Route", "mlflow")
    assert route["spec"]["port"]["targetPort"] == "https" and route["spec"]["tls"]["termination"] == "reencrypt"
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "mlflow"
    binding = find(objects, "ClusterRoleBinding", "vinspect-mlflow-auth-delegator")
    assert binding["roleRef"]["name"] == "system:auth-delegator"


def test_mlflow_steps_carry_the_token_auth_wiring(rendered, compiled_default):
    import json

    platform = compiled_default[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    config = find(rendered["default"], "ConfigMap", "vinspect-runtime")["data"]
    using = 0
    for name, executor in platform.items():
        keys = {k["envVar"]: k["configMapKey"] for src in executor.get("configMapAsEnv", []) for k in src["keyToEnv"]}
        if "MLFLOW_TRACKING_URI" not in keys:
            continue
        using += 1
        assert keys.get("MLFLOW_TRACKING_AUTH") == "MLFLOW_TRACKING_AUTH", name
        assert keys.get("MLFLOW_TRACKING_SERVER_CERT_PATH") == "MLFLOW_TRACKING_SERVER_CERT_PATH", name
    assert using >= 4  # check-dataset, evaluate, register, rollout
    assert config["MLFLOW_TRACKING_AUTH"] == "kubernetes"
    assert config["MLFLOW_TRACKING_URI"].startswith("https://")
    assert config["MLFLOW_TRACKING_SERVER_CERT_PATH"].endswith("/serviceaccount/service-ca.crt")
    assert "Bearer" not in json.dumps(compiled_default)


def test_bootstrap_generates_the_proxy_cookie_secret_once(rendered):
    cluster = FakeCluster(delay=DELAY)
    run_bootstrap(cluster, rendered["default"])
    secret = cluster.find("Secret", "mlflow-proxy", "vinspect")
    cookie = base64.b64decode(secret["data"]["session_secret"])
    assert len(cookie) == 32  # oauth-proxy takes 16, 24 or 32 bytes
    run_bootstrap(cluster, rendered["default"])
    assert base64.b64decode(cluster.find("Secret", "mlflow-proxy", "vinspect")["data"]["session_secret"]) == cookie


@pytest.fixture
def token_checking_server():
    """A real HTTP server that, like oauth-proxy's delegate URLs, answers 401 without the bearer token."""
    import json
    import secrets
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    token = secrets.token_urlsafe(32)
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _answer(self):
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            seen.append(self.headers.get("Authorization") or "")
            if self.headers.get("Authorization") != f"Bearer {token}":
                body, status = b"Unauthorized", 401
            else:
                body, status = json.dumps({"experiments": [], "next_page_token": ""}).encode(), 200
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", token, seen
    finally:
        server.shutdown()
        server.server_close()


def test_mlflow_client_sends_the_token_read_from_the_service_account_file(token_checking_server, tmp_path, monkeypatch):
    """What the pipeline steps do: MLflow's `kubernetes` auth reads the pod's token file per request."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking.request_auth import kubernetes_request_auth_provider as k8s_auth

    from vinspect.settings import MLflowSettings

    url, token, seen = token_checking_server
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    # The pod's path (/var/run/secrets/kubernetes.io/serviceaccount/token) cannot be written here.
    monkeypatch.setattr(k8s_auth, "_SERVICE_ACCOUNT_TOKEN_PATH", token_file)
    monkeypatch.setattr(k8s_auth, "_file_cache", None)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.delenv("MLFLOW_TRACKING_TOKEN", raising=False)

    monkeypatch.delenv("MLFLOW_TRACKING_AUTH", raising=False)
    with pytest.raises(MlflowException):
        MLflowSettings.from_env(MLFLOW_TRACKING_URI=url).client().search_experiments()
    assert seen[-1] == ""

    monkeypatch.setenv("MLFLOW_TRACKING_AUTH", "kubernetes")
    settings = MLflowSettings.from_env(MLFLOW_TRACKING_URI=url)
    assert settings.auth == "kubernetes"
    assert settings.client().search_experiments() == []
    assert seen[-1] == f"Bearer {token}"


# ----------------------------------------------------------------------------------------------
# The data-science workbench of the original procedure


def test_workbench_is_a_dashboard_notebook_with_a_gpu_and_storage(rendered):
    objects = rendered["gpu"]
    notebook = find(objects, "Notebook", "vinspect-workbench")
    meta = notebook["metadata"]
    assert meta["namespace"] == "vinspect"
    assert (
        meta["labels"]["opendatahub.io/dashboard"] == "true" and meta["labels"]["opendatahub.io/odh-managed"] == "true"
    )
    assert meta["annotations"]["notebooks.opendatahub.io/inject-oauth"] == "true"
    pod = notebook["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["name"] == meta["name"]
    # The image is the platform's image stream the dashboard records as last-image-selection.
    stream = meta["annotations"]["notebooks.opendatahub.io/last-image-selection"]
    assert container["image"].endswith("/redhat-ods-applications/" + stream)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    base_url = f"--ServerApp.base_url=/notebook/{meta['namespace']}/{meta['name']}"
    assert base_url in container["env"][0]["value"]
    claim = next(v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v)
    pvc = find(objects, "PersistentVolumeClaim", claim)
    assert pvc["metadata"]["labels"]["opendatahub.io/dashboard"] == "true"
    assert {"secretRef": {"name": "aws-connection-models"}} in container["envFrom"]
    # It needs a GPU node: part of the optional GPU install, never of the CPU-only default.
    assert meta["annotations"]["vinspect.io/optional"] == "gpu"
    assert not [o for o in rendered["default"] if o["kind"] == "Notebook"]


def test_bootstrap_creates_the_workbench_once_the_notebook_crd_is_served(rendered):
    cluster = FakeCluster(delay=DELAY)
    run_bootstrap(cluster, rendered["gpu"])
    assert cluster.find("Notebook", "vinspect-workbench", "vinspect") is not None
    # In the GPU part's phases: after NFD and the GPU operator are ready.
    assert (
        cluster.first("create", "Notebook vinspect/vinspect-workbench")
        >= cluster.first("create", "NodeFeatureDiscovery openshift-nfd/nfd-instance") + DELAY
    )
