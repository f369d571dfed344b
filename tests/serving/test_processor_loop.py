"""The processor with the feedback loop on: metrics per result, review queue in S3, drift, alerts.

Real parts: our model server (tiny YOLO), the local stack's S3, a loopback webhook for the drift
notification.
"""

from __future__ import annotations

import io
import logging
import time
import uuid

import httpx
import numpy as np
import pytest
from PIL import Image

from serving import drift as drift_mod
from serving.events import image_event
from serving.feedback import BoundedWorkers, DriftWatch, LoopHooks, dead_letter_reason, frame_stats
from serving.metrics import InspectionMetrics
from serving.model_client import ModelClient
from serving.notify import DRIFT_DETECTED, Notifier
from serving.processor import AnnotatedImageStore, InspectConfig, Inspector, ProcessorMetrics, create_http_app
from serving.review import ReviewPolicy, ReviewSelector, ReviewStore, image_hash, reasons_for
from tests.loop.test_notify import Receiver

from .conftest import ThreadServer

DATA_BUCKET, MODELS_BUCKET = "vinspect-data", "models"


def _jpeg(seed: int, level: int | None = None, w: int = 96, h: int = 72) -> bytes:
    rng = np.random.default_rng(seed)
    if level is None:
        arr = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    else:  # a flat-ish frame of a given brightness
        arr = np.clip(rng.normal(level, 4, (h, w, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=92)
    return buf.getvalue()


@pytest.fixture
def loop_parts(local_stack, model_server):
    s3 = local_stack.s3
    prefix = f"review-{uuid.uuid4().hex[:8]}/"
    workers = BoundedWorkers(2, 32, "test-loop")
    proc_metrics = ProcessorMetrics()
    selector = ReviewSelector(ReviewPolicy(audit_rate=0.0))
    store = ReviewStore(s3, DATA_BUCKET, prefix)
    hooks = LoopHooks(proc_metrics.loop, selector=selector, review_store=store, workers=workers)
    client = ModelClient(model_server.url, "metal-nut", retries=0)
    annotated = AnnotatedImageStore(s3, DATA_BUCKET, f"annotated-{prefix.rstrip('/')}")
    inspector = Inspector(client, InspectConfig(), proc_metrics, annotated, hooks)
    yield inspector, hooks, store, proc_metrics
    annotated.close()
    client.close()


def test_results_are_counted_and_selected_frames_queued(loop_parts):
    inspector, hooks, store, metrics = loop_parts
    results = []
    for i in range(6):
        jpeg = _jpeg(i)
        label = ("scratch", "good", None)[i % 3]
        data = inspector.inspect(image_event(jpeg, f"cam-{i % 2}", label=label)).get_data()
        results.append((data, jpeg))
    hooks.close()  # the queue's S3 writes run on the workers: wait for them
    expected = {image_hash(j) for d, j in results if reasons_for(d, image_hash(j), ReviewPolicy(audit_rate=0.0))}
    assert expected, "a 'scratch' label on a frame without a scratch always disagrees"
    assert {it.sha256 for it in store.pending()} == expected
    for item in store.pending():
        assert store.image(item) == dict((image_hash(j), j) for _, j in results)[item.sha256]
    text = metrics.render()[0].decode()
    assert 'vinspect_images_total{camera="cam-0"} 3.0' in text
    assert 'vinspect_images_total{camera="cam-1"} 3.0' in text
    assert 'vinspect_review_selected_total{camera="cam-0",reason="disagreement"}' in text
    assert f"vinspect_review_queue_size {float(len(expected))}" in text
    assert 'vinspect_model_info{model="metal-nut",version="1"} 1.0' in text
    assert 'vinspect_stage_seconds_count{stage="inference"} 6.0' in text
    assert "vinspect_processor_events_total" in text  # one registry: the adapters' metrics too


def test_a_slow_review_store_never_holds_inference(local_stack, model_server):
    """Review writes wait on workers; with S3 stalled the inspection returns at once, and the
    backlog beyond max_pending is released and counted rather than queued without bound."""
    import threading

    gate = threading.Event()

    class StalledStore(ReviewStore):
        def put(self, *args, **kwargs):
            gate.wait(30)
            return super().put(*args, **kwargs)

    metrics = InspectionMetrics()
    store = StalledStore(local_stack.s3, DATA_BUCKET, f"review-{uuid.uuid4().hex[:8]}/")
    selector = ReviewSelector(ReviewPolicy(audit_rate=1.0))  # every frame selected
    hooks = LoopHooks(metrics, selector=selector, review_store=store, workers=BoundedWorkers(1, 2, "t"))
    client = ModelClient(model_server.url, "metal-nut", retries=0)
    inspector = Inspector(client, InspectConfig(annotate=False), None, None, hooks)
    try:
        t0 = time.perf_counter()
        for i in range(5):
            inspector.inspect(image_event(_jpeg(100 + i), "cam-s"))
        assert time.perf_counter() - t0 < 10  # 5 inspections, not 5 stalled puts
        assert 'vinspect_errors_total{kind="review_backlog"} 3.0' in metrics.render()[0].decode()
        assert sum(selector.counts().values()) == 2  # the released ones count against no cap
    finally:
        gate.set()
        hooks.close()
        client.close()
    assert store.size() == 2


def test_failed_frames_keep_the_clean_frame_beside_the_drawn_copy(local_stack):
    """An operator flag must send the camera's frame, not the copy with boxes burned in."""
    s3 = local_stack.s3
    store = AnnotatedImageStore(s3, DATA_BUCKET, "annotated-orig")
    try:
        ref = store.put("annotated-orig/2026-12-06/c/e-1.jpg", b"drawn", original=b"clean")
    finally:
        store.close()
    assert ref["original_key"] == "annotated-orig/2026-12-06/c/e-1.orig.jpg"
    assert s3.get_object(Bucket=DATA_BUCKET, Key=ref["original_key"])["Body"].read() == b"clean"
    assert s3.get_object(Bucket=DATA_BUCKET, Key=ref["key"])["Body"].read() == b"drawn"


def _reference(levels: list[int]) -> dict:
    samples = [
        (frame_stats(np.asarray(Image.open(io.BytesIO(_jpeg(500 + i, lv))))[..., ::-1]), [])
        for i, lv in enumerate(levels)
    ]
    return drift_mod.compute_reference(samples, model={"name": "metal-nut", "version": "1"})


def test_drift_scores_and_one_notification_against_the_versions_reference(local_stack, model_server):
    s3 = local_stack.s3
    model = f"nut-{uuid.uuid4().hex[:6]}"
    # The reference: bright frames. Live: dark frames, so brightness drifts far past PSI 0.2.
    drift_mod.save_reference(s3, MODELS_BUCKET, model, "1", _reference([200 + (i % 20) for i in range(60)]))
    receiver = Receiver()
    metrics = InspectionMetrics()
    workers = BoundedWorkers(1, 16, "t")
    watch = DriftWatch(
        s3,
        MODELS_BUCKET,
        workers,
        notifier=Notifier(receiver.url, mode="structured"),
        min_samples=10,
        score_every_s=0.0,
        notify_cooldown_s=3600,
    )
    hooks = LoopHooks(metrics, drift=watch, workers=workers)
    client = ModelClient(model_server.url, "metal-nut", retries=0)
    inspector = Inspector(client, InspectConfig(annotate=False), None, None, hooks)
    try:
        # The served model is `metal-nut` v1; the hooks see the name the result carries. Point the
        # watch at the test's model by rewriting the result's model name before the hooks see it.
        orig = hooks.on_result

        def renamed(data, image, bgr):
            data = dict(data, model={"name": model, "version": "1"})
            return orig(data, image, bgr)

        hooks.on_result = renamed
        inspector.inspect(image_event(_jpeg(0, 40), "cam-d"))
        deadline = time.monotonic() + 10
        while watch.monitor is None and time.monotonic() < deadline:  # loaded in the background
            time.sleep(0.05)
        assert watch.monitor is not None
        for i in range(25):
            inspector.inspect(image_event(_jpeg(i + 1, 40 + (i % 10)), "cam-d"))
        deadline = time.monotonic() + 10
        while not receiver.requests and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
    finally:
        workers.close()
        client.close()
        receiver.stop()
    text = metrics.render()[0].decode()
    line = next(
        ln
        for ln in text.splitlines()
        if ln.startswith('vinspect_drift_score{camera="cam-d",method="psi",signal="brightness"}')
    )
    assert float(line.split()[-1]) > drift_mod.PSI_ALERT
    events = receiver.events()
    assert len(events) == 1, "rate-limited: one notification per camera per cooldown"
    assert events[0]["type"] == DRIFT_DETECTED
    data = events[0].get_data()
    assert data["model"] == model and data["version"] == "1" and data["camera"] == "cam-d"
    assert data["signals"]["brightness"]["psi"] > drift_mod.PSI_ALERT


def test_no_reference_turns_drift_off_and_says_so_once(local_stack, caplog):
    workers = BoundedWorkers(1, 4, "t")
    watch = DriftWatch(local_stack.s3, MODELS_BUCKET, workers, min_samples=1, score_every_s=0.0)
    hooks = LoopHooks(InspectionMetrics(), drift=watch, workers=workers)
    bgr = np.full((32, 32, 3), 128, np.uint8)
    with caplog.at_level(logging.WARNING, logger="serving.feedback"):
        for i in range(20):
            hooks.on_result(
                {
                    "camera": "c",
                    "verdict": "pass",
                    "detections": [],
                    "model": {"name": "no-such-model", "version": "9"},
                },
                b"x",
                bgr,
            )
            time.sleep(0.01)
        workers.close()
    notes = [r for r in caplog.records if "drift is off" in r.getMessage()]
    assert len(notes) == 1 and "no-such-model version 9" in notes[0].getMessage()
    assert watch.monitor is None


def test_on_ovms_drift_follows_the_served_reference_the_rollout_publishes(local_stack, caplog):
    # OVMS answers as version 1 whatever it serves. Read by version, the processor looks for
    # <model>/1/ (nothing there, or another model's); set to `serving` it reads the reference the
    # rollout published, and re-reads it when the rollout publishes the next version's (ETag).
    s3 = local_stack.s3
    model = f"ovms-{uuid.uuid4().hex[:6]}"
    bright, dark = _reference([200 + (i % 20) for i in range(60)]), _reference([40 + (i % 10) for i in range(60)])
    drift_mod.save_reference(s3, MODELS_BUCKET, model, "7", bright)
    drift_mod.save_reference(s3, MODELS_BUCKET, model, "8", dark)
    drift_mod.publish_served_reference(s3, MODELS_BUCKET, model, "7")
    now = [0.0]
    receiver = Receiver()
    workers = BoundedWorkers(1, 16, "t")
    metrics = InspectionMetrics()
    by_version = DriftWatch(s3, MODELS_BUCKET, workers, min_samples=10, score_every_s=0.0)
    watch = DriftWatch(
        s3,
        MODELS_BUCKET,
        workers,
        notifier=Notifier(receiver.url, mode="structured"),
        min_samples=10,
        score_every_s=0.0,
        source="serving",
        refresh_s=30.0,
        clock=lambda: now[0],
    )
    hooks = LoopHooks(metrics, drift=watch, workers=workers)
    frames = [np.asarray(Image.open(io.BytesIO(_jpeg(i + 1, 40 + (i % 10)))))[..., ::-1] for i in range(25)]
    result = {"camera": "cam-o", "verdict": "pass", "detections": [], "model": {"name": model, "version": "1"}}

    def wait(cond):
        deadline = time.monotonic() + 10
        while not cond() and time.monotonic() < deadline:
            time.sleep(0.02)
        return cond()

    try:
        with caplog.at_level(logging.WARNING, logger="serving.feedback"):
            by_version.use(model, "1")
            assert wait(lambda: by_version._loading is None) and by_version.monitor is None
        assert f"{model} version 1" in caplog.text
        hooks.on_result(result, b"x", frames[0])
        assert wait(lambda: watch.monitor is not None) and watch.version == "7"
        for bgr in frames:  # dark frames against the bright reference of version 7
            hooks.on_result(result, b"x", bgr)
        assert wait(lambda: receiver.requests)
        data = receiver.events()[0].get_data()
        assert data["model"] == model and data["version"] == "7", "the registry version, not OVMS's 1"
        monitor7 = watch.monitor
        # Within refresh_s nothing is asked of S3; after it, an unchanged ETag keeps the monitor.
        now[0] = 31.0
        hooks.on_result(result, b"x", frames[0])
        assert wait(lambda: watch._loading is None) and watch.monitor is monitor7
        # The rollout serves version 8 (still "1" to OVMS): the next check loads its reference.
        drift_mod.publish_served_reference(s3, MODELS_BUCKET, model, "8")
        hooks.on_result(result, b"x", frames[0])
        assert watch.monitor is monitor7, "checked at most every refresh_s"
        now[0] = 62.0
        hooks.on_result(result, b"x", frames[0])
        assert wait(lambda: watch.version == "8") and watch.monitor is not monitor7
        for bgr in frames:  # dark frames against version 8's dark reference: no drift
            hooks.on_result(result, b"x", bgr)
        assert watch.monitor.scores("cam-o")["brightness"]["psi"] < drift_mod.PSI_ALERT
    finally:
        workers.close()
        receiver.stop()


def test_an_unknown_drift_reference_source_is_named(local_stack):
    with pytest.raises(ValueError, match="VINSPECT_DRIFT_REFERENCE: 'ovms'"):
        DriftWatch(local_stack.s3, MODELS_BUCKET, BoundedWorkers(1, 1, "t"), source="ovms")


def test_frame_stats_equal_the_drift_modules_image_stats():
    """The reduced-first statistics of the hot path are the reference's numbers, not an approximation."""
    rgb = np.random.default_rng(3).integers(0, 255, (600, 800, 3), dtype=np.uint8)
    fast, slow = frame_stats(rgb[..., ::-1]), drift_mod.image_stats(rgb)
    for k in slow:
        assert fast[k] == pytest.approx(slow[k], rel=1e-5)


def test_http_adapter_counts_errors_and_dead_letters_and_serves_metrics(model_server):
    metrics = ProcessorMetrics()
    hooks = LoopHooks(metrics.loop)
    client = ModelClient(model_server.url, "metal-nut", retries=0)
    inspector = Inspector(client, InspectConfig(annotate=False), metrics, None, hooks)
    try:
        with ThreadServer(create_http_app(inspector, metrics)) as server:
            r = httpx.post(
                server.url + "/",
                content=b"{}",
                headers={
                    "ce-specversion": "1.0",
                    "ce-id": "x",
                    "ce-source": "/t",
                    "ce-type": "io.vinspect.image",
                    "content-type": "image/jpeg",
                },
            )
            assert r.status_code == 400
            text = httpx.get(server.url + "/metrics").text
    finally:
        client.close()
    assert 'vinspect_errors_total{kind="poison"} 1.0' in text
    assert 'vinspect_dead_letters_total{reason="poison"} 1.0' in text


def test_dead_letter_reasons_are_a_bounded_set():
    assert dead_letter_reason("record is 30,000,000 bytes, over the limit of 20,000,000; not parsed") == "too_large"
    assert dead_letter_reason("result could not be written to results: MSG_SIZE_TOO_LARGE") == "result_refused"
    assert dead_letter_reason("event e1: cannot decode image") == "poison"
    assert dead_letter_reason("internal error: KeyError('x')") == "internal"
