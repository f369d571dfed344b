"""``vinspect model`` (``vinspect/cli/model.py``) through the real Typer app.

``train``, ``export`` and ``evaluate`` on the session's tiny trained model; ``list``, ``promote`` and
``rollback`` against the local stack, including a deploy to the real local model server over HTTP
and to a fake KServe cluster.
"""

from __future__ import annotations

import json
import os
import uuid

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from components.registry import get_champion
from tests.cli.conftest import run_cli as _run
from tests.trained_model import IMGSZ, MIN_MAP50

runner = CliRunner()


def _app():
    from vinspect.cli import app

    return app


def test_model_help_lists_the_commands():
    result = runner.invoke(_app(), ["model", "--help"])
    assert result.exit_code == 0, result.output
    for cmd in ("train", "export", "evaluate", "list", "register", "promote", "rollback"):
        assert cmd in result.output


def test_one_module_holds_every_model_verb():
    import importlib.util

    import typer

    from vinspect.cli import model

    app = typer.Typer()
    model.register(app)
    names = [c.name for c in app.registered_commands]
    assert names == ["train", "export", "evaluate", "list", "register", "promote", "rollback"]
    assert importlib.util.find_spec("vinspect.cli.registry") is None


def test_cli_train_one_epoch(dataset, yolo_config, tmp_path):
    result = runner.invoke(
        _app(),
        ["model", "train", str(dataset), "--out", str(tmp_path), "--epochs", "1", "--imgsz", str(IMGSZ), "--json"],
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout[result.stdout.index("{") :])
    assert payload["device"] == "cpu"
    assert payload["best_weights"].startswith(str(tmp_path))


def test_cli_train_rejects_a_folder_without_data_yaml(tmp_path):
    result = runner.invoke(_app(), ["model", "train", str(tmp_path)])
    assert result.exit_code != 0
    assert "data.yaml" in result.output


def test_cli_export_with_parity(trained, dataset, tmp_path):
    out = tmp_path / "m.onnx"
    result = runner.invoke(
        _app(),
        [
            "model",
            "export",
            str(trained.best_weights),
            "--out",
            str(out),
            "--imgsz",
            str(IMGSZ),
            "--dataset-id",
            "xyz",
            "--parity",
            str(dataset),
        ],
    )
    assert result.exit_code == 0, result.output
    assert out.is_file()
    assert "parity: ok on 16 images" in result.output


def test_cli_evaluate_with_gate(onnx_model, dataset, tmp_path):
    ok = runner.invoke(
        _app(),
        [
            "model",
            "evaluate",
            str(onnx_model),
            str(dataset),
            "--out",
            str(tmp_path),
            "--floors",
            json.dumps({"map50": MIN_MAP50}),
            "--json",
            "--strict",
        ],
    )
    assert ok.exit_code == 0, ok.output
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["gate"]["passed"] is True and set(saved["per_class"]) == {"scratch", "bent"}
    assert (tmp_path / "PR_curve.png").is_file() and (tmp_path / "confusion_matrix.png").is_file()
    rejected = runner.invoke(
        _app(), ["model", "evaluate", str(onnx_model), str(dataset), "--floors", '{"map50": 1.01}', "--strict"]
    )
    assert rejected.exit_code == 1
    assert "REJECTED" in rejected.output and "map50" in rejected.output
    bad = runner.invoke(_app(), ["model", "evaluate", str(onnx_model), str(dataset), "--floors", '{"mAP": 1}'])
    assert bad.exit_code == 2 and "unknown gate floor" in bad.output


def test_cli_export_variants_and_evaluate_an_ir_with_its_engine(onnx_model, trained, dataset, tmp_path):
    out = tmp_path / "m.onnx"
    result = runner.invoke(
        _app(),
        [
            "model",
            "export",
            str(trained.best_weights),
            "--out",
            str(out),
            "--imgsz",
            str(IMGSZ),
            "--variants",
            str(tmp_path / "v"),
            "--calibration",
            str(dataset),
            "--calibration-images",
            "8",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "variants: onnx, fp32, auto, int8" in result.output
    ev = runner.invoke(
        _app(), ["model", "evaluate", str(tmp_path / "v" / "fp32" / "1" / "model.xml"), str(dataset), "--json"]
    )
    assert ev.exit_code == 0, ev.output
    assert json.loads(ev.stdout[ev.stdout.index("{") :])["engine"] == "openvino f32"
    bad = runner.invoke(_app(), ["model", "evaluate", str(onnx_model), str(dataset), "--engine", "tensorrt"])
    assert bad.exit_code != 0 and "unknown engine 'tensorrt'" in bad.output
    missing = runner.invoke(
        _app(),
        [
            "model",
            "export",
            str(trained.best_weights),
            "--out",
            str(tmp_path / "n.onnx"),
            "--imgsz",
            str(IMGSZ),
            "--variants",
            str(tmp_path / "w"),
        ],
    )
    assert missing.exit_code != 0 and "--variants needs --calibration" in missing.output


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
