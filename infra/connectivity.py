"""Connectivity check: is every flow the system needs open, and every forbidden one closed?

Schemas cannot tell whether a NetworkPolicy lets KServe's storage initializer reach Minio. This
module models the cluster the way the policies will see it and asks `network-config-analyzer`
(np-guard, PyPI ``network-config-analyzer``), which implements Kubernetes NetworkPolicy
semantics, for the full connectivity map:

- the rendered overlay's Namespaces (each with the ``kubernetes.io/metadata.name`` label the API
  server adds) and NetworkPolicies;
- the NetworkPolicy Strimzi generates for the ``Kafka`` cluster (:func:`strimzi_network_policy`),
  since it, not ours, decides who reaches the listeners;
- one pod per endpoint of ``infra/network/flows.yaml``: pods of our own Deployments, Jobs,
  CronJobs, the Knative Services and the CVAT VirtualMachine with their rendered template labels
  plus the labels their controllers add, and the pods operators create (KServe predictor, Knative data plane,
  Strimzi brokers, pipeline steps, router, monitoring) with the labels cited there.

The same data file renders the table in ``docs/connectivity.md`` (``python -m infra.connectivity
--markdown``), so the documentation and the test cannot disagree.
"""

from __future__ import annotations

import argparse
import copy
import ipaddress
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from infra.tools import tool_path
from vinspect.errors import VinspectError

FLOWS_FILE = Path(__file__).resolve().parent / "network" / "flows.yaml"
DOC_FILE = Path(__file__).resolve().parents[1] / "docs" / "connectivity.md"
DOC_BEGIN = "<!-- BEGIN generated from infra/network/flows.yaml: python -m infra.connectivity --markdown --write -->"
DOC_END = "<!-- END generated -->"
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
EXPECTATIONS = ("allowed", "denied")

# Kinds network-config-analyzer reads from our model; everything else in an overlay is left out
# (it refuses a Knative `Service` as an invalid core Service).
_POD_TEMPLATE_PATHS = {
    "Deployment": ("spec", "template"),
    "Job": ("spec", "template"),
    # A CronJob's pods are those of the Jobs it creates from its job template.
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "Service": ("spec", "template"),  # serving.knative.dev/v1 Service
    "VirtualMachine": ("spec", "template"),
}


class ConnectivityError(VinspectError, RuntimeError):
    """The flows file is inconsistent, or the analyzer failed; the message names the record."""


@dataclass(frozen=True)
class Flow:
    """One row of the flows table."""

    index: int
    source: str
    target: str
    port: int
    expect: str
    why: str

    def describe(self) -> str:
        return f"flow {self.index}: {self.source} -> {self.target}:{self.port} ({self.why})"


@dataclass
class Spec:
    """The parsed flows file."""

    namespaces: list[dict[str, Any]]
    endpoints: dict[str, dict[str, Any]]
    flows: list[Flow]
    sources: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class FlowResult:
    """What the analyzer says about one flow in one overlay."""

    flow: Flow
    overlay: str
    allowed: bool | None  # None: an endpoint of the flow is not in this overlay
    # The absent endpoint's `overlays` names this overlay: it must be there, so the flow must be
    # decided here (a workload dropped from its overlay fails instead of passing unchecked).
    required: bool = False

    @property
    def ok(self) -> bool:
        if self.allowed is None:
            return not self.required
        return self.allowed == (self.flow.expect == "allowed")

    def __str__(self) -> str:
        if self.allowed is None and self.required:
            return (
                f"[{self.overlay}] {self.flow.describe()}: an endpoint the flows file places in this overlay is absent"
            )
        if self.allowed is None:
            return f"[{self.overlay}] {self.flow.describe()}: not applicable (endpoint absent)"
        state = "allowed" if self.allowed else "denied"
        return f"[{self.overlay}] {self.flow.describe()}: expected {self.flow.expect}, analyzer says {state}"


def load_spec(path: Path = FLOWS_FILE) -> Spec:
    """Read and check the flows file.

    Raises:
        ConnectivityError: A flow names an unknown endpoint, a port is not an integer, an
            expectation is not allowed/denied, or an endpoint has neither pod nor address; the
            message names the file and the record.
    """
    data = yaml.safe_load(path.read_text()) or {}
    endpoints = data.get("endpoints") or {}
    for name, endpoint in endpoints.items():
        if not isinstance(endpoint, dict):
            raise ConnectivityError(f"{path}: endpoint {name!r} is not a mapping")
        if not (endpoint.get("manifest") or endpoint.get("namespace") or endpoint.get("ip")):
            raise ConnectivityError(f"{path}: endpoint {name!r} needs `manifest`, `namespace` or `ip`")
        if endpoint.get("ip"):
            ipaddress.ip_network(endpoint["ip"])
        overlays = endpoint.get("overlays")
        if overlays is not None and not (isinstance(overlays, list) and all(isinstance(o, str) for o in overlays)):
            raise ConnectivityError(f"{path}: endpoint {name!r} `overlays` must be a list of overlay names")
    flows = []
    for index, raw in enumerate(data.get("flows") or [], start=1):
        for key in ("from", "to"):
            if raw.get(key) not in endpoints:
                raise ConnectivityError(f"{path}: flow {index} {key} {raw.get(key)!r} is not an endpoint")
        if not isinstance(raw.get("port"), int):
            raise ConnectivityError(f"{path}: flow {index} port {raw.get('port')!r} is not an integer")
        if raw.get("expect") not in EXPECTATIONS:
            raise ConnectivityError(f"{path}: flow {index} expect {raw.get('expect')!r} is not one of {EXPECTATIONS}")
        if endpoints[raw["from"]].get("ip"):
            raise ConnectivityError(f"{path}: flow {index} starts at an address; flows start at pods")
        flows.append(Flow(index, raw["from"], raw["to"], raw["port"], raw["expect"], str(raw.get("why", ""))))
    return Spec(data.get("namespaces") or [], endpoints, flows, data.get("sources") or {})


def strimzi_network_policy(kafka: dict[str, Any]) -> dict[str, Any]:
    """The NetworkPolicy Strimzi's cluster operator creates for a ``Kafka`` cluster.

    Mirrors ``KafkaCluster.generateNetworkPolicy`` (strimzi/strimzi-kafka-operator
    cluster-operator/src/main/java/io/strimzi/operator/cluster/model/KafkaCluster.java): the
    broker pods (``strimziSelectorLabels``) admit the control plane (9090) from the cluster and
    the cluster operator, replication (9091) from the cluster and Strimzi's own tools, the agent
    (8443) from the cluster operator, and each listener's port from its ``networkPolicyPeers``:
    with none, from everywhere. The cluster operator runs in another namespace
    (openshift-operators), so its peer matches any namespace
    (``NetworkPolicyUtils.clusterOperatorNamespaceSelector`` without namespace labels).
    """
    name = kafka["metadata"]["name"]
    namespace = kafka["metadata"].get("namespace")
    selector = {"strimzi.io/cluster": name, "strimzi.io/name": f"{name}-kafka", "strimzi.io/kind": "Kafka"}
    operator = {"podSelector": {"matchLabels": {"strimzi.io/kind": "cluster-operator"}}, "namespaceSelector": {}}
    cluster = {"podSelector": {"matchLabels": selector}}

    def tool(component: str) -> dict[str, Any]:
        return {"podSelector": {"matchLabels": {"strimzi.io/name": f"{name}-{component}"}}}

    rules = [
        {"ports": [{"port": 9090, "protocol": "TCP"}], "from": [cluster, operator]},
        {
            "ports": [{"port": 9091, "protocol": "TCP"}],
            "from": [operator, cluster, tool("entity-operator"), tool("kafka-exporter"), tool("cruise-control")],
        },
        {"ports": [{"port": 8443, "protocol": "TCP"}], "from": [operator]},
    ]
    for listener in ((kafka.get("spec") or {}).get("kafka") or {}).get("listeners") or []:
        rule: dict[str, Any] = {"ports": [{"port": listener["port"], "protocol": "TCP"}]}
        peers = listener.get("networkPolicyPeers") or []
        if peers:
            rule["from"] = copy.deepcopy(peers)
        rules.append(rule)
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": f"{name}-network-policy-kafka", "namespace": namespace},
        "spec": {"podSelector": {"matchLabels": selector}, "policyTypes": ["Ingress"], "ingress": rules},
    }


def _template_labels(obj: dict[str, Any]) -> dict[str, str]:
    node: Any = obj
    for key in _POD_TEMPLATE_PATHS[obj["kind"]]:
        node = (node or {}).get(key)
    return dict(((node or {}).get("metadata") or {}).get("labels") or {})


def _find_manifest(objects: list[dict[str, Any]], ref: dict[str, Any]) -> dict[str, Any] | None:
    for obj in objects:
        if obj["kind"] != ref["kind"] or obj["metadata"]["name"] != ref["name"]:
            continue
        if ref.get("apiVersion") and obj["apiVersion"] != ref["apiVersion"]:
            continue
        if not ref.get("apiVersion") and obj["kind"] == "Service" and obj["apiVersion"] == "v1":
            continue
        return obj
    return None


def endpoint_pods(objects: list[dict[str, Any]], spec: Spec) -> dict[str, dict[str, Any]]:
    """One Pod per pod endpoint present in this overlay: endpoint name -> Pod object."""
    pods = {}
    for name, endpoint in spec.endpoints.items():
        if endpoint.get("ip"):
            continue
        labels: dict[str, str] = {}
        namespace = endpoint.get("namespace")
        if endpoint.get("manifest"):
            obj = _find_manifest(objects, endpoint["manifest"])
            if obj is None:
                continue
            labels.update(_template_labels(obj))
            namespace = obj["metadata"].get("namespace")
        labels.update({k: str(v) for k, v in (endpoint.get("labels") or {}).items()})
        ports = [
            {"name": port_name, "containerPort": number, "protocol": "TCP"}
            for port_name, number in (endpoint.get("ports") or {}).items()
        ]
        pods[name] = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {"containers": [{"name": "main", "image": "example.invalid/pod", "ports": ports}]},
        }
    return pods


def cluster_model(objects: list[dict[str, Any]], spec: Spec) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """The objects the analyzer reads for one overlay, and the endpoint pods among them."""
    namespaces: dict[str, dict[str, Any]] = {}
    for obj in objects:
        if obj["kind"] == "Namespace" and obj["apiVersion"] == "v1":
            namespaces[obj["metadata"]["name"]] = copy.deepcopy(obj)
    for extra in spec.namespaces:
        namespaces.setdefault(
            extra["name"],
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": extra["name"], "labels": dict(extra.get("labels") or {})},
            },
        )
    pods = endpoint_pods(objects, spec)
    for pod in pods.values():
        ns = pod["metadata"]["namespace"]
        if ns not in namespaces:
            raise ConnectivityError(
                f"endpoint {pod['metadata']['name']!r} is in namespace {ns!r}, which neither the "
                f"overlay nor {FLOWS_FILE.name} `namespaces` declares"
            )
    for name, ns in namespaces.items():
        meta = ns["metadata"]
        meta["labels"] = {**(meta.get("labels") or {}), NAMESPACE_NAME_LABEL: name}
    policies = [copy.deepcopy(o) for o in objects if o["kind"] == "NetworkPolicy"]
    policies += [
        strimzi_network_policy(o)
        for o in objects
        if o["kind"] == "Kafka" and o["apiVersion"].startswith("kafka.strimzi.io/")
    ]
    return [*namespaces.values(), *policies, *pods.values()], pods


# "ns/name[Pod] => 0.0.0.0-9.255.255.255,11.0.0.0-255.255.255.255 : {protocols:TCP,dst_ports:80,8000-8080}"
_LINE = re.compile(r"^(?P<src>\S+) => (?P<dst>\S+) : (?P<conn>.+)$")
_CONN = re.compile(r"^\{protocols:(?P<protocols>[^}]*?)(?:,dst_ports:(?P<ports>[^}]*))?\}$")


@dataclass(frozen=True)
class Connection:
    """One line of the analyzer's connectivity map."""

    source: str
    target: str
    protocols: frozenset[str] | None  # None: all connections
    ports: tuple[tuple[int, int], ...] | None  # None: every port

    def allows(self, port: int, protocol: str = "TCP") -> bool:
        if self.protocols is not None and protocol not in self.protocols:
            return False
        return self.ports is None or any(lo <= port <= hi for lo, hi in self.ports)


def parse_connectivity(text: str) -> list[Connection]:
    """Parse network-config-analyzer's ``txt_no_fw_rules`` connectivity output.

    Raises:
        ConnectivityError: A connection the parser does not understand (so a format change
            fails loudly rather than reading as "denied").
    """
    connections = []
    for line in text.splitlines():
        match = _LINE.match(line.strip())
        if not match:
            continue
        conn = match["conn"].strip()
        if conn == "All connections":
            connections.append(Connection(match["src"], match["dst"], None, None))
            continue
        parsed = _CONN.match(conn)
        if not parsed:
            raise ConnectivityError(f"network-config-analyzer printed a connection this check cannot read: {line!r}")
        protocols = frozenset(p.strip() for p in parsed["protocols"].split(",") if p.strip())
        ports = None
        if parsed["ports"]:
            ranges = []
            for part in parsed["ports"].split(","):
                lo, _, hi = part.partition("-")
                ranges.append((int(lo), int(hi or lo)))
            ports = tuple(ranges)
        connections.append(Connection(match["src"], match["dst"], protocols, ports))
    return connections


def run_analyzer(model: list[dict[str, Any]]) -> list[Connection]:
    """Ask network-config-analyzer for the connectivity map of ``model``.

    Raises:
        ToolMissingError: The analyzer is not installed.
        ConnectivityError: It failed; its output is in the message.
    """
    nca = tool_path("nca")
    with tempfile.TemporaryDirectory(prefix="vinspect-nca-") as tmp:
        path = Path(tmp) / "cluster.yaml"
        path.write_text(yaml.safe_dump_all(model, sort_keys=False))
        proc = subprocess.run(
            [nca, "--connectivity", "-r", str(path), "-o", "txt_no_fw_rules", "--return_0"],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    output = proc.stdout + proc.stderr
    if proc.returncode != 0 or re.search(r"^Error", output, re.MULTILINE):
        raise ConnectivityError(f"network-config-analyzer failed (exit {proc.returncode}):\n{output[-4000:]}")
    return parse_connectivity(proc.stdout)


def _ip_ranges(token: str) -> list[tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]] | None:
    ranges = []
    for part in token.split(","):
        lo, sep, hi = part.partition("-")
        try:
            ranges.append((ipaddress.IPv4Address(lo), ipaddress.IPv4Address(hi if sep else lo)))
        except ValueError:
            return None
    return ranges


def evaluate(
    spec: Spec, overlay: str, pods: dict[str, dict[str, Any]], connections: list[Connection]
) -> list[FlowResult]:
    """Decide each flow from the connectivity map."""

    def key(name: str) -> str:
        pod = pods[name]
        return f"{pod['metadata']['namespace']}/{name}[Pod]"

    results = []
    for flow in spec.flows:
        target = spec.endpoints[flow.target]
        absent = [
            name for name in (flow.source, flow.target) if name not in pods and not spec.endpoints[name].get("ip")
        ]
        if absent:
            required = any(overlay in (spec.endpoints[name].get("overlays") or []) for name in absent)
            results.append(FlowResult(flow, overlay, None, required))
            continue
        source_key = key(flow.source)
        if target.get("ip"):
            address = ipaddress.ip_network(target["ip"]).network_address
            matching = [
                c
                for c in connections
                if c.source == source_key and any(lo <= address <= hi for lo, hi in (_ip_ranges(c.target) or []))
            ]
        else:
            target_key = key(flow.target)
            matching = [c for c in connections if c.source == source_key and c.target == target_key]
        results.append(FlowResult(flow, overlay, any(c.allows(flow.port) for c in matching)))
    return results


def check_overlay(objects: list[dict[str, Any]], overlay: str, spec: Spec | None = None) -> list[FlowResult]:
    """Every flow of the flows file, decided for one rendered overlay."""
    spec = spec or load_spec()
    model, pods = cluster_model(objects, spec)
    return evaluate(spec, overlay, pods, run_analyzer(model))


def _endpoint_where(endpoint: dict[str, Any]) -> str:
    if endpoint.get("ip"):
        return f"address {endpoint['ip']}"
    if endpoint.get("manifest"):
        ref = endpoint["manifest"]
        where = f"pod of {ref['kind']} `{ref['name']}` (manifests"
        if endpoint.get("overlays"):
            where += "; overlays " + ", ".join(f"`{o}`" for o in endpoint["overlays"])
        return where + ")"
    return f"`{endpoint['namespace']}`"


def markdown(spec: Spec | None = None) -> str:
    """The generated part of docs/connectivity.md: the flows table and the endpoints table."""
    spec = spec or load_spec()
    lines = ["| # | from | to | port (TCP) | must be | why |", "|---|---|---|---|---|---|"]
    for flow in spec.flows:
        lines.append(
            f"| {flow.index} | {flow.source} | {flow.target} | {flow.port} | "
            f"{'**open**' if flow.expect == 'allowed' else '**closed**'} | {flow.why} |"
        )
    lines += [
        "",
        "Endpoints (one pod each in the model; labels are what the owning controller sets):",
        "",
        "| endpoint | where | labels added / set | source |",
        "|---|---|---|---|",
    ]
    for name, endpoint in spec.endpoints.items():
        labels = ", ".join(f"`{k}={v}`" for k, v in (endpoint.get("labels") or {}).items()) or "template labels only"
        source = " ".join(str(endpoint.get("source") or "rendered manifest").split())
        lines.append(f"| {name} | {_endpoint_where(endpoint)} | {labels} | {source} |")
    lines += ["", "Sources (repository@commit read for the labels and ports above):", ""]
    lines += [f"- {key}: {value}" for key, value in spec.sources.items()]
    return "\n".join(lines) + "\n"


def document_block(text: str) -> str:
    """The generated block of a document (between the markers), or '' when it has none."""
    if DOC_BEGIN not in text or DOC_END not in text:
        return ""
    return text.split(DOC_BEGIN, 1)[1].split(DOC_END, 1)[0].strip("\n") + "\n"


def write_document(path: Path = DOC_FILE, spec: Spec | None = None) -> None:
    """Replace the generated block of ``path`` with :func:`markdown` (atomically)."""
    text = path.read_text()
    if DOC_BEGIN not in text or DOC_END not in text:
        raise ConnectivityError(f"{path} has no generated block ({DOC_BEGIN} ... {DOC_END})")
    head, rest = text.split(DOC_BEGIN, 1)
    tail = rest.split(DOC_END, 1)[1]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{head}{DOC_BEGIN}\n{markdown(spec)}{DOC_END}{tail}")
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    """``python -m infra.connectivity``: check overlays, or print/write the documentation table."""
    parser = argparse.ArgumentParser(prog="python -m infra.connectivity", description=__doc__.split("\n")[0])
    parser.add_argument("--overlay", action="append", help="overlay(s) to check (default: every overlay)")
    parser.add_argument("--markdown", action="store_true", help="print the generated tables")
    parser.add_argument("--write", action="store_true", help="with --markdown: rewrite docs/connectivity.md")
    args = parser.parse_args(argv)
    if args.markdown:
        if args.write:
            write_document()
        else:
            sys.stdout.write(markdown())
        return 0
    from infra.render import list_overlays, render

    failed = 0
    for overlay in args.overlay or list_overlays():
        for result in check_overlay(render(overlay), overlay):
            if not result.ok:
                failed += 1
            print(("FAIL " if not result.ok else "ok   ") + str(result))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
