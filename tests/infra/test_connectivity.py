"""Every flow of infra/network/flows.yaml is open or closed as it says, in every overlay.

network-config-analyzer (the real tool, in its own virtualenv) decides; see infra/connectivity.py
for the model of the cluster it is given.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from infra.connectivity import (
    DOC_FILE,
    ConnectivityError,
    check_overlay,
    document_block,
    load_spec,
    markdown,
    parse_connectivity,
    strimzi_network_policy,
)
from infra.render import list_overlays
from tests.infra._scanners import require_tool
from tests.infra.conftest import find


@pytest.fixture(scope="module")
def nca() -> str:
    return require_tool("nca")


@pytest.fixture(scope="module")
def spec():
    return load_spec()


def _failures(results):
    return "\n".join(str(r) for r in results if not r.ok)


# Ids say "overlay-..." because the root conftest skips tests whose keywords contain "gpu".
@pytest.mark.parametrize("overlay", list_overlays(), ids=lambda o: f"overlay-{o}")
def test_every_flow_is_open_or_closed_as_documented(nca, rendered, spec, overlay):
    results = check_overlay(rendered[overlay], overlay, spec)
    assert _failures(results) == ""


def test_every_flow_is_decided_in_some_overlay(nca, rendered, spec):
    # A flow whose endpoints exist in no overlay would never be checked: a renamed Deployment
    # must fail here, not pass silently.
    decided = set()
    for overlay, objects in rendered.items():
        decided |= {r.flow.index for r in check_overlay(objects, overlay, spec) if r.allowed is not None}
    assert decided == {f.index for f in spec.flows}


def test_storage_initializer_reaches_minio_only_through_its_policy(nca, rendered, spec):
    # Without the policy for KServe's storage initializer, the analyzer must see the flow closed
    # (this is how the overlays were before): the check can fail.
    objects = [
        o
        for o in rendered["default"]
        if not (o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == "allow-model-storage-initializer")
    ]
    results = {r.flow.index: r for r in check_overlay(objects, "default", spec)}
    initializer = next(f for f in spec.flows if (f.source, f.target, f.port) == ("predictor", "minio", 9000))
    assert results[initializer.index].allowed is False


def test_camera_reaches_the_model_when_the_models_policy_admits_the_whole_project(nca, rendered, spec):
    # The old models policy admitted every pod of vinspect; the camera -> model flow must then fail.
    objects = copy.deepcopy(rendered["default"])
    policy = find(objects, "NetworkPolicy", "allow-vinspect-to-models")
    policy["spec"]["ingress"][0]["from"] = [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "vinspect"}}}
    ]
    results = check_overlay(objects, "default", spec)
    failed = {(r.flow.source, r.flow.target) for r in results if not r.ok}
    assert ("camera", "predictor") in failed


def test_kafka_listener_without_peers_is_open_to_every_project(nca, rendered, spec):
    objects = copy.deepcopy(rendered["default"])
    kafka = find(objects, "Kafka", "vinspect")
    for listener in kafka["spec"]["kafka"]["listeners"]:
        listener.pop("networkPolicyPeers", None)
    failed = {(r.flow.source, r.flow.target) for r in check_overlay(objects, "default", spec) if not r.ok}
    assert ("other-tenant", "kafka") in failed


def test_strimzi_policy_turns_listener_peers_into_rules():
    kafka = {
        "metadata": {"name": "k", "namespace": "ns"},
        "spec": {
            "kafka": {
                "listeners": [
                    {"name": "plain", "port": 9092, "networkPolicyPeers": [{"podSelector": {}}]},
                    {"name": "tls", "port": 9093},
                ]
            }
        },
    }
    policy = strimzi_network_policy(kafka)
    assert policy["metadata"] == {"name": "k-network-policy-kafka", "namespace": "ns"}
    assert policy["spec"]["podSelector"]["matchLabels"] == {
        "strimzi.io/cluster": "k",
        "strimzi.io/name": "k-kafka",
        "strimzi.io/kind": "Kafka",
    }
    by_port = {r["ports"][0]["port"]: r for r in policy["spec"]["ingress"]}
    assert by_port[9092]["from"] == [{"podSelector": {}}]
    assert "from" not in by_port[9093]  # no peers: Strimzi opens the listener to everyone


def test_analyzer_output_is_parsed_and_unknown_formats_fail():
    text = (
        "global: cluster has 3 unique endpoints, 2 namespaces\n"
        "a/x[Pod] => b/y[Pod] : {protocols:TCP,dst_ports:8443,9000,9090-9095}\n"
        "a/x[Pod] => 0.0.0.0-255.255.255.255 : All connections\n"
        "a/x[Pod] => b/z[Pod] : {protocols:UDP}\n"
    )
    first, second, third = parse_connectivity(text)
    assert first.allows(9000) and first.allows(9093) and not first.allows(9001)
    assert second.allows(6443)
    assert not third.allows(53) and third.allows(53, "UDP")
    with pytest.raises(ConnectivityError, match="cannot read"):
        parse_connectivity("a/x[Pod] => b/y[Pod] : something new\n")


def test_flows_file_errors_name_the_record(tmp_path: Path):
    bad = tmp_path / "flows.yaml"
    bad.write_text("endpoints:\n  a: {namespace: x}\nflows:\n  - {from: a, to: nope, port: 1, expect: allowed}\n")
    with pytest.raises(ConnectivityError, match=r"flow 1 to 'nope' is not an endpoint"):
        load_spec(bad)
    bad.write_text("endpoints:\n  a: {namespace: x}\nflows:\n  - {from: a, to: a, port: 1, expect: maybe}\n")
    with pytest.raises(ConnectivityError, match="expect 'maybe'"):
        load_spec(bad)


def test_documentation_table_is_generated_from_the_flows_file(spec):
    block = document_block(DOC_FILE.read_text())
    assert block, f"{DOC_FILE} lost its generated block"
    assert block == markdown(spec), (
        "docs/connectivity.md is stale: run `python -m infra.connectivity --markdown --write`"
    )


def test_cronjob_pods_carry_the_job_template_labels(rendered, spec):
    # The review push runs as a CronJob: its pods are those of the Jobs it creates from
    # spec.jobTemplate, labelled from that template (plus the Job controller's labels).
    from infra.connectivity import endpoint_pods

    pods = endpoint_pods(rendered["loop"], spec)
    labels = pods["review-push"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/name"] == "review-push"
    assert labels["job-name"].startswith("review-push-")
    assert pods["review-push"]["metadata"]["namespace"] == "vinspect"
    assert "review-push" not in endpoint_pods(rendered["default"], spec)


@pytest.mark.parametrize(
    "overlay, workload",
    [
        ("loop", ("CronJob", "review-push")),
        ("retrain-on-drift", ("CronJob", "review-push")),
        ("retrain-on-drift", ("Service", "retrain-on-drift")),
    ],
    ids=["loop-review-push", "retrain-review-push", "retrain-receiver"],
)
def test_a_workload_missing_from_its_overlay_fails_the_check(nca, rendered, spec, overlay, workload):
    # Flows of a workload that exists in one overlay only are checked there; dropping it from that
    # overlay must fail, not turn its flows into "not applicable".
    kind, name = workload
    results = check_overlay(rendered[overlay], overlay, spec)
    assert all(r.allowed is not None for r in results if name in (r.flow.source, r.flow.target))
    objects = [o for o in rendered[overlay] if not (o["kind"] == kind and o["metadata"]["name"] == name)]
    failed = [r for r in check_overlay(objects, overlay, spec) if not r.ok]
    assert failed and all(name in (r.flow.source, r.flow.target) for r in failed)
    assert "absent" in str(failed[0])


def test_cvat_admits_its_clients_only_through_its_policy(nca, rendered, spec):
    # Before the CVAT policy the project-wide rule let every pod of vinspect (the camera too) in.
    objects = copy.deepcopy(rendered["loop"])
    same = find(objects, "NetworkPolicy", "allow-same-namespace")
    same["spec"]["podSelector"]["matchExpressions"][0]["values"].remove("cvat")
    failed = {(r.flow.source, r.flow.target) for r in check_overlay(objects, "loop", spec) if not r.ok}
    assert ("camera", "cvat") in failed and ("processor", "cvat") in failed


def test_monitoring_reaches_the_processor_only(nca, rendered, spec):
    # The old policy admitted monitoring to every Knative revision pod (the retraining receiver too).
    objects = copy.deepcopy(rendered["retrain-on-drift"])
    find(objects, "NetworkPolicy", "allow-from-monitoring")["spec"]["podSelector"] = {
        "matchExpressions": [{"key": "serving.knative.dev/service", "operator": "Exists"}]
    }
    failed = {
        (r.flow.source, r.flow.target, r.flow.port)
        for r in check_overlay(objects, "retrain-on-drift", spec)
        if not r.ok
    }
    assert failed == {("prometheus-user-workload", "retrain-on-drift", 8080)}


def test_flows_file_endpoint_overlays_must_be_a_list(tmp_path: Path):
    bad = tmp_path / "flows.yaml"
    bad.write_text("endpoints:\n  a: {namespace: x, overlays: loop}\nflows: []\n")
    with pytest.raises(ConnectivityError, match=r"endpoint 'a' `overlays` must be a list"):
        load_spec(bad)
