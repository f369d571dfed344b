"""``vinspect model list|promote|rollback`` and ``vinspect runs compare`` against the local stack,
including a deploy to the real local model server over HTTP."""

from __future__ import annotations

import json
import os
import uuid

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from components.registry import get_champion
from vinspect.cli import app

runner = CliRunner()


@pytest.fixture
def env(local_stack, monkeypatch):
    local_stack.apply_env(monkeypatch)
    monkeypatch.setenv("COLUMNS", "200")  # keep rich tables on one line per row


def _run(*args: str):
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def test_list_promote_rollback(env, cheap_versions, model_name, mlflow_client):
    cheap_versions(model_name, 2)
    code, out = _run("model", "promote", "1", "--model", model_name)
    assert code == 0, out
    assert "champion: - -> 1" in out
    code, out = _run("model", "promote", "2", "--model", model_name)
    assert code == 0 and "champion: 1 -> 2" in out
    code, out = _run("model", "list", "--model", model_name, "--json")
    assert code == 0, out
    listed = {v["version"]: v["aliases"] for v in json.loads(out)}
    assert listed == {"2": ["champion"], "1": []}
    code, out = _run("model", "list", "--model", model_name, "-m", "mAP50")
    assert code == 0 and "mAP50" in out and f"{model_name}/1/1/model.onnx" in out
    code, out = _run("model", "rollback", "--model", model_name)
    assert code == 0 and "champion: 2 -> 1" in out
    code, out = _run("model", "rollback", "--model", model_name)
    assert code == 1 and "no previous champion recorded" in out
    assert get_champion(mlflow_client, model_name) == "1"
    code, out = _run("model", "promote", "9", "--model", model_name)
    assert code == 1 and "has no version 9" in out
    code, out = _run("model", "list", "--model", "no-such-model-here")
    assert code == 1 and "no registered model 'no-such-model-here'" in out


def test_runs_compare_table_and_plot(env, register, model_name, tmp_path):
    for i, score in enumerate((0.3, 0.9), start=1):
        register(model_name, f"run-{i}", metrics={"mAP50": score})
    experiment = f"vinspect-tests-{model_name}"
    png = tmp_path / "compare.png"
    code, out = _run("runs", "compare", "-e", experiment, "-m", "mAP50", "-p", "epochs", "--plot", str(png))
    assert code == 0, out
    assert out.index("0.9") < out.index("0.3")  # sorted by the first metric, best first
    assert png.read_bytes()[:4] == b"\x89PNG"
    code, out = _run("runs", "compare", "-e", experiment, "-s", "mAP50", "--ascending", "--json")
    assert [r["metrics"]["mAP50"] for r in json.loads(out)] == [0.3, 0.9]
    code, out = _run("runs", "compare", "-e", "nope-experiment")
    assert code == 1 and "no MLflow experiment 'nope-experiment'" in out


def test_promote_and_rollback_with_local_deploy(env, register, http_model_server, mlflow_client, tmp_path):
    import httpx

    name = f"tiny-cli-{uuid.uuid4().hex[:8]}"
    register(name, "run-1")
    register(name, "run-2")
    Image.fromarray(np.full((64, 64, 3), 120, dtype=np.uint8)).save(tmp_path / "bent.png")
    golden = tmp_path / "golden.json"
    golden.write_text(json.dumps({"bent.png": ["bent"]}))
    common = ["--model", name, "--deploy", "local", "--model-url", http_model_server, "--golden", str(golden)]

    code, out = _run("model", "promote", "1", *common)
    assert code == 0 and "deployed v1" in out, out
    code, out = _run("model", "promote", "2", *common)
    assert code == 0 and "deployed v2" in out, out
    auth = {"Authorization": f"Bearer {os.environ['VINSPECT_MODEL_TOKEN']}"}
    served = lambda: httpx.get(f"{http_model_server}/v2/models/{name}", headers=auth).json()["versions"]  # noqa: E731
    assert served() == ["2"]
    code, out = _run("model", "rollback", *common)
    assert code == 0 and "deployed v1" in out, out
    assert served() == ["1"]
    assert get_champion(mlflow_client, name) == "1"

    golden.write_text(json.dumps({"bent.png": ["scratch"]}))  # a smoke test v2 cannot pass
    code, out = _run("model", "promote", "2", *common)
    assert code == 1 and "rolled back" in out and "expected ['scratch']" in out
    assert served() == ["1"]
    assert get_champion(mlflow_client, name) == "1"


def test_promote_with_kserve_deploy(env, cheap_versions, model_name, mlflow_client, monkeypatch):
    from tests.fake_kube import FakeCluster

    cheap_versions(model_name, 1)
    kube = FakeCluster.with_kserve("vinspect", delay=0)
    monkeypatch.setattr("infra.kube.connect", lambda **kw: kube)
    before = set(kube.objects)
    code, out = _run("model", "promote", "1", "--model", model_name, "--deploy", "kserve")
    assert code == 1 and "--deploy kserve needs --namespace and --data-connection" in out
    assert set(kube.objects) == before
    code, out = _run(
        "model",
        "promote",
        "1",
        "--model",
        model_name,
        "--deploy",
        "kserve",
        "-n",
        "vinspect",
        "--data-connection",
        "aws-connection-models",
        "--mode",
        "modelmesh",
        "--timeout",
        "5",
    )
    assert code == 0 and "deployed v1" in out, out
    isvc = kube.stored("InferenceService", "vinspect", model_name)
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "ModelMesh"
    assert isvc["spec"]["predictor"]["model"]["storage"] == {"key": "aws-connection-models", "path": f"{model_name}/1/"}
    assert get_champion(mlflow_client, model_name) == "1"
