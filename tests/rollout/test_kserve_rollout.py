"""Apply, wait, smoke-test and roll back against the fake Kubernetes API, with the real MLflow."""

from __future__ import annotations

import pytest
from kubernetes.client.exceptions import ApiException

from components.registry import get_champion, promote
from components.rollout import KServeTarget, RolloutError, roll_out
from components.rollout.kserve import ISVC_API, inference_service_ready, owned_patch
from components.rollout.smoke import SmokeTestError
from infra import kube
from tests.fake_kube import FakeCluster

NS = "vinspect"


def _isvc(cluster: FakeCluster, name: str) -> dict | None:
    return cluster.stored("InferenceService", NS, name)


def _deploy(cluster, mlflow_client, model_name, registered, version, **kw):
    rollout_kw = {k: kw.pop(k) for k in ("smoke", "move_alias", "drift_reference") if k in kw}
    target = KServeTarget(
        cluster,
        namespace=NS,
        storage_uri=registered[version].storage_uri,
        data_connection="aws-connection-models",
        timeout_s=kw.pop("timeout_s", 5.0),
        poll_s=0.01,
        clock=cluster.clock,
        sleep=cluster.sleep,
        **kw,
    )
    return roll_out(target, mlflow_client, model_name=model_name, version=version, **rollout_kw)


@pytest.fixture
def registered(cheap_versions, model_name) -> dict[str, dict]:
    return cheap_versions(model_name, 3)


def _body(name: str = "m", **spec) -> dict:
    return {
        "apiVersion": ISVC_API,
        "kind": "InferenceService",
        "metadata": {"name": name, "namespace": NS, "labels": {"vinspect.io/model-version": "1"}},
        "spec": {"predictor": {"model": spec or {"runtime": "a"}}},
    }


# -- the fake keeps the API's semantics ------------------------------------------------------


def test_fake_api_semantics():
    cluster = FakeCluster.with_kserve(NS, delay=1.0)
    isvcs = cluster.resources.get(api_version=ISVC_API, kind="InferenceService")
    created = isvcs.create(body=_body(), namespace=NS)
    with pytest.raises(ApiException) as exc:
        isvcs.create(body=_body(), namespace=NS)
    assert exc.value.status == 409
    with pytest.raises(ApiException) as exc:
        isvcs.get(name="missing", namespace=NS)
    assert exc.value.status == 404
    with pytest.raises(ApiException) as exc:
        isvcs.delete(name="missing", namespace=NS)
    assert exc.value.status == 404
    stale = {"metadata": {"resourceVersion": "1"}, "spec": {"predictor": {"model": {"runtime": "b"}}}}
    with pytest.raises(ApiException) as exc:
        isvcs.patch(body=stale, name="m", namespace=NS, content_type=kube.MERGE_PATCH)
    assert exc.value.status == 409
    fresh = {
        "metadata": {"resourceVersion": created["metadata"]["resourceVersion"]},
        "spec": {"predictor": {"model": {"runtime": "b", "extra": None}}},
    }
    patched = isvcs.patch(body=fresh, name="m", namespace=NS, content_type=kube.MERGE_PATCH)
    assert patched["metadata"]["generation"] == 2
    assert patched["metadata"]["resourceVersion"] != created["metadata"]["resourceVersion"]
    get = lambda: isvcs.get(name="m", namespace=NS)  # noqa: E731
    assert get()["status"]["conditions"][-1]["status"] == "False"
    assert get()["status"].get("observedGeneration") != 2
    cluster.sleep(1.0)
    assert get()["status"]["conditions"][-1]["status"] == "True"
    assert get()["status"]["observedGeneration"] == 2


# -- apply and wait ------------------------------------------------------------------------------


def test_apply_creates_then_patches_and_retries_a_conflict():
    cluster = FakeCluster.with_kserve(NS)
    body = _body(runtime="a", storageUri="s3://b/m/1/")
    _, action = kube.apply(cluster, body, patch=owned_patch)
    assert action == "created"
    assert kube.apply(cluster, body, patch=owned_patch)[1] == "unchanged"

    # Someone else writes between our read and our patch: our stale patch gets a 409, we retry.
    def concurrent_writer(verb, ref):
        obj = cluster.find("InferenceService", "m", NS)
        obj["metadata"]["labels"]["team"] = "other"
        cluster.stamp(obj)

    cluster.before_write = concurrent_writer
    changed = {**body, "spec": {"predictor": {"model": {"runtime": "a", "storage": {"key": "dc", "path": "m/2/"}}}}}
    live, action = kube.apply(cluster, changed, patch=owned_patch)
    assert action == "configured"
    requests = [v for _, v, r in cluster.events if r == f"InferenceService {NS}/m"]
    assert requests.count("patch-request") == 2 and requests.count("conflict") == 1  # the refused one and the retry
    model = live["spec"]["predictor"]["model"]
    assert "storageUri" not in model  # the merge patch removed what the new spec dropped
    assert model["storage"]["path"] == "m/2/"
    assert live["metadata"]["labels"]["team"] == "other"  # others' labels are kept


def test_wait_ready_times_out_with_the_conditions():
    cluster = FakeCluster.with_kserve(NS, stuck={"InferenceService m"})
    kube.apply(cluster, _body(), patch=owned_patch)
    what = kube.Wait(ISVC_API, "InferenceService", "m", NS, "Ready", inference_service_ready)
    with pytest.raises(kube.KubeTimeout, match=r"timed out after 0.2s .*last status: .*Ready=False \(Progressing"):
        kube.wait(cluster, [what], timeout=0.2, poll_interval=0.01, clock=cluster.clock, sleep=cluster.sleep)


# -- rollouts ------------------------------------------------------------------------------------


def test_first_rollout_creates_runtime_and_service_then_moves_champion(kube_ok, mlflow_client, model_name, registered):
    seen = []
    result = _deploy(
        kube_ok,
        mlflow_client,
        model_name,
        registered,
        "1",
        smoke=lambda url, name: seen.append((url, name)) or {"ok": True},
    )
    assert result.status == "deployed", result.reason
    assert result.action == "created"
    assert seen == [(f"http://{model_name}-predictor.{NS}.svc.cluster.local", model_name)]
    assert kube_ok.stored("ServingRuntime", NS, "kserve-ovms") is not None
    isvc = _isvc(kube_ok, model_name)
    assert isvc["spec"]["predictor"]["model"]["storage"]["path"] == f"{model_name}/1/"
    assert get_champion(mlflow_client, model_name) == "1"
    mv = mlflow_client.get_model_version(model_name, "1")
    assert mv.tags["vinspect.deployed_to"] == f"kserve:{NS}/{model_name}"


@pytest.fixture
def kube_ok():
    return FakeCluster.with_kserve(NS, delay=0.03)


def test_failed_smoke_test_restores_previous_spec_and_alias(kube_ok, mlflow_client, model_name, registered):
    assert _deploy(kube_ok, mlflow_client, model_name, registered, "1").status == "deployed"
    before = _isvc(kube_ok, model_name)

    def failing_smoke(url, name):
        raise SmokeTestError("golden image bent_000.png: expected ['bent'], found nothing")

    result = _deploy(kube_ok, mlflow_client, model_name, registered, "2", smoke=failing_smoke)
    assert result.status == "rolled_back"
    assert "smoke-testing failed" in result.reason and "bent_000.png" in result.reason
    assert result.previous_version == "1"
    assert result.restore.startswith("restored the previous InferenceService spec")
    assert result.restore.endswith("it is Ready")
    after = _isvc(kube_ok, model_name)
    assert after["spec"] == before["spec"]
    assert after["metadata"]["labels"] == before["metadata"]["labels"]
    assert after["metadata"]["annotations"] == before["metadata"]["annotations"]
    assert after["metadata"]["generation"] == before["metadata"]["generation"] + 2  # went to v2 and back
    assert get_champion(mlflow_client, model_name) == "1"

    # A good version afterwards deploys, and rolling the registry back is a pointer change.
    assert _deploy(kube_ok, mlflow_client, model_name, registered, "3").status == "deployed"
    assert get_champion(mlflow_client, model_name) == "3"
    assert _isvc(kube_ok, model_name)["metadata"]["labels"]["vinspect.io/model-version"] == "3"


def test_readiness_timeout_rolls_back(mlflow_client, model_name, registered):
    kube = FakeCluster.with_kserve(
        NS, delay=0.01, stuck={lambda obj: obj["metadata"]["labels"]["vinspect.io/model-version"] == "2"}
    )
    assert _deploy(kube, mlflow_client, model_name, registered, "1").status == "deployed"
    result = _deploy(kube, mlflow_client, model_name, registered, "2", timeout_s=0.3)
    assert result.status == "rolled_back"
    assert "waiting for Ready failed" in result.reason and "timed out after 0.3s" in result.reason
    assert _isvc(kube, model_name)["metadata"]["labels"]["vinspect.io/model-version"] == "1"
    assert result.restore.endswith("it is Ready")
    assert get_champion(mlflow_client, model_name) == "1"


def test_failed_first_rollout_leaves_nothing_behind(mlflow_client, model_name, registered):
    kube = FakeCluster.with_kserve(NS, delay=0.01, failing={lambda obj: obj["kind"] == "InferenceService"})
    before = set(kube.objects)
    result = _deploy(kube, mlflow_client, model_name, registered, "1", mode="modelmesh")
    assert result.status == "rolled_back"
    assert "BlockedByFailedLoad" in result.reason and "failed to load model.onnx" in result.reason
    assert result.restore == "deleted the InferenceService this rollout created"
    assert set(kube.objects) == before  # the runtime it created is gone too
    assert get_champion(mlflow_client, model_name) is None


def test_alias_failure_after_ready_restores_spec_and_alias(kube_ok, mlflow_client, model_name, registered):
    _deploy(kube_ok, mlflow_client, model_name, registered, "1")
    promote(mlflow_client, model_name, "1")

    def broken_alias_move(client, name, version):
        client.set_registered_model_alias(name, "champion", version)  # half done, then fails
        raise RuntimeError("MLflow went away")

    result = _deploy(kube_ok, mlflow_client, model_name, registered, "2", move_alias=broken_alias_move)
    assert result.status == "rolled_back"
    assert "moving the champion alias failed: MLflow went away" in result.reason
    assert get_champion(mlflow_client, model_name) == "1"
    assert _isvc(kube_ok, model_name)["metadata"]["labels"]["vinspect.io/model-version"] == "1"


def test_modelmesh_smoke_uses_the_rest_url(kube_ok, mlflow_client, model_name, registered):
    seen = []
    result = _deploy(
        kube_ok, mlflow_client, model_name, registered, "1", mode="modelmesh", smoke=lambda url, name: seen.append(url)
    )
    assert result.status == "deployed"
    assert seen == [f"http://modelmesh-serving.{NS}:8008"]
    assert kube_ok.stored("ServingRuntime", NS, "ovms")["spec"]["multiModel"] is True


def test_missing_runtime_without_create_is_refused(kube_ok, mlflow_client, model_name, registered):
    before = set(kube_ok.objects)
    result = _deploy(kube_ok, mlflow_client, model_name, registered, "1", create_runtime=False)
    assert result.status == "rolled_back"
    assert "has no ServingRuntime 'kserve-ovms'" in result.reason
    assert set(kube_ok.objects) == before


def test_a_failed_rollback_is_loud(kube_ok, mlflow_client, model_name, registered):
    assert _deploy(kube_ok, mlflow_client, model_name, registered, "1").status == "deployed"

    def smoke_then_break_the_api(url, name):
        def refuse(verb, ref):
            raise ApiException(status=503, reason="Service Unavailable")

        kube_ok.before_write = refuse  # the restoring patch will be refused
        raise SmokeTestError("expected ['bent'], found nothing")

    with pytest.raises(
        RolloutError, match=r"smoke-testing failed.*rollback incomplete: restoring the InferenceService failed"
    ):
        _deploy(kube_ok, mlflow_client, model_name, registered, "2", smoke=smoke_then_break_the_api)
    assert get_champion(mlflow_client, model_name) == "1"  # the alias was still put back


def test_rollout_publishes_the_served_versions_drift_reference(
    kube_ok, mlflow_client, model_name, registered, local_stack
):
    # OVMS answers as version 1 for every rollout, so the processor reads the reference the
    # rollout publishes under <model>/serving/ once the version serves and is the champion.
    from components.rollout import s3_reference_publisher
    from serving import drift

    s3, bucket = local_stack.s3, local_stack.env["AWS_S3_BUCKET"]
    ref = drift.compute_reference([({"brightness": 0.1 * i, "contrast": 0.2, "sharpness": 1.0}, []) for i in range(10)])
    for version in ("1", "2"):
        drift.save_reference(s3, bucket, model_name, version, dict(ref, model={"name": model_name, "version": version}))
    publish = s3_reference_publisher(s3, bucket)

    def served():
        return drift.load_served_reference(s3, bucket, model_name)[0]["model"]["version"]

    result = _deploy(kube_ok, mlflow_client, model_name, registered, "1", drift_reference=publish)
    assert result.status == "deployed" and served() == "1"
    assert result.drift_reference == f"s3://{bucket}/{model_name}/serving/drift-reference.json"

    # A rolled-back version publishes nothing: the served reference stays the previous one's.
    def failing_smoke(url, name):
        raise SmokeTestError("golden image bent_000.png: found nothing")

    result = _deploy(kube_ok, mlflow_client, model_name, registered, "2", smoke=failing_smoke, drift_reference=publish)
    assert result.status == "rolled_back" and result.drift_reference is None and served() == "1"
    assert _deploy(kube_ok, mlflow_client, model_name, registered, "2", drift_reference=publish).status == "deployed"
    assert served() == "2"
    # A version without a reference: drift off for it, not measured against version 2's.
    result = _deploy(kube_ok, mlflow_client, model_name, registered, "3", drift_reference=publish)
    assert result.status == "deployed" and result.drift_reference.startswith("none: version 3")
    assert drift.served_reference_etag(s3, bucket, model_name) is None

    # S3 failing there never undoes a good rollout; the result says what happened.
    def broken(model, version):
        raise ConnectionError("minio unreachable")

    result = _deploy(kube_ok, mlflow_client, model_name, registered, "1", drift_reference=broken)
    assert result.status == "deployed" and get_champion(mlflow_client, model_name) == "1"
    assert result.drift_reference == "not published: ConnectionError: minio unreachable"
