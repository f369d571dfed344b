"""Fixtures for the pipeline tests: a local model server on the local stack, a fake KFP API."""

from __future__ import annotations

import threading
import time

import pytest

from tests.conftest import free_port
from tests.pipeline.fake_kfp import FakeKFP

MODEL_TOKEN = "pipeline-test-model-token"


@pytest.fixture
def fake_kfp(monkeypatch, tmp_path):
    """A fake KFP v2beta1 API server that wants the bearer token ``test-token``."""
    for name in ("KFP_HOST", "KFP_TOKEN", "KFP_NAMESPACE", "KFP_CA_BUNDLE", "VINSPECT_IMAGE"):
        monkeypatch.delenv(name, raising=False)
    # The kfp client reads ~/.config/kfp/context.json and the kubernetes loader ~/.kube/config:
    # keep the developer's out of the test.
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    fake = FakeKFP(token="test-token").start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture(scope="module")
def model_server(local_stack):
    """Our KServe v2 model server, in a thread on a free port, reading S3 from the local stack.

    It starts empty: the pipeline's rollout step loads models into it through the repository
    extension, exactly as it would swap models on a running server.
    """
    import uvicorn

    from serving.modelserver import ModelRepository, create_app

    repository = ModelRepository(lambda: local_stack.s3)
    port = free_port()
    # Its repository API needs a token: the stack's own when it has one (the rollout step sends
    # VINSPECT_MODEL_TOKEN from the stack's settings), else one the tests set (MODEL_TOKEN).
    token = local_stack.env.get("VINSPECT_MODEL_TOKEN") or MODEL_TOKEN
    bucket = local_stack.env.get("AWS_S3_BUCKET", "models")
    app = create_app(repository, token=token, model_roots=[f"s3://{bucket}"])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the model server did not start")
        time.sleep(0.05)
    # The rollout step and the tests' own calls send it from the environment.
    mp = pytest.MonkeyPatch()
    mp.setenv("VINSPECT_MODEL_TOKEN", token)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        mp.undo()
        server.should_exit = True
        thread.join(timeout=10)
