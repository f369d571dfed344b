"""The one fake Kubernetes/OpenShift API of the tests, shaped like ``kubernetes.dynamic.DynamicClient``.

Both the bootstrap tests and the rollout tests use it through :mod:`infra.kube` (the one layer
that talks to the API), so the rules below are the ones both depend on. Each follows a published
behaviour:

API server (Kubernetes API conventions, ``contributors/devel/sig-architecture/api-conventions.md``
in kubernetes/community, and the API concepts page ``docs/reference/using-api/api-concepts``):

- creating what exists is 409 ``AlreadyExists``; reading, patching or deleting what does not is
  404 ``NotFound``; creating into a namespace that does not exist is 404 (``namespaces "x" not
  found``); errors are the dynamic client's (``kubernetes.dynamic.exceptions.api_exception``);
- ``metadata.resourceVersion`` changes on every write that changes the object; a patch that carries
  a ``metadata.resourceVersion`` other than the stored one is refused with 409 ``Conflict``
  ("the object has been modified; please apply your changes to the latest version and try
  again"): optimistic concurrency. (The fake controllers below write ``status`` in place without
  a new resourceVersion: no write of the code under test can land between their steps.)
- ``metadata.generation`` is 1 on create and counts changes of ``spec``; ``status`` is a
  subresource, ignored on create and in a patch of the main resource;
- a patch is a JSON merge patch (RFC 7386, ``application/merge-patch+json``: ``null`` deletes a
  key, objects merge, lists are replaced); other content types are 415;
- discovery only knows a custom kind once its CRD exists and is ``Established``
  (``client.resources.get`` raises the dynamic client's ``ResourceNotFoundError`` before).

Operators and controllers (on a virtual clock advanced by ``sleep``; due steps also run on a read,
so with ``delay=0`` a controller has acted by the next request, whatever clock the caller uses):

- an operator's CRDs appear only after its Subscription's CSV reaches ``Succeeded``; some CRDs
  appear only once an instance is ready (KServe's after the DataScienceCluster, Knative's after
  KnativeServing/KnativeEventing/KnativeKafka, KubeVirt's after HyperConverged), as on a cluster;
- objects become ready some seconds after creation (conditions turn ``True`` later), except the
  ones marked ``stuck``, which report ``Ready=False`` with a reason forever;
- Secrets, ConfigMaps, Services... are ready once stored, as in Kubernetes;
- OLM resolves a Subscription only in a channel its catalog has (else the Subscription reports
  ``ResolutionFailed``, as OLM's resolver does: "no operators found in channel X of package Y");
  OpenShift AI's channel decides the installed major version, and with it the served
  DataScienceCluster/DSCInitialization versions. On 3.x, v2 is the storage (hub) version and
  v1 objects are converted, so the fields v2 dropped (``api/datasciencecluster/v2``,
  ``api/dscinitialization/v2`` in opendatahub-io/opendatahub-operator) vanish from what is stored;
- the OpenShift AI operator creates DSCInitialization ``default-dsci`` itself on install, and its
  runtime Templates (``kserve-ovms``) in the applications namespace once the DSC is ready;
- builds follow OpenShift's Build API (build.openshift.io/v1 ``Build.status.phase``:
  New, Pending, Running, then Complete, Failed, Error or Cancelled; a Complete Docker build
  pushes its output to the ImageStreamTag named in the BuildConfig's ``spec.output.to``);
- the ``storageclasses`` list is what ``storage.k8s.io/v1`` returns; the default one carries
  ``storageclass.kubernetes.io/is-default-class: "true"``;
- objects marked ``stuck`` never become ready; for a VirtualMachine that is what KubeVirt reports
  on a node without KVM (``Ready=False``, the VMI unschedulable);
- KServe's InferenceService controller (kserve/kserve ``pkg/apis/serving/v1beta1/
  inference_service_status.go``; ``observedGeneration`` from knative.dev/pkg ``apis/duck/v1``
  ``Status``): after a create or a spec change, ``Ready`` and ``PredictorReady`` are ``False``
  (``Progressing``) and ``status.observedGeneration`` still names the previous generation; after
  ``delay`` the controller observes the new generation and reports ``Ready=True`` with
  ``status.url``, ``status.address.url`` (RawDeployment: the in-cluster predictor URL),
  ``status.components.predictor.restUrl`` (ModelMesh) and ``modelStatus.transitionStatus:
  UpToDate``. A ``failing`` one reports ``transitionStatus: BlockedByFailedLoad`` with
  ``lastFailureInfo`` (reason ``ModelLoadFailed``) at the new generation, a ``stuck`` one stays
  ``Ready=False``.

``stuck`` and ``failing`` hold ``"Kind name"`` strings, or predicates ``obj -> bool`` for a rule on
the object (a version label). ``before_write`` (one shot) runs before the next create, patch or
delete, with the verb and the object's ``"Kind ns/name"``: tests use it for a concurrent writer or
an API that goes away.

Every write is recorded in ``events`` as ``(time, verb, "Kind ns/name")`` for order assertions
(``create``, ``delete``, ``patch`` when a patch changed the object, ``patch-request`` for every
patch sent, ``conflict`` for one refused with 409).
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from typing import Any, Callable

from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic.exceptions import ResourceNotFoundError, api_exception

# Kinds the cluster serves before anything is installed: (apiVersion, kind) -> namespaced.
BUILTIN_KINDS: dict[tuple[str, str], bool] = {
    ("v1", "Namespace"): False,
    ("v1", "Secret"): True,
    ("v1", "ConfigMap"): True,
    ("v1", "Service"): True,
    ("v1", "ServiceAccount"): True,
    ("v1", "PersistentVolumeClaim"): True,
    ("apps/v1", "Deployment"): True,
    ("batch/v1", "Job"): True,
    ("networking.k8s.io/v1", "NetworkPolicy"): True,
    ("rbac.authorization.k8s.io/v1", "Role"): True,
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): True,
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): False,
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): False,
    ("route.openshift.io/v1", "Route"): True,
    ("build.openshift.io/v1", "BuildConfig"): True,
    ("build.openshift.io/v1", "Build"): True,
    ("image.openshift.io/v1", "ImageStream"): True,
    ("apiextensions.k8s.io/v1", "CustomResourceDefinition"): False,
    ("config.openshift.io/v1", "Ingress"): False,
    ("template.openshift.io/v1", "Template"): True,
    ("storage.k8s.io/v1", "StorageClass"): False,
}

# The OVMS image the fake OpenShift AI operator writes into its kserve-ovms Template (a real
# operator takes it from RELATED_IMAGE_ODH_OPENVINO_MODEL_SERVER_IMAGE of its release).
TEMPLATE_OVMS_IMAGE = "registry.redhat.io/rhoai/odh-openvino-model-server-rhel9@sha256:" + "1" * 64

# OLM catalog: package -> channel -> version. Packages not listed accept any channel.
CATALOG: dict[str, dict[str, str]] = {
    "rhods-operator": {
        "stable": "2.25.0",
        "stable-2.25": "2.25.0",
        "fast": "2.25.0",
        "fast-3.x": "3.0.0",
        "stable-3.x": "3.0.0",
    },
}

# Served versions beyond the one in CRDS, per OpenShift AI major version.
RHOAI_VERSIONS = {
    2: {
        "datascienceclusters.datasciencecluster.opendatahub.io": ["v1"],
        "dscinitializations.dscinitialization.opendatahub.io": ["v1"],
    },
    3: {
        "datascienceclusters.datasciencecluster.opendatahub.io": ["v1", "v2"],
        "dscinitializations.dscinitialization.opendatahub.io": ["v1", "v2"],
    },
}
# Fields that v2 (the 3.x storage version) does not have: lost when a v1 object is converted.
V2_DROPPED: dict[str, list[tuple[str, ...]]] = {
    "DataScienceCluster": [
        ("spec", "components", "codeflare"),
        ("spec", "components", "modelmeshserving"),
        ("spec", "components", "kserve", "serving"),
        ("spec", "components", "kserve", "defaultDeploymentMode"),
    ],
    "DSCInitialization": [("spec", "serviceMesh")],
}

# CRD name -> (group, version, kind, namespaced)
CRDS: dict[str, tuple[str, str, str, bool]] = {
    "operatorgroups.operators.coreos.com": ("operators.coreos.com", "v1", "OperatorGroup", True),
    "subscriptions.operators.coreos.com": ("operators.coreos.com", "v1alpha1", "Subscription", True),
    "clusterserviceversions.operators.coreos.com": ("operators.coreos.com", "v1alpha1", "ClusterServiceVersion", True),
    "configs.imageregistry.operator.openshift.io": ("imageregistry.operator.openshift.io", "v1", "Config", False),
    "datascienceclusters.datasciencecluster.opendatahub.io": (
        "datasciencecluster.opendatahub.io",
        "v1",
        "DataScienceCluster",
        False,
    ),
    "dscinitializations.dscinitialization.opendatahub.io": (
        "dscinitialization.opendatahub.io",
        "v1",
        "DSCInitialization",
        False,
    ),
    "datasciencepipelinesapplications.datasciencepipelinesapplications.opendatahub.io": (
        "datasciencepipelinesapplications.opendatahub.io",
        "v1",
        "DataSciencePipelinesApplication",
        True,
    ),
    "servingruntimes.serving.kserve.io": ("serving.kserve.io", "v1alpha1", "ServingRuntime", True),
    "inferenceservices.serving.kserve.io": ("serving.kserve.io", "v1beta1", "InferenceService", True),
    "notebooks.kubeflow.org": ("kubeflow.org", "v1", "Notebook", True),
    "knativeservings.operator.knative.dev": ("operator.knative.dev", "v1beta1", "KnativeServing", True),
    "knativeeventings.operator.knative.dev": ("operator.knative.dev", "v1beta1", "KnativeEventing", True),
    "knativekafkas.operator.serverless.openshift.io": (
        "operator.serverless.openshift.io",
        "v1alpha1",
        "KnativeKafka",
        True,
    ),
    "services.serving.knative.dev": ("serving.knative.dev", "v1", "Service", True),
    "brokers.eventing.knative.dev": ("eventing.knative.dev", "v1", "Broker", True),
    "triggers.eventing.knative.dev": ("eventing.knative.dev", "v1", "Trigger", True),
    "kafkasinks.eventing.knative.dev": ("eventing.knative.dev", "v1alpha1", "KafkaSink", True),
    "kafkasources.sources.knative.dev": ("sources.knative.dev", "v1beta1", "KafkaSource", True),
    "kafkas.kafka.strimzi.io": ("kafka.strimzi.io", "v1beta2", "Kafka", True),
    "kafkanodepools.kafka.strimzi.io": ("kafka.strimzi.io", "v1beta2", "KafkaNodePool", True),
    "kafkatopics.kafka.strimzi.io": ("kafka.strimzi.io", "v1beta2", "KafkaTopic", True),
    "nodefeaturediscoveries.nfd.openshift.io": ("nfd.openshift.io", "v1", "NodeFeatureDiscovery", True),
    "clusterpolicies.nvidia.com": ("nvidia.com", "v1", "ClusterPolicy", False),
    "hyperconvergeds.hco.kubevirt.io": ("hco.kubevirt.io", "v1beta1", "HyperConverged", True),
    "virtualmachines.kubevirt.io": ("kubevirt.io", "v1", "VirtualMachine", True),
}

KSERVE_CRDS = ("servingruntimes.serving.kserve.io", "inferenceservices.serving.kserve.io")

# On OpenShift, OLM and the image registry operator are there from the start.
PREINSTALLED_CRDS = [
    "operatorgroups.operators.coreos.com",
    "subscriptions.operators.coreos.com",
    "clusterserviceversions.operators.coreos.com",
    "configs.imageregistry.operator.openshift.io",
]

# Operator package -> CRDs its CSV installs.
OPERATOR_CRDS = {
    "rhods-operator": [
        "datascienceclusters.datasciencecluster.opendatahub.io",
        "dscinitializations.dscinitialization.opendatahub.io",
    ],
    "serverless-operator": [
        "knativeservings.operator.knative.dev",
        "knativeeventings.operator.knative.dev",
        "knativekafkas.operator.serverless.openshift.io",
    ],
    "amq-streams": ["kafkas.kafka.strimzi.io", "kafkanodepools.kafka.strimzi.io", "kafkatopics.kafka.strimzi.io"],
    "nfd": ["nodefeaturediscoveries.nfd.openshift.io"],
    "gpu-operator-certified": ["clusterpolicies.nvidia.com"],
    "kubevirt-hyperconverged": ["hyperconvergeds.hco.kubevirt.io"],
}

# Instance kind -> CRDs its operator installs once the instance is ready.
INSTANCE_CRDS = {
    "DataScienceCluster": [
        "datasciencepipelinesapplications.datasciencepipelinesapplications.opendatahub.io",
        "servingruntimes.serving.kserve.io",
        "inferenceservices.serving.kserve.io",
        "notebooks.kubeflow.org",
    ],
    "KnativeServing": ["services.serving.knative.dev"],
    "KnativeEventing": ["brokers.eventing.knative.dev", "triggers.eventing.knative.dev"],
    "KnativeKafka": ["kafkasources.sources.knative.dev", "kafkasinks.eventing.knative.dev"],
    "HyperConverged": ["virtualmachines.kubevirt.io"],
}

# How a kind reports readiness once its (fake) controller is done.
READY_STATUS: dict[str, Callable[[], dict[str, Any]]] = {
    "Deployment": lambda: {
        "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"}]
    },
    "Job": lambda: {"conditions": [{"type": "Complete", "status": "True"}], "succeeded": 1},
    "ClusterPolicy": lambda: {"state": "ready"},
    "DataScienceCluster": lambda: {"phase": "Ready", "conditions": [{"type": "Ready", "status": "True"}]},
    "VirtualMachine": lambda: {"ready": True, "conditions": [{"type": "Ready", "status": "True"}]},
    "NodeFeatureDiscovery": lambda: {"conditions": [{"type": "Available", "status": "True"}]},
    "HyperConverged": lambda: {"conditions": [{"type": "Available", "status": "True"}]},
    "Config": lambda: {"conditions": [{"type": "Available", "status": "True"}]},
    "DSCInitialization": lambda: {"phase": "Ready", "conditions": [{"type": "Available", "status": "True"}]},
}
for _kind in (
    "KnativeServing",
    "KnativeEventing",
    "KnativeKafka",
    "Kafka",
    "KafkaTopic",
    "DataSciencePipelinesApplication",
    "Broker",
    "Trigger",
    "KafkaSource",
    "KafkaSink",
    "Service/knative",
):
    READY_STATUS[_kind] = lambda: {"conditions": [{"type": "Ready", "status": "True"}]}


def _error(status: int, reason: str, message: str = "") -> Exception:
    exc = ApiException(status=status, reason=reason)
    exc.body = message or reason
    return api_exception(exc)


def _group(api_version: str) -> str:
    return api_version.split("/")[0] if "/" in api_version else ""


@dataclass
class _Pending:
    due: float
    action: Callable[[], None]


class FakeResource:
    """One kind, with the dynamic client's ``get``/``create``/``patch`` methods."""

    def __init__(self, cluster: "FakeCluster", api_version: str, kind: str, namespaced: bool) -> None:
        self.cluster, self.api_version, self.kind, self.namespaced = cluster, api_version, kind, namespaced

    def _key(self, name: str, namespace: str | None) -> tuple[str, str, str | None, str]:
        return (_group(self.api_version), self.kind, namespace if self.namespaced else None, name)

    def get(self, name: str | None = None, namespace: str | None = None, **_: Any) -> dict[str, Any]:
        self.cluster.reads += 1
        self.cluster._run_due()
        if name is None:  # a list, as the dynamic client's ResourceList.to_dict() gives it
            return {
                "items": [
                    copy.deepcopy(o)
                    for (g, k, ns, _n), o in self.cluster.objects.items()
                    if k == self.kind and g == _group(self.api_version) and (namespace is None or ns == namespace)
                ]
            }
        obj = self.cluster.objects.get(self._key(name, namespace))
        if obj is None:
            raise _error(404, "Not Found", f'{self.kind} "{name}" not found')
        return copy.deepcopy(obj)

    def create(self, body: dict[str, Any], namespace: str | None = None, **_: Any) -> dict[str, Any]:
        namespace = namespace or body["metadata"].get("namespace")
        name = body["metadata"]["name"]
        self.cluster.before("create", self.kind, name, namespace if self.namespaced else None)
        if self.namespaced:
            if not namespace:
                raise _error(422, "Unprocessable Entity", f"{self.kind} {name}: namespace required")
            if ("", "Namespace", None, namespace) not in self.cluster.objects:
                raise _error(404, "Not Found", f'namespaces "{namespace}" not found')
        key = self._key(name, namespace)
        if key in self.cluster.objects:
            raise _error(409, "Conflict", f'{self.kind} "{name}" already exists')
        obj = copy.deepcopy(body)
        obj.pop("status", None)
        self.cluster.convert(obj)
        obj["metadata"]["namespace"] = namespace if self.namespaced else None
        if not self.namespaced:
            obj["metadata"].pop("namespace")
        for field in ("uid", "resourceVersion", "generation", "creationTimestamp"):
            obj["metadata"].pop(field, None)
        obj["metadata"]["generation"] = 1
        self.cluster.stamp(obj)
        self.cluster.objects[key] = obj
        self.cluster.record("create", obj)
        self.cluster.on_created(obj)
        return copy.deepcopy(obj)

    def patch(self, body: dict[str, Any], name: str, namespace: str | None = None, content_type: str = "", **_: Any):
        if content_type != "application/merge-patch+json":
            raise _error(415, "Unsupported Media Type", f"fake cluster only takes merge patches, got {content_type!r}")
        self.cluster.before("patch", self.kind, name, namespace if self.namespaced else None)
        key = self._key(name, namespace)
        obj = self.cluster.objects.get(key)
        if obj is None:
            raise _error(404, "Not Found", f'{self.kind} "{name}" not found')
        # Every request, even one the server turns into a no-op (a field conversion drops again).
        self.cluster.record("patch-request", obj)
        body = copy.deepcopy({k: v for k, v in body.items() if k != "status"})
        meta = body.get("metadata") or {}
        want_rv = meta.pop("resourceVersion", None)
        if want_rv is not None and want_rv != obj["metadata"].get("resourceVersion"):
            self.cluster.record("conflict", obj)
            raise _error(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {plural_of(self.kind)} "{name}": the object has been modified; '
                "please apply your changes to the latest version and try again",
            )
        for field in ("name", "namespace", "uid", "generation", "creationTimestamp"):
            meta.pop(field, None)
        before = copy.deepcopy(obj)
        _merge(obj, body)
        self.cluster.convert(obj)
        if obj != before:
            spec_changed = obj.get("spec") != before.get("spec")
            if spec_changed:
                obj["metadata"]["generation"] = before["metadata"].get("generation", 1) + 1
            self.cluster.stamp(obj)
            self.cluster.record("patch", obj)
            self.cluster.on_patched(obj, spec_changed=spec_changed)
        return copy.deepcopy(obj)

    def delete(self, name: str, namespace: str | None = None, **_: Any) -> dict[str, Any]:
        self.cluster.before("delete", self.kind, name, namespace if self.namespaced else None)
        key = self._key(name, namespace)
        obj = self.cluster.objects.pop(key, None)
        if obj is None:
            raise _error(404, "Not Found", f'{self.kind} "{name}" not found')
        self.cluster.record("delete", obj)
        return {"kind": "Status", "apiVersion": "v1", "status": "Success"}


def plural_of(kind: str) -> str:
    """The resource plural the API server names in its messages."""
    return kind.lower() + ("es" if kind.lower().endswith("s") else "s")


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    # RFC 7386 JSON merge patch.
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


class _Discovery:
    def __init__(self, cluster: "FakeCluster") -> None:
        self.cluster = cluster
        self.invalidations = 0

    def get(self, api_version: str, kind: str, **_: Any) -> FakeResource:
        if (api_version, kind) in BUILTIN_KINDS:
            return FakeResource(self.cluster, api_version, kind, BUILTIN_KINDS[(api_version, kind)])
        for crd_name, (group, version, crd_kind, namespaced) in CRDS.items():
            versions = RHOAI_VERSIONS.get(self.cluster.rhoai_major or 2, {}).get(crd_name, [version])
            if (
                crd_kind == kind
                and api_version in {f"{group}/{v}" for v in versions}
                and self.cluster.established(crd_name)
            ):
                return FakeResource(self.cluster, api_version, kind, namespaced)
        raise ResourceNotFoundError(f"No matches found for {{'api_version': '{api_version}', 'kind': '{kind}'}}")

    def invalidate_cache(self) -> None:
        self.invalidations += 1


class FakeCluster:
    """The fake API server plus the fake operators and controllers behind it.

    Args:
        delay: Seconds a controller takes to make an object ready (CSV, CRD, instance).
        stuck: ``"Kind name"`` of objects that never become ready, or predicates on the object.
        failing: ``"Kind name"`` of Jobs, Builds and InferenceServices that fail, or predicates.
        apps_domain: The cluster's apps domain (Ingress config ``cluster``).
        storage_classes: ``{name: is_default}`` of the cluster's StorageClasses (default: one
            default class, as on a cloud install; ``{}`` is a bare single-node cluster without LVMS).
        registry_storage: The image registry Config's ``spec.storage`` as the installer left it.
    """

    def __init__(
        self,
        *,
        delay: float = 3.0,
        stuck: set[str] | None = None,
        failing: set[str] | None = None,
        apps_domain: str = "apps.example.test",
        storage_classes: dict[str, bool] | None = None,
        registry_storage: dict[str, Any] | None = None,
        crds: tuple[str, ...] = (),
        namespaces: tuple[str, ...] = (),
    ) -> None:
        self.rhoai_major: int | None = None
        self.apps_domain = apps_domain
        self._rv = itertools.count(1000)
        # One shot: runs before the next create, patch or delete (a concurrent writer, an outage).
        self.before_write: Callable[[str, str], None] | None = None
        self.now = 0.0
        self.delay = delay
        self.stuck = stuck or set()
        self.failing = failing or set()
        self.objects: dict[tuple[str, str, str | None, str], dict[str, Any]] = {}
        self.events: list[tuple[float, str, str]] = []
        self.reads = 0
        self._pending: list[_Pending] = []
        self.resources = _Discovery(self)
        self.builds: list[str] = []
        for name in (*PREINSTALLED_CRDS, *crds):
            self._add_crd(name, established=True)
        self._store(
            "config.openshift.io",
            "Ingress",
            None,
            {
                "apiVersion": "config.openshift.io/v1",
                "kind": "Ingress",
                "metadata": {"name": "cluster"},
                "spec": {"domain": apps_domain},
            },
        )
        # The image registry operator's Config exists on every cluster (Removed on bare metal).
        self._store(
            "imageregistry.operator.openshift.io",
            "Config",
            None,
            {
                "apiVersion": "imageregistry.operator.openshift.io/v1",
                "kind": "Config",
                "metadata": {"name": "cluster"},
                "spec": {"managementState": "Removed", **({"storage": registry_storage} if registry_storage else {})},
                "status": {"conditions": [{"type": "Available", "status": "False", "reason": "Removed"}]},
            },
        )
        for name, default in ({"gp3-csi": True} if storage_classes is None else storage_classes).items():
            self._store(
                "storage.k8s.io",
                "StorageClass",
                None,
                {
                    "apiVersion": "storage.k8s.io/v1",
                    "kind": "StorageClass",
                    "provisioner": "example.csi",
                    "metadata": {
                        "name": name,
                        "annotations": {"storageclass.kubernetes.io/is-default-class": "true" if default else "false"},
                    },
                },
            )
        for ns in (
            "openshift-operators",
            "openshift-marketplace",
            "openshift-image-registry",
            "openshift-virtualization-os-images",
            *namespaces,
        ):
            self._store(
                "",
                "Namespace",
                None,
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}, "status": {"phase": "Active"}},
            )

    @classmethod
    def with_kserve(cls, *namespaces: str, **options: Any) -> "FakeCluster":
        """A cluster where KServe's CRDs are served and ``namespaces`` exist (the rollout's starting point)."""
        return cls(crds=KSERVE_CRDS, namespaces=namespaces, **options)

    # -- clock -------------------------------------------------------------------------------

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        """Advance the virtual clock and run the controllers that are due."""
        self.now += seconds
        self._run_due()

    def _later(self, action: Callable[[], None], delay: float | None = None) -> None:
        self._pending.append(_Pending(self.now + (self.delay if delay is None else delay), action))

    def _run_due(self) -> None:
        while True:
            due = [p for p in self._pending if p.due <= self.now]
            if not due:
                return
            for item in due:
                self._pending.remove(item)
                item.action()

    # -- store -------------------------------------------------------------------------------

    def _store(self, group: str, kind: str, namespace: str | None, obj: dict[str, Any]) -> None:
        obj["metadata"].setdefault("generation", 1)
        self.stamp(obj)
        self.objects[(group, kind, namespace, obj["metadata"]["name"])] = obj

    def stamp(self, obj: dict[str, Any]) -> None:
        """A new ``resourceVersion`` for a write that changed the object."""
        obj["metadata"]["resourceVersion"] = str(next(self._rv))

    def before(self, verb: str, kind: str, name: str, namespace: str | None) -> None:
        """Run the one-shot ``before_write`` hook, if a test set one."""
        if self.before_write is not None:
            hook, self.before_write = self.before_write, None
            hook(verb, f"{kind} {namespace + '/' if namespace else ''}{name}")

    def _matches(self, rules: set, obj: dict[str, Any]) -> bool:
        ref = f"{obj['kind']} {obj['metadata']['name']}"
        return ref in rules or any(callable(rule) and rule(obj) for rule in rules)

    def is_stuck(self, obj: dict[str, Any]) -> bool:
        """Whether the object is marked never to become ready."""
        return self._matches(self.stuck, obj)

    def is_failing(self, obj: dict[str, Any]) -> bool:
        """Whether the object is marked to fail."""
        return self._matches(self.failing, obj)

    def stored(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        """A copy of the stored object (any group), without running a controller step; None if absent."""
        obj = self.find(kind, name, namespace)
        return copy.deepcopy(obj) if obj is not None else None

    def find(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        """The stored object of that kind and name (any group), or None."""
        for (_, k, ns, n), obj in self.objects.items():
            if k == kind and n == name and (namespace is None or ns == namespace):
                return obj
        return None

    def record(self, verb: str, obj: dict[str, Any]) -> None:
        ns = obj["metadata"].get("namespace")
        self.events.append((self.now, verb, f"{obj['kind']} {ns + '/' if ns else ''}{obj['metadata']['name']}"))

    def first(self, verb: str, ref: str) -> float:
        """Time of the first ``verb`` event on ``ref`` (``"Kind ns/name"``); KeyError if none."""
        for t, v, r in self.events:
            if v == verb and r == ref:
                return t
        raise KeyError(f"no {verb} of {ref}")

    def index(self, verb: str, ref: str) -> int:
        """Position of the first ``verb`` event on ``ref`` in ``events``."""
        for i, (_, v, r) in enumerate(self.events):
            if v == verb and r == ref:
                return i
        raise KeyError(f"no {verb} of {ref}")

    # -- CRDs --------------------------------------------------------------------------------

    def _add_crd(self, name: str, *, established: bool) -> None:
        key = ("apiextensions.k8s.io", "CustomResourceDefinition", None, name)
        if key in self.objects:
            return
        crd = {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": name},
            "status": {"conditions": [{"type": "Established", "status": str(established)}]},
        }
        self.stamp(crd)
        self.objects[key] = crd
        self.record("crd", crd)
        if not established:
            self._later(lambda: crd["status"].update(conditions=[{"type": "Established", "status": "True"}]))

    def established(self, name: str) -> bool:
        crd = self.objects.get(("apiextensions.k8s.io", "CustomResourceDefinition", None, name))
        return bool(crd) and any(
            c["type"] == "Established" and c["status"] == "True" for c in crd["status"]["conditions"]
        )

    # -- controllers -------------------------------------------------------------------------

    def on_created(self, obj: dict[str, Any]) -> None:
        kind = obj["kind"]
        if kind == "Namespace":
            obj["status"] = {"phase": "Active"}
            return
        if kind == "Subscription":
            self._later(lambda: self._install_operator(obj))
            return
        if kind == "InferenceService":
            self._reconcile_inference_service(obj)
            return
        status_key = (
            "Service/knative" if kind == "Service" and obj["apiVersion"].startswith("serving.knative") else kind
        )
        if status_key not in READY_STATUS:
            return
        if self.is_stuck(obj):
            obj["status"] = {
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "False",
                        "reason": "RevisionMissing",
                        "message": "Configuration is waiting for a Revision to become ready",
                    }
                ]
            }
            return

        def ready() -> None:
            if kind == "Job" and self.is_failing(obj):
                obj["status"] = {
                    "conditions": [
                        {
                            "type": "Failed",
                            "status": "True",
                            "reason": "BackoffLimitExceeded",
                            "message": "Job has reached the specified backoff limit",
                        }
                    ]
                }
                return
            obj["status"] = READY_STATUS[status_key]()
            for crd in INSTANCE_CRDS.get(kind, []):
                self._add_crd(crd, established=False)
            if kind == "DataScienceCluster":
                self._publish_templates()

        self._later(ready)

    def on_patched(self, obj: dict[str, Any], *, spec_changed: bool = True) -> None:
        """A changed object is reconciled again: not-ready objects of a watched kind become ready later."""
        kind = obj["kind"]
        if kind == "InferenceService":
            if spec_changed:
                self._reconcile_inference_service(obj)
            return
        if kind in READY_STATUS and not self.is_stuck(obj):
            self._later(lambda: obj.update(status=READY_STATUS[kind]()))

    def _reconcile_inference_service(self, obj: dict[str, Any]) -> None:
        """KServe's controller on a new generation: Progressing now, Ready (or failed) after ``delay``."""
        status = obj.setdefault("status", {})
        status["conditions"] = [
            {"type": "PredictorReady", "status": "False", "reason": "Progressing"},
            {"type": "Ready", "status": "False", "reason": "Progressing"},
        ]
        status.setdefault("modelStatus", {})["transitionStatus"] = "InProgress"
        generation = obj["metadata"]["generation"]

        def observe() -> None:
            if obj["metadata"]["generation"] != generation or self.is_stuck(obj):
                return  # a newer spec has its own step; a stuck one never gets there
            meta = obj["metadata"]
            if self.is_failing(obj):
                status["observedGeneration"] = generation
                status["modelStatus"] = {
                    "transitionStatus": "BlockedByFailedLoad",
                    "lastFailureInfo": {"reason": "ModelLoadFailed", "message": "failed to load model.onnx"},
                }
                return
            name, ns = meta["name"], meta["namespace"]
            status.update(
                {
                    "observedGeneration": generation,
                    "conditions": [
                        {"type": "IngressReady", "status": "True"},
                        {"type": "PredictorReady", "status": "True"},
                        {"type": "Ready", "status": "True"},
                    ],
                    "url": f"https://{name}-{ns}.{self.apps_domain}",
                    "address": {"url": f"http://{name}-predictor.{ns}.svc.cluster.local"},
                    "components": {"predictor": {"restUrl": f"http://modelmesh-serving.{ns}:8008"}},
                    "modelStatus": {"transitionStatus": "UpToDate", "states": {"activeModelState": "Loaded"}},
                }
            )

        self._later(observe)

    def convert(self, obj: dict[str, Any]) -> None:
        """Store a v1 OpenShift AI object the way a 3.x API server does: as v2, dropped fields lost."""
        if self.rhoai_major != 3 or obj["kind"] not in V2_DROPPED:
            return
        for path in V2_DROPPED[obj["kind"]]:
            parent = obj
            for key in path[:-1]:
                parent = parent.get(key) if isinstance(parent, dict) else None
            if isinstance(parent, dict):
                parent.pop(path[-1], None)

    def _install_operator(self, sub: dict[str, Any]) -> None:
        package = sub["spec"]["name"]
        namespace = sub["metadata"]["namespace"]
        channels = CATALOG.get(package)
        channel = sub["spec"].get("channel", "")
        if channels is not None and channel not in channels:
            sub["status"] = {
                "state": "",
                "conditions": [
                    {
                        "type": "ResolutionFailed",
                        "status": "True",
                        "reason": "ConstraintsNotSatisfiable",
                        "message": f"constraints not satisfiable: no operators found in channel {channel} of package "
                        f"{package} in the catalog referenced by subscription {sub['metadata']['name']}",
                    }
                ],
            }
            return
        if package == "rhods-operator":
            self.rhoai_major = int(channels[channel].split(".")[0])
        csv_name = f"{package}.v1.0.0"
        csv = {
            "apiVersion": "operators.coreos.com/v1alpha1",
            "kind": "ClusterServiceVersion",
            "metadata": {"name": csv_name, "namespace": namespace},
            "status": {"phase": "Installing", "message": "waiting for install components to report healthy"},
        }
        self._store("operators.coreos.com", "ClusterServiceVersion", namespace, csv)
        sub["status"] = {"state": "AtLatestKnown", "currentCSV": csv_name, "installedCSV": csv_name}
        if self.is_stuck(sub):
            return

        def succeeded() -> None:
            csv["status"] = {"phase": "Succeeded", "message": "install strategy completed with no errors"}
            for crd in OPERATOR_CRDS.get(package, []):
                self._add_crd(crd, established=False)
            if package == "rhods-operator":
                self._later(self._initialize_rhoai)

        self._later(succeeded)

    def _initialize_rhoai(self) -> None:
        """What the OpenShift AI operator does first: its namespaces and DSCInitialization default-dsci."""
        for ns in ("redhat-ods-applications", "redhat-ods-monitoring"):
            self._store(
                "",
                "Namespace",
                None,
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}, "status": {"phase": "Active"}},
            )
        version = "v2" if self.rhoai_major == 3 else "v1"
        spec: dict[str, Any] = {
            "applicationsNamespace": "redhat-ods-applications",
            "monitoring": {"managementState": "Managed", "namespace": "redhat-ods-monitoring"},
            "trustedCABundle": {"managementState": "Managed", "customCABundle": ""},
        }
        if version == "v1":
            spec["serviceMesh"] = {
                "managementState": "Managed",
                "controlPlane": {
                    "name": "data-science-smcp",
                    "namespace": "istio-system",
                    "metricsCollection": "Istio",
                },
            }
        dsci = {
            "apiVersion": f"dscinitialization.opendatahub.io/{version}",
            "kind": "DSCInitialization",
            "metadata": {"name": "default-dsci"},
            "spec": spec,
            "status": READY_STATUS["DSCInitialization"](),
        }
        self._store("dscinitialization.opendatahub.io", "DSCInitialization", None, dsci)
        self.record("create", dsci)

    def _publish_templates(self) -> None:
        """The operator's serving runtime templates, once the DataScienceCluster is ready."""
        template = {
            "apiVersion": "template.openshift.io/v1",
            "kind": "Template",
            "metadata": {"name": "kserve-ovms", "namespace": "redhat-ods-applications"},
            "objects": [
                {
                    "apiVersion": "serving.kserve.io/v1alpha1",
                    "kind": "ServingRuntime",
                    "metadata": {"name": "kserve-ovms"},
                    "spec": {"containers": [{"name": "kserve-container", "image": TEMPLATE_OVMS_IMAGE}]},
                }
            ],
        }
        self._store("template.openshift.io", "Template", "redhat-ods-applications", template)

    # -- builds (what `oc start-build` does) -------------------------------------------------

    def start_build(self, bc: dict[str, Any]) -> str:
        """Builder for the bootstrap: creates a Build that completes later and tags its image."""
        namespace, name = bc["metadata"]["namespace"], bc["metadata"]["name"]
        number = 1 + sum(1 for b in self.builds if b.rsplit("-", 1)[0] == name)
        build_name = f"{name}-{number}"
        self.builds.append(build_name)
        # A Build starts New, is Pending while its pod is scheduled, Running while it builds and
        # pushes, then ends Complete (output pushed to the ImageStreamTag) or Failed.
        build = {
            "apiVersion": "build.openshift.io/v1",
            "kind": "Build",
            "metadata": {"name": build_name, "namespace": namespace},
            "status": {"phase": "New"},
        }
        self._store("build.openshift.io", "Build", namespace, build)
        self.record("build", build)
        self._later(lambda: build["status"].update(phase="Running"), delay=self.delay / 2)
        stream, _, tag = bc["spec"]["output"]["to"]["name"].partition(":")

        def done() -> None:
            if f"Build {build_name}" in self.failing:
                build["status"] = {"phase": "Failed", "message": "Docker build strategy has failed."}
                return
            build["status"] = {"phase": "Complete"}
            image_stream = self.find("ImageStream", stream, namespace)
            if image_stream is not None:
                image_stream.setdefault("status", {})["tags"] = [
                    {"tag": tag or "latest", "items": [{"image": "sha256:0"}]}
                ]

        self._later(done)
        return build_name
