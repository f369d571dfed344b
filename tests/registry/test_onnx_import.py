"""Issue 13: bring an existing ONNX model into the registry and serve it (`vinspect model register --onnx`).

The original demo's released model is a YOLOv5m with a ``[1, 25200, 7]`` output; a model with
exactly that layout is built here with the ``onnx`` helper API (a constant "detection", plus
``0 * sum(images)`` so the input is consumed). Nothing is downloaded. MLflow, S3 and the model
server are the real local ones.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from components.registry import RegistryError, get_champion, version_info
from components.registry.onnx_import import inspect_onnx
from vinspect.cli import app

runner = CliRunner()
V5_IMGSZ = 640
V5_ANCHORS = 25200  # 3 * (80*80 + 40*40 + 20*20) at 640 px, as YOLOv5 exports it
# One confident "bent" box in the middle: cx, cy, w, h, objectness, p(scratch), p(bent)
BENT_V5 = (320.0, 320.0, 120.0, 120.0, 0.9, 0.05, 0.95)


def build_yolov5_onnx(path: Path, *, channels: int = 7, metadata: dict[str, str] | None = None) -> Path:
    """A YOLOv5-layout model: ``images`` [1, 3, 640, 640] -> ``output`` [1, 25200, channels]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    const = np.zeros((1, V5_ANCHORS, channels), dtype=np.float32)
    const[0, 100, : len(BENT_V5)] = BENT_V5[:channels]
    nodes = [
        helper.make_node("ReduceSum", ["images"], ["total"], keepdims=0),
        helper.make_node("Mul", ["total", "zero"], ["nothing"]),
        helper.make_node("Add", ["base", "nothing"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "yolov5_layout",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, V5_IMGSZ, V5_IMGSZ])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, V5_ANCHORS, channels])],
        initializer=[
            numpy_helper.from_array(const, "base"),
            numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"),
        ],
    )
    # opset 12, as the original demo's export (YOLOv5 of 2021)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)], producer_name="pytorch")
    model.ir_version = 7
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def env(local_stack, monkeypatch):
    local_stack.apply_env(monkeypatch)
    monkeypatch.setenv("COLUMNS", "200")


def test_inspect_reads_the_yolov5_layout_and_the_names(tmp_path):
    plain = build_yolov5_onnx(tmp_path / "plain.onnx")
    info = inspect_onnx(plain, ["scratch", "bent"])
    assert info["layout"] == "v5" and info["output_shape"] == [1, 25200, 7] and info["imgsz"] == (640, 640)
    with pytest.raises(RegistryError, match="no class names.*--names scratch,bent"):
        inspect_onnx(plain)
    # YOLOv5's own export writes the names as a Python dict literal.
    tagged = build_yolov5_onnx(
        tmp_path / "tagged.onnx", metadata={"names": "{0: 'scratch', 1: 'bent'}", "stride": "32"}
    )
    assert inspect_onnx(tagged)["names"] == ["scratch", "bent"]
    with pytest.raises(RegistryError, match=r"output 'output' \[1, 25200, 9\] does not fit 2 class\(es\)"):
        inspect_onnx(build_yolov5_onnx(tmp_path / "nine.onnx", channels=9), ["scratch", "bent"])
    not_onnx = tmp_path / "x.onnx"
    not_onnx.write_bytes(b"not a model")
    with pytest.raises(RegistryError, match="not a loadable ONNX model"):
        inspect_onnx(not_onnx, ["scratch", "bent"])


def test_register_the_demo_layout_then_serve_it(
    env, http_model_server, model_name, mlflow_client, s3, bucket, tmp_path
):
    model = build_yolov5_onnx(tmp_path / "manu-vi-best-yolov5m.onnx")
    result = runner.invoke(
        app, ["model", "register", "--onnx", str(model), "--names", "scratch,bent", "--model", model_name]
    )
    assert result.exit_code == 0, result.output
    assert "v5 layout" in result.output and "[1, 25200, 7]" in result.output
    info = version_info(mlflow_client, model_name, "1")
    head = s3.head_object(Bucket=bucket, Key=f"{model_name}/1/1/model.onnx")
    assert head["ContentLength"] > 0 and info["storage_uri"] == f"s3://{bucket}/{model_name}/1/"
    # Registering the same file again is the same version, not a second one.
    again = runner.invoke(
        app, ["model", "register", "--onnx", str(model), "--names", "scratch,bent", "--model", model_name]
    )
    assert again.exit_code == 0 and f"{model_name} v1" in again.output

    # Serve it: the local rollout loads it, the smoke test must find the bent nut, then champion.
    Image.fromarray(np.full((700, 700, 3), 120, dtype=np.uint8)).save(tmp_path / "bent.png")
    golden = tmp_path / "golden.json"
    golden.write_text(json.dumps({"bent.png": ["bent"]}))
    result = runner.invoke(
        app,
        [
            "model",
            "promote",
            "1",
            "--model",
            model_name,
            "--deploy",
            "local",
            "--model-url",
            http_model_server,
            "--golden",
            str(golden),
        ],
    )
    assert result.exit_code == 0 and "deployed v1" in result.output, result.output
    assert get_champion(mlflow_client, model_name) == "1"

    # And the processor's path finds it: v2 over HTTP, the detector core's YOLOv5 decoding.
    import os

    from serving.events import image_event
    from serving.model_client import ModelClient
    from serving.processor import Inspector

    jpeg = tmp_path / "frame.jpg"
    Image.fromarray(np.full((700, 700, 3), 120, dtype=np.uint8)).save(jpeg)
    with ModelClient(http_model_server, model_name, token=os.environ["VINSPECT_MODEL_TOKEN"]) as client:
        data = Inspector(client).inspect(image_event(jpeg.read_bytes(), "cam-1")).get_data()
    assert [d["class_name"] for d in data["detections"]] == ["bent"]


def test_a_gate_rejection_registers_nothing(env, model_name, mlflow_client, tmp_path):
    from tests.rollout.test_smoke_rule import _dataset

    data = _dataset(tmp_path / "ds", {"a_bent": [1], "b_scratch": [0]})
    model = build_yolov5_onnx(tmp_path / "m.onnx")
    result = runner.invoke(
        app,
        [
            "model",
            "register",
            "--onnx",
            str(model),
            "--names",
            "scratch,bent",
            "--model",
            model_name,
            "--data",
            str(data),
            "--floors",
            '{"map50": 0.99}',
        ],
    )
    assert result.exit_code == 1 and "quality gate rejected" in result.output, result.output
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException):
        mlflow_client.get_model_version(model_name, "1")
    result = runner.invoke(
        app, ["model", "register", "--onnx", str(model), "--names", "scratch,bent", "--model", model_name, "--gate"]
    )
    assert result.exit_code == 1 and "needs a dataset" in result.output


def test_the_import_gate_compares_with_the_champion_recorded_on_the_same_data(
    env, model_name, mlflow_client, s3, bucket, tmp_path
):
    # The import applies the pipeline's gate (components.model.gate_model) with the champion's
    # figures recorded on this dataset, named as the pipeline names them.
    from components.registry import promote
    from components.registry.onnx_import import import_onnx
    from tests.rollout.test_smoke_rule import _dataset

    data = _dataset(tmp_path / "ds", {"a_bent": [1], "b_scratch": [0]})
    manifest = json.loads((data / "manifest.json").read_text())
    (data / "manifest.json").write_text(json.dumps({**manifest, "dataset_id": "c" * 64}))  # what ties the figures
    common = {"model_name": model_name, "bucket": bucket, "names": ["scratch", "bent"], "data": data}
    first = import_onnx(mlflow_client, s3, onnx_path=build_yolov5_onnx(tmp_path / "a.onnx"), **common)
    promote(mlflow_client, model_name, first["version"])
    second = import_onnx(
        mlflow_client,
        s3,
        onnx_path=build_yolov5_onnx(tmp_path / "b.onnx", metadata={"revision": "2"}),
        floors={"map50": 0.0},
        **common,
    )
    checks = {c["check"]: c for c in second["gate"]["checks"]}
    assert second["gate"]["passed"] and checks["no_regression_map50"]["ok"], second["gate"]
    assert f"champion v{first['version']} (recorded on this data)" in checks["no_regression_map50"]["text"]
    assert second["version"] != first["version"]
