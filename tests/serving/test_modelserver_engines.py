"""The model server's engines: OpenVINO IR from the version folder (local and S3), its declared
precision, and the ONNX Runtime backend chosen by the setting."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from serving import v2
from serving.detector import PRECISION_RT_KEY, open_engine
from serving.modelserver import ModelRepository, create_app

from .conftest import IMGSZ, ThreadServer

SHAPE = [1, 3, IMGSZ, IMGSZ]

ov = pytest.importorskip("openvino")


def _write_ir(onnx_model: Path, folder: Path, precision: str | None) -> Path:
    model = ov.Core().read_model(str(onnx_model))
    if precision:
        model.set_rt_info(precision, list(PRECISION_RT_KEY))
    ov.save_model(model, str(folder / "model.xml"), compress_to_fp16=False)
    return folder / "model.xml"


def _infer(url: str, x: np.ndarray) -> tuple[np.ndarray, str]:
    body, headers = v2.encode_request({"images": x}, ["output0"])
    r = httpx.post(f"{url}/v2/models/m/infer", content=body, headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    resp = v2.decode_response(r.content, int(r.headers[v2.HEADER_LENGTH]))
    return resp.outputs["output0"].array, resp.model_version


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(3).random(SHAPE, dtype=np.float32)


def test_serves_an_ir_version_folder_at_its_declared_precision(onnx_model, tmp_path, x):
    # OVMS layout: numeric version folders; the highest wins; non-numeric folders are ignored.
    _write_ir(onnx_model, tmp_path / "repo" / "1", None)
    xml = _write_ir(onnx_model, tmp_path / "repo" / "2", "f32")
    (tmp_path / "repo" / "int8").mkdir()
    repo = ModelRepository(threads=1)
    model = repo.load("m", str(tmp_path / "repo"))
    assert model.version == "2" and model.source.location == str(xml)
    assert model.engine.backend == "openvino" and model.engine.precision == "f32"
    expected = open_engine(onnx_model, engine="openvino", precision="f32", threads=1)(x)
    with ThreadServer(create_app(repo)) as server:
        meta = httpx.get(f"{server.url}/v2/models/m").json()
        assert meta["platform"] == "OpenVINO"  # as OVMS reports any model
        assert meta["inputs"][0] == {"name": "images", "datatype": "FP32", "shape": SHAPE}
        out, version = _infer(server.url, x)
    assert version == "2"
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    # ... and the same ONNX at f32 on ONNX Runtime agrees to float rounding.
    np.testing.assert_allclose(out, open_engine(onnx_model, engine="onnxruntime")(x), atol=1e-3)


def test_onnxruntime_backend_by_setting(onnx_model, x, monkeypatch):
    monkeypatch.setenv("VINSPECT_ENGINE", "onnxruntime")
    repo = ModelRepository(threads=1)
    assert repo.engine == "onnxruntime"
    repo.load("m", str(onnx_model))
    with ThreadServer(create_app(repo)) as server:
        assert httpx.get(f"{server.url}/v2/models/m").json()["platform"] == "onnx_onnxv1"
        out, _ = _infer(server.url, x)
    np.testing.assert_allclose(out, open_engine(onnx_model, engine="onnxruntime")(x), rtol=1e-5, atol=1e-5)
    monkeypatch.setenv("VINSPECT_ENGINE", "tensorrt")
    with pytest.raises(ValueError, match="unknown engine 'tensorrt'"):
        ModelRepository()


def test_ir_without_weights_is_a_clear_400(onnx_model, tmp_path):
    _write_ir(onnx_model, tmp_path / "repo" / "1", None)
    (tmp_path / "repo" / "1" / "model.bin").unlink()
    app = create_app(ModelRepository(), token="engine-test-token", model_roots=[str(tmp_path)])
    with ThreadServer(app) as server:
        r = httpx.post(
            f"{server.url}/v2/repository/models/m/load",
            headers={"Authorization": "Bearer engine-test-token"},
            json={"parameters": {"uri": str(tmp_path / "repo")}},
        )
    assert r.status_code == 400 and "has no weights file model.bin" in r.json()["error"]


def test_loads_an_ir_variant_from_s3(local_stack, onnx_model, tmp_path, x, monkeypatch):
    local_stack.apply_env(monkeypatch)
    from serving.modelserver import s3_client_factory_from_env
    from vinspect.settings import S3Settings

    settings = S3Settings.from_env()
    s3, bucket = settings.client(), settings.bucket
    xml = _write_ir(onnx_model, tmp_path / "ir", "f32")
    # The registry's variant layout: <model>/<version>/<variant>/1/model.{xml,bin}
    for name in ("model.xml", "model.bin"):
        s3.put_object(Bucket=bucket, Key=f"m-ir/4/fp32/1/{name}", Body=(xml.parent / name).read_bytes())
    repo = ModelRepository(s3_client_factory_from_env(), threads=1)
    model = repo.load("m", f"s3://{bucket}/m-ir/4/fp32/", version="4")
    assert model.source.location == f"s3://{bucket}/m-ir/4/fp32/1/model.xml"
    assert model.engine.precision == "f32"
    np.testing.assert_allclose(
        model.infer({"images": x}, ["output0"])[0],
        open_engine(xml, precision="f32", threads=1)(x),
        rtol=1e-5,
        atol=1e-5,
    )


def test_serving_with_openvino_imports_no_torch(onnx_model):
    """The serving image has no torch: loading and running a model on OpenVINO must not need it."""
    import subprocess

    from .conftest import PYTHON, REPO

    code = (
        "import sys, numpy as np\n"
        "from serving.modelserver import ModelRepository\n"
        f"m = ModelRepository().load('m', {str(onnx_model)!r})\n"
        f"m.infer({{'images': np.zeros({SHAPE}, np.float32)}}, ['output0'])\n"
        "assert m.engine.backend == 'openvino', m.engine.label\n"
        "print(sorted(x for x in ('torch', 'ultralytics', 'nncf', 'mlflow') if x in sys.modules))\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "VINSPECT_ENGINE"}
    proc = subprocess.run([PYTHON, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"
