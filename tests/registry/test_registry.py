"""The registry core against the real MLflow server and S3 server of the local stack."""

from __future__ import annotations

import json

import pytest

from components.registry import (
    RegistryError,
    champion_metrics,
    compare_runs,
    get_champion,
    list_versions,
    plot_runs,
    promote,
    register_model,
    restore_champion,
    rollback,
)
from components.registry.core import metric_key, sha256_file
from tests.registered_models import DATASET_A, DATASET_B
from tests.registry.tiny_model import build_tiny_onnx


def test_register_twice_gives_one_version_and_everything_is_recorded(
    register, mlflow_client, s3, bucket, model_name, tmp_path
):
    csv = tmp_path / "results.csv"
    # Ultralytics pads its header and names metrics with parentheses.
    csv.write_text(
        "                  epoch,         train/box_loss,   metrics/mAP50(B)\n"
        "                      1,                    2.5,                0.1\n"
        "                      2,                    1.5,                0.4\n"
    )
    plot = tmp_path / "results.png"
    plot.write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 32)
    first = register(model_name, "run-1", epochs_csv=csv, plots=[plot])
    again = register(model_name, "run-1", epochs_csv=csv, plots=[plot])
    assert again == first
    assert first.version == "1"
    assert first.s3_uri == f"s3://{bucket}/{model_name}/1/1/model.onnx"
    assert first.storage_uri == f"s3://{bucket}/{model_name}/1/"
    versions = mlflow_client.search_model_versions(f"name = '{model_name}'")
    assert [v.version for v in versions] == ["1"]

    mv = mlflow_client.get_model_version(model_name, "1")
    assert mv.tags["vinspect.s3_uri"] == first.s3_uri
    assert mv.tags["vinspect.pipeline_run_id"] == "run-1"
    rm = mlflow_client.get_registered_model(model_name)
    assert rm.aliases == {"challenger": "1"}

    run = mlflow_client.get_run(first.run_id)
    assert run.data.tags["vinspect.git_revision"] == "0123abc"
    assert run.data.tags["mlflow.source.git.commit"] == "0123abc"
    assert run.data.tags["vinspect.dataset_id"] == DATASET_A
    assert run.data.params["epochs"] == "2"
    assert run.data.metrics["mAP50"] == 0.5
    history = mlflow_client.get_metric_history(first.run_id, "metrics/mAP50B")
    # Registered twice, but the per-epoch history is logged once.
    assert sorted((m.step, m.value) for m in history) == [(1, 0.1), (2, 0.4)]
    (dataset_input,) = run.inputs.dataset_inputs
    assert json.loads(dataset_input.dataset.profile)["dataset_id"] == DATASET_A
    assert dataset_input.dataset.digest == DATASET_A[:36]
    artifacts = {a.path for a in mlflow_client.list_artifacts(first.run_id, "plots")}
    assert artifacts == {"plots/results.png"}

    import mlflow

    from components.registry.register import _fluent

    with _fluent(mlflow_client):
        mlmodel = mlflow.models.get_model_info(mv.source)
    inputs = mlmodel.signature.inputs.to_dict()
    assert inputs[0]["name"] == "images" and list(inputs[0]["tensor-spec"]["shape"]) == [1, 3, 64, 64]
    assert mlmodel.signature.outputs.to_dict()[0]["name"] == "output0"
    assert mlmodel.flavors["onnx"]["providers"] == ["CPUExecutionProvider"]
    assert mlmodel.run_id == first.run_id


@pytest.fixture(scope="module")
def three(register) -> tuple[str, list[dict]]:
    """One model with three real registrations (mAP50 0.2, 0.7, 0.5), shared by the module."""
    import uuid

    name = f"tiny-three-{uuid.uuid4().hex[:8]}"
    results = [
        register(name, f"run-{i}", metrics={"mAP50": score, "precision": 1 - score})
        for i, score in enumerate((0.2, 0.7, 0.5), start=1)
    ]
    return name, results


def test_s3_holds_every_version_and_new_runs_make_new_versions(three, s3, bucket):
    import hashlib

    model_name, results = three
    assert [r.version for r in results] == ["1", "2", "3"]
    for r in results:
        key = r.s3_uri.removeprefix(f"s3://{bucket}/")
        head = s3.head_object(Bucket=bucket, Key=key)
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert len(body) == head["ContentLength"] > 0
        # S3 metadata keys are HTTP headers: AWS lowercases them, MinIO and rclone answer
        # `X-Amz-Meta-Sha256`, which boto3 hands back as "Sha256" (minio/minio#6471).
        metadata = {k.lower(): v for k, v in head["Metadata"].items()}
        assert metadata["sha256"] == hashlib.sha256(body).hexdigest()
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=f"{model_name}/")["Contents"]}
    assert keys == {f"{model_name}/{v}/1/model.onnx" for v in ("1", "2", "3")}


def test_same_pipeline_run_with_a_different_model_is_a_new_version(register, model_name, tmp_path):
    first = register(model_name, "run-x")
    other = build_tiny_onnx(tmp_path / "other.onnx", [], tag="different weights")
    second = register(model_name, "run-x", onnx_path=other)
    assert second.version != first.version
    assert second.run_id != first.run_id


def test_promote_then_rollback_returns_to_the_first_champion(three, mlflow_client):
    model_name, _ = three
    restore_champion(mlflow_client, model_name, None, [])
    assert get_champion(mlflow_client, model_name) is None
    assert promote(mlflow_client, model_name, "1").previous is None
    assert promote(mlflow_client, model_name, 2).previous == "1"
    assert promote(mlflow_client, model_name, "3").previous == "2"
    assert promote(mlflow_client, model_name, "3").changed is False  # no duplicate history entry
    back = rollback(mlflow_client, model_name)
    assert (back.name, back.champion, back.rolled_back_from) == (model_name, "2", "3")
    assert rollback(mlflow_client, model_name).champion == "1"
    assert get_champion(mlflow_client, model_name) == "1"
    with pytest.raises(RegistryError, match="no previous champion"):
        rollback(mlflow_client, model_name)
    assert get_champion(mlflow_client, model_name) == "1"
    # challenger stays on the newest registration; versions list their aliases.
    listed = {v["version"]: v for v in list_versions(mlflow_client, model_name)}
    assert listed["1"]["aliases"] == ["champion"]
    assert listed["3"]["aliases"] == ["challenger"]
    assert [v["version"] for v in list_versions(mlflow_client, model_name)] == ["3", "2", "1"]


def test_promote_refuses_an_unknown_version(cheap_versions, mlflow_client, model_name):
    cheap_versions(model_name, 1)
    with pytest.raises(RegistryError, match="no version 7"):
        promote(mlflow_client, model_name, "7")


def test_champion_metrics_only_on_the_same_dataset(three, mlflow_client, model_name):
    assert champion_metrics(mlflow_client, model_name, DATASET_A) is None  # no model at all
    model_name, _ = three
    restore_champion(mlflow_client, model_name, None, [])
    assert champion_metrics(mlflow_client, model_name, DATASET_A) is None  # no champion yet
    promote(mlflow_client, model_name, "2")
    metrics = champion_metrics(mlflow_client, model_name, DATASET_A)
    assert metrics["mAP50"] == pytest.approx(0.7)
    assert champion_metrics(mlflow_client, model_name, DATASET_B) is None


def test_register_rejects_bad_inputs_before_writing(mlflow_client, s3, bucket, model_name, tmp_path):
    onnx_path = build_tiny_onnx(tmp_path / "m.onnx")
    common = dict(
        onnx_path=onnx_path,
        model_name=model_name,
        bucket=bucket,
        params={},
        metrics={},
        epoch_metrics_csv=None,
        plots=[],
        dataset_id=DATASET_A,
        dataset_uri=None,
        git_revision=None,
        pipeline_run_id="run-1",
        experiment=f"vinspect-tests-{model_name}",
    )
    with pytest.raises(RegistryError, match="no-such-bucket"):
        register_model(mlflow_client, s3, **{**common, "bucket": "no-such-bucket"})
    with pytest.raises(RegistryError, match="does not exist"):
        register_model(mlflow_client, s3, **{**common, "onnx_path": tmp_path / "missing.onnx"})
    bad_csv = tmp_path / "results.csv"
    bad_csv.write_text("epoch,loss\n1,abc\n")
    with pytest.raises(RegistryError, match=r"results.csv:2: column 'loss'"):
        register_model(mlflow_client, s3, **{**common, "epoch_metrics_csv": bad_csv})


def test_compare_runs_sorts_and_plots(three, mlflow_client, tmp_path):
    model_name, _ = three
    rows = compare_runs(mlflow_client, f"vinspect-tests-{model_name}", ["mAP50"], "mAP50")
    assert [r["metrics"]["mAP50"] for r in rows] == [0.7, 0.5, 0.2]
    assert all(set(r["metrics"]) == {"mAP50"} for r in rows)
    assert rows[0]["pipeline_run_id"] == "run-2" and rows[0]["params"]["epochs"] == "2"
    asc = compare_runs(mlflow_client, f"vinspect-tests-{model_name}", None, "precision", descending=False)
    assert [round(r["metrics"]["precision"], 2) for r in asc] == [0.3, 0.5, 0.8]
    png = plot_runs(rows, ["mAP50"], tmp_path / "plots" / "compare.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(RegistryError, match="no run has any"):
        plot_runs(rows, ["recall"], tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()
    with pytest.raises(RegistryError, match="no MLflow experiment"):
        compare_runs(mlflow_client, "no-such-experiment", None, None)


def test_metric_keys_are_made_mlflow_safe():
    assert metric_key("metrics/mAP50-95(B)") == "metrics/mAP50-95B"
    assert metric_key(" lr/pg0 ") == "lr/pg0"
    assert metric_key("a@b") == "a_b"


def test_sha256_file(tmp_path):
    p = tmp_path / "x"
    p.write_bytes(b"abc")
    assert sha256_file(p) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_an_unchanged_file_is_not_uploaded_again_whatever_the_metadata_case(local_stack):
    """The local S3 (rclone, like MinIO) returns user-metadata keys capitalised ("Sha256")."""
    import hashlib
    import uuid

    from components.registry.register import _s3_has

    s3 = local_stack.s3
    bucket = local_stack.env["AWS_S3_BUCKET"]
    key = f"metadata-case-{uuid.uuid4().hex[:8]}/1/model.onnx"
    body = b"not really a model"
    sha = hashlib.sha256(body).hexdigest()
    assert not _s3_has(s3, bucket, key, sha)
    s3.put_object(Bucket=bucket, Key=key, Body=body, Metadata={"sha256": sha})
    assert _s3_has(s3, bucket, key, sha)
    assert not _s3_has(s3, bucket, key, "0" * 64)


def test_registry_errors_derive_from_the_vinspect_root():
    from components.registry import AliasLockTimeout, RegistryError
    from vinspect.errors import VinspectError

    assert issubclass(RegistryError, VinspectError) and issubclass(RegistryError, RuntimeError)
    assert issubclass(AliasLockTimeout, RegistryError)
