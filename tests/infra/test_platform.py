"""What a real OpenShift AI cluster needs beyond the schemas (issue 13, the platform side).

Each test here models one behaviour of the platform (OLM channels, the operator's own objects,
OpenShift builds, odh-model-controller's connection webhook, structural pruning of dropped
fields, optional parts that never become ready) against the manifests and the bootstrap.
"""

from __future__ import annotations

import base64
import copy

import pytest

from infra.bootstrap import bootstrap
from tests.infra.conftest import find
from tests.infra.fake_cluster import FakeCluster

DELAY = 3.0


def run(cluster: FakeCluster, objects, **options):
    options.setdefault("timeout", 120)
    options.setdefault("builder", cluster.start_build)
    return bootstrap(cluster, copy.deepcopy(objects), clock=cluster.clock, sleep=cluster.sleep,
                     poll_interval=1.0, **options)


def writes(cluster: FakeCluster, since: int = 0) -> list[tuple[float, str, str]]:
    return [e for e in cluster.events[since:] if e[1] in ("create", "patch", "build")]


# ----------------------------------------------------------------------------------------------
# Defect 9: data connections carry the Connections API annotations


def test_data_connections_carry_the_connection_api_annotations(rendered):
    cluster = FakeCluster(delay=DELAY)
    run(cluster, rendered["default"])
    for namespace in ("vinspect", "vinspect-models"):
        annotations = cluster.find("Secret", "aws-connection-models", namespace)["metadata"]["annotations"]
        # odh-model-controller's connection webhook reads -protocol (and the deprecated -ref);
        # the dashboard still lists connections by the legacy annotation.
        assert annotations["opendatahub.io/connection-type-protocol"] == "s3"
        assert annotations["opendatahub.io/connection-type-ref"] == "s3"
        assert annotations["opendatahub.io/connection-type"] == "s3"


def test_a_connection_from_an_older_bootstrap_gains_the_annotations(rendered):
    cluster = FakeCluster(delay=DELAY)
    run(cluster, rendered["default"])
    secret = cluster.find("Secret", "aws-connection-models", "vinspect-models")
    for key in ("opendatahub.io/connection-type-protocol", "opendatahub.io/connection-type-ref"):
        del secret["metadata"]["annotations"][key]
    before = base64.b64decode(secret["data"]["AWS_SECRET_ACCESS_KEY"])
    run(cluster, rendered["default"])
    secret = cluster.find("Secret", "aws-connection-models", "vinspect-models")
    assert secret["metadata"]["annotations"]["opendatahub.io/connection-type-protocol"] == "s3"
    assert base64.b64decode(secret["data"]["AWS_SECRET_ACCESS_KEY"]) == before  # never rotated
