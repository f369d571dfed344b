"""Apply the rendered manifests to a cluster in dependency order, waiting on real readiness.

The order is fixed by what each object needs from the cluster, not by file order:

1. ``namespaces``; 2. ``operators`` (OperatorGroups, Subscriptions, then each Subscription's
ClusterServiceVersion must reach ``Succeeded``); 3. ``secrets`` generated here (Minio root
credentials with :func:`secrets.token_urlsafe`, the S3 data connection built from them, the
runtime's own Minio users, the CVAT admin) and plain configuration; 4. ``platform`` instances (OpenShift AI,
Knative, Kafka, image registry, NFD, virtualization); 5. ``builds`` of this repository's images; 6. ``services``
(Deployments, GPU ClusterPolicy, KnativeKafka, topics, the ServingRuntime, the CVAT VM);
7. ``storage-init`` (bucket Job); 8. ``pipelines`` (DataSciencePipelinesApplication);
9. ``eventing`` (sinks, Broker, KafkaSource, the processor); 10. ``triggers``.

Before an object of a custom kind is created, its CustomResourceDefinition must be
``Established`` (an operator installs it after its CSV succeeds, or after its instance is ready),
so a missing CRD is waited for, not an error. Every wait polls until a deadline and, on timeout,
names the object and its last observed status.

Idempotent: every object goes through :func:`infra.kube.apply` (created when absent, else
merge-patched at the resourceVersion read, a 409 Conflict retried from a fresh read) unless it
already holds everything the manifest says (a Job, immutable, is left as it is); waits go through
:func:`infra.kube.wait`. Generated credentials are read back when their Secret exists, never rotated.

The cluster is reached through a client passed in, shaped like ``kubernetes.dynamic.DynamicClient``
(see :mod:`infra.kube`); the tests pass the fake in ``tests/fake_kube.py``, which keeps the API's
semantics.
"""

from __future__ import annotations

import base64
import copy
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from infra import kube
from infra.kube import Wait, condition_check
from infra.render import object_ref
from vinspect.errors import VinspectError

APP_ROLE_LABEL = "vinspect.io/role"
OPTIONAL_ANNOTATION = "vinspect.io/optional"
# Annotations that mark the default StorageClass (the beta one is still honoured by Kubernetes).
DEFAULT_CLASS_ANNOTATIONS = (
    "storageclass.kubernetes.io/is-default-class",
    "storageclass.beta.kubernetes.io/is-default-class",
)
APPLICATIONS_NAMESPACE = "redhat-ods-applications"
MINIO_SECRET = "minio-root"
DATA_CONNECTION_SECRET = "aws-connection-models"
CVAT_SECRET = "cvat-admin"
MLFLOW_PROXY_SECRET = "mlflow-proxy"
MINIO_PORT = 9000
DEFAULT_REGION = "us-east-1"
MODELS_BUCKET = "models"
DATA_BUCKET = "vinspect-data"
# S3 keys of the runtime, one Minio user each with only what its clients do: the bucket Job
# (base/minio/buckets-job.yaml) creates the users and their policies from these Secrets.
ANNOTATED_SECRET = "aws-connection-annotated"
DASHBOARD_SECRET = "aws-connection-dashboard"
CAMERA_SECRET = "aws-connection-camera"
REVIEW_SECRET = "aws-connection-review"
SCOPED_S3_SECRETS = {
    ANNOTATED_SECRET: f"processor puts into s3://{DATA_BUCKET}/annotated/ and queues frames under review/ only",
    DASHBOARD_SECRET: f"dashboard gets s3://{DATA_BUCKET}/annotated/ only",
    CAMERA_SECRET: f"camera lists and gets s3://{DATA_BUCKET} only",
    REVIEW_SECRET: f"review push reads s3://{DATA_BUCKET}/review/queue/ and moves items to review/pushed/ only",
}
# Connection-type annotations of an S3 data connection (see :func:`data_connection`).
DATA_CONNECTION_ANNOTATIONS = {
    "opendatahub.io/connection-type": "s3",
    "opendatahub.io/connection-type-protocol": "s3",
    "opendatahub.io/connection-type-ref": "s3",
}

# API groups served by Kubernetes or OpenShift themselves: no CRD to wait for.
_BUILTIN_GROUPS = {
    "",
    "apps",
    "batch",
    "networking.k8s.io",
    "rbac.authorization.k8s.io",
    "policy",
    "route.openshift.io",
    "build.openshift.io",
    "image.openshift.io",
    "template.openshift.io",
    "apiextensions.k8s.io",
}

# (phase name, kinds in it). Kinds not listed go to "config" if built in, else "services".
PHASES: list[tuple[str, set[str]]] = [
    ("namespaces", {"Namespace"}),
    ("operators", {"OperatorGroup", "Subscription"}),
    (
        "config",
        {
            "Secret",
            "ConfigMap",
            "ServiceAccount",
            "PersistentVolumeClaim",
            "Service/v1",
            "NetworkPolicy",
            "Route",
            "ImageStream",
            "BuildConfig",
            "Role",
            "RoleBinding",
        },
    ),
    (
        "platform",
        {
            "Config",
            "NodeFeatureDiscovery",
            "DSCInitialization",
            "DataScienceCluster",
            "KnativeServing",
            "KnativeEventing",
            "HyperConverged",
            "KafkaNodePool",
            "Kafka",
        },
    ),
    ("builds", set()),
    (
        "services",
        {
            "Deployment",
            "StatefulSet",
            "ClusterPolicy",
            "KnativeKafka",
            "KafkaTopic",
            "ServingRuntime",
            "VirtualMachine",
        },
    ),
    ("storage-init", {"Job"}),
    ("pipelines", {"DataSciencePipelinesApplication"}),
    ("eventing", {"KafkaSink", "Broker", "KafkaSource", "Service/serving.knative.dev"}),
    ("triggers", {"Trigger"}),
]
_PHASE_NAMES = [name for name, _ in PHASES]

# Kinds that cannot be patched in place (immutable spec): an existing one is left alone.
_CREATE_ONLY = {("batch", "Job")}

# Fields replaced as a whole, not merged: a JSON merge patch (RFC 7386) keeps the keys it does not
# name, so an image registry that had `storage: {emptyDir: {}}` would end with emptyDir *and* pvc,
# which the registry operator refuses. The patch sets every other key of these fields to null.
_REPLACED_FIELDS: dict[tuple[str, str], list[tuple[str, ...]]] = {
    ("imageregistry.operator.openshift.io", "Config"): [("spec", "storage")],
}

# Condition that means "ready" per kind; kinds not listed (and not special-cased) are not waited on.
_READY_CONDITION = {
    "CustomResourceDefinition": "Established",
    "Deployment": "Available",
    "StatefulSet": None,
    "Job": "Complete",
    "NodeFeatureDiscovery": "Available",
    "Config": "Available",
    "HyperConverged": "Available",
    "DataScienceCluster": "Ready",
    "KnativeServing": "Ready",
    "KnativeEventing": "Ready",
    "KnativeKafka": "Ready",
    "Kafka": "Ready",
    "KafkaTopic": "Ready",
    "DataSciencePipelinesApplication": "Ready",
    "Broker": "Ready",
    "Trigger": "Ready",
    "KafkaSource": "Ready",
    "KafkaSink": "Ready",
    "Service/serving.knative.dev": "Ready",
    "VirtualMachine": "Ready",
}
_PLURAL_EXCEPTIONS = {"Kafka": "kafkas"}


class BootstrapError(VinspectError, RuntimeError):
    """The bootstrap could not go on (an API error, a failed Job or build)."""


class BootstrapTimeout(BootstrapError):
    """A wait ran out of time; the message names the object and its last status."""


@dataclass
class Step:
    """One line of the plan: apply an object, generate a Secret, or build an image."""

    action: str  # "apply" | "generate" | "build"
    obj: dict[str, Any]
    waits: list[Wait] = field(default_factory=list)
    note: str = ""
    params: dict[str, str] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        return object_ref(self.obj)


@dataclass
class Phase:
    """Steps applied together, then waited on together.

    ``optional`` names the optional part (``cvat``, ``gpu``) the phase belongs to, or is None.
    """

    name: str
    steps: list[Step] = field(default_factory=list)
    optional: str | None = None


@dataclass
class Report:
    """What a bootstrap did: one ``(phase, ref, outcome)`` per step, and the elapsed time."""

    results: list[tuple[str, str, str]] = field(default_factory=list)
    elapsed_s: float = 0.0
    skipped: dict[str, str] = field(default_factory=dict)

    def count(self, outcome: str) -> int:
        """Number of steps with this outcome (``created``, ``configured``, ``unchanged``...)."""
        return sum(1 for _, _, o in self.results if o == outcome)


def _group(api_version: str) -> str:
    return api_version.split("/")[0] if "/" in api_version else ""


def _kind_key(obj: dict[str, Any]) -> str:
    kind = obj["kind"]
    if kind == "Service":
        group = _group(obj["apiVersion"])
        return "Service/v1" if group == "" else f"Service/{group}"
    return kind


def phase_of(obj: dict[str, Any]) -> str:
    """The phase an object is applied in (see the module docstring)."""
    key = _kind_key(obj)
    for name, kinds in PHASES:
        if key in kinds or obj["kind"] in kinds:
            return name
    return "config" if _group(obj["apiVersion"]) in _BUILTIN_GROUPS else "services"


def plural(kind: str) -> str:
    """Resource plural of a kind, as the CRDs used here name them."""
    if kind in _PLURAL_EXCEPTIONS:
        return _PLURAL_EXCEPTIONS[kind]
    lower = kind.lower()
    if lower.endswith("y") and lower[-2:-1] not in "aeiou":
        return lower[:-1] + "ies"
    if lower.endswith(("s", "x", "ch", "sh")):
        return lower + "es"
    return lower + "s"


def crd_name(api_version: str, kind: str) -> str | None:
    """Name of the CRD serving a kind (``kafkatopics.kafka.strimzi.io``), None for built-in kinds."""
    group = _group(api_version)
    if group in _BUILTIN_GROUPS:
        return None
    return f"{plural(kind)}.{group}"


def _status_value_check(key: str, wanted: str, *, also_condition: str | None = None) -> Callable:
    def check(obj: dict[str, Any] | None) -> tuple[bool, str]:
        status = (obj or {}).get("status") or {}
        if str(status.get(key, "")).lower() == wanted.lower():
            return True, f"{key} {status[key]}"
        if also_condition:
            ok, _ = condition_check(also_condition)(obj)
            if ok:
                return True, f"{also_condition}=True"
        if obj is None:
            return False, "not found"
        return False, f"{key} {status.get(key) or '(none)'}; {kube.condition_summary(obj)}"

    return check


def _build_check(obj: dict[str, Any] | None) -> tuple[bool, str]:
    phase = ((obj or {}).get("status") or {}).get("phase")
    if phase == "Complete":
        return True, "phase Complete"
    if phase in ("Failed", "Error", "Cancelled"):
        message = ((obj or {}).get("status") or {}).get("message") or ""
        raise BootstrapError(f"{object_ref(obj or {})} {phase.lower()}: {message}".rstrip(": "))
    return False, f"phase {phase or '(none)'}"


def readiness_waits(obj: dict[str, Any]) -> list[Wait]:
    """The waits that say an applied object is ready (empty for objects that are ready once stored)."""
    meta = obj["metadata"]
    kind, api_version = obj["kind"], obj["apiVersion"]
    name, namespace = meta["name"], meta.get("namespace")

    def wait(what: str, check: Callable) -> Wait:
        return Wait(api_version, kind, name, namespace, what, check)

    if kind == "Namespace":
        return [wait("phase Active", _status_value_check("phase", "Active"))]
    if kind == "ClusterPolicy":
        return [wait("state ready", _status_value_check("state", "ready"))]
    if kind == "DataScienceCluster":
        return [wait("phase Ready", _status_value_check("phase", "Ready", also_condition="Ready"))]
    if kind == "DSCInitialization":
        return [wait("phase Ready", _status_value_check("phase", "Ready"))]
    if kind == "VirtualMachine":
        return [wait("Ready", _status_value_check("ready", "true", also_condition="Ready"))]
    if kind == "Job":
        return [wait("Complete", condition_check("Complete", fail_on="Failed"))]
    cond = _READY_CONDITION.get(_kind_key(obj))
    if cond:
        return [wait(f"{cond}=True", condition_check(cond))]
    return []


def _bootstrap_patch(existing: dict[str, Any], obj: dict[str, Any]) -> dict[str, Any]:
    """What the bootstrap sends to an object that exists (``{}``: leave it as it is).

    Create-only kinds (a Job's template is immutable) are left alone; otherwise the object as a
    merge patch, also removing what ``existing`` has under the fields the plan owns whole
    (``_REPLACED_FIELDS``); everything else others set stays (:func:`infra.kube.overlay_patch`).
    """
    if (_group(obj["apiVersion"]), obj["kind"]) in _CREATE_ONLY:
        return {}
    body = _replacing_patch(obj, existing)
    return kube.overlay_patch(existing, obj) if body is obj else body


def _bootstrap_error(exc: kube.KubeError) -> BootstrapError:
    """The bootstrap's error for a failure of the Kubernetes layer (same message)."""
    return exc if isinstance(exc, BootstrapError) else BootstrapError(str(exc))


def _replacing_patch(obj: dict[str, Any], existing: dict[str, Any] | None) -> dict[str, Any]:
    """``obj`` as a merge patch that also removes what ``existing`` has under its replaced fields."""
    fields = _REPLACED_FIELDS.get((_group(obj["apiVersion"]), obj["kind"]), [])
    if existing is None or not fields:
        return obj
    body = obj
    for path in fields:
        have, want = existing, obj
        for key in path:
            have = have.get(key) if isinstance(have, dict) else None
            want = want.get(key) if isinstance(want, dict) else None
        if not isinstance(have, dict) or not isinstance(want, dict):
            continue
        stale = {key: None for key in have if key not in want}
        if stale:
            if body is obj:
                body = copy.deepcopy(obj)
            target = body
            for key in path:
                target = target[key]
            target.update(stale)
    return body


# --------------------------------------------------------------------------------------------
# Generated secrets


@dataclass
class Namespaces:
    """Where the app and the model server live (from the ``vinspect.io/role`` labels)."""

    app: str = "vinspect"
    models: str | None = "vinspect-models"

    @classmethod
    def from_objects(cls, objects: Iterable[dict[str, Any]]) -> "Namespaces":
        """Read the namespaces from the rendered Namespace objects' role labels."""
        found: dict[str, str] = {}
        for obj in objects:
            if obj["kind"] == "Namespace":
                role = (obj["metadata"].get("labels") or {}).get(APP_ROLE_LABEL)
                if role:
                    found[role] = obj["metadata"]["name"]
        return cls(app=found.get("app", cls.app), models=found.get("models"))


def _secret(name: str, namespace: str, data: dict[str, str], *, labels=None, annotations=None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                "app.kubernetes.io/part-of": "vinspect",
                "app.kubernetes.io/managed-by": "vinspect",
                **(labels or {}),
            },
            "annotations": dict(annotations or {}),
        },
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


def _decode(secret: dict[str, Any]) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}


def minio_credentials(token: Callable[[int], str] = secrets.token_urlsafe) -> dict[str, str]:
    """Fresh Minio root credentials (access key 16 characters, secret key 32: Minio's limits are 3-20 / 8-40)."""
    return {"MINIO_ROOT_USER": token(12), "MINIO_ROOT_PASSWORD": token(24)}


def data_connection(namespace: str, app_namespace: str, creds: dict[str, str]) -> dict[str, Any]:
    """The OpenShift AI S3 data connection for the models bucket, from the Minio credentials.

    Its keys are the ones ``S3Settings`` reads and KServe's storage initializer understands.
    Annotated for both connection APIs: the legacy ``opendatahub.io/connection-type`` (OpenShift
    AI before 2.16, and the dashboard's list of data connections) and the Connections API's
    ``opendatahub.io/connection-type-protocol`` with its deprecated twin
    ``opendatahub.io/connection-type-ref``, which odh-model-controller's webhook reads to inject
    a connection into an InferenceService (opendatahub-io/odh-model-controller, Go package
    ``connectionapi``: ``AnnotationConnectionTypeProtocol`` "holds the connection type on the
    Secret (s3, uri, oci)", ``AnnotationConnectionTypeRef`` its deprecated equivalent).
    """
    return _secret(
        DATA_CONNECTION_SECRET,
        namespace,
        {
            "AWS_ACCESS_KEY_ID": creds["MINIO_ROOT_USER"],
            "AWS_SECRET_ACCESS_KEY": creds["MINIO_ROOT_PASSWORD"],
            "AWS_S3_ENDPOINT": f"http://minio.{app_namespace}.svc.cluster.local:{MINIO_PORT}",
            "AWS_DEFAULT_REGION": DEFAULT_REGION,
            "AWS_S3_BUCKET": MODELS_BUCKET,
        },
        labels={"opendatahub.io/dashboard": "true", "opendatahub.io/managed": "true"},
        annotations={**DATA_CONNECTION_ANNOTATIONS, "openshift.io/display-name": "models"},
    )


def scoped_s3_connection(name: str, namespace: str, creds: dict[str, str]) -> dict[str, Any]:
    """A runtime client's S3 Secret: its own Minio user (see ``SCOPED_S3_SECRETS``), not root.

    Holds every key ``S3Settings`` needs, the data bucket included (the bucket its Minio policy
    names), so that a Deployment takes all of its S3 settings from one place.

    Args:
        name: The Secret's name, a key of ``SCOPED_S3_SECRETS``.
        namespace: The application project (where Minio runs).
        creds: ``AWS_ACCESS_KEY_ID`` and ``AWS_SECRET_ACCESS_KEY`` of the Minio user.
    """
    return _secret(
        name,
        namespace,
        {
            "AWS_ACCESS_KEY_ID": creds["AWS_ACCESS_KEY_ID"],
            "AWS_SECRET_ACCESS_KEY": creds["AWS_SECRET_ACCESS_KEY"],
            "AWS_S3_ENDPOINT": f"http://minio.{namespace}.svc.cluster.local:{MINIO_PORT}",
            "AWS_DEFAULT_REGION": DEFAULT_REGION,
            "VINSPECT_DATA_BUCKET": DATA_BUCKET,
        },
    )


def _generated_steps(objects: list[dict[str, Any]], ns: Namespaces) -> list[Step]:
    names = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objects}
    steps = []
    if ("Deployment", ns.app, "minio") in names:
        keys = ["MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"]
        steps.append(
            Step(
                "generate",
                _secret(MINIO_SECRET, ns.app, dict.fromkeys(keys, "")),
                note="Minio root credentials (secrets.token_urlsafe), kept if present",
            )
        )
        for namespace in [ns.app] + ([ns.models] if ns.models else []):
            steps.append(
                Step(
                    "generate",
                    data_connection(namespace, ns.app, dict.fromkeys(keys, "")),
                    note=f"S3 data connection from {MINIO_SECRET}",
                    params={"app_namespace": ns.app},
                )
            )
        for name, scope in SCOPED_S3_SECRETS.items():
            empty = dict.fromkeys(["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"], "")
            steps.append(
                Step(
                    "generate",
                    scoped_s3_connection(name, ns.app, empty),
                    note=f"Minio user for the runtime ({scope}), kept if present",
                )
            )
    if ("Deployment", ns.app, "mlflow") in names:
        steps.append(
            Step(
                "generate",
                _secret(MLFLOW_PROXY_SECRET, ns.app, {"session_secret": ""}),
                note="cookie secret of MLflow's OAuth proxy, kept if present",
            )
        )
    if ("VirtualMachine", ns.app, "cvat") in names:
        keys = ["CVAT_USERNAME", "CVAT_PASSWORD", "CVAT_URL", "CVAT_HOST"]
        steps.append(
            Step(
                "generate",
                _secret(CVAT_SECRET, ns.app, dict.fromkeys(keys, "")),
                note="CVAT admin credentials, kept if present",
            )
        )
    return steps


# --------------------------------------------------------------------------------------------
# Plan


def optional_part(obj: dict[str, Any]) -> str | None:
    """The optional part an object belongs to (annotation ``vinspect.io/optional``), or None."""
    return (obj["metadata"].get("annotations") or {}).get(OPTIONAL_ANNOTATION) or None


def plan(objects: Iterable[dict[str, Any]], *, builds: bool = True) -> list[Phase]:
    """Order objects into phases, with the waits after each and the generated Secrets.

    Objects of an optional part (annotation ``vinspect.io/optional: <part>``, set by the kustomize
    bases of CVAT on OpenShift Virtualization and of the GPU stack) get phases of their own after
    everything else, in the same dependency order, named ``<part>: <phase>``: a part that cannot
    come up (no KVM on the nodes, no GPU) is reported and never holds back the rest.

    Args:
        objects: Rendered objects (see :func:`infra.render.render`).
        builds: Include a build step per BuildConfig.

    Returns:
        Non-empty phases in apply order.
    """
    objects = list(objects)
    ns = Namespaces.from_objects(objects)
    parts: dict[str | None, dict[str, Phase]] = {None: {name: Phase(name) for name in _PHASE_NAMES}}
    parts[None]["config"].steps.extend(_generated_steps(objects, ns))
    for obj in objects:
        part = optional_part(obj)
        if part not in parts:
            parts[part] = {name: Phase(f"{part}: {name}", optional=part) for name in _PHASE_NAMES}
        phases = parts[part]
        phases[phase_of(obj)].steps.append(Step("apply", obj, readiness_waits(obj)))
        if obj["kind"] == "BuildConfig" and builds:
            phases["builds"].steps.append(Step("build", obj, note="start a build of this repository, wait Complete"))
    for phases in parts.values():
        for phase in phases.values():
            # OpenShift AI reads its DSCInitialization before it reconciles a DataScienceCluster.
            phase.steps.sort(key=lambda step: step.obj["kind"] != "DSCInitialization")
    order = [None] + sorted(p for p in parts if p is not None)
    return [parts[part][name] for part in order for name in _PHASE_NAMES if parts[part][name].steps]


def format_plan(phases: list[Phase]) -> str:
    """The plan as text, one line per step with what is waited on. Never shows Secret values."""
    lines = []
    total = len(phases)
    for index, phase in enumerate(phases, 1):
        lines.append(f"phase {index}/{total}: {phase.name}")
        for step in phase.steps:
            crd = crd_name(step.obj["apiVersion"], step.obj["kind"]) if step.action == "apply" else None
            waits = [f"CRD {crd} Established"] if crd else []
            if step.obj["kind"] == "Subscription" and step.action == "apply":
                waits.append("CSV Succeeded")
            waits += [w.what for w in step.waits]
            if step.action == "generate":
                keys = ", ".join(sorted(step.obj.get("data") or {}))
                text = f"  generate {step.ref} [{keys}]"
            else:
                text = f"  {step.action:8s} {step.ref}"
            if step.note and step.action != "generate":
                text += f" ({step.note})"
            elif step.note:
                text += f" - {step.note}"
            if waits:
                text += f"  -> wait: {'; '.join(waits)}"
            lines.append(text)
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Apply


Builder = Callable[[dict[str, Any]], str]


class Bootstrapper:
    """Runs a plan against a cluster client.

    Args:
        client: A ``kubernetes.dynamic.DynamicClient`` (or anything with its shape).
        timeout: Seconds each wait may take before :class:`BootstrapTimeout`.
        poll_interval: Seconds between polls.
        clock: Monotonic clock (tests pass the fake cluster's).
        sleep: Sleep function (tests pass one that advances the fake cluster).
        log: Called with one line per event.
        builder: Starts a build for a BuildConfig and returns the Build's name; None skips builds.
        rebuild: Build even when the image stream already has its output tag.
        token: Random-token function for generated credentials.
        on_step: Called with ``(step ref, outcome)`` after each step (progress bars).
    """

    def __init__(
        self,
        client: Any,
        *,
        timeout: float = 900.0,
        poll_interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        log: Callable[[str], None] = lambda line: None,
        builder: Builder | None = None,
        rebuild: bool = False,
        token: Callable[[int], str] = secrets.token_urlsafe,
        on_step: Callable[[str, str], None] = lambda ref, outcome: None,
    ) -> None:
        self.client = client
        self.on_step = on_step
        self.timeout = timeout
        self.poll_interval = poll_interval
        self.clock = clock
        self.sleep = sleep
        self.log = log
        self.builder = builder
        self.rebuild = rebuild
        self.token = token
        self._minio: dict[str, str] | None = None
        # OpenShift AI's applications namespace (its runtime templates live there); read from the
        # plan's DSCInitialization when it has one.
        self.applications_namespace = APPLICATIONS_NAMESPACE

    # -- client helpers ----------------------------------------------------------------------

    def _resource(self, api_version: str, kind: str) -> Any:
        return kube.resource(self.client, api_version, kind)

    def _get(self, api_version: str, kind: str, name: str, namespace: str | None) -> dict[str, Any] | None:
        return kube.get(self.client, api_version, kind, name, namespace)

    def _apply(self, obj: dict[str, Any]) -> str:
        return kube.apply(self.client, obj, patch=_bootstrap_patch)[1]

    # -- waiting -----------------------------------------------------------------------------

    def wait_all(self, waits: list[Wait], *, quiet: bool = False) -> None:
        """Poll until every wait passes; raise :class:`BootstrapTimeout` naming the first one left.

        Args:
            waits: What to wait for.
            quiet: Log nothing when everything is ready at the first poll.
        """
        try:
            kube.wait(
                self.client,
                waits,
                timeout=self.timeout,
                poll_interval=self.poll_interval,
                clock=self.clock,
                sleep=self.sleep,
                log=self.log,
                quiet=quiet,
            )
        except kube.KubeTimeout as exc:
            raise BootstrapTimeout(str(exc)) from exc
        except kube.KubeError as exc:
            raise _bootstrap_error(exc) from exc

    def _crd_wait(self, api_version: str, kind: str) -> Wait | None:
        name = crd_name(api_version, kind)
        if name is None:
            return None
        return Wait(
            "apiextensions.k8s.io/v1",
            "CustomResourceDefinition",
            name,
            None,
            f"Established (serving {kind})",
            condition_check("Established"),
        )

    def _wait_kind_served(self, api_version: str, kind: str) -> None:
        # The CRD can be Established a moment before discovery lists the kind: poll both.
        crd = self._crd_wait(api_version, kind)
        if crd is None:
            return

        def served(obj: dict[str, Any] | None) -> tuple[bool, str]:
            ok, status = crd.check(obj)
            if not ok:
                return False, status
            try:
                self._resource(api_version, kind)
            except kube.KindNotServed:
                return False, "Established, not yet in API discovery"
            return True, status

        self.wait_all([Wait(crd.api_version, crd.kind, crd.name, None, crd.what, served)], quiet=True)

    def _subscription_waits(self, sub: dict[str, Any]) -> list[Wait]:
        name, namespace = sub["metadata"]["name"], sub["metadata"]["namespace"]

        def csv_succeeded(obj: dict[str, Any] | None) -> tuple[bool, str]:
            status = (obj or {}).get("status") or {}
            csv = status.get("installedCSV") or status.get("currentCSV")
            if not csv:
                return False, f"no CSV yet (state {status.get('state') or '(none)'}; {kube.condition_summary(obj)})"
            csv_obj = self._get("operators.coreos.com/v1alpha1", "ClusterServiceVersion", csv, namespace)
            phase = ((csv_obj or {}).get("status") or {}).get("phase")
            if phase == "Succeeded":
                return True, f"CSV {csv} Succeeded"
            reason = ((csv_obj or {}).get("status") or {}).get("message") or ""
            return False, f"CSV {csv} phase {phase or '(none)'}{': ' + reason if reason else ''}"

        return [Wait(sub["apiVersion"], "Subscription", name, namespace, "installed (CSV Succeeded)", csv_succeeded)]

    # -- generated secrets -------------------------------------------------------------------

    def _generate(self, step: Step) -> str:
        meta = step.obj["metadata"]
        name, namespace = meta["name"], meta["namespace"]
        existing = self._get("v1", "Secret", name, namespace)
        if name == MINIO_SECRET:
            if existing:
                self._minio = _decode(existing)
                return "unchanged"
            self._minio = minio_credentials(self.token)
            return self._apply(_secret(name, namespace, self._minio))
        if name == DATA_CONNECTION_SECRET:
            if self._minio is None:
                raise BootstrapError(f"{step.ref}: built from Secret {MINIO_SECRET}, which was not generated first")
            desired = data_connection(namespace, step.params["app_namespace"], self._minio)
            # Metadata too: a connection made by an older bootstrap gains the newer annotations.
            if (
                existing
                and _decode(existing) == _decode(desired)
                and kube.contains(existing["metadata"], {k: desired["metadata"][k] for k in ("labels", "annotations")})
            ):
                return "unchanged"
            return self._apply(desired)
        if name in SCOPED_S3_SECRETS:
            if existing:
                return "unchanged"
            # Same lengths as the root user's: within Minio's 3-20 / 8-40 characters.
            creds = {"AWS_ACCESS_KEY_ID": self.token(12), "AWS_SECRET_ACCESS_KEY": self.token(24)}
            return self._apply(scoped_s3_connection(name, namespace, creds))
        if name == MLFLOW_PROXY_SECRET:
            if existing:
                return "unchanged"
            # oauth-proxy takes a cookie secret of 16, 24 or 32 bytes: 24 random bytes -> 32 characters.
            return self._apply(_secret(name, namespace, {"session_secret": self.token(24)}))
        if name == CVAT_SECRET:
            if existing:
                return "unchanged"
            return self._apply(_secret(name, namespace, self._cvat_values(namespace)))
        raise BootstrapError(f"{step.ref}: no generator for this Secret")

    def _cvat_values(self, namespace: str) -> dict[str, str]:
        ingress = self._get("config.openshift.io/v1", "Ingress", "cluster", None)
        domain = ((ingress or {}).get("spec") or {}).get("domain")
        if not domain:
            raise BootstrapError(
                "cannot name the CVAT host: Ingress config 'cluster' (config.openshift.io/v1) has no spec.domain"
            )
        return {
            "CVAT_USERNAME": "admin",
            "CVAT_PASSWORD": self.token(24),
            "CVAT_URL": f"http://cvat.{namespace}.svc.cluster.local:8080",
            # OpenShift's default host for Route "cvat": <route>-<namespace>.<apps domain>.
            "CVAT_HOST": f"cvat-{namespace}.{domain}",
        }

    # -- builds ------------------------------------------------------------------------------

    def _build(self, step: Step) -> tuple[str, list[Wait]]:
        bc = step.obj
        namespace = bc["metadata"]["namespace"]
        output = bc["spec"]["output"]["to"]["name"]
        stream, _, tag = output.partition(":")
        if self.builder is None:
            return "skipped (no builder)", []
        if not self.rebuild:
            image_stream = self._get("image.openshift.io/v1", "ImageStream", stream, namespace)
            tags = [t.get("tag") for t in ((image_stream or {}).get("status") or {}).get("tags") or []]
            if (tag or "latest") in tags:
                return "unchanged (image present)", []
        build_name = self.builder(bc)
        self.log(f"  build    {bc['metadata']['name']} -> Build {build_name}")
        return "started", [Wait("build.openshift.io/v1", "Build", build_name, namespace, "Complete", _build_check)]

    # -- serving runtime image ---------------------------------------------------------------

    def _runtime_from_template(self, obj: dict[str, Any]) -> dict[str, Any]:
        """The ServingRuntime with the image of the cluster's own template of the same name.

        OpenShift AI keeps its runtime templates (``kserve-ovms``...) as OpenShift Templates in its
        applications namespace, their images resolved from the operator's ``RELATED_IMAGE_*``
        settings for the installed release; a runtime that names its template
        (``opendatahub.io/template-name``) runs what that release tested. Without a template
        (another distribution, or the dashboard component off), the pinned image stays.
        """
        template_name = (obj["metadata"].get("annotations") or {}).get("opendatahub.io/template-name")
        if not template_name:
            return obj
        template = self._get("template.openshift.io/v1", "Template", template_name, self.applications_namespace)
        runtimes = [o for o in (template or {}).get("objects") or [] if o.get("kind") == "ServingRuntime"]
        if not runtimes:
            return obj
        images = {c.get("name"): c.get("image") for c in runtimes[0].get("spec", {}).get("containers") or []}
        out = copy.deepcopy(obj)
        for container in out["spec"].get("containers") or []:
            image = images.get(container.get("name"))
            if image and "$(" not in image and image != container.get("image"):
                self.log(
                    f"  image    {object_ref(obj)} container {container['name']}: {image} "
                    f"(from Template {self.applications_namespace}/{template_name})"
                )
                container["image"] = image
        return out

    # -- preconditions -----------------------------------------------------------------------

    def check_default_storage_class(self, phases: list[Phase]) -> None:
        """Refuse to start when claims without a class would wait for a default that does not exist.

        A PersistentVolumeClaim without ``storageClassName`` binds only through the default
        StorageClass (annotation ``storageclass.kubernetes.io/is-default-class: "true"``); with none,
        Minio, MLflow and the image registry would stay Pending and the bootstrap would time out
        far from the cause. Single-node OpenShift has no storage until LVM Storage (LVMS) is installed.

        Raises:
            BootstrapError: No default StorageClass; the message names the claims and the fix.
        """
        claims = [
            step.ref
            for phase in phases
            for step in phase.steps
            if step.action == "apply"
            and step.obj["kind"] == "PersistentVolumeClaim"
            and not (step.obj.get("spec") or {}).get("storageClassName")
        ]
        if not claims:
            return
        try:
            listed = kube.as_dict(self._resource("storage.k8s.io/v1", "StorageClass").get()) or {}
        except kube.KubeError as exc:
            raise BootstrapError(f"cannot list StorageClasses (storage.k8s.io/v1): {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - the client raises its own types; its message is kept
            raise BootstrapError(f"cannot list StorageClasses (storage.k8s.io/v1): {kube.api_message(exc)}") from exc
        items = listed.get("items") or []
        defaults = [
            sc["metadata"]["name"]
            for sc in items
            if any(
                ((sc["metadata"].get("annotations") or {}).get(key) or "").lower() == "true"
                for key in DEFAULT_CLASS_ANNOTATIONS
            )
        ]
        if defaults:
            self.log(f"default StorageClass: {', '.join(defaults)}")
            return
        names = ", ".join(sc["metadata"]["name"] for sc in items) or "none at all"
        raise BootstrapError(
            f"no default StorageClass (classes: {names}); these claims would stay Pending: {', '.join(claims)}. "
            "On single-node OpenShift install the LVM Storage operator (lvms-operator) and create an LVMCluster "
            "(its class lvms-<device class> is made the default); otherwise mark a class default: "
            'oc patch storageclass NAME -p \'{"metadata":{"annotations":'
            '{"storageclass.kubernetes.io/is-default-class":"true"}}}\''
        )

    # -- run ---------------------------------------------------------------------------------

    def _run_phase(self, phase: Phase, report: Report) -> None:
        try:
            self._apply_phase(phase, report)
        except kube.KubeError as exc:
            raise _bootstrap_error(exc) from exc

    def _apply_phase(self, phase: Phase, report: Report) -> None:
        waits: list[Wait] = []
        for step in phase.steps:
            if step.action == "generate":
                outcome = self._generate(step)
            elif step.action == "build":
                outcome, build_waits = self._build(step)
                waits += build_waits
            else:
                self._wait_kind_served(step.obj["apiVersion"], step.obj["kind"])
                obj = self._runtime_from_template(step.obj) if step.obj["kind"] == "ServingRuntime" else step.obj
                outcome = self._apply(obj)
                if step.obj["kind"] == "Subscription":
                    waits += self._subscription_waits(step.obj)
                waits += step.waits
            self.log(f"  {outcome:8s} {step.ref}")
            report.results.append((phase.name, step.ref, outcome))
            self.on_step(step.ref, outcome)
        if waits:
            self.wait_all(waits)

    def run(self, phases: list[Phase]) -> Report:
        """Apply the phases in order, waiting after each. Returns what was done."""
        report = Report()
        started = self.clock()
        self.check_default_storage_class(phases)
        for phase in phases:
            for step in phase.steps:
                if step.obj["kind"] == "DSCInitialization":
                    self.applications_namespace = (
                        step.obj["spec"].get("applicationsNamespace") or self.applications_namespace
                    )
        for index, phase in enumerate(phases, 1):
            if phase.optional in report.skipped:
                self.log(
                    f"phase {index}/{len(phases)}: {phase.name} skipped (an earlier {phase.optional} phase failed)"
                )
                report.results.extend((phase.name, step.ref, "skipped") for step in phase.steps)
                continue
            self.log(f"phase {index}/{len(phases)}: {phase.name}")
            try:
                self._run_phase(phase, report)
            except BootstrapError as exc:
                if phase.optional is None:
                    raise
                # An optional part (CVAT VM, GPU stack) failed: say so, keep going with the rest.
                report.skipped[phase.optional] = f"{phase.name}: {exc}"
                self.log(f"  skipped  optional part {phase.optional}: {exc}")
        report.elapsed_s = self.clock() - started
        return report


def bootstrap(
    client: Any,
    objects: Iterable[dict[str, Any]],
    *,
    builds: bool = True,
    **options: Any,
) -> Report:
    """Plan and apply ``objects`` through ``client`` (see :class:`Bootstrapper` for ``options``).

    Raises:
        BootstrapTimeout: A wait ran out of time (the message names the object and its status).
        BootstrapError: The API refused an object, or a Job or build failed.
    """
    return Bootstrapper(client, **options).run(plan(objects, builds=builds))
