"""Every in-cluster address reaches a Service port that listens, however OpenShift AI builds
the predictor Service (headless or headed, auth proxy on or off).

Secrets are taken as the bootstrap generates them, from a bootstrap run against the fake API.
"""

from __future__ import annotations

import copy

import pytest

from infra.addressing import (
    PREDICTOR_VARIANTS,
    Address,
    check,
    check_overlay,
    check_service_backends,
    declared_services,
    find_addresses,
    generated_services,
    model_predictors,
    predictor_service,
)
from infra.render import list_overlays
from tests.fake_kube import FakeCluster
from tests.infra.conftest import find, run_bootstrap


@pytest.fixture(scope="module")
def generated_secrets(rendered) -> list[dict]:
    cluster = FakeCluster(delay=1.0)
    run_bootstrap(cluster, rendered["gpu"])
    return [copy.deepcopy(o) for o in cluster.objects.values() if o.get("kind") == "Secret"]


# Ids say "overlay-..." because the root conftest skips tests whose keywords contain "gpu".
@pytest.mark.parametrize("overlay", list_overlays(), ids=lambda o: f"overlay-{o}")
def test_every_address_reaches_a_listening_port(rendered, generated_secrets, overlay):
    problems = check_overlay(rendered[overlay], generated_secrets)
    assert problems == [], "\n".join(map(str, problems))


@pytest.mark.parametrize("overlay", list_overlays(), ids=lambda o: f"overlay-{o}")
def test_every_service_has_pods_listening_on_its_target_ports(rendered, overlay):
    assert check_service_backends(rendered[overlay]) == []


def test_a_service_pointing_at_no_port_is_reported(rendered):
    objects = copy.deepcopy(rendered["default"])
    find(objects, "Service", "dashboard")["spec"]["ports"][0]["targetPort"] = "web"
    find(objects, "Service", "mlflow")["spec"]["selector"] = {"app.kubernetes.io/name": "mlfow"}
    problems = check_service_backends(objects)
    assert any("Service vinspect/dashboard port 80: target 'web'" in p for p in problems)
    assert any("Service vinspect/mlflow: selector" in p for p in problems)


def test_the_check_sees_the_addresses_that_matter(rendered, generated_secrets):
    values = {a.where.split(" ", 2)[-1]: a.value for a in find_addresses(rendered["default"], generated_secrets)}
    assert values["data.VINSPECT_MODEL_URL"].endswith(".svc.cluster.local:8888")
    assert "data.MLFLOW_TRACKING_URI" in values and "data.AWS_S3_ENDPOINT" in values
    assert "spec.objectStorage.externalStorage" in values and "spec.bootstrapServers" in values


def test_a_model_url_without_port_fails_on_a_headless_predictor(rendered):
    # What the ConfigMap held before: no port. KServe's headless Service gives pod IPs, and OVMS
    # does not listen on 80, so the check must refuse it (and accept it on a headed Service).
    objects = copy.deepcopy(rendered["default"])
    config = find(objects, "ConfigMap", "vinspect-runtime")
    config["data"]["VINSPECT_MODEL_URL"] = "http://metal-nut-predictor.vinspect-models.svc.cluster.local"
    problems = check_overlay(objects)
    variants = {p.variant for p in problems if "VINSPECT_MODEL_URL" in p.address.where}
    assert "predictor Headless, auth off" in variants
    assert "predictor Headed, auth off" not in variants


def test_rest_port_first_would_hide_8888_behind_a_headed_service(rendered):
    # The old runtime declared only 8888: headed, KServe publishes it as port 80 only.
    runtime = copy.deepcopy(find(rendered["default"], "ServingRuntime", "kserve-ovms"))
    runtime["spec"]["containers"][0]["ports"] = [{"containerPort": 8888, "protocol": "TCP"}]
    assert predictor_service(runtime, "m", "ns", "Headed", False).ports == {80}
    assert predictor_service(runtime, "m", "ns", "Headless", False).ports == {8888}
    ours = find(rendered["default"], "ServingRuntime", "kserve-ovms")
    for mode, auth in PREDICTOR_VARIANTS:
        assert 8888 in predictor_service(ours, "m", "ns", mode, auth).ports, (mode, auth)


def test_predictor_service_mirrors_kserve_and_the_auth_proxy(rendered):
    runtime = find(rendered["default"], "ServingRuntime", "kserve-ovms")
    assert predictor_service(runtime, "m", "ns", "Headed", False).ports == {80, 8888}
    assert predictor_service(runtime, "m", "ns", "Headed", True).ports == {443, 8888}
    assert predictor_service(runtime, "m", "ns", "Headless", True).ports == {8001, 8888, 8443}


def test_unknown_service_and_wrong_port_are_named(rendered):
    objects = rendered["default"]
    services = declared_services(objects) + generated_services(objects) + model_predictors(objects, "Headless", False)
    problems = check(
        [
            Address("ConfigMap x/y data.A", "http://nope.vinspect.svc:80", "vinspect"),
            Address("ConfigMap x/y data.B", "http://mlflow.vinspect.svc.cluster.local:5001", "vinspect"),
            Address("ConfigMap x/y data.C", "https://example.com", "vinspect"),
        ],
        services,
    )
    assert [p.address.value for p in problems] == [
        "http://nope.vinspect.svc:80",
        "http://mlflow.vinspect.svc.cluster.local:5001",
    ]
    assert "no Service vinspect/nope" in problems[0].reason
    assert "answers on [8443], not 5001" in problems[1].reason


@pytest.mark.parametrize(
    "uri, reason",
    [
        ("http://mlflow.vinspect.svc.cluster.local:5000", "answers on [8443], not 5000"),
        ("http://mlflow.vinspect.svc.cluster.local:8443", "port 8443 speaks TLS: use https://"),
        ("https://mlflow.vinspect.svc.cluster.local", "answers on [8443], not 443"),
    ],
)
def test_mlflow_is_addressed_through_its_tls_proxy_only(rendered, uri, reason):
    # MLflow listens on 127.0.0.1:5000 behind the OAuth proxy (Service mlflow, port https 8443):
    # the pre-proxy URL, plain http to the proxy, or the default https port must all be refused.
    objects = copy.deepcopy(rendered["default"])
    assert (
        find(objects, "ConfigMap", "vinspect-runtime")["data"]["MLFLOW_TRACKING_URI"]
        == "https://mlflow.vinspect.svc.cluster.local:8443"
    )
    find(objects, "ConfigMap", "vinspect-runtime")["data"]["MLFLOW_TRACKING_URI"] = uri
    problems = [p for p in check_overlay(objects) if "MLFLOW_TRACKING_URI" in p.address.where]
    assert problems and all(reason in p.reason for p in problems), "\n".join(map(str, problems))


def test_the_service_choice_of_the_datasciencecluster_is_explicit(rendered):
    dsc = find(rendered["default"], "DataScienceCluster", "default-dsc")
    assert dsc["spec"]["components"]["kserve"]["rawDeploymentServiceConfig"] in ("Headless", "Headed")


def test_addresses_of_the_loop_workloads_are_checked(rendered, generated_secrets):
    # The retraining receiver (Knative Service) and the review push (CronJob: containers under
    # spec.jobTemplate) are read like every other workload: a wrong port there must be reported.
    objects = copy.deepcopy(rendered["retrain-on-drift"])
    values = {a.where: a.value for a in find_addresses(objects)}
    assert (
        values["Service vinspect/retrain-on-drift container retrain-on-drift env.KFP_HOST"]
        == "https://ds-pipeline-dspa.vinspect.svc.cluster.local:8443"
    )
    cron = find(objects, "CronJob", "review-push")
    container = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    container["env"].append({"name": "CVAT_URL", "value": "http://cvat.vinspect.svc.cluster.local:80"})
    problems = [str(p) for p in check_overlay(objects, generated_secrets)]
    assert problems and all("CronJob vinspect/review-push container review-push env.CVAT_URL" in p for p in problems)


def test_notifications_go_to_the_projects_kafka_broker(rendered, generated_secrets):
    # The processor (envFrom) and the pipeline steps (use_config_map_as_env) read the URL from the
    # runtime ConfigMap; it must be the Kafka Broker ingress path of the Broker this project renders
    # (eventing-kafka-broker control-plane/pkg/reconciler/broker/broker.go: /<namespace>/<broker>).
    objects = rendered["default"]
    broker = next(o for o in objects if o["kind"] == "Broker")
    config = find(objects, "ConfigMap", "vinspect-runtime")
    ns = broker["metadata"]["namespace"]
    assert (
        config["data"]["VINSPECT_NOTIFY_URL"]
        == f"http://kafka-broker-ingress.knative-eventing.svc.cluster.local/{ns}/{broker['metadata']['name']}"
    )
    processor = find(objects, "Service", "image-processor")["spec"]["template"]["spec"]["containers"][0]
    assert {"configMapRef": {"name": "vinspect-runtime"}} in processor["envFrom"]
    # The address check resolves it against the operator-created ingress Service: a wrong port is named.
    values = {a.where.split(" ", 2)[-1]: a.value for a in find_addresses(objects, generated_secrets)}
    assert values["data.VINSPECT_NOTIFY_URL"] == config["data"]["VINSPECT_NOTIFY_URL"]
    wrong = copy.deepcopy(objects)
    find(wrong, "ConfigMap", "vinspect-runtime")["data"]["VINSPECT_NOTIFY_URL"] = (
        f"http://kafka-broker-ingress.knative-eventing.svc.cluster.local:8080/{ns}/default"
    )
    problems = [str(p) for p in check_overlay(wrong, generated_secrets)]
    assert problems and all("VINSPECT_NOTIFY_URL" in p for p in problems)
