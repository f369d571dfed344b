"""The bootstrap against a fake OpenShift API that keeps the real API's semantics."""

from __future__ import annotations

import base64

import pytest

from infra.bootstrap import (
    PHASES,
    BootstrapError,
    Bootstrapper,
    BootstrapTimeout,
    crd_name,
    format_plan,
    plan,
    plural,
)
from infra.validate import is_known_default
from tests.fake_kube import FakeCluster
from tests.infra.conftest import run_bootstrap, secret_values

DELAY = 3.0


@pytest.fixture(scope="module")
def objects(rendered) -> list[dict]:
    return rendered["gpu"]


def test_plural_and_crd_names():
    assert plural("NodeFeatureDiscovery") == "nodefeaturediscoveries"
    assert plural("ClusterPolicy") == "clusterpolicies"
    assert plural("Kafka") == "kafkas"
    assert crd_name("kafka.strimzi.io/v1beta2", "KafkaTopic") == "kafkatopics.kafka.strimzi.io"
    assert crd_name("apps/v1", "Deployment") is None
    assert crd_name("route.openshift.io/v1", "Route") is None


def test_plan_orders_phases_and_never_shows_secret_values(objects):
    phases = plan(objects)
    assert [p.name for p in phases if p.optional is None] == [name for name, _ in PHASES]
    # Optional parts come last, in their own phases (the same order within each part).
    assert [p.optional for p in phases][-10:] == ["cvat"] * 5 + ["gpu"] * 5
    where = {step.ref: p.name for p in phases for step in p.steps if step.action == "apply"}
    assert where["Namespace vinspect"] == "namespaces"
    assert where["Subscription redhat-ods-operator/rhods-operator"] == "operators"
    assert where["Kafka vinspect/vinspect"] == "platform"
    assert where["Deployment vinspect/minio"] == "services"
    assert where["Job vinspect/minio-buckets"] == "storage-init"
    assert where["Service vinspect/image-processor"] == "eventing"  # the Knative one
    assert where["Service vinspect/dashboard"] == "config"  # the core one
    assert where["Trigger vinspect/results-to-dashboard"] == "triggers"
    text = format_plan(phases)
    assert "generate Secret vinspect/minio-root [MINIO_ROOT_PASSWORD, MINIO_ROOT_USER]" in text
    assert "CRD kafkatopics.kafka.strimzi.io Established; Ready=True" in text
    assert "Subscription openshift-serverless/serverless-operator" in text and "CSV Succeeded" in text
    # The plan carries no credential: generated Secrets are placeholders until the cluster run.
    generated = {step.ref: step.obj["data"] for phase in phases for step in phase.steps if step.action == "generate"}
    assert base64.b64decode(generated["Secret vinspect/minio-root"]["MINIO_ROOT_PASSWORD"]) == b""
    assert base64.b64decode(generated["Secret vinspect-models/aws-connection-models"]["AWS_SECRET_ACCESS_KEY"]) == b""
    assert base64.b64decode(generated["Secret vinspect/cvat-admin"]["CVAT_PASSWORD"]) == b""


def test_bootstrap_applies_in_dependency_order_and_waits(objects):
    cluster = FakeCluster(delay=DELAY)
    report = run_bootstrap(cluster, objects)

    # Every object exists, CRs included (their CRDs had to become Established first).
    for obj in objects:
        assert cluster.find(obj["kind"], obj["metadata"]["name"], obj["metadata"].get("namespace")) is not None
    # + 9 generated Secrets (Minio, CVAT, MLflow's proxy, the data connection twice, the runtime's four
    # Minio users: processor, dashboard, camera, review push), - 2 objects the cluster already has
    # and that are patched (image registry Config, the operator's DSCInitialization).
    assert report.count("created") == len(objects) + 7
    t = cluster.first
    # Operators: the instance is created only after its operator's CSV succeeded and its CRD appeared.
    assert (
        t("create", "DataScienceCluster default-dsc")
        >= t("create", "Subscription redhat-ods-operator/rhods-operator") + 2 * DELAY
    )
    assert (
        t("crd", "CustomResourceDefinition servingruntimes.serving.kserve.io")
        >= t("create", "DataScienceCluster default-dsc") + DELAY
    )
    assert (
        t("create", "ServingRuntime vinspect-models/kserve-ovms")
        >= t("crd", "CustomResourceDefinition servingruntimes.serving.kserve.io") + DELAY
    )
    # Secrets before what reads them; buckets only once Minio is available; DSPA after the buckets.
    assert cluster.index("create", "Secret vinspect/minio-root") < cluster.index(
        "create", "Secret vinspect/aws-connection-models"
    )
    assert cluster.index("create", "Secret vinspect/aws-connection-models") < cluster.index(
        "create", "Deployment vinspect/minio"
    )
    assert t("create", "Job vinspect/minio-buckets") >= t("create", "Deployment vinspect/minio") + DELAY
    assert (
        t("create", "DataSciencePipelinesApplication vinspect/dspa")
        >= t("create", "Job vinspect/minio-buckets") + DELAY
    )
    # Images are built before the workloads that run them.
    assert sorted(cluster.builds) == sorted(
        f"vinspect-{n}-1" for n in ("camera", "dashboard", "mlflow", "modelserver", "pipeline", "processor")
    )
    assert t("create", "Deployment vinspect/dashboard") >= t("build", "Build vinspect/vinspect-dashboard-1") + DELAY
    # Eventing: KnativeKafka ready before the KafkaSource; the processor ready before its Triggers.
    assert (
        t("create", "KafkaSource vinspect/visual-inspection-images")
        >= t("create", "KnativeKafka knative-eventing/knative-kafka") + 2 * DELAY
    )
    assert (
        t("create", "Trigger vinspect/images-to-processor") >= t("create", "Service vinspect/image-processor") + DELAY
    )
    # GPU: the ClusterPolicy after NFD is available.
    assert (
        t("create", "ClusterPolicy gpu-cluster-policy")
        >= t("create", "NodeFeatureDiscovery openshift-nfd/nfd-instance") + DELAY
    )
    # The image registry Config existed already (409): patched to Managed, not recreated.
    assert cluster.find("Config", "cluster")["spec"]["managementState"] == "Managed"
    assert ("Config cluster") in [r for _, v, r in cluster.events if v == "patch"]


def test_generated_credentials_and_data_connection(objects):
    cluster = FakeCluster(delay=DELAY)
    run_bootstrap(cluster, objects)
    minio = secret_values(cluster, "minio-root", "vinspect")
    assert 12 <= len(minio["MINIO_ROOT_USER"]) <= 20 and 32 <= len(minio["MINIO_ROOT_PASSWORD"]) <= 40
    assert not is_known_default(minio["MINIO_ROOT_PASSWORD"]) and not is_known_default(minio["MINIO_ROOT_USER"])
    for namespace in ("vinspect", "vinspect-models"):
        conn = cluster.find("Secret", "aws-connection-models", namespace)
        assert conn["metadata"]["annotations"]["opendatahub.io/connection-type"] == "s3"
        assert conn["metadata"]["labels"]["opendatahub.io/dashboard"] == "true"
        values = secret_values(cluster, "aws-connection-models", namespace)
        assert values == {
            "AWS_ACCESS_KEY_ID": minio["MINIO_ROOT_USER"],
            "AWS_SECRET_ACCESS_KEY": minio["MINIO_ROOT_PASSWORD"],
            "AWS_S3_ENDPOINT": "http://minio.vinspect.svc.cluster.local:9000",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_S3_BUCKET": "models",
        }
    cvat = secret_values(cluster, "cvat-admin", "vinspect")
    assert cvat["CVAT_HOST"] == "cvat-vinspect.apps.example.test"
    assert cvat["CVAT_URL"] == "http://cvat.vinspect.svc.cluster.local:8080" and len(cvat["CVAT_PASSWORD"]) >= 32
    # Two clusters never share credentials.
    other = FakeCluster(delay=DELAY)
    run_bootstrap(other, objects)
    assert secret_values(other, "minio-root", "vinspect") != minio


def test_second_run_changes_nothing(objects):
    cluster = FakeCluster(delay=DELAY)
    run_bootstrap(cluster, objects)
    before_events = len(cluster.events)
    minio = secret_values(cluster, "minio-root", "vinspect")
    cvat = secret_values(cluster, "cvat-admin", "vinspect")

    report = run_bootstrap(cluster, objects)
    assert report.count("created") == 0
    new = cluster.events[before_events:]
    # Not even a patch request (one the server would turn into a no-op).
    assert [e for e in new if e[1] in ("create", "patch", "patch-request", "build")] == []
    assert secret_values(cluster, "minio-root", "vinspect") == minio  # never rotated
    assert secret_values(cluster, "cvat-admin", "vinspect") == cvat
    outcomes = {outcome for _, _, outcome in report.results}
    assert outcomes == {"unchanged", "unchanged (image present)"}


def test_a_drifted_object_is_patched_back(objects):
    cluster = FakeCluster(delay=DELAY)
    run_bootstrap(cluster, objects)
    cluster.find("ConfigMap", "vinspect-runtime", "vinspect")["data"]["VINSPECT_MODEL_NAME"] = "someone-else"
    run_bootstrap(cluster, objects)
    assert cluster.find("ConfigMap", "vinspect-runtime", "vinspect")["data"]["VINSPECT_MODEL_NAME"] == "metal-nut"
    assert any(v == "patch" and r == "ConfigMap vinspect/vinspect-runtime" for _, v, r in cluster.events)


def test_timeout_names_the_object_and_its_last_status(objects):
    cluster = FakeCluster(delay=DELAY, stuck={"Service image-processor"})
    with pytest.raises(BootstrapTimeout) as err:
        run_bootstrap(cluster, objects, timeout=30)
    message = str(err.value)
    assert "timed out after 30s waiting for Service vinspect/image-processor to be Ready=True" in message
    assert "last status: Ready=False (RevisionMissing Configuration is waiting for a Revision" in message
    # Nothing after the stuck phase was applied.
    assert cluster.find("Trigger", "images-to-processor", "vinspect") is None


def test_timeout_on_an_operator_names_its_csv(objects):
    cluster = FakeCluster(delay=DELAY, stuck={"Subscription rhods-operator"})
    with pytest.raises(
        BootstrapTimeout,
        match=r"Subscription redhat-ods-operator/rhods-operator to be installed "
        r"\(CSV Succeeded\); last status: CSV rhods-operator.v1.0.0 phase Installing: waiting for",
    ):
        run_bootstrap(cluster, objects, timeout=20)


def test_a_missing_crd_is_waited_for_then_named():
    cluster = FakeCluster(delay=DELAY)
    objects = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"}},
        {
            "apiVersion": "eventing.knative.dev/v1",
            "kind": "Broker",
            "metadata": {"name": "default", "namespace": "demo"},
        },
    ]
    with pytest.raises(
        BootstrapTimeout,
        match=r"CustomResourceDefinition brokers.eventing.knative.dev to be "
        r"Established \(serving Broker\); last status: not found",
    ):
        run_bootstrap(cluster, objects, timeout=15)
    assert cluster.now >= 15


def test_a_failed_job_stops_at_once(objects):
    cluster = FakeCluster(delay=DELAY, failing={"Job minio-buckets"})
    with pytest.raises(BootstrapError, match=r"Job vinspect/minio-buckets failed: Failed=True \(BackoffLimitExceeded"):
        run_bootstrap(cluster, objects, timeout=600)
    assert cluster.now < cluster.first("create", "Job vinspect/minio-buckets") + 60


def test_a_failed_build_stops_at_once(objects):
    cluster = FakeCluster(delay=DELAY, failing={"Build vinspect-processor-1"})
    with pytest.raises(BootstrapError, match=r"Build vinspect/vinspect-processor-1 failed: Docker build strategy"):
        run_bootstrap(cluster, objects)


def test_builds_can_be_skipped(objects):
    cluster = FakeCluster(delay=DELAY)
    report = run_bootstrap(cluster, objects, builder=None)
    assert cluster.builds == []
    assert report.count("skipped (no builder)") == 6


def test_api_errors_name_the_object():
    cluster = FakeCluster(delay=DELAY)
    objects = [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "missing-ns"}}]
    with pytest.raises(
        BootstrapError, match=r"ConfigMap missing-ns/c: create failed: namespaces \"missing-ns\" not found"
    ):
        Bootstrapper(cluster, clock=cluster.clock, sleep=cluster.sleep).run(plan(objects))
