"""The runtime's cluster wiring: S3 for the claim check and the camera, the camera's source.

The processor stores annotated images in S3 and the dashboard serves them from there; the camera
can read real frames from an S3 prefix. Each gets its S3 settings from a Secret that
``vinspect infra bootstrap`` generates, holding a Minio user the bucket Job creates with only
what that client does. These tests resolve each container's environment the way the kubelet does
(``envFrom`` in order, then ``env`` on top) from the rendered manifests and the Secrets the
bootstrap generates on the fake cluster, and build the real settings classes from it.
"""

from __future__ import annotations

import os

import pytest

from infra.bootstrap import ANNOTATED_SECRET, CAMERA_SECRET, DASHBOARD_SECRET, MINIO_SECRET
from tests.fake_kube import FakeCluster
from tests.infra.conftest import find, run_bootstrap, secret_values
from tests.infra.runtime_env import S3_ENV, _allows, _container, _settings, resolved_env

RUNTIME_S3 = [
    ("Service", "image-processor", "image-processor", ANNOTATED_SECRET),
    ("Deployment", "dashboard", "dashboard", DASHBOARD_SECRET),
    ("Deployment", "camera", "camera", CAMERA_SECRET),
]


@pytest.mark.parametrize("kind, name, container, secret", RUNTIME_S3, ids=[r[1] for r in RUNTIME_S3])
def test_runtime_pods_reach_the_data_bucket_with_their_own_minio_user(
    rendered, cluster, monkeypatch, kind, name, container, secret
):
    from vinspect.settings import RuntimeSettings, S3Settings

    objects = rendered["default"]
    obj = find(objects, kind, name)
    spec = _container(obj, container)
    # Every S3 setting from the one scoped Secret: none from the ConfigMap, none missing.
    refs = {
        e["name"]: e["valueFrom"]["secretKeyRef"]["name"]
        for e in spec.get("env") or []
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert {k: refs.get(k) for k in S3_ENV} == dict.fromkeys(S3_ENV, secret)

    env = resolved_env(objects, cluster, spec)
    s3 = _settings(S3Settings, env, monkeypatch)
    runtime = _settings(RuntimeSettings, env, monkeypatch)
    assert s3.endpoint_url == "http://minio.vinspect.svc.cluster.local:9000"
    assert s3.data_bucket == find(objects, "ConfigMap", "vinspect-runtime")["data"]["VINSPECT_DATA_BUCKET"]
    assert runtime.annotated_prefix == "annotated"
    # Not Minio's root user: a key of its own.
    root = secret_values(cluster, MINIO_SECRET)
    assert s3.access_key_id.get_secret_value() not in (root["MINIO_ROOT_USER"], "")
    assert s3.secret_access_key.get_secret_value() not in (root["MINIO_ROOT_PASSWORD"], "")


def test_the_scoped_keys_are_kept_across_bootstrap_runs(rendered):
    fake = FakeCluster(delay=1.0)

    def run() -> dict[str, dict[str, str]]:
        run_bootstrap(fake, rendered["default"])
        return {name: secret_values(fake, name) for name in (ANNOTATED_SECRET, DASHBOARD_SECRET, CAMERA_SECRET)}

    before = run()
    assert len({values["AWS_ACCESS_KEY_ID"] for values in before.values()}) == 3
    # Rotating them would leave the bucket Job's users (a Job runs once) with the old secrets.
    assert run() == before


# --- the bucket Job's users and policies -------------------------------------------------------


def test_bucket_job_creates_a_minio_user_per_scopedsecret_values(cluster, bucket_job_run):
    calls, policies, output = bucket_job_run
    for secret, policy in (
        (ANNOTATED_SECRET, "vinspect-annotated"),
        (DASHBOARD_SECRET, "vinspect-dashboard"),
        (CAMERA_SECRET, "vinspect-camera"),
    ):
        values = secret_values(cluster, secret)
        key, password = values["AWS_ACCESS_KEY_ID"], values["AWS_SECRET_ACCESS_KEY"]
        assert f"admin user add vinspect {key} {password}" in calls
        assert f"admin policy attach vinspect {policy} --user {key}" in calls
        assert policy in policies
        # The policy is created before it is attached, the user before it gets the policy.
        policy_file = next(c.split()[-1] for c in calls if policy + " " in c and "create" in c)
        assert calls.index(f"admin policy create vinspect {policy} {policy_file}") < calls.index(
            f"admin policy attach vinspect {policy} --user {key}"
        )
        assert password not in output and key not in output


def test_processor_key_only_writes_annotated_images(cluster, bucket_job_run):
    # AnnotatedImageStore only ever calls put_object.
    _, policies, _ = bucket_job_run
    policy = policies["vinspect-annotated"]
    bucket = secret_values(cluster, ANNOTATED_SECRET)["VINSPECT_DATA_BUCKET"]
    key = f"arn:aws:s3:::{bucket}/annotated/2026-12-06/camera-0/ev-1-abc.jpg"
    assert _allows(policy, "s3:PutObject", key)
    assert not _allows(policy, "s3:ListBucket", f"arn:aws:s3:::{bucket}", prefix="annotated/2026-12-06/")
    for action in ("s3:GetObject", "s3:DeleteObject", "s3:PutBucketPolicy", "s3:CreateBucket"):
        assert not _allows(policy, action, key)
    for other in (
        f"arn:aws:s3:::{bucket}/datasets/train.zip",
        f"arn:aws:s3:::{bucket}/annotatedx/a.jpg",
        "arn:aws:s3:::models/metal-nut/1/model.onnx",
        "arn:aws:s3:::mlflow/artifacts/x",
    ):
        assert not _allows(policy, "s3:GetObject", other) and not _allows(policy, "s3:PutObject", other)
    assert not _allows(policy, "s3:ListBucket", f"arn:aws:s3:::{bucket}", prefix="datasets/")
    assert not _allows(policy, "s3:ListBucket", "arn:aws:s3:::models", prefix="annotated/")


def test_dashboard_key_only_reads_annotated_images(cluster, bucket_job_run):
    # The dashboard's Route is public: its key must not be able to write or delete anything.
    _, policies, _ = bucket_job_run
    policy = policies["vinspect-dashboard"]
    bucket = secret_values(cluster, DASHBOARD_SECRET)["VINSPECT_DATA_BUCKET"]
    key = f"arn:aws:s3:::{bucket}/annotated/2026-12-06/camera-0/ev-1-abc.jpg"
    assert _allows(policy, "s3:GetObject", key)
    assert _allows(policy, "s3:ListBucket", f"arn:aws:s3:::{bucket}", prefix="annotated/x")
    for action in ("s3:PutObject", "s3:DeleteObject"):
        assert not _allows(policy, action, key)
    assert not _allows(policy, "s3:GetObject", f"arn:aws:s3:::{bucket}/datasets/train.zip")
    assert not _allows(policy, "s3:ListBucket", f"arn:aws:s3:::{bucket}", prefix="datasets/")


def test_camera_key_reads_only_the_data_bucket(cluster, bucket_job_run):
    _, policies, _ = bucket_job_run
    policy = policies["vinspect-camera"]
    bucket = secret_values(cluster, CAMERA_SECRET)["VINSPECT_DATA_BUCKET"]
    assert _allows(policy, "s3:GetObject", f"arn:aws:s3:::{bucket}/frames/0001.jpg")
    assert _allows(policy, "s3:ListBucket", f"arn:aws:s3:::{bucket}", prefix="frames/")
    for action in ("s3:PutObject", "s3:DeleteObject"):
        assert not _allows(policy, action, f"arn:aws:s3:::{bucket}/frames/0001.jpg")
    assert not _allows(policy, "s3:GetObject", "arn:aws:s3:::models/metal-nut/1/model.onnx")
    assert not _allows(policy, "s3:ListBucket", "arn:aws:s3:::mlflow", prefix="")


# --- the camera's source ----------------------------------------------------------------------


def test_cluster_camera_is_synthetic_until_a_source_is_configured(rendered, cluster, monkeypatch):
    from vinspect.settings import RuntimeSettings

    objects = rendered["default"]
    camera = find(objects, "Deployment", "camera")
    spec = _container(camera, "camera")
    # No source in the args: it comes from the ConfigMap, so that setting it needs no new manifest.
    assert not [a for a in spec["args"] if not a.startswith("--")]
    assert {"configMapRef": {"name": "vinspect-camera"}} in spec["envFrom"]
    env = resolved_env(objects, cluster, spec)
    assert env["VINSPECT_CAMERA_SOURCE"] == ""
    assert _settings(RuntimeSettings, env, monkeypatch).camera_source == ""


def test_the_camera_command_streams_from_the_configured_source(rendered, cluster, monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from vinspect.cli import app

    objects = rendered["default"]
    spec = _container(find(objects, "Deployment", "camera"), "camera")
    env = resolved_env(objects, cluster, spec)
    env["VINSPECT_CAMERA_SOURCE"] = str(tmp_path / "frames")  # a mounted folder, empty here
    (tmp_path / "frames").mkdir()
    for key in list(os.environ):
        if key.startswith(("AWS_", "VINSPECT_", "KAFKA_")):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)  # no project .env
    # The Deployment's own arguments: the source must come from the setting, and an empty folder
    # is refused by name before anything is produced (no Kafka needed to get there).
    # --count=1: should the source be ignored, one synthetic frame fails in 30 s instead of a
    # --loop producing forever.
    result = CliRunner().invoke(app, ["serve", "camera", *spec["args"], "--count=1"], env=env)
    assert result.exit_code == 2, result.output
    assert "VINSPECT_CAMERA_SOURCE" in result.output and "frames" in result.output


# --- image size against the cluster's Kafka limits -------------------------------------------


class _RecordingProducer:
    """Records produce calls; stands in where no broker is involved (the frame is refused first)."""

    def __init__(self):
        self.records: list[bytes] = []

    def produce(self, topic, value, key=None, headers=None, on_delivery=None):
        self.records.append(value)
        if on_delivery:
            on_delivery(None, None)

    def poll(self, _timeout):
        return 0

    def flush(self, _timeout):
        return 0


def test_camera_skips_a_frame_the_topic_would_refuse(rendered, monkeypatch):
    import numpy as np

    from serving.camera import Frame, encode_jpeg, produce_frames
    from vinspect.settings import RuntimeSettings

    limit = _settings(
        RuntimeSettings, find(rendered["default"], "ConfigMap", "vinspect-runtime")["data"], monkeypatch
    ).max_image_bytes
    assert limit == 4194304
    rng = np.random.default_rng(0)
    small = np.zeros((64, 64, 3), np.uint8)
    noisy = rng.integers(0, 256, (1800, 1800, 3), dtype=np.uint8)  # noise does not compress
    assert len(encode_jpeg(noisy, quality=100)) > limit
    producer = _RecordingProducer()
    frames = iter(
        [
            Frame("small.jpg", "good", encode_jpeg(small)),
            Frame("huge.jpg", "good", encode_jpeg(noisy, quality=100)),
            Frame("small2.jpg", "good", encode_jpeg(small)),
        ]
    )
    sent = produce_frames(producer, "visual-inspection-images", frames, fps=0, quality=100, max_record_bytes=limit)
    assert sent == 2 and all(len(v) < limit for v in producer.records)
