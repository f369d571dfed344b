"""Fixtures of the registry and rollout tests: real MLflow + S3 (the local stack), tiny models.

``tests/conftest.py`` imports the fixtures, so ``tests/registry``, ``tests/rollout`` and any other
directory reach them; the constants are imported from here.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.registry.tiny_model import BENT_IN_THE_MIDDLE, build_tiny_onnx

DATASET_A = "a" * 64
DATASET_B = "b" * 64


@pytest.fixture(scope="session")
def mlflow_client(local_stack):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=local_stack.mlflow_uri, registry_uri=local_stack.mlflow_uri)


@pytest.fixture(scope="session")
def s3(local_stack):
    return local_stack.s3


@pytest.fixture(scope="session")
def bucket(local_stack, s3) -> str:
    name = local_stack.env.get("AWS_S3_BUCKET", "models")
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    if name not in existing:
        s3.create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def register(mlflow_client, s3, bucket, tmp_path_factory) -> Callable[..., dict]:
    """``register(model_name, run_id, detections=..., dataset_id=..., metrics=...)`` -> version info.

    Builds a tiny ONNX (distinct per ``run_id``) and registers it through the real core.
    """
    from components.registry import register_model

    root = tmp_path_factory.mktemp("models")

    def _register(
        model_name: str,
        run_id: str,
        *,
        detections=BENT_IN_THE_MIDDLE,
        dataset_id: str = DATASET_A,
        metrics: dict | None = None,
        epochs_csv: Path | None = None,
        plots: list[Path] | None = None,
        onnx_path: Path | None = None,
    ) -> dict:
        path = onnx_path or build_tiny_onnx(root / model_name / f"{run_id}.onnx", detections, tag=run_id)
        return register_model(
            mlflow_client,
            s3,
            onnx_path=path,
            model_name=model_name,
            bucket=bucket,
            params={"model": "tiny", "epochs": 2, "imgsz": 64},
            metrics=metrics if metrics is not None else {"mAP50": 0.5, "mAP50-95": 0.3},
            epoch_metrics_csv=epochs_csv,
            plots=plots or [],
            dataset_id=dataset_id,
            dataset_uri="s3://vinspect-data/datasets/tiny/",
            git_revision="0123abc",
            pipeline_run_id=run_id,
            experiment=f"vinspect-tests-{model_name}",
        )

    return _register


@pytest.fixture(scope="session")
def logged_model(register) -> dict:
    """One real registration whose logged model cheap test versions can point at."""
    return register(f"tiny-source-{uuid.uuid4().hex[:8]}", "run-source")


@pytest.fixture
def cheap_versions(mlflow_client, logged_model, bucket) -> Callable[[str, int], dict[str, dict]]:
    """``cheap_versions(model_name, n)``: n registry versions without logging n models.

    For tests that exercise aliases and rollouts, not registration: each version is a registry
    entry pointing at one already-logged ONNX model, tagged like :func:`register_model` does.
    """
    from components.registry import Registration
    from components.registry.core import TAG_DATASET, TAG_S3_URI, TAG_STORAGE_URI, s3_key, storage_uri

    source = mlflow_client.get_model_version(logged_model.name, logged_model.version)

    def _make(model_name: str, n: int) -> dict[str, dict]:
        mlflow_client.create_registered_model(model_name)
        out = {}
        for _ in range(n):
            mv = mlflow_client.create_model_version(
                model_name, source.source, run_id=source.run_id, model_id=source.source.removeprefix("models:/")
            )
            version = str(mv.version)
            info = Registration(
                name=model_name,
                version=version,
                s3_uri=f"s3://{bucket}/{s3_key(model_name, version)}",
                storage_uri=storage_uri(bucket, model_name, version),
                run_id=source.run_id,
                variant="onnx",
                variant_precision="",
            )
            for tag, value in {
                TAG_S3_URI: info.s3_uri,
                TAG_STORAGE_URI: info.storage_uri,
                TAG_DATASET: DATASET_A,
            }.items():
                mlflow_client.set_model_version_tag(model_name, version, tag, value)
            out[version] = info
        return out

    return _make


@pytest.fixture
def model_name() -> str:
    """A registered-model name no other test uses (the stack is shared by the session)."""
    return f"tiny-{uuid.uuid4().hex[:8]}"


def model_token(local_stack) -> str:
    """The model server's bearer token: the stack's own when it generated one."""
    return local_stack.env.get("VINSPECT_MODEL_TOKEN") or "registry-test-model-token"


@pytest.fixture
def http_model_server(s3, bucket, local_stack, monkeypatch):
    """The real model server on a loopback port (uvicorn in a thread, stopped at the end).

    It requires a token (its repository API is off without one) and loads only from the
    stack's models bucket; ``VINSPECT_MODEL_TOKEN`` is set for the test so CLI calls send it.
    """
    import uvicorn

    from serving.modelserver import ModelRepository, create_app

    token = model_token(local_stack)
    monkeypatch.setenv("VINSPECT_MODEL_TOKEN", token)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    app_ = create_app(ModelRepository(lambda: s3), load_on_startup=False, token=token, model_roots=[f"s3://{bucket}"])
    server = uvicorn.Server(uvicorn.Config(app_, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("model server did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)
