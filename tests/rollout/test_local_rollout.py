"""The local rollout: the real model server loads versions from the stack's S3, smoke tests run
over v2 with binary tensors through the detector core, MLflow aliases move or are restored."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from PIL import Image

from components.registry import get_champion, restore_champion
from components.rollout import GoldenImage, LocalServerTarget, load_golden, make_v2_smoke, roll_out
from components.rollout.smoke import SmokeTestError


@pytest.fixture(scope="module")
def versions(register) -> tuple[str, dict[str, dict]]:
    """v1 and v3 find a bent nut in the middle of any image; v2 finds nothing."""
    name = f"tiny-local-{uuid.uuid4().hex[:8]}"
    out = {}
    for run, detections in (("run-1", None), ("run-2", []), ("run-3", None)):
        kw = {} if detections is None else {"detections": detections}
        info = register(name, run, **kw)
        out[info.version] = info
    assert sorted(out) == ["1", "2", "3"]
    return name, out


@pytest.fixture
def server(s3, bucket):
    """The local model server app in-process (no model loaded yet), its token on every call."""
    from fastapi.testclient import TestClient

    from serving.modelserver import ModelRepository, create_app

    app = create_app(
        ModelRepository(lambda: s3), load_on_startup=False, token="rollout-test-token", model_roots=[f"s3://{bucket}"]
    )
    with TestClient(app, headers={"Authorization": "Bearer rollout-test-token"}) as client:
        yield client


@pytest.fixture
def golden(tmp_path) -> list[GoldenImage]:
    path = tmp_path / "bent_000.png"
    Image.fromarray(np.full((120, 160, 3), 90, dtype=np.uint8)).save(path)
    return [GoldenImage(path, frozenset({"bent"}))]


@pytest.fixture
def fresh_aliases(versions, mlflow_client):
    name, _ = versions
    restore_champion(mlflow_client, name, None, [])
    return versions


def _roll_out_local(server, mlflow_client, *, model_name, version, smoke=None, storage_uri=None):
    target = LocalServerTarget(server, storage_uri=storage_uri)
    return roll_out(target, mlflow_client, model_name=model_name, version=version, smoke=smoke)


def _served(server, name) -> str:
    return server.get(f"/v2/models/{name}").json()["versions"][0]


def test_rollout_smoke_failure_and_recovery(fresh_aliases, server, golden, mlflow_client):
    name, info = fresh_aliases
    smoke = make_v2_smoke(golden, client=server)

    first = _roll_out_local(server, mlflow_client, model_name=name, version="1", smoke=smoke)
    assert first.status == "deployed", first.reason
    assert first.previous_version is None
    assert first.smoke["images"] == [{"image": "bent_000.png", "expected": ["bent"], "found": ["bent"]}]
    assert _served(server, name) == "1"
    assert get_champion(mlflow_client, name) == "1"

    bad = _roll_out_local(server, mlflow_client, model_name=name, version="2", smoke=smoke)
    assert bad.status == "rolled_back"
    assert "smoke-testing failed" in bad.reason and "found nothing" in bad.reason
    assert bad.restore == f"reloaded version 1 from {info['1'].storage_uri}"
    assert _served(server, name) == "1"
    assert get_champion(mlflow_client, name) == "1"

    good = _roll_out_local(server, mlflow_client, model_name=name, version="3", smoke=smoke)
    assert good.status == "deployed" and good.previous_version == "1"
    assert _served(server, name) == "3"
    assert get_champion(mlflow_client, name) == "3"
    assert mlflow_client.get_model_version(name, "3").tags["vinspect.deployed_to"].startswith("local:")


def test_a_load_failure_keeps_the_old_version_serving(fresh_aliases, server, mlflow_client):
    name, _ = fresh_aliases
    assert _roll_out_local(server, mlflow_client, model_name=name, version="1").status == "deployed"
    result = _roll_out_local(
        server, mlflow_client, model_name=name, version="3", storage_uri="s3://models/no-such-model/3/"
    )
    assert result.status == "rolled_back"
    assert "loading the model failed" in result.reason
    assert result.restore == "version 1 kept serving"
    assert _served(server, name) == "1"
    assert get_champion(mlflow_client, name) == "1"


def test_a_failed_first_rollout_unloads(fresh_aliases, server, golden, mlflow_client):
    name, _ = fresh_aliases
    result = _roll_out_local(
        server, mlflow_client, model_name=name, version="2", smoke=make_v2_smoke(golden, client=server)
    )
    assert result.status == "rolled_back"
    assert result.restore == "unloaded the model (nothing was serving before)"
    assert server.get(f"/v2/models/{name}").status_code == 503
    assert get_champion(mlflow_client, name) is None


def test_smoke_checks_the_served_version(fresh_aliases, server, golden, mlflow_client):
    name, _ = fresh_aliases
    _roll_out_local(server, mlflow_client, model_name=name, version="1")
    with pytest.raises(SmokeTestError, match="answered with version 1, expected 3"):
        make_v2_smoke(golden, client=server, expect_version="3")("http://testserver", name)
    with pytest.raises(SmokeTestError, match="GET /v2/models/other: HTTP 404"):
        make_v2_smoke(golden, client=server)("http://testserver", "other")


def test_load_golden(tmp_path, golden):
    spec = tmp_path / "golden.json"
    spec.write_text('{"bent_000.png": ["bent"]}')
    assert load_golden(spec) == [GoldenImage(golden[0].path.resolve(), frozenset({"bent"}))]
    spec.write_text('{"missing.png": ["bent"]}')
    with pytest.raises(SmokeTestError, match="image 'missing.png' not found"):
        load_golden(spec)
