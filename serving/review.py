"""The review queue (active learning): which frames go back to labelling, and where they wait.

The processor hands every inspection result (the ``data`` of an ``io.vinspect.inspection.result``
event, see :mod:`serving.processor`) and the camera's image bytes to a :class:`ReviewSelector`.
The selector applies the policy, all of it pure and deterministic:

* **uncertain**: a detection whose score lies in the uncertain band ``[low, high)``: the model
  reported a defect but hardly believes it (the processor's own threshold, 0.2, is the natural
  ``low``);
* **disagreement**: the camera says what the part is (simulators and test rigs send a ``label``:
  ``good``, ``scratch`` or ``bent``) and the verdict or the classes found say otherwise;
* **audit**: a random sample of every camera's frames, at ``audit_rate``, so that what the model
  is sure about is checked too. The draw is a function of the image hash, so a replayed frame is
  drawn the same way and tests know the answer;
* **flagged**: an operator flagged the frame on the dashboard.

Then rate caps (per camera per UTC day and for all cameras per day; operator flags are exempt, a
person chose them) and de-duplication by the image's SHA-256 (a camera that sends the same frame
twice, or a replayed topic, queues it once).

:class:`ReviewStore` keeps the queue in S3 (the data bucket), under ``review/``::

    review/images/<sha256>.jpg                the frame as the camera sent it (not the annotated copy)
    review/queue/<sha256>.json                one pending item: result, detections, reasons
    review/pushed/<task id>/<sha256>.json     the same record once it is in a CVAT task
    review/pushed-images/<sha256>.json        which task an image went to (for de-duplication)

The image is written before its queue record, so a record never points at a missing image, and a
crash between the two leaves nothing that blocks a retry; the queue record is what marks an item
pending. ``mark_pushed`` writes the pushed record and the image's marker before it deletes the
queue record, so a crash in between leaves the item pending (pushed again, never lost). An image
that is pending or was pushed is a duplicate, across restarts too.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Mapping, Sequence

from vinspect.errors import VinspectError

log = logging.getLogger(__name__)

REVIEW_PREFIX = "review/"
REASONS = ("flagged", "disagreement", "uncertain", "audit")
DEFAULT_CLASSES = ("scratch", "bent")
GOOD_LABELS = ("good", "ok", "pass")


class ReviewError(VinspectError, ValueError):
    """A review policy or queue record that cannot be used; the message names the field or key.

    Attributes:
        exit_code: 2, bad input: what ``vinspect review push`` exits with.
    """

    exit_code = 2


@dataclass(frozen=True)
class ReviewPolicy:
    """What goes to review, and how much of it.

    Attributes:
        uncertain_low: Lower end of the uncertain score band (inclusive).
        uncertain_high: Upper end (exclusive); detections at or above it are trusted.
        audit_rate: Fraction of each camera's frames drawn at random (0 turns audits off).
        max_per_camera_per_day: Frames one camera may add per UTC day (flags exempt).
        max_per_day: Frames all cameras together may add per UTC day (flags exempt).
        classes: Class names of the model, in id order.
        good_labels: Camera labels that mean "a good part".
    """

    uncertain_low: float = 0.2
    uncertain_high: float = 0.5
    audit_rate: float = 0.01
    max_per_camera_per_day: int = 100
    max_per_day: int = 1000
    classes: tuple[str, ...] = DEFAULT_CLASSES
    good_labels: tuple[str, ...] = GOOD_LABELS

    def __post_init__(self) -> None:
        if not 0.0 <= self.uncertain_low <= self.uncertain_high <= 1.0:
            raise ReviewError(
                f"uncertain band [{self.uncertain_low}, {self.uncertain_high}) must satisfy "
                "0 <= uncertain_low <= uncertain_high <= 1"
            )
        if not 0.0 <= self.audit_rate <= 1.0:
            raise ReviewError(f"audit_rate {self.audit_rate} must be within [0, 1]")
        for name in ("max_per_camera_per_day", "max_per_day"):
            if getattr(self, name) < 0:
                raise ReviewError(f"{name} {getattr(self, name)} must be >= 0")
        if not self.classes:
            raise ReviewError("classes must name at least one class")


def image_hash(image: bytes) -> str:
    """SHA-256 of the image bytes as sent by the camera (the de-duplication key)."""
    return hashlib.sha256(image).hexdigest()


def _detections(result: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    dets = result.get("detections") or []
    if not isinstance(dets, list):
        raise ReviewError(f"result of image {result.get('image_id')!r}: 'detections' is not a list")
    return dets


def is_uncertain(detections: Sequence[Mapping[str, Any]], policy: ReviewPolicy) -> bool:
    """Whether any detection's score lies in ``[uncertain_low, uncertain_high)``."""
    return any(policy.uncertain_low <= float(d.get("score", 0.0)) < policy.uncertain_high for d in detections)


def disagrees(label: str | None, verdict: str, detections: Sequence[Mapping[str, Any]], policy: ReviewPolicy) -> bool:
    """Whether the camera's known label contradicts the model.

    A good part with a ``fail`` verdict, a defect label with a ``pass`` verdict, or a defect label
    whose class the model did not find. A missing or unknown label (``unknown``, a folder name
    that is no class) says nothing, so it never disagrees.
    """
    if not label:
        return False
    label = label.strip().lower()
    if label in policy.good_labels:
        return verdict == "fail"
    if label in policy.classes:
        found = {str(d.get("class_name")) for d in detections}
        return verdict == "pass" or label not in found
    return False


def is_audited(sha256: str, rate: float) -> bool:
    """The random audit draw: uniform in the image hash, so the same frame always draws the same."""
    if rate <= 0.0:
        return False
    return int(sha256[:16], 16) / float(1 << 64) < rate


def reasons_for(result: Mapping[str, Any], sha256: str, policy: ReviewPolicy, *, flagged: bool = False) -> list[str]:
    """Every reason why this result should be reviewed (empty: it should not), in :data:`REASONS` order.

    Args:
        result: The processor's result data (``camera``, ``label``, ``verdict``, ``detections``).
        sha256: :func:`image_hash` of the frame.
        policy: The policy.
        flagged: An operator flagged it.
    """
    detections = _detections(result)
    verdict = str(result.get("verdict") or ("fail" if detections else "pass"))
    out = []
    if flagged:
        out.append("flagged")
    if disagrees(result.get("label"), verdict, detections, policy):
        out.append("disagreement")
    if is_uncertain(detections, policy):
        out.append("uncertain")
    if is_audited(sha256, policy.audit_rate):
        out.append("audit")
    return out


@dataclass(frozen=True)
class Selection:
    """A frame the selector chose: its hash, why, when (UTC, ISO 8601), and its queue key once stored."""

    sha256: str
    camera: str
    reasons: tuple[str, ...]
    selected_at: str
    key: str | None = None


def _day(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


class ReviewSelector:
    """Applies a :class:`ReviewPolicy` with rate caps and de-duplication (thread-safe).

    Counts are kept per UTC day in memory; a restarted processor starts the day's counts from zero
    unless given ``counts`` (the caps are a rate limit, not an exact quota: a restart at worst lets
    one more day's cap through). De-duplication survives restarts through the store (an image
    already under ``review/images/`` is never queued twice).

    Args:
        policy: The policy.
        clock: Seconds since the epoch (tests pass a fixed clock).
        remember: How many image hashes to remember for de-duplication.
        counts: Already selected today, per camera (to resume after a restart).
    """

    def __init__(
        self,
        policy: ReviewPolicy | None = None,
        *,
        clock: Callable[[], float] = time.time,
        remember: int = 100_000,
        counts: Mapping[str, int] | None = None,
    ):
        self.policy = policy or ReviewPolicy()
        self._clock = clock
        self._remember = remember
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        self._day = _day(clock())
        self._per_camera: dict[str, int] = dict(counts or {})
        self.skipped: dict[str, int] = {"duplicate": 0, "camera_cap": 0, "day_cap": 0}

    def _roll(self, now: float) -> None:
        day = _day(now)
        if day != self._day:
            self._day, self._per_camera = day, {}

    def select(self, result: Mapping[str, Any], image: bytes, *, flagged: bool = False) -> Selection | None:
        """Decide whether this frame goes to review; count it when it does.

        Args:
            result: The processor's result data.
            image: The frame's bytes as the camera sent them.
            flagged: An operator flagged it (exempt from the caps, not from de-duplication).

        Returns:
            The :class:`Selection`, or None (no reason, a duplicate, or over a cap).
        """
        sha = image_hash(image)
        reasons = reasons_for(result, sha, self.policy, flagged=flagged)
        if not reasons:
            return None
        camera = str(result.get("camera") or "unknown")
        with self._lock:
            now = self._clock()
            self._roll(now)
            if sha in self._seen:
                self.skipped["duplicate"] += 1
                return None
            if not flagged:
                if sum(self._per_camera.values()) >= self.policy.max_per_day:
                    self.skipped["day_cap"] += 1
                    return None
                if self._per_camera.get(camera, 0) >= self.policy.max_per_camera_per_day:
                    self.skipped["camera_cap"] += 1
                    return None
                self._per_camera[camera] = self._per_camera.get(camera, 0) + 1
            self._seen[sha] = None
            if len(self._seen) > self._remember:
                self._seen.popitem(last=False)
        return Selection(sha, camera, tuple(reasons), _iso(now))

    def release(self, selection: Selection) -> None:
        """Undo a selection that could not be stored, so the frame counts neither as seen nor against a cap."""
        with self._lock:
            self._seen.pop(selection.sha256, None)
            if "flagged" not in selection.reasons and self._per_camera.get(selection.camera, 0) > 0:
                self._per_camera[selection.camera] -= 1

    def counts(self) -> dict[str, int]:
        """Frames selected today per camera (flags not counted)."""
        with self._lock:
            self._roll(self._clock())
            return dict(self._per_camera)


# --------------------------------------------------------------------------- the queue in S3


@dataclass
class ReviewItem:
    """One queued (or pushed) frame: its record as stored, and where."""

    sha256: str
    record: dict[str, Any]
    key: str
    image_key: str = field(default="")

    @property
    def detections(self) -> list[dict[str, Any]]:
        """The model's detections (class_name, score, box xyxy in pixels)."""
        return list(self.record.get("detections") or [])


def _is_missing(exc: Exception) -> bool:
    code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
    return code in ("404", "NoSuchKey", "NotFound")


class ReviewStore:
    """The review queue in S3.

    Args:
        s3: A boto3 S3 client.
        bucket: The data bucket (``VINSPECT_DATA_BUCKET``).
        prefix: Key prefix (default ``review/``).
    """

    def __init__(self, s3, bucket: str, prefix: str = REVIEW_PREFIX):
        self.s3, self.bucket = s3, bucket
        self.prefix = prefix.rstrip("/") + "/"

    def image_key(self, sha256: str) -> str:
        return f"{self.prefix}images/{sha256}.jpg"

    def queue_key(self, sha256: str) -> str:
        return f"{self.prefix}queue/{sha256}.json"

    def pushed_key(self, task_id: int, sha256: str) -> str:
        return f"{self.prefix}pushed/{task_id}/{sha256}.json"

    def marker_key(self, sha256: str) -> str:
        return f"{self.prefix}pushed-images/{sha256}.json"

    def known(self, sha256: str) -> bool:
        """Whether the image is pending or was pushed already."""
        return self._exists(self.queue_key(sha256)) or self._exists(self.marker_key(sha256))

    def _exists(self, key: str) -> bool:
        try:
            self.s3.head_object(Bucket=self.bucket, Key=key)
        except Exception as exc:  # noqa: BLE001 - botocore ClientError (a class of botocore's): missing -> False, else re-raised
            if _is_missing(exc):
                return False
            raise
        return True

    def put(
        self, selection: Selection, result: Mapping[str, Any], image: bytes, content_type: str = "image/jpeg"
    ) -> str | None:
        """Queue a selected frame: the image, then its record.

        Args:
            selection: What :meth:`ReviewSelector.select` returned.
            result: The processor's result data (the annotated image in it is not stored).
            image: The frame's bytes as the camera sent them.
            content_type: The image's media type.

        Returns:
            The queue record's key, or None when the image was already reviewed or queued
            (a duplicate across restarts).
        """
        image_key = self.image_key(selection.sha256)
        if self.known(selection.sha256):
            log.info("review: image %s is already queued or reviewed; not queued again", selection.sha256[:12])
            return None
        record = {
            "sha256": selection.sha256,
            "camera": selection.camera,
            "reasons": list(selection.reasons),
            "selected_at": selection.selected_at,
            "image_key": image_key,
            "image_id": result.get("image_id"),
            "captured_at": result.get("captured_at"),
            "label": result.get("label"),
            "verdict": result.get("verdict"),
            "detections": [dict(d) for d in _detections(result)],
            "image": result.get("image"),
            "model": result.get("model"),
        }
        self.s3.put_object(Bucket=self.bucket, Key=image_key, Body=image, ContentType=content_type)
        key = self.queue_key(selection.sha256)
        self.s3.put_object(
            Bucket=self.bucket,
            Key=key,
            Body=json.dumps(record, sort_keys=True).encode(),
            ContentType="application/json",
        )
        return key

    def _keys(self, prefix: str) -> Iterable[str]:
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                yield obj["Key"]

    def _read(self, key: str) -> dict[str, Any]:
        body = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        try:
            record = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ReviewError(f"s3://{self.bucket}/{key}: not a JSON review record ({exc})") from None
        if not isinstance(record, dict) or "sha256" not in record:
            raise ReviewError(f"s3://{self.bucket}/{key}: review record has no 'sha256'")
        return record

    def pending(self, limit: int | None = None) -> list[ReviewItem]:
        """Queued items, oldest selection first (at most ``limit``)."""
        items = []
        for key in self._keys(f"{self.prefix}queue/"):
            if not key.endswith(".json"):
                continue
            record = self._read(key)
            items.append(
                ReviewItem(record["sha256"], record, key, record.get("image_key") or self.image_key(record["sha256"]))
            )
        items.sort(key=lambda it: (str(it.record.get("selected_at", "")), it.sha256))
        return items[:limit] if limit is not None else items

    def size(self) -> int:
        """How many items wait (for the review-queue gauge)."""
        return sum(1 for k in self._keys(f"{self.prefix}queue/") if k.endswith(".json"))

    def image(self, item: ReviewItem) -> bytes:
        """The frame of a queued item.

        Raises:
            ReviewError: The image is gone (the record names it).
        """
        try:
            return self.s3.get_object(Bucket=self.bucket, Key=item.image_key)["Body"].read()
        except Exception as exc:  # noqa: BLE001 - botocore ClientError: missing -> ReviewError, else re-raised
            if _is_missing(exc):
                raise ReviewError(
                    f"review item {item.key}: its image s3://{self.bucket}/{item.image_key} is missing"
                ) from None
            raise

    def mark_pushed(self, items: Iterable[ReviewItem], task_id: int, task_url: str = "") -> list[str]:
        """Move items from the queue to ``pushed/<task_id>/`` (pushed record and marker first, then delete).

        Returns:
            The pushed records' keys.
        """
        keys = []
        for item in items:
            record = dict(item.record, pushed={"task_id": int(task_id), "task_url": task_url, "at": _iso(time.time())})
            key = self.pushed_key(task_id, item.sha256)
            self.s3.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=json.dumps(record, sort_keys=True).encode(),
                ContentType="application/json",
            )
            self.s3.put_object(
                Bucket=self.bucket,
                Key=self.marker_key(item.sha256),
                Body=json.dumps({"task_id": int(task_id), "key": key}).encode(),
                ContentType="application/json",
            )
            self.s3.delete_object(Bucket=self.bucket, Key=item.key)
            keys.append(key)
        return keys

    def pushed(self, task_id: int) -> list[ReviewItem]:
        """Items pushed into one CVAT task."""
        out = []
        for key in self._keys(f"{self.prefix}pushed/{int(task_id)}/"):
            record = self._read(key)
            out.append(ReviewItem(record["sha256"], record, key, record.get("image_key", "")))
        return out


def queue_frame(
    selector: ReviewSelector, store: ReviewStore, result: Mapping[str, Any], image: bytes, *, flagged: bool = False
) -> Selection | None:
    """What the processor calls per result: select by policy, then queue in S3.

    Never raises for S3 trouble: a review queue that is down must not stop inspection, so the
    failure is logged and None returned.

    Returns:
        The stored :class:`Selection` (``key`` is its queue record, ``reasons`` why), or None (not
        selected, a duplicate, capped, or not stored).
    """
    selection = selector.select(result, image, flagged=flagged)
    if selection is None:
        return None
    try:
        key = store.put(selection, result, image)
        return None if key is None else replace(selection, key=key)
    except ReviewError:
        raise
    except Exception as exc:  # noqa: BLE001 - S3 down or refusing (any botocore error): logged, inspection goes on
        log.warning("review: could not queue image %s of camera %s: %s", selection.sha256[:12], selection.camera, exc)
        selector.release(selection)
        return None
