"""The loop overlays' workloads wired like the rest: hardened pods, own S3 keys, resolved images.

The review-push CronJob (overlays ``loop`` and ``retrain-on-drift``) runs
``vinspect review push``: it reads the review queue the processor fills under ``review/`` in the
data bucket and turns it into a CVAT task. These tests hold it to what the other in-cluster
workloads already do (base/camera, base/minio's bucket Job) and check that the Minio keys of the
review push and of the processor allow exactly the S3 calls :class:`serving.review.ReviewStore`
makes for each of them.
"""

from __future__ import annotations

import json
import re

import pytest

from infra.bootstrap import ANNOTATED_SECRET, DATA_CONNECTION_SECRET, MINIO_SECRET, REVIEW_SECRET
from tests.infra.conftest import find, secret_values
from tests.infra.runtime_env import S3_ENV, _allows, _settings, resolved_env

LOOP_OVERLAYS = ("loop", "retrain-on-drift")


def _pod(cronjob: dict) -> dict:
    return cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def _review_push(objects: list[dict]) -> tuple[dict, dict, dict]:
    cronjob = find(objects, "CronJob", "review-push")
    pod = _pod(cronjob)
    container = next(c for c in pod["containers"] if c["name"] == "review-push")
    return cronjob, pod, container


# --- the pod ------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", LOOP_OVERLAYS)
def test_review_push_pod_is_hardened_like_the_other_workloads(rendered, overlay):
    _, pod, container = _review_push(rendered[overlay])
    assert pod["securityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    # It calls S3 and CVAT only, never the Kubernetes API.
    assert pod["automountServiceAccountToken"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    # The frames of a task are staged in a temporary folder: /tmp must be writable, and $HOME
    # (caches) must point there rather than at the read-only root.
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert {"name": "HOME", "value": "/tmp"} in container["env"]


@pytest.mark.parametrize("overlay", LOOP_OVERLAYS)
def test_review_push_image_is_the_in_cluster_build_resolved_by_its_trigger(rendered, overlay):
    objects = rendered[overlay]
    cronjob, _, container = _review_push(objects)
    triggers = json.loads(cronjob["metadata"]["annotations"]["image.openshift.io/triggers"])
    assert len(triggers) == 1
    trigger = triggers[0]
    # The fieldPath must select this very container of the job template, or the controller
    # patches nothing and the pod keeps the floating :latest.
    match = re.fullmatch(
        r'spec\.jobTemplate\.spec\.template\.spec\.containers\[\?\(@\.name=="([^"]+)"\)\]\.image', trigger["fieldPath"]
    )
    assert match and match.group(1) == container["name"]
    assert trigger["from"]["kind"] == "ImageStreamTag"
    stream_tag = trigger["from"]["name"]
    assert container["image"].endswith(f"/{cronjob['metadata']['namespace']}/{stream_tag}")
    outputs = {b["spec"]["output"]["to"]["name"] for b in objects if b["kind"] == "BuildConfig"}
    assert stream_tag in outputs, f"no BuildConfig of overlay {overlay} builds {stream_tag}"


# --- its S3 key ---------------------------------------------------------------------------------


def test_review_push_takes_every_s3_setting_from_its_own_key(rendered, cluster, monkeypatch):
    from vinspect.settings import S3Settings

    objects = rendered["loop"]
    _, _, container = _review_push(objects)
    refs = {
        e["name"]: e["valueFrom"]["secretKeyRef"]["name"]
        for e in container.get("env") or []
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert {k: refs.get(k) for k in S3_ENV} == dict.fromkeys(S3_ENV, REVIEW_SECRET)
    # Not the models bucket's data connection (its key may do anything in every bucket).
    sources = [s.get("secretRef", {}).get("name") for s in container.get("envFrom") or []]
    assert DATA_CONNECTION_SECRET not in sources and DATA_CONNECTION_SECRET not in refs.values()

    env = resolved_env(objects, cluster, container)
    s3 = _settings(S3Settings, env, monkeypatch)
    assert s3.endpoint_url == "http://minio.vinspect.svc.cluster.local:9000"
    assert s3.data_bucket == "vinspect-data"
    review = secret_values(cluster, REVIEW_SECRET)
    others = {secret_values(cluster, name)["AWS_ACCESS_KEY_ID"] for name in (ANNOTATED_SECRET, DATA_CONNECTION_SECRET)}
    assert s3.access_key_id.get_secret_value() == review["AWS_ACCESS_KEY_ID"]
    assert review["AWS_ACCESS_KEY_ID"] not in others | {secret_values(cluster, MINIO_SECRET)["MINIO_ROOT_USER"], ""}


def test_bucket_job_creates_the_review_push_user(cluster, bucket_job_run):
    calls, policies, output = bucket_job_run
    values = secret_values(cluster, REVIEW_SECRET)
    key, password = values["AWS_ACCESS_KEY_ID"], values["AWS_SECRET_ACCESS_KEY"]
    assert "vinspect-review" in policies
    assert f"admin user add vinspect {key} {password}" in calls
    attach = f"admin policy attach vinspect vinspect-review --user {key}"
    assert attach in calls
    create = next(i for i, c in enumerate(calls) if c.startswith("admin policy create vinspect vinspect-review "))
    assert create < calls.index(attach) and calls.index(f"admin user add vinspect {key} {password}") < calls.index(
        attach
    )
    assert password not in output and key not in output


class RecordingS3:
    """An in-memory S3 bucket that records the IAM action and resource of every call.

    Only the calls :class:`serving.review.ReviewStore` makes, with the authorization each needs
    in AWS's "Actions, resources, and condition keys for Amazon S3" (and MinIO's, which follows
    it: minio/minio cmd/object-handlers.go, bucket-listobjects-handlers.go): HeadObject and
    GetObject need ``s3:GetObject`` on the object, PutObject ``s3:PutObject``, DeleteObject
    ``s3:DeleteObject``, ListObjectsV2 ``s3:ListBucket`` on the bucket with its prefix as the
    ``s3:prefix`` condition key. A missing key raises an error shaped like botocore's
    ``ClientError`` (``response["Error"]["Code"]``).
    """

    class _Missing(Exception):
        def __init__(self, code: str):
            super().__init__(code)
            self.response = {"Error": {"Code": code}}

    def __init__(self):
        self.objects: dict[tuple[str, str], bytes] = {}
        self.calls: list[tuple[str, str, str | None]] = []

    def _object(self, action: str, bucket: str, key: str) -> None:
        self.calls.append((action, f"arn:aws:s3:::{bucket}/{key}", None))

    def head_object(self, Bucket, Key):
        self._object("s3:GetObject", Bucket, Key)
        if (Bucket, Key) not in self.objects:
            raise self._Missing("404")
        return {}

    def get_object(self, Bucket, Key):
        import io

        self._object("s3:GetObject", Bucket, Key)
        if (Bucket, Key) not in self.objects:
            raise self._Missing("NoSuchKey")
        return {"Body": io.BytesIO(self.objects[(Bucket, Key)])}

    def put_object(self, Bucket, Key, Body, ContentType=None):
        self._object("s3:PutObject", Bucket, Key)
        self.objects[(Bucket, Key)] = bytes(Body)

    def delete_object(self, Bucket, Key):
        self._object("s3:DeleteObject", Bucket, Key)
        self.objects.pop((Bucket, Key), None)

    def get_paginator(self, name):
        assert name == "list_objects_v2"
        s3 = self

        class _Paginator:
            def paginate(self, Bucket, Prefix=""):
                s3.calls.append(("s3:ListBucket", f"arn:aws:s3:::{Bucket}", Prefix))
                keys = sorted(k for b, k in s3.objects if b == Bucket and k.startswith(Prefix))
                yield {"Contents": [{"Key": k} for k in keys]}

        return _Paginator()


def _denied(policy: dict, calls) -> list:
    return [c for c in calls if not _allows(policy, c[0], c[1], prefix=c[2])]


def test_processor_and_review_keys_allow_exactly_the_review_queue_calls(cluster, bucket_job_run):
    from serving.review import ReviewSelector, ReviewStore

    _, policies, _ = bucket_job_run
    bucket = secret_values(cluster, REVIEW_SECRET)["VINSPECT_DATA_BUCKET"]
    assert bucket == secret_values(cluster, ANNOTATED_SECRET)["VINSPECT_DATA_BUCKET"]
    s3 = RecordingS3()
    store = ReviewStore(s3, bucket)
    selector = ReviewSelector()
    result = {
        "camera_id": "camera-0",
        "image_id": "i-1",
        "verdict": "fail",
        "label": "good",
        "detections": [{"class_name": "scratch", "score": 0.9, "box": [1, 2, 3, 4]}],
    }

    # The processor queues a frame (phase 2 of issue 15), twice: the second is a duplicate.
    selection = selector.select(result, b"jpeg-bytes", flagged=True)
    assert selection is not None
    assert store.put(selection, result, b"jpeg-bytes") is not None
    assert store.put(selection, result, b"jpeg-bytes") is None
    store.size()
    processor_calls, s3.calls = s3.calls, []
    assert _denied(policies["vinspect-annotated"], processor_calls) == []

    # The CronJob pushes it: pending, image, mark pushed.
    items = store.pending(500)
    assert [store.image(item) for item in items] == [b"jpeg-bytes"]
    store.mark_pushed(items, 7, "https://cvat.example/tasks/7")
    assert store.pending() == []
    review_calls = s3.calls
    assert {c[0] for c in review_calls} == {"s3:ListBucket", "s3:GetObject", "s3:PutObject", "s3:DeleteObject"}
    assert _denied(policies["vinspect-review"], review_calls) == []

    # ... and nothing else: each key is refused what only the other one (or nobody) does.
    review, processor = policies["vinspect-review"], policies["vinspect-annotated"]
    obj = f"arn:aws:s3:::{bucket}/"
    for action, key in (
        ("s3:PutObject", "review/queue/x.json"),
        ("s3:PutObject", "review/images/x.jpg"),
        ("s3:PutObject", "annotated/x.jpg"),
        ("s3:GetObject", "annotated/x.jpg"),
        ("s3:DeleteObject", "review/images/x.jpg"),
        ("s3:DeleteObject", "review/pushed/7/x.json"),
        ("s3:GetObject", "datasets/train.zip"),
        ("s3:PutObject", "datasets/train.zip"),
    ):
        assert not _allows(review, action, obj + key), (action, key)
    for action, key in (
        ("s3:PutObject", "review/pushed/7/x.json"),
        ("s3:PutObject", "review/pushed-images/x.json"),
        ("s3:DeleteObject", "review/queue/x.json"),
        ("s3:GetObject", "review/images/x.jpg"),
        ("s3:GetObject", "annotated/x.jpg"),
        ("s3:GetObject", "datasets/train.zip"),
    ):
        assert not _allows(processor, action, obj + key), (action, key)
    for policy in (review, processor):
        assert not _allows(policy, "s3:ListBucket", f"arn:aws:s3:::{bucket}", prefix="")
        assert not _allows(policy, "s3:ListBucket", f"arn:aws:s3:::{bucket}", prefix="datasets/")
        assert not _allows(policy, "s3:GetObject", "arn:aws:s3:::models/metal-nut/1/model.onnx")
        assert not _allows(policy, "s3:PutObject", "arn:aws:s3:::models/metal-nut/1/model.onnx")


def test_the_processor_reads_the_served_drift_reference_with_its_own_key(rendered, cluster, bucket_job_run):
    # On KServe/OVMS every version answers as 1: the processor's ConfigMap sets it to read the
    # served version's reference the rollout publishes, and its Minio key may read that (GET and
    # HEAD), and no model file nor any version's own folder.
    from serving import drift
    from serving.feedback import BoundedWorkers, DriftWatch
    from vinspect.settings import RuntimeSettings

    config = find(rendered["default"], "ConfigMap", "vinspect-runtime")["data"]
    assert (
        RuntimeSettings(**{"VINSPECT_DRIFT_REFERENCE": config["VINSPECT_DRIFT_REFERENCE"]}).drift_reference == "serving"
    )
    bucket, model = config["AWS_S3_BUCKET"], config["VINSPECT_MODEL_NAME"]
    s3 = RecordingS3()
    ref = drift.compute_reference([({"brightness": 0.1 * i, "contrast": 0.2, "sharpness": 1.0}, []) for i in range(5)])
    s3.objects[(bucket, drift.reference_key(model, "4"))] = json.dumps(ref).encode()
    drift.publish_served_reference(s3, bucket, model, "4")  # the rollout step (root key)
    s3.calls = []
    workers = BoundedWorkers(1, 4, "t")
    watch = DriftWatch(s3, bucket, workers, source=config["VINSPECT_DRIFT_REFERENCE"], refresh_s=0.0)
    watch.use(model, "1")
    workers.close()
    assert watch.version == "4"
    workers = watch.workers = BoundedWorkers(1, 4, "t")
    watch.use(model, "1")  # the ETag check
    workers.close()
    assert {c[0] for c in s3.calls} == {"s3:GetObject"} and len(s3.calls) >= 2
    processor = bucket_job_run[1]["vinspect-annotated"]
    assert _denied(processor, s3.calls) == []
    for key in (f"{model}/4/drift-reference.json", f"{model}/4/1/model.onnx", f"{model}/serving/other.json"):
        assert not _allows(processor, "s3:GetObject", f"arn:aws:s3:::{bucket}/{key}"), key


# --- monitoring -------------------------------------------------------------------------------


def test_monitoring_is_admitted_on_the_port_the_pod_monitor_scrapes(rendered):
    # The PodMonitor names Knative's `user-port`: the processor container's port (Knative gives
    # the user container's port that name). The policy must admit exactly that number, the
    # processor must listen there, and the flows file must model it.
    from infra.connectivity import load_spec

    objects = rendered["loop"]
    monitor = find(objects, "PodMonitor", "image-processor")["spec"]["podMetricsEndpoints"]
    assert [e["port"] for e in monitor] == ["user-port"]
    container = find(objects, "Service", "image-processor", "serving.knative.dev")["spec"]["template"]["spec"][
        "containers"
    ][0]
    port = container["ports"][0]["containerPort"]
    assert f"--port={port}" in container["args"]
    policy = find(objects, "NetworkPolicy", "allow-from-monitoring")["spec"]
    assert policy["podSelector"] == {"matchLabels": {"serving.knative.dev/service": "image-processor"}}
    assert {"protocol": "TCP", "port": port} in policy["ingress"][0]["ports"]
    spec = load_spec()
    assert spec.endpoints["processor"]["ports"]["user-port"] == port
    assert any(
        (f.source, f.target, f.port, f.expect) == ("prometheus-user-workload", "processor", port, "allowed")
        for f in spec.flows
    )


# --- the retraining receiver ------------------------------------------------------------------


def test_retraining_receiver_has_a_read_only_root_and_a_writable_tmp(rendered):
    objects = rendered["retrain-on-drift"]
    pod = find(objects, "Service", "retrain-on-drift", "serving.knative.dev")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"name": "HOME", "value": "/tmp"} in container["env"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert "emptyDir" in {v["name"]: v for v in pod["volumes"]}[mounts["/tmp"]]
    # Knative admits the emptyDir only with its extension on (else the revision is refused).
    serving = find(objects, "KnativeServing", "knative-serving")
    assert serving["spec"]["config"]["features"]["kubernetes.podspec-volumes-emptydir"] == "enabled"
    # The token stays: the pipelines API authorizes the submit with it.
    assert pod.get("automountServiceAccountToken", True) is True and pod["serviceAccountName"] == "retrain-on-drift"
