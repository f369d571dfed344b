"""The chosen precision variant is registered under its version and is what the rollouts serve:
the local model server (real, reading the stack's S3) and the KServe InferenceService."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from PIL import Image

from components.registry.core import TAG_STORAGE_URI, TAG_VARIANT, TAG_VARIANT_PRECISION
from components.rollout import (
    GoldenImage,
    KServeTarget,
    LocalServerTarget,
    make_v2_smoke,
    render_inference_service,
    roll_out,
)
from components.rollout.render import ServingSpecError
from tests.fake_kube import FakeCluster
from tests.registry.tiny_model import BENT_IN_THE_MIDDLE, build_tiny_onnx

pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def registered(mlflow_client, s3, bucket, tmp_path_factory):
    """A tiny model registered with its fp32 and auto IR variants; the gate chose fp32."""
    from components.model import export_variants
    from components.registry import register_model

    root = tmp_path_factory.mktemp("variants")
    onnx = build_tiny_onnx(root / "model.onnx", BENT_IN_THE_MIDDLE, tag="variants")
    # The constant tiny graph has nothing to quantize: the INT8 variant is covered on a real
    # model in tests/model/test_model_variants.py.
    export_variants(onnx, root / "v", calibration=[], variants=("fp32", "auto"))
    name = f"tiny-variants-{uuid.uuid4().hex[:8]}"
    info = register_model(
        mlflow_client,
        s3,
        onnx_path=onnx,
        model_name=name,
        bucket=bucket,
        params={"model": "tiny"},
        metrics={"map50": 0.5, "variant_fp32_map50_95": 0.3, "variant_fp32_latency_ms": 1.0},
        epoch_metrics_csv=None,
        plots=[],
        dataset_id="a" * 64,
        dataset_uri=None,
        git_revision=None,
        pipeline_run_id="run-variants",
        experiment=f"vinspect-tests-{name}",
        variants_dir=root / "v",
        variant="fp32",
    )
    return name, info, root


def test_register_stores_every_variant_under_the_version_and_tags_the_choice(registered, mlflow_client, s3, bucket):
    name, info, _ = registered
    v = info.version
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=f"{name}/{v}/")["Contents"]}
    assert keys == {f"{name}/{v}/1/model.onnx"} | {
        f"{name}/{v}/{variant}/1/model.{ext}" for variant in ("fp32", "auto") for ext in ("xml", "bin")
    }
    assert info.storage_uri == f"s3://{bucket}/{name}/{v}/fp32/"
    tags = mlflow_client.get_model_version(name, v).tags
    assert tags[TAG_VARIANT] == "fp32" and tags[TAG_VARIANT_PRECISION] == "f32"
    assert tags[TAG_STORAGE_URI] == info.storage_uri
    metrics = mlflow_client.get_run(info.run_id).data.metrics
    assert metrics["variant_fp32_map50_95"] == 0.3 and metrics["variant_fp32_latency_ms"] == 1.0


def test_register_refuses_a_variant_it_does_not_have(registered, mlflow_client, s3, bucket):
    from components.registry import RegistryError, register_model

    name, _, root = registered
    with pytest.raises(RegistryError, match="variant 'int8' is not in"):
        register_model(
            mlflow_client,
            s3,
            onnx_path=root / "model.onnx",
            model_name=name,
            bucket=bucket,
            params={},
            metrics={},
            epoch_metrics_csv=None,
            plots=[],
            dataset_id="a" * 64,
            dataset_uri=None,
            git_revision=None,
            pipeline_run_id="run-x",
            variants_dir=root / "v",
            variant="int8",
        )


def test_local_rollout_serves_the_chosen_variant(registered, mlflow_client, s3, tmp_path):
    from fastapi.testclient import TestClient

    from serving.modelserver import ModelRepository, create_app

    name, info, _ = registered
    path = tmp_path / "bent_000.png"
    Image.fromarray(np.full((120, 160, 3), 90, dtype=np.uint8)).save(path)
    repo = ModelRepository(lambda: s3)
    bucket = info.storage_uri.split("/")[2]
    app = create_app(repo, load_on_startup=False, token="variant-test-token", model_roots=[f"s3://{bucket}"])
    with TestClient(app, headers={"Authorization": "Bearer variant-test-token"}) as server:
        smoke = make_v2_smoke([GoldenImage(path, frozenset({"bent"}))], client=server)
        result = roll_out(LocalServerTarget(server), mlflow_client, model_name=name, version=info.version, smoke=smoke)
        assert result.status == "deployed", result.reason
        served = repo.get(name)
        assert served.source.location == info.storage_uri + "1/model.xml"
        assert served.engine.backend == "openvino" and served.engine.precision == "f32"
        assert server.get(f"/v2/models/{name}").json()["platform"] == "OpenVINO"


def test_kserve_rollout_points_the_inference_service_at_the_variant(registered, mlflow_client):
    name, info, _ = registered
    kube = FakeCluster.with_kserve("vinspect", delay=0.01)
    target = KServeTarget(
        kube,
        namespace="vinspect",
        storage_uri=info.storage_uri,
        data_connection="aws-connection-models",
        timeout_s=5.0,
        poll_s=0.01,
        clock=kube.clock,
        sleep=kube.sleep,
    )  # variant and precision from the version's tags
    result = roll_out(target, mlflow_client, model_name=name, version=info.version)
    assert result.status == "deployed", result.reason
    model = kube.stored("InferenceService", "vinspect", result.service)["spec"]["predictor"]["model"]
    assert model["modelFormat"] == {"name": "openvino_ir", "version": "opset13"}
    assert model["storage"]["path"] == f"{name}/{info.version}/fp32/"
    assert model["args"] == ['--plugin_config={"INFERENCE_PRECISION_HINT": "f32"}']


def test_render_variant_formats_and_the_modelmesh_limit():
    common = dict(name="m", namespace="ns", model_name="m", version=1, data_connection="dc")
    auto = render_inference_service(storage_uri="s3://b/m/1/auto/", model_format="openvino_ir", **common)
    model = auto["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"] == "openvino_ir" and "args" not in model  # the runtime's precision
    onnx = render_inference_service(storage_uri="s3://b/m/1/", **common)
    assert onnx["spec"]["predictor"]["model"]["modelFormat"] == {"name": "onnx", "version": "1"}
    with pytest.raises(ServingSpecError, match="ModelMesh cannot pass"):
        render_inference_service(
            storage_uri="s3://b/m/1/fp32/", model_format="openvino_ir", precision="f32", mode="modelmesh", **common
        )
    with pytest.raises(ServingSpecError, match="model_format 'tflite'"):
        render_inference_service(storage_uri="s3://b/m/1/", model_format="tflite", **common)
