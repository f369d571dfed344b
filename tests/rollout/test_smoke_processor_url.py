"""Issue 13, defect 2: the rollout's smoke test calls the model where the image processor will.

On OpenShift AI the predictor Service is headless by default: ``status.address.url`` carries the
pod's port and works, while a processor URL without the port reaches :80, where nothing listens.
Here the InferenceService is faked (``tests.fake_kube.FakeCluster``), its status URL points at a real
model server on loopback, and the processor's URL at a loopback port nothing listens on: the step
must roll back. MLflow and the model server are real.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from components.registry import get_champion
from tests.fake_kube import FakeCluster
from tests.registry.tiny_model import build_tiny_onnx
from tests.rollout.test_smoke_rule import BOTH, golden_dataset
from tests.serving.conftest import ThreadServer, free_port

TOKEN = "smoke-url-test-token"


@pytest.fixture
def dataset(tmp_path):
    return golden_dataset(tmp_path / "ds")


@pytest.fixture
def predictor(tmp_path, model_name):
    """A real v2 server serving a model that sees both classes, under the InferenceService's name."""
    from components.rollout import render
    from serving.modelserver import ModelRepository, create_app

    served = render.service_name(model_name)
    repo = ModelRepository()
    repo.load(served, str(build_tiny_onnx(tmp_path / "m.onnx", BOTH, tag=model_name)), version="1")
    with ThreadServer(create_app(repo, token=TOKEN)) as server:
        yield server.url, served


@pytest.fixture
def cluster(local_stack, predictor, monkeypatch):
    """The rollout step's cluster branch wired to a fake Kubernetes API and the real stack."""
    status_url, _ = predictor
    kube = FakeCluster.with_kserve("vinspect-models", delay=0)
    for key, value in local_stack.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("VINSPECT_MODEL_TOKEN", TOKEN)
    monkeypatch.delenv("VINSPECT_MODEL_CA_BUNDLE", raising=False)
    monkeypatch.setattr("infra.kube.connect", lambda **kw: kube)
    # What a Ready InferenceService reports: an address that works (with the pod's port).
    monkeypatch.setattr("components.rollout.kserve.endpoint_url", lambda isvc, mode: status_url)
    return kube


def _step(dataset, model_name, version):
    from components.kfp.rollout import rollout

    return rollout(
        SimpleNamespace(path=str(dataset)),
        model_name=model_name,
        version=version.version,
        storage_uri=version.storage_uri,
        serving_mode="raw",
        namespace="vinspect-models",
        inference_service="",
        data_connection="aws-connection-models",
        smoke_images=1,
        timeout_s=10,
        smoke_min_classes=-1,
        smoke_conf=0.1,
    )


def test_a_processor_url_that_reaches_nothing_rolls_back(
    cluster,
    predictor,
    dataset,
    cheap_versions,
    model_name,
    mlflow_client,
    monkeypatch,
):
    versions = cheap_versions(model_name, 1)
    dead = f"http://127.0.0.1:{free_port()}"  # the headless Service's :80: nothing listens
    monkeypatch.setenv("VINSPECT_PROCESSOR_MODEL_URL", dead)
    monkeypatch.setenv("VINSPECT_PROCESSOR_MODEL_NAME", predictor[1])
    with pytest.raises(RuntimeError, match=r"rolled back.*smoke-testing failed") as err:
        _step(dataset, model_name, versions["1"])
    assert "127.0.0.1" in str(err.value)
    assert get_champion(mlflow_client, model_name) is None  # never became the champion
    assert cluster.stored("inferenceservices", "vinspect-models", predictor[1]) is None  # removed again


def test_the_processor_url_and_model_name_are_what_the_smoke_test_calls(
    cluster,
    predictor,
    dataset,
    cheap_versions,
    model_name,
    mlflow_client,
    monkeypatch,
):
    versions = cheap_versions(model_name, 2)
    status_url, served = predictor
    # The processor's URL works: deployed.
    monkeypatch.setenv("VINSPECT_PROCESSOR_MODEL_URL", status_url)
    monkeypatch.setenv("VINSPECT_PROCESSOR_MODEL_NAME", served)
    assert _step(dataset, model_name, versions["1"]).status == "deployed"
    assert get_champion(mlflow_client, model_name) == "1"
    # The processor asks for a model name the server does not serve: rolled back as well.
    monkeypatch.setenv("VINSPECT_PROCESSOR_MODEL_NAME", "not-" + served)
    with pytest.raises(RuntimeError, match="rolled back"):
        _step(dataset, model_name, versions["2"])
    assert get_champion(mlflow_client, model_name) == "1"
