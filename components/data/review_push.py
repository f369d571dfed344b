"""The review queue -> a pre-annotated CVAT task (``vinspect review push``, the scheduled job).

Takes the pending items of :class:`serving.review.ReviewStore` (frames the line selected, with the
model's detections), creates one task in the CVAT project with those frames, writes the model's
boxes as pre-annotations (source ``auto``: labellers correct rather than draw), and marks the items
pushed. When the labellers complete the task's jobs, the existing pull of the project
(``vinspect data pull --project``, or the pipeline's ``cvat_project_id``) brings the corrected
boxes back, with the project's other tasks, under the usual rules (completed jobs only).

Idempotent across a crash: the task's name is derived from the items it holds, so a re-run after
a crash between "task created" and "items marked" finds that task and only marks the items.
"""

from __future__ import annotations

import hashlib
import logging
import re
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from components.data.cvat_setup import (
    DEFAULT_LABELS,
    DEFAULT_PROJECT,
    assign_jobs,
    create_task,
    ensure_project,
    find_task,
    task_url,
    upload_boxes,
)

log = logging.getLogger(__name__)


@dataclass
class PushReport:
    """What a push did."""

    pushed: int
    task_id: int | None = None
    task_url: str | None = None
    boxes: int = 0
    project_id: int | None = None
    reused_task: bool = False


def frame_name(item) -> str:
    """A frame name that says which camera and which image (hash prefix); unique per image."""
    camera = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(item.record.get("camera") or "camera"))[:40]
    return f"{camera}_{item.sha256[:20]}.jpg"


def review_task_name(items, now: datetime | None = None) -> str:
    """``review-<UTC date>-<digest of the items' hashes>``: the same items give the same name."""
    digest = hashlib.sha256("".join(sorted(it.sha256 for it in items)).encode()).hexdigest()[:10]
    day = (now or datetime.now(timezone.utc)).strftime("%Y%m%d")
    return f"review-{day}-{digest}"


def push_review(
    client,
    store,
    *,
    project: str = DEFAULT_PROJECT,
    labels: Sequence[str] = DEFAULT_LABELS,
    limit: int = 500,
    segment_size: int = 0,
    annotator_id: int | None = None,
    timeout: float = 600.0,
    poll: float = 1.0,
    now: datetime | None = None,
) -> PushReport:
    """Push up to ``limit`` queued frames into one new, pre-annotated task of the project.

    Args:
        client: Logged-in ``cvat_sdk.Client``.
        store: :class:`serving.review.ReviewStore` over the data bucket.
        project: CVAT project name (created with ``labels`` when missing).
        labels: Class names in id order.
        limit: Most frames per task.
        segment_size: Frames per job (0: one job).
        annotator_id: CVAT user to assign the task's jobs to.
        timeout: Seconds to wait for CVAT to build the task.
        poll: Seconds between status polls.
        now: The time that names the task (tests).

    Returns:
        The :class:`PushReport` (``pushed`` 0 when the queue is empty; nothing is created then).
    """
    items = store.pending(limit)
    if not items:
        return PushReport(0)
    project_id, _, _ = ensure_project(client, project, labels)
    name = review_task_name(items, now)
    names = [frame_name(it) for it in items]
    task_id = find_task(client, project_id, name)
    report = PushReport(len(items), project_id=project_id, reused_task=task_id is not None)
    if task_id is None:
        boxes = {
            n: [
                (str(d["class_name"]), *(float(v) for v in d["box"][:4]))
                for d in it.detections
                if d.get("class_name") in labels
            ]
            for n, it in zip(names, items)
        }
        with tempfile.TemporaryDirectory(prefix="vinspect-review-") as work_s:
            files = []
            for n, it in zip(names, items):
                path = Path(work_s) / n
                path.write_bytes(store.image(it))
                files.append(path)
            task_id = create_task(
                client, project_id, name, files, segment_size=segment_size, timeout=timeout, poll=poll
            )
        if any(boxes.values()):
            report.boxes = upload_boxes(client, task_id, project_id, boxes, source="auto")
        if annotator_id is not None:
            assign_jobs(client, task_id, annotator_id)
    else:
        log.info("review task %r (%s) already exists: marking its %d item(s) pushed", name, task_id, len(items))
    report.task_id, report.task_url = task_id, task_url(client, task_id)
    store.mark_pushed(items, task_id, report.task_url)
    return report
