"""Rendered InferenceService and ServingRuntime validate against the upstream KServe CRDs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from components.rollout import ServingSpecError, render_inference_service, render_serving_runtime, service_name
from components.rollout.render import storage_path


def _crd_schema(shared_dir: Path, filename: str, version: str) -> dict:
    text = (shared_dir / "schemas" / "crds" / filename).read_text()
    crd = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # 2 MB: use libyaml
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            return v["schema"]["openAPIV3Schema"]
    raise AssertionError(f"{filename} has no version {version}")


def _unknown_fields(obj, schema: dict, path: str = "") -> list[str]:
    """Fields the API server would prune: structural schemas list every known property."""
    found = []
    if isinstance(obj, dict) and schema.get("type") == "object":
        props = schema.get("properties")
        if props is not None and not schema.get("x-kubernetes-preserve-unknown-fields"):
            for key, value in obj.items():
                if key not in props:
                    if not schema.get("additionalProperties"):
                        found.append(f"{path}.{key}")
                else:
                    found += _unknown_fields(value, props[key], f"{path}.{key}")
        elif isinstance(schema.get("additionalProperties"), dict):
            for key, value in obj.items():
                found += _unknown_fields(value, schema["additionalProperties"], f"{path}.{key}")
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(obj):
            found += _unknown_fields(item, schema["items"], f"{path}[{i}]")
    return found


def _validate(manifest: dict, schema: dict) -> None:
    import jsonschema

    jsonschema.Draft7Validator(schema).validate(manifest)
    assert _unknown_fields(manifest, schema) == []
    # Kubernetes metadata rules the CRD schema does not carry.
    for key, value in manifest["metadata"].get("labels", {}).items():
        assert isinstance(value, str) and len(value) <= 63, (key, value)
    assert all(isinstance(v, str) for v in manifest["metadata"].get("annotations", {}).values())


@pytest.fixture(scope="module")
def isvc_schema(shared_dir):
    return _crd_schema(shared_dir, "serving.kserve.io_inferenceservices.yaml", "v1beta1")


@pytest.fixture(scope="module")
def runtime_schema(shared_dir):
    return _crd_schema(shared_dir, "serving.kserve.io_servingruntimes.yaml", "v1alpha1")


@pytest.mark.parametrize("mode", ["raw", "modelmesh"])
def test_inference_service_validates_and_points_at_the_version(mode, isvc_schema):
    manifest = render_inference_service(
        name="metal-nut",
        namespace="vinspect",
        model_name="metal-nut",
        version=7,
        storage_uri="s3://models/metal-nut/7/",
        data_connection="aws-connection-models",
        mode=mode,
    )
    _validate(manifest, isvc_schema)
    model = manifest["spec"]["predictor"]["model"]
    assert model["storage"] == {"key": "aws-connection-models", "path": "metal-nut/7/"}
    assert model["modelFormat"] == {"name": "onnx", "version": "1"}
    meta = manifest["metadata"]
    assert meta["labels"]["vinspect.io/model-name"] == "metal-nut"
    assert meta["labels"]["vinspect.io/model-version"] == "7"
    assert meta["annotations"]["vinspect.io/storage-uri"] == "s3://models/metal-nut/7/"
    text = json.dumps(manifest)
    assert "AWS_SECRET_ACCESS_KEY" not in text and "AWS_ACCESS_KEY_ID" not in text
    if mode == "raw":
        assert meta["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
        assert meta["annotations"]["opendatahub.io/connections"] == "aws-connection-models"
        assert model["runtime"] == "kserve-ovms"
        assert model["protocolVersion"] == "v2"
        assert model["resources"]["limits"]["memory"] == "4Gi"
    else:
        assert meta["annotations"]["serving.kserve.io/deploymentMode"] == "ModelMesh"
        assert model["runtime"] == "ovms"
        assert "resources" not in model


@pytest.mark.parametrize("mode", ["raw", "modelmesh"])
def test_serving_runtime_validates_and_serves_onnx(mode, runtime_schema):
    manifest = render_serving_runtime(namespace="vinspect", mode=mode, image="quay.io/example/ovms:1")
    _validate(manifest, runtime_schema)
    spec = manifest["spec"]
    assert {"name": "onnx", "version": "1", "autoSelect": True} in spec["supportedModelFormats"]
    assert spec["containers"][0]["image"] == "quay.io/example/ovms:1"
    if mode == "raw":
        assert spec["multiModel"] is False
        assert "--model_name={{.Name}}" in spec["containers"][0]["args"]
        assert "v2" in spec["protocolVersions"]
    else:
        assert spec["multiModel"] is True
        assert spec["builtInAdapter"]["serverType"] == "ovms"


def test_unknown_field_check_catches_typos(isvc_schema):
    manifest = render_inference_service(
        name="m", namespace="n", model_name="m", version=1, storage_uri="s3://b/m/1/", data_connection="dc"
    )
    manifest["spec"]["predictor"]["model"]["storageUrl"] = "s3://typo"
    assert _unknown_fields(manifest, isvc_schema) == [".spec.predictor.model.storageUrl"]


def test_render_refuses_bad_arguments():
    ok = dict(name="m", namespace="n", model_name="m", version=1, storage_uri="s3://b/m/1/", data_connection="dc")
    with pytest.raises(ServingSpecError, match="mode"):
        render_inference_service(**{**ok, "mode": "serverless-typo"})
    with pytest.raises(ServingSpecError, match="DNS-1035"):
        render_inference_service(**{**ok, "name": "Metal_Nut"})
    with pytest.raises(ServingSpecError, match="s3://"):
        render_inference_service(**{**ok, "storage_uri": "/local/path"})
    with pytest.raises(ServingSpecError, match="bucket and a path"):
        render_inference_service(**{**ok, "storage_uri": "s3://bucket-only/"})
    with pytest.raises(ServingSpecError, match="data_connection"):
        render_inference_service(**{**ok, "data_connection": ""})
    with pytest.raises(ServingSpecError, match="mode"):
        render_serving_runtime(namespace="n", mode="nope")


def test_names_and_paths():
    assert service_name("metal_nut") == "metal-nut"
    assert service_name("9lives") == "m-9lives"
    assert storage_path("s3://models/metal-nut/3") == "metal-nut/3/"
