"""The feedback loop end to end on the local stack (issue 15's "done when").

frames -> the image processor (its Knative HTTP adapter, our model server) -> review queue in S3
-> ``vinspect review push`` -> a pre-annotated task in the CVAT project (the CVAT test server)
-> a labeller corrects the boxes and completes the job -> the existing pull gives a new dataset
id -> a data-aware pipeline run (kfp.local, tiny settings) trains on it, registers and deploys;
a second data-aware run on the same data skips training, and one after a further correction trains
again on the next dataset id.

Real parts: moto S3, MLflow and tansu from the local stack, our model server, kfp.local; CVAT is
the test server built from CVAT's published API (tests/data/cvat_server.py).
"""

from __future__ import annotations

import hashlib
import io
import json
import uuid

import httpx
import numpy as np
import pytest
from cloudevents.v1.conversion import to_binary
from typer.testing import CliRunner

from components.data.review_push import frame_name
from serving.events import image_event
from serving.feedback import BoundedWorkers, LoopHooks
from serving.model_client import ModelClient
from serving.processor import InspectConfig, Inspector, ProcessorMetrics, create_http_app
from serving.review import ReviewPolicy, ReviewSelector, ReviewStore
from tests.serving.conftest import ThreadServer, onnx_model  # noqa: F401 - the tiny YOLO fixture

CLASSES = ("scratch", "bent")
FRAMES = 16  # enough for a train/val/test split with both classes in each
# One epoch at 64 px: the run proves the data reaches training, not that the model is good.
TINY = {
    "epochs": 1,
    "imgsz": 64,
    "batch": 8,
    "workers": 0,
    "parity_images": 2,
    "smoke_images": 1,
    "smoke_min_classes": 0,
    "min_map50": 0.0,
    "min_class_map50": 0.0,
}


MODEL_TOKEN = "loop-e2e-model-token"


@pytest.fixture
def model_server(local_stack, onnx_model, monkeypatch):  # noqa: F811
    """Our model server serving the tiny model as ``metal-nut``; the pipeline's rollout loads into it
    (its repository API needs a token, sent from ``VINSPECT_MODEL_TOKEN``)."""
    from serving.modelserver import ModelRepository, create_app

    token = local_stack.env.get("VINSPECT_MODEL_TOKEN") or MODEL_TOKEN
    repo = ModelRepository(lambda: local_stack.s3, threads=1)
    repo.load("metal-nut", str(onnx_model))
    app = create_app(
        repo,
        max_body_bytes=4 * 1024 * 1024,
        token=token,
        model_roots=[f"s3://{local_stack.env.get('AWS_S3_BUCKET', 'models')}"],
    )
    with ThreadServer(app) as server:
        server.token = token
        yield server


@pytest.fixture
def webhook():
    from tests.loop.test_notify import Receiver

    receiver = Receiver()
    try:
        yield receiver
    finally:
        receiver.stop()


def _frame(i: int) -> tuple[bytes, str, list]:
    from components.data.synth import render_nut

    kind = CLASSES[i % 2]
    img, boxes = render_nut(np.random.default_rng([15, i]), 128, kind)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=92)
    return buf.getvalue(), kind, boxes


def test_frames_to_review_to_cvat_to_a_data_aware_training_run(
    local_stack, model_server, cvat, webhook, monkeypatch, tmp_path
):
    from mlflow.tracking import MlflowClient

    from components.registry import get_champion, version_info
    from pipelines.local import run_local
    from vinspect.cli import app

    local_stack.apply_env(monkeypatch)
    monkeypatch.setenv("VINSPECT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CVAT_URL", cvat.url)
    monkeypatch.setenv("CVAT_TOKEN", cvat.pat)
    prefix = f"review-e2e-{uuid.uuid4().hex[:8]}/"
    monkeypatch.setenv("VINSPECT_REVIEW_PREFIX", prefix)
    monkeypatch.setenv("VINSPECT_MODEL_TOKEN", model_server.token)
    monkeypatch.setenv("VINSPECT_NOTIFY_URL", webhook.url)  # the pipeline's notifications
    monkeypatch.setenv("VINSPECT_NOTIFY_MODE", "structured")
    s3, bucket = local_stack.s3, local_stack.env["VINSPECT_DATA_BUCKET"]

    # 1. Frames through the processor with the loop on. The cameras know what each part is; the
    #    audit rate of 1 makes the selection independent of what the untrained model finds.
    store = ReviewStore(s3, bucket, prefix)
    metrics = ProcessorMetrics()
    hooks = LoopHooks(
        metrics.loop,
        selector=ReviewSelector(ReviewPolicy(audit_rate=1.0)),
        review_store=store,
        workers=BoundedWorkers(2, 64, "e2e"),
    )
    client = ModelClient(model_server.url, "metal-nut", retries=0, token=model_server.token)
    truth = {}
    try:
        with ThreadServer(
            create_http_app(Inspector(client, InspectConfig(annotate=False), metrics, None, hooks), metrics)
        ) as processor:
            for i in range(FRAMES):
                jpeg, kind, boxes = _frame(i)
                headers, body = to_binary(image_event(jpeg, f"line-{i % 2}", label=kind))
                r = httpx.post(processor.url + "/", content=body, headers=headers, timeout=30)
                assert r.status_code == 200, r.text
                truth[hashlib.sha256(jpeg).hexdigest()] = boxes
            scraped = httpx.get(processor.url + "/metrics").text
    finally:
        hooks.close()
        client.close()
    assert store.size() == FRAMES
    assert f"vinspect_review_queue_size {float(FRAMES)}" in metrics.render()[0].decode()
    assert 'vinspect_images_total{camera="line-0"} 8.0' in scraped

    # 2. The queue becomes a pre-annotated CVAT task.
    runner = CliRunner()
    r = runner.invoke(app, ["review", "push", "--cvat-url", cvat.url])
    assert r.exit_code == 0, r.output
    assert f"pushed {FRAMES} frame(s)" in r.output
    [task] = cvat.tasks.values()
    assert store.size() == 0 and len(task.frames) == FRAMES

    # 3. The labeller corrects the boxes (here: draws the true ones) and completes the job.
    by_name = {f.name: f for f in task.frames}
    for item in store.pushed(task.id):
        frame = by_name[frame_name(item)]
        frame.boxes = [(CLASSES[cid], *box) for cid, box in truth[item.sha256]]
    for job in task.jobs:
        job.state, job.stage = "completed", "acceptance"

    # 4. A data-aware run (skip_if_unchanged, as the schedule and the drift trigger submit it) on
    #    the project: the pull maps labels by name, the dataset id is new, the model trains.
    model = f"loop-e2e-{uuid.uuid4().hex[:6]}"

    def manifest_of(dataset_id: str) -> dict:
        return next(
            m
            for m in (json.loads(p.read_text()) for p in root.rglob("manifest.json"))
            if m.get("dataset_id") == dataset_id
        )

    arguments = {"cvat_project_id": task.project_id, "model_name": model, "skip_if_unchanged": True, **TINY}
    root = tmp_path / "pipeline-root"

    def run(**overrides):
        # No data source and no source_version: the run reads the version from CVAT itself.
        return run_local(
            None,
            arguments={**arguments, **overrides},
            model_url=model_server.url,
            pipeline_root=root,
            env={**local_stack.env, "VINSPECT_MODEL_TOKEN": model_server.token},
        )

    def notices() -> list:
        return [e for e in webhook.events() if e.get_data().get("model") == model]

    def trained(result) -> bool:
        return any(s["task"] == "train" and not s["cached"] for s in result.steps)

    first = run()
    assert first.outcome == "deployed", first.detail
    assert trained(first)
    mlflow = MlflowClient(tracking_uri=local_stack.mlflow_uri, registry_uri=local_stack.mlflow_uri)
    dataset_id = version_info(mlflow, model, get_champion(mlflow, model))["dataset_id"]
    assert dataset_id
    auth = {"Authorization": f"Bearer {model_server.token}"}
    assert httpx.get(f"{model_server.url}/v2/models/{model}", headers=auth).status_code == 200
    # The pipeline stored the version's drift reference where the processor looks, and said it promoted.
    from serving.drift import load_reference

    reference = load_reference(s3, local_stack.env.get("AWS_S3_BUCKET", "models"), model, "1")
    assert reference["model"] == {"name": model, "version": "1", "dataset_id": dataset_id}
    # ... and the rollout step published it as the served one (what a processor on OVMS, where
    # every version answers as 1, reads), with the registry version inside.
    from serving.drift import load_served_reference

    served, _ = load_served_reference(s3, local_stack.env.get("AWS_S3_BUCKET", "models"), model)
    assert served["model"] == reference["model"] and served["signals"] == reference["signals"]
    val = [it for it in manifest_of(dataset_id)["items"] if it.get("split") == "val"]
    assert val and reference["signals"]["brightness"]["n"] == len(val)  # one brightness per val image
    [promoted] = notices()
    assert promoted["type"] == "io.vinspect.model.promoted"
    assert promoted.get_data()["version"] == "1" and promoted.get_data()["previous_version"] is None
    # The dataset the run trained on is the labeller's: every pushed frame, ids by name.
    manifest = manifest_of(dataset_id)
    assert len(manifest["items"]) == FRAMES and manifest["classes"] == list(CLASSES)

    # 5. Data-aware: the same data again is the champion's dataset, so training is skipped.
    second = run()
    assert second.outcome == "skipped", second.detail
    assert dataset_id in second.detail and not trained(second)

    # 6. A labeller corrects one more frame (CVAT bumps the job's updated_date when it saves):
    #    the next run pulls again rather than re-using the cached pull, and trains on the new id.
    frame = task.frames[0]
    frame.boxes = [("bent" if lab == "scratch" else "scratch", *box) for lab, *box in frame.boxes]
    for job in task.jobs:
        job.updated_date = "2030-01-01T00:00:00.000000Z"
    #    This time the gate floor is out of reach: the run trains, is rejected, and says so.
    third = run(min_map50=1.01)
    assert trained(third) and third.outcome == "rejected", third.detail
    assert dataset_id not in third.detail
    rejected = notices()[-1]
    assert rejected["type"] == "io.vinspect.model.gate.rejected"
    assert rejected.get_data()["dataset_id"] not in ("", dataset_id)
    assert any("floor" in r for r in rejected.get_data()["reasons"])
