"""Addressing check: every in-cluster address in the manifests reaches a port that listens.

A URL in a ConfigMap, an environment variable or a generated Secret names a Service and a
port. Whether anything answers there depends on Services the manifests declare and on Services
operators create from them, whose ports this module derives the way those operators do:

- KServe's predictor Service (:func:`predictor_service`), in both forms OpenShift AI can make
  it: *headed* (a ClusterIP that maps Service ports to container ports) and *headless*
  (``clusterIP: None``: DNS returns pod IPs, so only ports the pod listens on answer), with and
  without the auth proxy;
- the Knative Service's address, the Kafka Broker's ingress, Strimzi's bootstrap Service and the
  pipelines API server's Service.

An address whose host is outside the cluster (no ``.svc`` suffix, dotted) is not checked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

from vinspect.errors import VinspectError

# How OpenShift AI can build the predictor Service: DataScienceCluster
# spec.components.kserve.rawDeploymentServiceConfig (opendatahub-operator
# api/components/v1alpha1/kserve_types.go: Headless is the default, Headed the alternative).
SERVICE_MODES = ("Headless", "Headed")
# Every combination the URLs must survive: (service mode, InferenceService auth on?).
PREDICTOR_VARIANTS = tuple((mode, auth) for mode in SERVICE_MODES for auth in (False, True))

_KSERVE = "opendatahub-io/kserve@3cf0a0416662 pkg/controller/v1beta1/inferenceservice/reconcilers/service"
_URL = re.compile(r"^(?P<scheme>https?)://(?P<host>[A-Za-z0-9.-]+)(?::(?P<port>\d+))?(?P<path>/.*)?$")
_HOSTPORT = re.compile(r"^[A-Za-z0-9.-]+:\d+$")
_CONTAINER_PATHS = {
    "Deployment": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
    "Service": ("spec", "template", "spec"),  # serving.knative.dev/v1
}


class AddressingError(VinspectError, ValueError):
    """An address that cannot be checked (no port and no scheme); the message names where."""


@dataclass(frozen=True)
class Address:
    """An in-cluster address found in the manifests."""

    where: str  # object and field, e.g. "ConfigMap vinspect/vinspect-runtime data.VINSPECT_MODEL_URL"
    value: str
    namespace: str | None  # where a short host name is resolved


@dataclass(frozen=True)
class ServiceModel:
    """The ports that answer at a Service's DNS name."""

    name: str
    namespace: str
    ports: frozenset[int]
    source: str
    # Ports that speak TLS (a Service port named or appProtocol ``https``): a plain ``http://``
    # URL there gets a TLS handshake error, not an answer (MLflow's OAuth proxy on 8443).
    tls_ports: frozenset[int] = frozenset()


@dataclass(frozen=True)
class Problem:
    """An address that reaches no listening port."""

    address: Address
    variant: str
    reason: str

    def __str__(self) -> str:
        return f"{self.address.where} = {self.address.value!r} [{self.variant}]: {self.reason}"


def _dig(obj: Any, path: Iterable[str]) -> Any:
    for key in path:
        obj = (obj or {}).get(key) if isinstance(obj, dict) else None
    return obj


def _ref(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{obj['kind']} {ns + '/' if ns else ''}{meta.get('name')}"


def _is_address(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    value = value.strip()
    return bool(_URL.match(value)) or all(_HOSTPORT.match(part.strip()) for part in value.split(","))


def find_addresses(objects: list[dict[str, Any]], secrets: Iterable[dict[str, Any]] = ()) -> list[Address]:
    """Every address in ConfigMaps, container environments, Secrets and the CR fields that hold one.

    Args:
        objects: A rendered overlay.
        secrets: Secrets as ``vinspect infra bootstrap`` generates them (``stringData`` or
            base64 ``data``), which the manifests never carry.
    """
    import base64

    found: list[Address] = []

    def add(obj: dict[str, Any], field: str, value: Any) -> None:
        if _is_address(value):
            for part in str(value).split(","):
                found.append(Address(f"{_ref(obj)} {field}", part.strip(), obj["metadata"].get("namespace")))

    for obj in [*objects, *secrets]:
        kind = obj["kind"]
        if kind == "ConfigMap":
            for key, value in (obj.get("data") or {}).items():
                add(obj, f"data.{key}", value)
        elif kind == "Secret":
            for key, value in (obj.get("stringData") or {}).items():
                add(obj, f"stringData.{key}", value)
            for key, value in (obj.get("data") or {}).items():
                add(obj, f"data.{key}", base64.b64decode(value).decode(errors="replace"))
        elif kind in _CONTAINER_PATHS and (kind != "Service" or obj["apiVersion"].startswith("serving.knative.dev/")):
            spec = _dig(obj, _CONTAINER_PATHS[kind]) or {}
            for container in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
                for env in container.get("env") or []:
                    add(obj, f"container {container.get('name')} env.{env.get('name')}", env.get("value"))
        elif kind in ("KafkaSource", "KafkaSink"):
            for server in _dig(obj, ["spec", "bootstrapServers"]) or []:
                add(obj, "spec.bootstrapServers", server)
        elif kind == "KnativeKafka":
            add(
                obj,
                "spec.broker.defaultConfig.bootstrapServers",
                _dig(obj, ["spec", "broker", "defaultConfig", "bootstrapServers"]),
            )
            add(obj, "spec.channel.bootstrapServers", _dig(obj, ["spec", "channel", "bootstrapServers"]))
        elif kind == "DataSciencePipelinesApplication":
            store = _dig(obj, ["spec", "objectStorage", "externalStorage"]) or {}
            if store.get("host"):
                port = f":{store['port']}" if store.get("port") else ""
                add(
                    obj, "spec.objectStorage.externalStorage", f"{store.get('scheme', 'https')}://{store['host']}{port}"
                )
    return found


def predictor_service(runtime: dict[str, Any], isvc: str, namespace: str, mode: str, auth: bool) -> ServiceModel:
    """The predictor Service KServe creates for InferenceService ``isvc`` on ``runtime``.

    Mirrors ``createDefaultSvc`` (service_reconciler.go): the first port of the first container
    becomes Service port 80 with that container port as target; every further container port
    becomes a Service port of the same number. OpenShift AI's ``customizeService``
    (service_reconciler_odh.go) replaces port 80 with 443 -> the auth proxy's ``https`` port
    (8443, ``OauthProxyPort``) when ``security.opendatahub.io/enable-auth`` is on. Headless
    (``ServiceClusterIPNone``) adds ``clusterIP: None``: no port mapping, so what answers is what
    the pod listens on, the target ports.
    """
    containers = _dig(runtime, ["spec", "containers"]) or []
    ports = [
        (80 if i == 0 else p["containerPort"], p["containerPort"])
        for i, p in enumerate((containers[0].get("ports") or []) if containers else [])
    ]
    if not ports:
        ports = [(80, 8080)]  # InferenceServiceDefaultHttpPort
    # The pod listens on its container ports, and on the auth proxy's when auth is on.
    listening = {target for _, target in ports} | ({8443} if auth else set())
    if auth:
        ports = [(443, 8443) if port == 80 else (port, target) for port, target in ports]
    answering = listening if mode == "Headless" else {port for port, _ in ports}
    return ServiceModel(
        f"{isvc}-predictor",
        namespace,
        frozenset(answering),
        f"{_KSERVE}/service_reconciler.go createDefaultSvc ({mode}, auth {'on' if auth else 'off'})",
    )


def generated_services(objects: list[dict[str, Any]]) -> list[ServiceModel]:
    """Services operators create from the rendered objects (the predictor excepted)."""
    services = []
    for obj in objects:
        kind, meta = obj["kind"], obj["metadata"]
        ns = meta.get("namespace")
        if kind == "Service" and obj["apiVersion"].startswith("serving.knative.dev/"):
            # knative/serving pkg/reconciler/route/resources/service.go MakeK8sService: port 80 (http).
            services.append(
                ServiceModel(meta["name"], ns, frozenset({80}), "knative/serving route/resources/service.go")
            )
        elif kind == "Kafka" and obj["apiVersion"].startswith("kafka.strimzi.io/"):
            # Strimzi KafkaCluster.generateService: replication 9091 plus every internal listener.
            listeners = _dig(obj, ["spec", "kafka", "listeners"]) or []
            ports = {9091} | {lst["port"] for lst in listeners if lst.get("type") == "internal"}
            services.append(
                ServiceModel(
                    f"{meta['name']}-kafka-bootstrap",
                    ns,
                    frozenset(ports),
                    "strimzi cluster-operator model/KafkaCluster.java generateService",
                )
            )
        elif kind == "DataSciencePipelinesApplication":
            # data-science-pipelines-operator config/internal/apiserver/default/service.yaml.tmpl
            services.append(
                ServiceModel(
                    f"ds-pipeline-{meta['name']}",
                    ns,
                    frozenset({8443, 8888, 8887}),
                    "dspo apiserver/default/service.yaml.tmpl",
                )
            )
        elif kind == "KnativeKafka" and _dig(obj, ["spec", "broker", "enabled"]):
            # eventing-kafka-broker data-plane/config/broker/500-receiver.yaml: Service kafka-broker-ingress :80.
            services.append(
                ServiceModel(
                    "kafka-broker-ingress",
                    "knative-eventing",
                    frozenset({80}),
                    "eventing-kafka-broker data-plane/config/broker/500-receiver.yaml",
                )
            )
    return services


def declared_services(objects: list[dict[str, Any]]) -> list[ServiceModel]:
    """Services of the rendered manifests (headless ones answer on their target ports)."""
    services = []
    for obj in objects:
        if obj["kind"] != "Service" or obj["apiVersion"] != "v1":
            continue
        spec = obj.get("spec") or {}
        headless = spec.get("clusterIP") == "None"
        ports, tls = set(), set()
        for port in spec.get("ports") or []:
            target = port.get("targetPort", port["port"])
            number = target if headless and isinstance(target, int) else port["port"]
            ports.add(number)
            if "https" in (port.get("name"), port.get("appProtocol")):
                tls.add(number)
        services.append(
            ServiceModel(
                obj["metadata"]["name"], obj["metadata"].get("namespace"), frozenset(ports), "manifest", frozenset(tls)
            )
        )
    return services


def model_predictors(objects: list[dict[str, Any]], mode: str, auth: bool) -> list[ServiceModel]:
    """The predictor Service of the model the runtime ConfigMap names, on every ServingRuntime."""
    names = {(o.get("data") or {}).get("VINSPECT_MODEL_NAME") for o in objects if o["kind"] == "ConfigMap"}
    runtimes = [o for o in objects if o["kind"] == "ServingRuntime"]
    return [
        predictor_service(rt, name, rt["metadata"].get("namespace"), mode, auth)
        for rt in runtimes
        for name in sorted(n for n in names if n)
    ]


def _split(address: Address) -> tuple[str, int]:
    match = _URL.match(address.value)
    if match:
        port = match["port"]
        return match["host"], int(port) if port else (443 if match["scheme"] == "https" else 80)
    host, _, port = address.value.rpartition(":")
    return host, int(port)


def _service_key(host: str, namespace: str | None) -> tuple[str, str | None] | None:
    """(name, namespace) for an in-cluster host name, None for an outside host."""
    for suffix in (".svc.cluster.local", ".svc"):
        if host.endswith(suffix):
            parts = host[: -len(suffix)].split(".")
            return (parts[0], parts[1]) if len(parts) == 2 else None
    if "." not in host and host != "localhost":
        return host, namespace
    return None


def check(addresses: list[Address], services: list[ServiceModel], variant: str = "") -> list[Problem]:
    """Addresses whose Service does not exist or does not answer on the port."""
    by_key = {(s.name, s.namespace): s for s in services}
    problems = []
    for address in addresses:
        host, port = _split(address)
        key = _service_key(host, address.namespace)
        if key is None:
            continue
        service = by_key.get(key)
        if service is None:
            problems.append(
                Problem(address, variant, f"no Service {key[1]}/{key[0]} in the manifests or created by an operator")
            )
        elif port not in service.ports:
            problems.append(
                Problem(
                    address,
                    variant,
                    f"Service {key[1]}/{key[0]} answers on {sorted(service.ports)}, not {port} ({service.source})",
                )
            )
        elif port in service.tls_ports and address.value.startswith("http://"):
            problems.append(
                Problem(
                    address,
                    variant,
                    f"Service {key[1]}/{key[0]} port {port} speaks TLS: use https:// ({service.source})",
                )
            )
    return problems


def check_overlay(objects: list[dict[str, Any]], secrets: Iterable[dict[str, Any]] = ()) -> list[Problem]:
    """Every address of an overlay, against every predictor Service variant."""
    addresses = find_addresses(objects, list(secrets))
    base = declared_services(objects) + generated_services(objects)
    problems = []
    for mode, auth in PREDICTOR_VARIANTS:
        variant = f"predictor {mode}, auth {'on' if auth else 'off'}"
        problems += check(addresses, base + model_predictors(objects, mode, auth), variant)
    return problems


_TEMPLATE_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "VirtualMachine")


def _listening_ports(obj: dict[str, Any]) -> set[int | str]:
    """Port numbers and names the pods of a workload listen on (containers, or a VM's interfaces)."""
    spec = _dig(obj, ["spec", "template", "spec"]) or {}
    ports: set[int | str] = set()
    for container in spec.get("containers") or []:
        for port in container.get("ports") or []:
            ports.add(port["containerPort"])
            if port.get("name"):
                ports.add(port["name"])
    for interface in _dig(spec, ["domain", "devices", "interfaces"]) or []:
        for port in interface.get("ports") or []:
            ports.add(port["port"])
            if port.get("name"):
                ports.add(port["name"])
    return ports


def check_service_backends(objects: list[dict[str, Any]]) -> list[str]:
    """Services of the manifests whose selector matches no pod template, or whose target port no
    selected pod declares: their address exists, but nothing answers behind it."""
    problems = []
    for svc in (o for o in objects if o["kind"] == "Service" and o["apiVersion"] == "v1"):
        selector = _dig(svc, ["spec", "selector"]) or {}
        if not selector:
            continue  # endpoints managed by hand or by an operator
        ns = svc["metadata"].get("namespace")
        backends = [
            o
            for o in objects
            if o["kind"] in _TEMPLATE_KINDS
            and o["metadata"].get("namespace") == ns
            and selector.items() <= (_dig(o, ["spec", "template", "metadata", "labels"]) or {}).items()
        ]
        if not backends:
            problems.append(f"{_ref(svc)}: selector {selector} matches no pod template in {ns}")
            continue
        listening = set().union(*(_listening_ports(o) for o in backends))
        for port in _dig(svc, ["spec", "ports"]) or []:
            target = port.get("targetPort", port["port"])
            if target not in listening:
                problems.append(
                    f"{_ref(svc)} port {port['port']}: target {target!r} is not a port of "
                    f"{', '.join(_ref(o) for o in backends)} (they declare {sorted(map(str, listening))})"
                )
    return problems


def iter_urls(addresses: Iterable[Address]) -> Iterator[str]:
    """The distinct values, in order (for reports)."""
    seen = set()
    for address in addresses:
        if address.value not in seen:
            seen.add(address.value)
            yield address.value
