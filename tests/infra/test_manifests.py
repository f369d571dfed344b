"""The kustomize overlays render, validate against the upstream schemas, and say what they should."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from infra.render import MANIFESTS_DIR, RenderError, list_overlays, render
from infra.validate import (
    SchemasMissingError,
    SchemaStore,
    crd_schemas_dir,
    find_literal_credentials,
    validate_objects,
)
from tests.conftest import SHARED
from tests.infra.conftest import find

KAFKA_DEFAULT_MAX_MESSAGE_BYTES = 1048588  # Kafka's broker default message.max.bytes


def test_the_overlays_are_there():
    assert {"default", "gpu", "sno"} <= set(list_overlays())


# Ids say "overlay-..." because the root conftest skips tests whose keywords contain "gpu".
@pytest.mark.parametrize("overlay", ["default", "gpu", "sno"], ids=lambda o: f"overlay-{o}")
def test_every_rendered_object_validates(rendered, store, overlay):
    objects = rendered[overlay]
    assert len(objects) > 50
    issues = validate_objects(objects, store)
    assert issues == [], "\n".join(map(str, issues))


def test_unknown_overlay_is_refused_by_name(kubectl):
    with pytest.raises(RenderError, match=r"unknown overlay 'nope'.*default"):
        render("nope")


def test_default_overlay_covers_the_original_procedure(rendered):
    objects = rendered["default"]
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objects}
    for wanted in [
        ("Subscription", "rhods-operator"),
        ("Subscription", "serverless-operator"),
        ("Subscription", "amq-streams"),
        ("DataScienceCluster", "default-dsc"),
        ("DataSciencePipelinesApplication", "dspa"),
        ("Config", "cluster"),
        ("PersistentVolumeClaim", "image-registry-storage"),
        ("Deployment", "minio"),
        ("Route", "minio-api"),
        ("Job", "minio-buckets"),
        ("Deployment", "mlflow"),
        ("KafkaNodePool", "dual-role"),
        ("Kafka", "vinspect"),
        ("KafkaTopic", "visual-inspection-images"),
        ("KnativeServing", "knative-serving"),
        ("KnativeEventing", "knative-eventing"),
        ("KnativeKafka", "knative-kafka"),
        ("Service", "image-processor"),
        ("KafkaSource", "visual-inspection-images"),
        ("Broker", "default"),
        ("Trigger", "images-to-processor"),
        ("Trigger", "results-to-dashboard"),
        ("Deployment", "dashboard"),
        ("Route", "dashboard"),
        ("NetworkPolicy", "allow-vinspect-to-models"),
        ("ServingRuntime", "kserve-ovms"),
        ("VirtualMachine", "cvat"),
        ("Service", "cvat"),
        ("Route", "cvat"),
    ]:
        assert wanted in kinds, f"{wanted} missing from the default overlay"
    for image in ("pipeline", "processor", "camera", "dashboard"):
        assert ("BuildConfig", f"vinspect-{image}") in kinds and ("ImageStream", f"vinspect-{image}") in kinds
    # GPU node preparation only where asked for.
    assert not any(o["kind"] in ("NodeFeatureDiscovery", "ClusterPolicy") for o in objects)
    gpu_kinds = {o["kind"] for o in rendered["gpu"]}
    assert {"NodeFeatureDiscovery", "ClusterPolicy"} <= gpu_kinds


def test_knative_kafka_enables_broker_channel_sink_and_source(rendered):
    spec = find(rendered["default"], "KnativeKafka", "knative-kafka")["spec"]
    assert all(spec[part]["enabled"] is True for part in ("broker", "channel", "sink", "source"))


def test_triggers_route_images_to_processor_and_results_to_dashboard(rendered):
    objects = rendered["default"]
    images = find(objects, "Trigger", "images-to-processor")["spec"]
    assert images["filter"]["attributes"]["type"] == "io.vinspect.image.captured"
    assert images["subscriber"]["ref"] == {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "name": "image-processor",
    }
    results = find(objects, "Trigger", "results-to-dashboard")["spec"]
    assert results["filter"]["attributes"]["type"] == "io.vinspect.inspection.result"
    assert results["subscriber"]["ref"]["name"] == "dashboard"
    source = find(objects, "KafkaSource", "visual-inspection-images")["spec"]
    assert source["topics"] == ["visual-inspection-images"] and source["sink"]["ref"]["kind"] == "Broker"


def test_event_types_match_the_runtime(rendered):
    from serving.events import IMAGE_EVENT_TYPE, KNATIVE_KAFKA_EVENT_TYPE, RESULT_EVENT_TYPE

    types = {
        t["metadata"]["name"]: t["spec"]["filter"]["attributes"]["type"]
        for t in rendered["default"]
        if t["kind"] == "Trigger"
    }
    assert types["images-to-processor"] == IMAGE_EVENT_TYPE
    assert types["legacy-images-to-processor"] == KNATIVE_KAFKA_EVENT_TYPE
    assert types["results-to-dashboard"] == types["results-to-topic"] == RESULT_EVENT_TYPE


def test_image_topics_are_sized_for_jpeg_frames(rendered):
    objects = rendered["default"]
    images = find(objects, "KafkaTopic", "visual-inspection-images")["spec"]
    # A 200 KB frame fits the default; a full-resolution frame does not: the limit is raised.
    assert int(images["config"]["max.message.bytes"]) >= 4 * KAFKA_DEFAULT_MAX_MESSAGE_BYTES - 4 * 12
    # The Broker stores image events too: its topic must be as large, and it must use it.
    broker = find(objects, "Broker", "default")
    topic = broker["metadata"]["annotations"]["kafka.eventing.knative.dev/external.topic"]
    assert (
        find(objects, "KafkaTopic", topic)["spec"]["config"]["max.message.bytes"]
        == images["config"]["max.message.bytes"]
    )
    # Every KafkaSource consumer gets a partition; cameras (record keys) spread over them.
    consumers = find(objects, "KafkaSource", "visual-inspection-images")["spec"]["consumers"]
    assert images["partitions"] >= consumers > 1


def test_processor_takes_endpoints_from_config_and_credentials_from_secrets(rendered):
    objects = rendered["default"]
    ksvc = find(objects, "Service", "image-processor", api_prefix="serving.knative.dev")
    container = ksvc["spec"]["template"]["spec"]["containers"][0]
    assert any(src.get("configMapRef", {}).get("name") == "vinspect-runtime" for src in container["envFrom"])
    for env in container["env"]:
        assert "value" not in env, f"literal env {env['name']} in the processor"
        assert "secretKeyRef" in env["valueFrom"]
    config = find(objects, "ConfigMap", "vinspect-runtime")["data"]
    # The InferenceService's v2 base URL: RawDeployment predictor Service in the models project,
    # on OVMS's REST port (headless or headed: tests/infra/test_addressing.py).
    from components.rollout.render import service_name

    name = service_name(config["VINSPECT_MODEL_NAME"])
    assert config["VINSPECT_MODEL_URL"] == f"http://{name}-predictor.vinspect-models.svc.cluster.local:8888"


def test_serving_runtime_matches_what_the_rollout_renders(rendered):
    from components.rollout.render import render_serving_runtime

    manifest = find(rendered["default"], "ServingRuntime", "kserve-ovms")
    expected = render_serving_runtime(namespace="vinspect-models")
    assert manifest["metadata"]["namespace"] == expected["metadata"]["namespace"]
    assert manifest["spec"] == expected["spec"]


def test_models_project_admits_the_app_project_on_the_rest_and_auth_ports(rendered):
    # Which pods of vinspect get in is proven by tests/infra/test_connectivity.py; here the ports:
    # OVMS REST and the auth proxy that token authentication puts in front of it.
    policy = find(rendered["default"], "NetworkPolicy", "allow-vinspect-to-models")
    assert policy["metadata"]["namespace"] == "vinspect-models"
    rule = policy["spec"]["ingress"][0]
    assert all(
        peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "vinspect"} for peer in rule["from"]
    )
    assert rule["ports"] == [{"protocol": "TCP", "port": 8888}, {"protocol": "TCP", "port": 8443}]


def test_operator_namespaces_are_monitored_by_the_platform(rendered):
    # Namespaces holding an operator (an OperatorGroup) or its operands carry OpenShift's
    # cluster-monitoring label, so the platform Prometheus scrapes their ServiceMonitors.
    objects = rendered["gpu"]
    operator_namespaces = {o["metadata"]["namespace"] for o in objects if o["kind"] == "OperatorGroup"}
    operator_namespaces |= {"knative-serving", "knative-eventing"}
    for ns in (o for o in objects if o["kind"] == "Namespace"):
        labels = ns["metadata"].get("labels") or {}
        name = ns["metadata"]["name"]
        if name in operator_namespaces:
            assert labels.get("openshift.io/cluster-monitoring") == "true", name
        else:  # user projects belong to user-workload monitoring, which skips labelled namespaces
            assert "openshift.io/cluster-monitoring" not in labels, name


def test_sno_overlay_drops_replication_to_one(rendered):
    objects = rendered["sno"]
    assert find(objects, "KafkaNodePool", "dual-role")["spec"]["replicas"] == 1
    assert all(o["spec"]["replicas"] == 1 for o in objects if o["kind"] == "KafkaTopic")
    assert all(o["spec"]["config"]["min.insync.replicas"] == 1 for o in objects if o["kind"] == "KafkaTopic")
    assert find(objects, "KnativeKafka", "knative-kafka")["spec"]["broker"]["defaultConfig"]["replicationFactor"] == 1
    # Everything else is the default overlay's.
    assert len(objects) == len(rendered["default"])


def test_no_secret_in_any_overlay_carries_a_literal_credential(rendered):
    for overlay, objects in rendered.items():
        assert find_literal_credentials(objects) == [], overlay
        for obj in objects:
            assert not (obj["kind"] == "Secret" and (obj.get("data") or obj.get("stringData"))), overlay


def test_literal_credentials_are_caught():
    objects = [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "minio", "namespace": "x"},
            "stringData": {"MINIO_ROOT_PASSWORD": "s3cr3t-value"},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "app", "namespace": "x"},
            "spec": {
                "template": {
                    "spec": {
                        "containers": [
                            {
                                "name": "c",
                                "env": [
                                    {"name": "AWS_SECRET_ACCESS_KEY", "value": "abc"},
                                    {"name": "LOG_LEVEL", "value": "info"},
                                ],
                            }
                        ]
                    }
                }
            },
        },
    ]
    issues = [str(i) for i in find_literal_credentials(objects)]
    assert any("Secret x/minio at stringData" in i and "MINIO_ROOT_PASSWORD" in i for i in issues)
    assert any(
        "Deployment x/app at spec.template.spec.containers[0].env[0].value" in i and "AWS_SECRET_ACCESS_KEY" in i
        for i in issues
    )
    assert not any("LOG_LEVEL" in i for i in issues)


def test_the_well_known_minio_default_is_caught_anywhere():
    """The default the design forbids by name is read from there, not written into this repo."""
    design = SHARED / "DESIGN.md"
    if not design.is_file():
        pytest.skip(f"{design} not found (the shared folder holds the design that names the default)")
    found = re.search(r"never `minio/(\w+)`", design.read_text())
    assert found, f"{design} no longer names the forbidden Minio default"
    default = found.group(1)
    objects = [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "cfg", "namespace": "x"},
            "data": {"url": f"http://minio:{default}@minio:9000"},
        }
    ]
    issues = [str(i) for i in find_literal_credentials(objects)]
    assert any("ConfigMap x/cfg" in i and "well-known default" in i for i in issues), issues
    assert not find_literal_credentials([{**objects[0], "data": {"url": "http://minio:9000"}}])


def test_a_broken_manifest_fails_naming_object_and_field(tmp_path, kubectl, store):
    tree = tmp_path / "manifests"
    shutil.copytree(MANIFESTS_DIR, tree)
    topics = tree / "base" / "kafka" / "topics.yaml"
    text = topics.read_text()
    assert "  partitions: 6\n" in text
    topics.write_text(text.replace("  partitions: 6\n", "  partitions: six\n", 1))
    dashboard = tree / "base" / "app" / "dashboard.yaml"
    dashboard.write_text(dashboard.read_text().replace("replicas: 1", "replica: 1", 1))

    issues = [str(i) for i in validate_objects(render("default", overlays_dir=tree / "overlays"), store)]
    assert "KafkaTopic vinspect/visual-inspection-images at spec.partitions: 'six' is not of type 'integer'" in issues
    assert any(
        i.startswith("Deployment vinspect/dashboard at spec:") and "'replica' was unexpected" in i for i in issues
    )
    assert len(issues) == 2, issues


def test_an_unknown_kind_fails(store):
    widget = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w", "namespace": "x"}}
    [issue] = store.validate_object(widget)
    assert issue.obj == "Widget x/w" and "no schema for Widget example.com/v1" in issue.message
    # A known kind at an API version nobody serves is just as unknown.
    [issue] = store.validate_object({**widget, "apiVersion": "kafka.strimzi.io/v9", "kind": "KafkaTopic"})
    assert "no schema for KafkaTopic kafka.strimzi.io/v9" in issue.message


def test_open_upstream_schemas_are_closed_where_fields_are_documented(store):
    trigger = {
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Trigger",
        "metadata": {"name": "t", "namespace": "x"},
        "spec": {"broker": "default", "subscriber": {"uri": "http://x"}, "filterz": {}},
    }
    issues = [str(i) for i in store.validate_object(trigger)]
    assert issues == ["Trigger x/t at spec: Additional properties are not allowed ('filterz' was unexpected)"]


def test_invalid_names_and_core_kinds_are_caught(store):
    bad = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "Not_A_Name", "namespace": "x", "labels": {"n": 1}},
        "data": {"k": 2},
    }
    issues = [str(i) for i in store.validate_object(bad)]
    assert "ConfigMap x/Not_A_Name at metadata.name: 'Not_A_Name' is not a valid DNS subdomain name" in issues
    assert any("metadata.labels.n" in i for i in issues)
    assert any(i.startswith("ConfigMap x/Not_A_Name at data.k:") for i in issues)


def test_missing_schemas_folder_gives_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("VINSPECT_SHARED_DIR", str(tmp_path))
    with pytest.raises(SchemasMissingError, match=r"CRD schemas folder not found: .*schemas/crds.*VINSPECT_SHARED_DIR"):
        crd_schemas_dir()
    with pytest.raises(SchemasMissingError):
        SchemaStore(Path(tmp_path) / "nowhere")


def test_supplementary_schemas_do_not_shadow_shared_ones(store):
    # A local subset for a kind the shared folder now carries would be ignored: it must go.
    assert store.shadowed == []
    local = {
        key
        for key, (source, _) in store._crd_schemas.items()
        if source.endswith(".yaml") and (Path(__file__).resolve().parents[2] / "infra" / "schemas" / source).is_file()
    }
    assert {kind for _, kind in local} == {
        "DataScienceCluster",
        "DSCInitialization",
        "Config",
        "VirtualMachine",
        "HyperConverged",
        "Notebook",
        "PodMonitor",
        "PrometheusRule",
    }


def test_cvat_vm_cloud_init_installs_cvat_and_reads_credentials_from_the_secret_disk(rendered, tmp_path):
    import subprocess

    import yaml

    vm = find(rendered["default"], "VirtualMachine", "cvat")
    spec = vm["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["cvat-admin"]["secret"] == {"secretName": "cvat-admin"}
    serials = {d["name"]: d.get("serial") for d in spec["domain"]["devices"]["disks"]}
    user_data = volumes["cloudinitdisk"]["cloudInitNoCloud"]["userData"]
    assert user_data.startswith("#cloud-config\n")
    config = yaml.safe_load(user_data)
    [script] = [f for f in config["write_files"] if f["path"] == "/usr/local/sbin/cvat-install"]
    assert config["runcmd"] == [["/usr/local/sbin/cvat-install"]]
    body = script["content"]
    assert f'$2 == "{serials["cvat-admin"]}"' in body  # the disk is found by the serial the VM gives it
    for key in ("CVAT_HOST", "CVAT_USERNAME", "CVAT_PASSWORD"):
        assert f"/run/cvat-admin/{key}" in body
    assert "docker compose up -d" in body and "createsuperuser --no-input" in body
    path = tmp_path / "cvat-install"
    path.write_text(body)
    check = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    # The Service reaches the VM's pod on the port CVAT's proxy listens on.
    service = find(rendered["default"], "Service", "cvat")
    assert service["spec"]["selector"].items() <= vm["spec"]["template"]["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["targetPort"] == 8080


def test_bucket_job_creates_every_bucket_the_stack_uses(rendered, tmp_path):
    import subprocess

    job = find(rendered["default"], "Job", "minio-buckets")
    script = job["spec"]["template"]["spec"]["containers"][0]["args"][0]
    for bucket in ("models", "mlflow", "pipelines", "vinspect-data"):
        assert bucket in script
    (tmp_path / "buckets.sh").write_text(script)
    assert subprocess.run(["sh", "-n", str(tmp_path / "buckets.sh")]).returncode == 0
    dspa = find(rendered["default"], "DataSciencePipelinesApplication", "dspa")["spec"]["objectStorage"][
        "externalStorage"
    ]
    assert dspa["bucket"] in script and dspa["s3CredentialsSecret"]["secretName"] == "aws-connection-models"
