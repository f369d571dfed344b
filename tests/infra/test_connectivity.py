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
    objects = [o for o in rendered["default"]
               if not (o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == "allow-model-storage-initializer")]
    results = {r.flow.index: r for r in check_overlay(objects, "default", spec)}
    initializer = next(f for f in spec.flows if (f.source, f.target, f.port) == ("predictor", "minio", 9000))
    assert results[initializer.index].allowed is False


def test_camera_reaches_the_model_when_the_models_policy_admits_the_whole_project(nca, rendered, spec):
    # The old models policy admitted every pod of vinspect; the camera -> model flow must then fail.
    objects = copy.deepcopy(rendered["default"])
    policy = find(objects, "NetworkPolicy", "allow-vinspect-to-models")
    policy["spec"]["ingress"][0]["from"] = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "vinspect"}}}]
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
    kafka = {"metadata": {"name": "k", "namespace": "ns"},
             "spec": {"kafka": {"listeners": [
                 {"name": "plain", "port": 9092, "networkPolicyPeers": [{"podSelector": {}}]},
                 {"name": "tls", "port": 9093}]}}}
    policy = strimzi_network_policy(kafka)
    assert policy["metadata"] == {"name": "k-network-policy-kafka", "namespace": "ns"}
    assert policy["spec"]["podSelector"]["matchLabels"] == {
        "strimzi.io/cluster": "k", "strimzi.io/name": "k-kafka", "strimzi.io/kind": "Kafka"}
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
    assert block == markdown(spec), "docs/connectivity.md is stale: run `python -m infra.connectivity --markdown --write`"
