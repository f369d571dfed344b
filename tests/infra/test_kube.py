"""infra/kube.py, the one Kubernetes layer, against the one fake API (tests/fake_kube.py)."""

from __future__ import annotations

import pytest

from infra import kube
from tests.fake_kube import FakeCluster

NS = "vinspect"


def _config_map(**data: str) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": NS}, "data": data}


def test_apply_creates_leaves_alone_and_patches_what_differs():
    cluster = FakeCluster(namespaces=(NS,))
    live, outcome = kube.apply(cluster, _config_map(a="1"))
    assert outcome == "created" and live["metadata"]["generation"] == 1
    assert kube.apply(cluster, _config_map(a="1"))[1] == "unchanged"
    live, outcome = kube.apply(cluster, _config_map(a="1", b="2"))
    assert outcome == "configured" and live["data"] == {"a": "1", "b": "2"}


def test_a_concurrent_write_is_not_overwritten_but_retried_on_top():
    # The patch carries the resourceVersion it was computed from: the API refuses it (409) when
    # someone wrote in between, and the retry starts from their version.
    cluster = FakeCluster(namespaces=(NS,))
    kube.apply(cluster, _config_map(a="1"))

    def other_writer(verb: str, ref: str) -> None:
        obj = cluster.find("ConfigMap", "c", NS)
        obj["data"]["theirs"] = "kept"
        cluster.stamp(obj)

    cluster.before_write = other_writer
    live, outcome = kube.apply(cluster, _config_map(a="2"))
    assert outcome == "configured"
    assert live["data"] == {"a": "2", "theirs": "kept"}
    assert [v for _, v, r in cluster.events if r == f"ConfigMap {NS}/c"].count("conflict") == 1


def test_conflicts_beyond_the_retries_fail_naming_the_object():
    cluster = FakeCluster(namespaces=(NS,))
    kube.apply(cluster, _config_map(a="1"))

    def always_first(verb: str, ref: str) -> None:
        obj = cluster.find("ConfigMap", "c", NS)
        cluster.stamp(obj)
        cluster.before_write = always_first

    cluster.before_write = always_first
    with pytest.raises(kube.KubeError, match=r"ConfigMap vinspect/c: patch failed: .*has been modified") as err:
        kube.apply(cluster, _config_map(a="2"), retries=2)
    assert err.value.status == 409


def test_unserved_kinds_missing_objects_and_refusals():
    cluster = FakeCluster(namespaces=(NS,))
    isvc = {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "metadata": {"name": "m"}}
    with pytest.raises(
        kube.KindNotServed, match="InferenceService vinspect/m: the cluster does not serve InferenceService"
    ):
        kube.apply(cluster, {**isvc, "metadata": {"name": "m", "namespace": NS}})
    assert kube.get(cluster, "serving.kserve.io/v1beta1", "InferenceService", "m", NS) is None
    assert kube.get(cluster, "v1", "ConfigMap", "absent", NS) is None
    assert kube.delete(cluster, "v1", "ConfigMap", "absent", NS) is False
    with pytest.raises(kube.KubeError, match=r'ConfigMap elsewhere/c: create failed: namespaces "elsewhere" not found'):
        kube.apply(cluster, {**_config_map(), "metadata": {"name": "c", "namespace": "elsewhere"}})


def test_a_ready_condition_counts_only_for_the_observed_generation():
    check = kube.condition_check("Ready")
    ready = {"metadata": {"generation": 2}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    assert check(ready) == (True, "Ready=True")
    stale = {**ready, "status": {**ready["status"], "observedGeneration": 1}}
    ok, status = check(stale)
    assert not ok and "older generation" in status
    assert check({**ready, "status": {**ready["status"], "observedGeneration": 2}})[0]


def test_wait_times_out_naming_the_object_and_its_last_status():
    cluster = FakeCluster(namespaces=(NS,), delay=1.0, stuck={"Deployment d"})
    kube.apply(cluster, {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "namespace": NS}})
    what = kube.Wait("apps/v1", "Deployment", "d", NS, "Available", kube.condition_check("Available"))
    with pytest.raises(kube.KubeTimeout, match=r"timed out after 3s waiting for Deployment vinspect/d to be Available"):
        kube.wait(cluster, [what], timeout=3, poll_interval=1, clock=cluster.clock, sleep=cluster.sleep)


def test_the_errors_of_infra_and_the_rollout_share_the_root_and_keep_their_builtins():
    from components.rollout.deploy import RolloutError
    from components.rollout.render import ServingSpecError
    from components.rollout.smoke import SmokeTestError
    from infra.addressing import AddressingError
    from infra.bootstrap import BootstrapError, BootstrapTimeout
    from infra.connectivity import ConnectivityError
    from infra.render import RenderError
    from infra.scan import ScanError
    from infra.tools import ToolMissingError
    from infra.validate import SchemasMissingError
    from vinspect.errors import VinspectError

    builtins = {
        kube.KubeError: RuntimeError,
        kube.KubeTimeout: RuntimeError,
        BootstrapError: RuntimeError,
        BootstrapTimeout: RuntimeError,
        RenderError: RuntimeError,
        ScanError: RuntimeError,
        ToolMissingError: RuntimeError,
        ConnectivityError: RuntimeError,
        AddressingError: ValueError,
        SchemasMissingError: FileNotFoundError,
        RolloutError: RuntimeError,
        SmokeTestError: RuntimeError,
        ServingSpecError: ValueError,
    }
    for cls, builtin in builtins.items():
        assert issubclass(cls, VinspectError) and issubclass(cls, builtin), cls
    # The two errors about rendering are two names now: manifests (infra) vs one InferenceService.
    assert RenderError is not ServingSpecError and RenderError.__name__ != ServingSpecError.__name__
    # ... and the rollout's former alias for ServingSpecError is gone: one name per error.
    import components.rollout

    assert not hasattr(components.rollout, "RenderError")
