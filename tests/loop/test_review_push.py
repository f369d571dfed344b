"""`vinspect review push` end to end on the local stack's S3 and the CVAT test server.

Frames selected by policy are queued in S3, pushed into a pre-annotated task of the CVAT project,
marked pushed; a labeller completes the job (correcting a box), and the existing pull of the
project brings the corrected boxes back as a dataset.
"""

from __future__ import annotations

import io
import json
import uuid
from datetime import datetime, timezone

import numpy as np
import pytest
from typer.testing import CliRunner

from components.data import pull_annotations
from components.data.cvat_pull import make_client
from components.data.review_push import frame_name, push_review, review_task_name
from serving.review import ReviewPolicy, ReviewSelector, ReviewStore, queue_frame
from vinspect.cli import app

runner = CliRunner()


@pytest.fixture
def store(local_stack):
    return ReviewStore(local_stack.s3, local_stack.env["VINSPECT_DATA_BUCKET"], f"review-{uuid.uuid4().hex[:8]}/")


def _jpeg(i: int) -> tuple[bytes, list]:
    from components.data.synth import render_nut

    img, boxes = render_nut(np.random.default_rng([11, i]), 64, ("scratch", "bent")[i % 2])
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95)
    return buf.getvalue(), boxes


def _queue(store, n: int) -> list[tuple[bytes, list]]:
    sel = ReviewSelector(ReviewPolicy(audit_rate=0.0))
    frames = []
    for i in range(n):
        jpeg, boxes = _jpeg(i)
        cid, (x0, y0, x1, y1) = boxes[0]
        result = {
            "camera": f"cam-{i % 2}",
            "image_id": f"e{i}",
            "label": None,
            "verdict": "fail",
            "detections": [
                {"class_id": cid, "class_name": ("scratch", "bent")[cid], "score": 0.35, "box": [x0, y0, x1, y1]}
            ],
        }
        assert queue_frame(sel, store, result, jpeg) is not None
        frames.append((jpeg, boxes))
    return frames


def test_push_creates_a_preannotated_task_and_marks_items(cvat, store):
    _queue(store, 3)
    with make_client(cvat.url, token=cvat.pat) as client:
        report = push_review(client, store, poll=0.01)
    assert report.pushed == 3 and report.boxes == 3
    task = cvat.tasks[report.task_id]
    assert task.project_id == report.project_id and cvat.projects[report.project_id].labels == ["scratch", "bent"]
    assert len(task.frames) == 3 and all(f.name.startswith("cam-") for f in task.frames)
    assert all(len(f.boxes) == 1 for f in task.frames)
    assert all(s["source"] == "auto" for s in cvat.shapes[task.id])
    assert store.pending() == [] and len(store.pushed(report.task_id)) == 3
    with make_client(cvat.url, token=cvat.pat) as client:
        assert push_review(client, store, poll=0.01).pushed == 0  # empty queue: nothing created
    assert len(cvat.tasks) == 1


def test_a_push_interrupted_before_marking_reuses_its_task(cvat, store):
    _queue(store, 2)
    items = store.pending()
    now = datetime(2026, 5, 1, tzinfo=timezone.utc)
    with make_client(cvat.url, token=cvat.pat) as client:
        first = push_review(client, store, poll=0.01, now=now)
    # Put the items back as if the crash came before mark_pushed.
    for it in items:
        store.s3.put_object(Bucket=store.bucket, Key=it.key, Body=json.dumps(it.record).encode())
    with make_client(cvat.url, token=cvat.pat) as client:
        again = push_review(client, store, poll=0.01, now=now)
    assert again.reused_task and again.task_id == first.task_id and len(cvat.tasks) == 1
    assert cvat.tasks[first.task_id].name == review_task_name(items, now)
    assert store.pending() == []


def test_cli_push_then_completed_job_comes_back_through_the_pull(cvat, store, local_stack, monkeypatch, tmp_path):
    _queue(store, 4)
    local_stack.apply_env(monkeypatch)
    monkeypatch.setenv("CVAT_TOKEN", cvat.pat)
    monkeypatch.setenv("VINSPECT_REVIEW_PREFIX", store.prefix)
    r0 = runner.invoke(app, ["review", "status"])
    assert r0.exit_code == 0 and "pending: 4" in r0.output
    r = runner.invoke(app, ["review", "push", "--cvat-url", cvat.url])
    assert r.exit_code == 0, r.output
    [task] = cvat.tasks.values()
    assert "pushed 4 frame(s), 4 pre-annotated box(es)" in r.output and f"task: {cvat.url}/tasks/{task.id}" in r.output
    assert cvat.pat not in r.output
    # The labeller corrects the first frame's label and completes the job.
    by_name = {f.name: f for f in task.frames}
    first = by_name[frame_name(store.pushed(task.id)[0])]
    lab, *box = first.boxes[0]
    first.boxes = [("bent" if lab == "scratch" else "scratch", *box)]
    for j in task.jobs:
        j.state, j.stage = "completed", "acceptance"
    with make_client(cvat.url, token=cvat.pat) as client:
        m = pull_annotations(
            None,
            tmp_path / "ds",
            cvat_client=client,
            project_id=task.project_id,
            map_by_name=True,
            cvat_poll=0.01,
            cvat_timeout=10,
        )
    assert m.counts["images"]["total"] == 4
    label_of = {it["name"]: (tmp_path / "ds" / it["label"]).read_text().split()[0] for it in m.items}
    assert label_of[first.name] == ("1" if lab == "scratch" else "0")
    r = runner.invoke(app, ["review", "push", "--cvat-url", cvat.url])
    assert r.exit_code == 0 and "nothing to push" in r.output
