"""The review selection policy, one rule at a time, with known inputs (no services)."""

from __future__ import annotations

import pytest

from serving.review import (
    ReviewError,
    ReviewPolicy,
    ReviewSelector,
    disagrees,
    image_hash,
    is_audited,
    is_uncertain,
    reasons_for,
)

NO_AUDIT = ReviewPolicy(audit_rate=0.0)
DAY = 1_790_000_000.0  # a fixed instant (2026-09-21 UTC)


def det(name: str, score: float) -> dict:
    return {"class_id": ("scratch", "bent").index(name), "class_name": name, "score": score, "box": [1, 2, 3, 4]}


def result(camera="cam-1", label=None, detections=(), verdict=None) -> dict:
    dets = list(detections)
    return {
        "camera": camera,
        "image_id": "e1",
        "label": label,
        "detections": dets,
        "verdict": verdict or ("fail" if dets else "pass"),
    }


@pytest.mark.parametrize(
    "scores,expected",
    [
        ([], False),
        ([0.9], False),
        ([0.2], True),
        ([0.49], True),
        ([0.5], False),
        ([0.95, 0.3], True),
        ([0.19], False),
    ],
)
def test_uncertain_band_is_low_inclusive_high_exclusive(scores, expected):
    assert is_uncertain([det("scratch", s) for s in scores], NO_AUDIT) is expected


@pytest.mark.parametrize(
    "label,dets,expected",
    [
        (None, [], False),  # no label: nothing to disagree with
        ("unknown", [det("bent", 0.9)], False),  # a label that is no class says nothing
        ("good", [], False),
        ("good", [det("bent", 0.9)], True),  # good part, fail verdict
        ("bent", [], True),  # defect missed
        ("bent", [det("bent", 0.9)], False),
        ("Bent", [det("scratch", 0.9)], True),  # wrong class found (labels are case-blind)
        ("scratch", [det("scratch", 0.8), det("bent", 0.7)], False),
    ],
)
def test_disagreement_with_the_camera_label(label, dets, expected):
    verdict = "fail" if dets else "pass"
    assert disagrees(label, verdict, dets, NO_AUDIT) is expected


def test_audit_draw_follows_the_rate_and_is_stable():
    hashes = [image_hash(str(i).encode()) for i in range(4000)]
    drawn = [h for h in hashes if is_audited(h, 0.05)]
    assert 150 <= len(drawn) <= 250  # 5 % of 4000 = 200; binomial sd ~14
    assert drawn == [h for h in hashes if is_audited(h, 0.05)]
    assert not any(is_audited(h, 0.0) for h in hashes)
    assert all(is_audited(h, 1.0) for h in hashes)


def test_reasons_are_listed_in_order():
    sha = image_hash(b"x")
    policy = ReviewPolicy(audit_rate=1.0)
    r = result(label="good", detections=[det("scratch", 0.3)])
    assert reasons_for(r, sha, policy, flagged=True) == ["flagged", "disagreement", "uncertain", "audit"]
    assert reasons_for(result(detections=[det("bent", 0.95)]), sha, NO_AUDIT) == []


def test_selector_caps_per_camera_and_per_day_and_flags_are_exempt():
    clock = [DAY]
    sel = ReviewSelector(ReviewPolicy(audit_rate=0.0, max_per_camera_per_day=2, max_per_day=3), clock=lambda: clock[0])
    uncertain = [det("scratch", 0.3)]
    picks = [sel.select(result("a", detections=uncertain), f"a{i}".encode()) for i in range(3)]
    assert [p is not None for p in picks] == [True, True, False]
    assert sel.skipped["camera_cap"] == 1
    assert sel.select(result("b", detections=uncertain), b"b0") is not None
    assert sel.select(result("c", detections=uncertain), b"c0") is None  # 3 for the day
    assert sel.skipped["day_cap"] == 1
    flagged = sel.select(result("a"), b"a-flag", flagged=True)
    assert flagged is not None and flagged.reasons == ("flagged",)
    assert sel.counts() == {"a": 2, "b": 1}
    clock[0] += 86_400  # the next UTC day starts from zero
    assert sel.select(result("c", detections=uncertain), b"c1") is not None
    assert sel.counts() == {"c": 1}


def test_selector_deduplicates_by_image_hash_and_release_undoes():
    sel = ReviewSelector(NO_AUDIT, clock=lambda: DAY)
    r = result(detections=[det("bent", 0.25)])
    first = sel.select(r, b"same bytes")
    assert first is not None and first.sha256 == image_hash(b"same bytes")
    assert first.selected_at.startswith("2026-")
    assert sel.select(r, b"same bytes") is None and sel.skipped["duplicate"] == 1
    assert sel.select(r, b"same bytes", flagged=True) is None  # a flag does not re-queue a queued frame
    sel.release(first)
    assert sel.counts() == {"cam-1": 0}
    assert sel.select(r, b"same bytes") is not None


def test_confident_agreeing_frames_are_not_selected():
    sel = ReviewSelector(NO_AUDIT, clock=lambda: DAY)
    assert sel.select(result(label="bent", detections=[det("bent", 0.9)]), b"1") is None
    assert sel.select(result(label="good"), b"2") is None


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"uncertain_low": 0.6, "uncertain_high": 0.5}, "uncertain band"),
        ({"audit_rate": 1.5}, "audit_rate"),
        ({"max_per_day": -1}, "max_per_day"),
        ({"classes": ()}, "classes"),
    ],
)
def test_bad_policies_are_refused_by_field(kwargs, field):
    with pytest.raises(ReviewError, match=field):
        ReviewPolicy(**kwargs)


def test_bad_detections_are_refused():
    with pytest.raises(ReviewError, match="'detections' is not a list"):
        reasons_for({"image_id": "e9", "detections": "none"}, image_hash(b""), NO_AUDIT)
