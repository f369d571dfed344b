"""The review queue in the local stack's S3: queue, de-dup across restarts, push marks, failures."""

from __future__ import annotations

import hashlib
import json
import uuid

import pytest

from serving.review import ReviewError, ReviewPolicy, ReviewSelector, ReviewStore, queue_frame


@pytest.fixture
def store(local_stack):
    # A prefix of its own per test, so tests pass alone and in any order on the shared stack.
    return ReviewStore(local_stack.s3, local_stack.env["VINSPECT_DATA_BUCKET"], f"review-{uuid.uuid4().hex[:8]}/")


def _result(camera: str, score: float) -> dict:
    return {
        "camera": camera,
        "image_id": f"{camera}-1",
        "captured_at": "2026-01-01T00:00:00Z",
        "label": "good",
        "verdict": "fail",
        "image": {"width": 64, "height": 48},
        "detections": [{"class_id": 0, "class_name": "scratch", "score": score, "box": [1.0, 2.0, 30.0, 40.0]}],
        "model": {"name": "metal-nut", "version": "3"},
        "annotated_image": "data:image/jpeg;base64,AAAA",
    }


def test_selected_frames_are_queued_with_their_detections(store):
    sel = ReviewSelector(ReviewPolicy(audit_rate=0.0))
    frame = b"\xff\xd8\xffjpeg-1"
    queued = queue_frame(sel, store, _result("cam-1", 0.3), frame)
    assert queued.key == f"{store.prefix}queue/{hashlib.sha256(frame).hexdigest()}.json"
    assert queued.reasons == ("disagreement", "uncertain")
    [item] = store.pending()
    assert item.record["reasons"] == ["disagreement", "uncertain"]
    assert item.detections[0]["box"] == [1.0, 2.0, 30.0, 40.0]
    assert item.record["model"] == {"name": "metal-nut", "version": "3"}
    assert "annotated_image" not in item.record  # the camera's frame is kept, not the drawn copy
    assert store.image(item) == b"\xff\xd8\xffjpeg-1"
    assert store.size() == 1


def test_a_frame_already_in_s3_is_not_queued_again_by_a_restarted_processor(store):
    assert queue_frame(ReviewSelector(ReviewPolicy(audit_rate=0.0)), store, _result("c", 0.3), b"frame") is not None
    restarted = ReviewSelector(ReviewPolicy(audit_rate=0.0))
    assert queue_frame(restarted, store, _result("c", 0.3), b"frame") is None
    assert store.size() == 1


def test_an_image_written_without_its_record_does_not_block_a_retry(store, local_stack):
    from serving.review import image_hash

    local_stack.s3.put_object(Bucket=store.bucket, Key=store.image_key(image_hash(b"half")), Body=b"half")
    assert queue_frame(ReviewSelector(ReviewPolicy(audit_rate=0.0)), store, _result("c", 0.3), b"half") is not None
    assert store.size() == 1


def test_a_pushed_image_is_not_queued_again(store):
    queue_frame(ReviewSelector(ReviewPolicy(audit_rate=0.0)), store, _result("c", 0.3), b"once")
    store.mark_pushed(store.pending(), 5)
    assert store.size() == 0
    assert queue_frame(ReviewSelector(ReviewPolicy(audit_rate=0.0)), store, _result("c", 0.3), b"once") is None


def test_mark_pushed_moves_items_out_of_the_queue(store):
    sel = ReviewSelector(ReviewPolicy(audit_rate=0.0))
    for i in range(3):
        queue_frame(sel, store, _result(f"cam-{i}", 0.3), f"f{i}".encode())
    items = store.pending()
    assert len(items) == 3
    keys = store.mark_pushed(items[:2], 42, "http://cvat/tasks/42")
    assert [it.sha256 for it in store.pending()] == [items[2].sha256]
    pushed = store.pushed(42)
    assert sorted(p.key for p in pushed) == sorted(keys)
    assert all(p.record["pushed"]["task_id"] == 42 for p in pushed)


def test_a_broken_record_is_named(store, local_stack):
    local_stack.s3.put_object(Bucket=store.bucket, Key=f"{store.prefix}queue/bad.json", Body=b"{not json")
    with pytest.raises(ReviewError, match=r"queue/bad.json: not a JSON review record"):
        store.pending()


def test_s3_failure_never_stops_inspection_and_releases_the_frame(local_stack, caplog):
    store = ReviewStore(local_stack.s3, "no-such-bucket-" + uuid.uuid4().hex[:6])
    sel = ReviewSelector(ReviewPolicy(audit_rate=0.0))
    assert queue_frame(sel, store, _result("cam-9", 0.3), b"x") is None
    assert "could not queue image" in caplog.text
    assert sel.counts() == {"cam-9": 0}  # not counted against the cap, and not remembered as seen
    assert sel.select(_result("cam-9", 0.3), b"x") is not None


def test_records_are_json(store, local_stack):
    queue_frame(ReviewSelector(ReviewPolicy(audit_rate=1.0)), store, _result("c", 0.9), b"audited")
    [item] = store.pending()
    body = local_stack.s3.get_object(Bucket=store.bucket, Key=item.key)["Body"].read()
    assert json.loads(body)["reasons"] == ["disagreement", "audit"]
