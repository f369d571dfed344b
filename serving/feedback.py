"""The processor's side of the feedback loop: metrics, review selection and drift per result.

:class:`LoopHooks` is what :class:`serving.processor.Inspector` calls once per inspected image
(``on_result``) and what both adapters call per error and dead letter. Everything here runs on the
inspection path, so it is kept cheap and never raises into it:

* metrics (:class:`serving.metrics.InspectionMetrics`): counters and histograms, microseconds;
* review (:mod:`serving.review`): the policy decision (a SHA-256 of the frame and a few
  comparisons) runs inline; only a *selected* frame's S3 writes go to a bounded pool of background
  workers (:class:`BoundedWorkers`), so a slow S3 never holds inference: beyond ``max_pending``
  writes a selection is released and counted as ``vinspect_errors_total{kind="review_backlog"}``;
* drift (:mod:`serving.drift`): image statistics on a reduced copy of the decoded frame, appended
  to the camera's live window; the scores (PSI and KS, a few sorts of at most a few thousand
  values) are recomputed at most every ``score_every_s`` per camera. The reference of the model
  version now answering is loaded in the background when the version first appears or changes
  (``s3://<models bucket>/<model>/<version>/drift-reference.json``; on KServe/OVMS, where every
  version answers as ``1``, the served version's copy the rollout writes, re-read when its ETag
  changes: :class:`DriftWatch`); no reference means no drift scores for that version, said once
  in the log. A drifting camera emits
  ``io.vinspect.model.drift.detected`` at most once per ``notify_cooldown_s``.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Mapping

import numpy as np

from serving import drift as drift_mod
from serving.metrics import InspectionMetrics
from serving.review import ReviewSelector, ReviewStore, queue_frame
from vinspect.errors import VinspectError

log = logging.getLogger(__name__)

# Dead-letter reasons are free text; the metric label keeps a bounded set.
_DLQ_REASONS = (
    ("over the limit", "too_large"),
    ("model refused", "model_refused"),
    ("internal error", "internal"),
    ("could not be written", "result_refused"),
    ("result event is", "result_too_large"),
    ("not a cloudevent", "not_a_cloudevent"),
)


def dead_letter_reason(text: str) -> str:
    """A bounded label for a dead-letter reason (``poison`` unless a known kind is named)."""
    low = text.lower()
    for needle, label in _DLQ_REASONS:
        if needle in low:
            return label
    return "poison"


class LoopSettingError(VinspectError, ValueError):
    """A feedback-loop setting out of its allowed values (the message names the variable)."""


class BoundedWorkers:
    """A small thread pool that refuses work beyond ``max_pending`` queued or running tasks.

    Args:
        workers: Threads.
        max_pending: Tasks queued or running before :meth:`submit` refuses.
        name: Thread name prefix.
    """

    def __init__(self, workers: int = 1, max_pending: int = 16, name: str = "loop"):
        self.max_pending = max(1, max_pending)
        self._pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix=name)
        self._pending = 0
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future | None:
        """Run ``fn(*args)`` in the background; None when ``max_pending`` tasks already wait."""
        with self._lock:
            if self._pending >= self.max_pending:
                return None
            self._pending += 1

        def run() -> Any:
            try:
                return fn(*args)
            finally:
                with self._lock:
                    self._pending -= 1

        return self._pool.submit(run)

    def pending(self) -> int:
        """Tasks queued or running."""
        with self._lock:
            return self._pending

    def close(self) -> None:
        """Finish queued work and stop the threads."""
        self._pool.shutdown(wait=True)


def frame_stats(bgr: np.ndarray) -> dict[str, float]:
    """:func:`serving.drift.image_stats` of a decoded BGR frame, reduced *before* any conversion.

    The drift module reduces the grey image by striding to at most ``STATS_SIDE`` pixels a side;
    striding commutes with the per-pixel grey conversion, so striding the ``uint8`` frame first
    gives the same numbers at a fraction of the cost (no full-size float copy per image).
    """
    arr = np.asarray(bgr)
    step = max(1, int(np.ceil(max(arr.shape[:2]) / drift_mod.STATS_SIDE)))
    small = arr[::step, ::step]
    if small.ndim == 3:
        small = small[..., 2::-1]  # BGR -> RGB, as the reference is built from RGB images
    return drift_mod.image_stats(np.ascontiguousarray(small))


DRIFT_SOURCES = ("version", "serving")


class DriftWatch:
    """The live drift comparison of one processor, against the reference of the version answering.

    Where the reference is read (``source``):

    * ``version``: ``<model>/<version>/drift-reference.json`` of the version the responses carry;
      right where the server reports the registry version (the local model server).
    * ``serving``: ``<model>/serving/drift-reference.json``, which the rollout writes when it
      moves the champion, with the registry version inside; for KServe/OVMS, where every version
      answers as ``1``. Re-read (in the background) when the served model changes and when the
      file's ETag changes, checked with a HEAD at most every ``refresh_s``.

    Args:
        s3: A boto3 S3 client for the models bucket (short timeouts).
        bucket: The models bucket (``AWS_S3_BUCKET``).
        workers: Where reference loads run (never on the inspection path).
        notifier: A :class:`serving.notify.Notifier` (None: no notifications).
        threshold: PSI above which a signal drifts.
        window / min_samples: Of :class:`serving.drift.DriftMonitor`.
        score_every_s: Least seconds between two score computations of one camera.
        notify_cooldown_s: Least seconds between two drift notifications of one camera.
        source: ``version`` or ``serving`` (above).
        refresh_s: Least seconds between two ETag checks of the served reference.
        clock: Monotonic seconds (tests).

    Raises:
        ValueError: An unknown ``source``.
    """

    def __init__(
        self,
        s3: Any,
        bucket: str,
        workers: BoundedWorkers,
        *,
        notifier: Any = None,
        threshold: float = drift_mod.PSI_ALERT,
        window: int = 500,
        min_samples: int = 50,
        score_every_s: float = 5.0,
        notify_cooldown_s: float = 3600.0,
        source: str = "version",
        refresh_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        if source not in DRIFT_SOURCES:
            raise LoopSettingError(f"VINSPECT_DRIFT_REFERENCE: {source!r} is not one of {', '.join(DRIFT_SOURCES)}")
        self.s3, self.bucket, self.workers, self.notifier = s3, bucket, workers, notifier
        self.threshold, self.window, self.min_samples = threshold, window, min_samples
        self.score_every_s, self.notify_cooldown_s, self._clock = score_every_s, notify_cooldown_s, clock
        self.source, self.refresh_s = source, refresh_s
        self.monitor: drift_mod.DriftMonitor | None = None
        self.model: tuple[str, str] | None = None  # (name, version) whose reference is wanted
        self.reference_version: str | None = None  # the registry version of the loaded reference
        self._etag: str | None = None  # of the served reference loaded (source "serving")
        self._next_check = 0.0
        self._loading: tuple[str, str] | None = None
        self._last_score: dict[str, float] = {}
        self._last_notice: dict[str, float] = {}
        self._lock = threading.Lock()

    def _read(self, name: str, version: str) -> tuple[dict[str, Any], str | None]:
        if self.source == "serving":
            return drift_mod.load_served_reference(self.s3, self.bucket, name)
        return drift_mod.load_reference(self.s3, self.bucket, name, version), None

    def _load(self, name: str, version: str, known_etag: str | None = None) -> None:
        what = f"{name} (served reference)" if self.source == "serving" else f"{name} version {version}"
        try:
            if known_etag is not None and drift_mod.served_reference_etag(self.s3, self.bucket, name) == known_etag:
                with self._lock:
                    self._loading = None
                return  # unchanged: keep the monitor and its window
            ref, etag = self._read(name, version)
            monitor = drift_mod.DriftMonitor(ref, window=self.window, min_samples=self.min_samples)
            ref_version = str((ref.get("model") or {}).get("version") or version)
            log.info(
                "drift: reference of %s loaded (registry version %s, %d signals)",
                what,
                ref_version,
                len(ref["signals"]),
            )
        except drift_mod.DriftError as exc:
            log.warning("drift is off for %s: %s", what, exc)
            monitor, etag, ref_version = None, None, None
        except Exception as exc:  # noqa: BLE001 - S3 down
            if known_etag is not None:  # a periodic check: keep what is loaded, check again later
                log.warning("drift: cannot check the served reference of %s: %s: %s", name, type(exc).__name__, exc)
                with self._lock:
                    self._loading = None
                return
            log.warning("drift is off for %s: cannot read its reference: %s: %s", what, type(exc).__name__, exc)
            monitor, etag, ref_version = None, None, None
        with self._lock:
            if self.model == (name, version):
                self.monitor, self._etag, self.reference_version = monitor, etag, ref_version
                if monitor is not None or known_etag is None:
                    self._last_score.clear()
            self._loading = None

    def use(self, name: str | None, version: str | None) -> None:
        """The version answering now: load its reference when it is new (in the background).

        With ``source="serving"`` the served reference is also re-read when its ETag changed
        (a rollout moved the champion while the server kept answering as version ``1``).
        """
        if not name:
            return
        key = (str(name), str(version or ""))
        now = self._clock()
        with self._lock:
            if self.model == key:
                if self.source != "serving" or self._loading is not None or now < self._next_check:
                    return
                self._next_check, self._loading = now + self.refresh_s, key
                args: tuple = (*key, self._etag or "")  # "" never equals a real ETag: re-read
            else:
                self.model, self.monitor, self._loading = key, None, key
                self._etag = self.reference_version = None
                self._next_check = now + self.refresh_s
                self._last_score.clear()
                args = key
        if self.workers.submit(self._load, *args) is None:  # backlog: try again with the next image
            with self._lock:
                if len(args) == 2:
                    self.model = None
                self._loading = None
                self._next_check = 0.0

    @property
    def version(self) -> str:
        """The registry version drift is measured against (for notifications)."""
        return self.reference_version or (self.model[1] if self.model else "")

    def observe(self, camera: str, detections: Any, stats: Mapping[str, float]) -> dict[str, dict[str, float]] | None:
        """Add one image; returns the camera's scores when they were due (else None)."""
        monitor = self.monitor
        if monitor is None:
            return None
        monitor.observe(camera, detections, stats)
        now = self._clock()
        if now - self._last_score.get(camera, -1e18) < self.score_every_s:
            return None
        self._last_score[camera] = now
        return monitor.scores(camera)

    def should_notify(self, camera: str) -> bool:
        """Whether a drift notification of this camera is allowed now (and note that it is sent)."""
        now = self._clock()
        with self._lock:
            if now - self._last_notice.get(camera, -1e18) < self.notify_cooldown_s:
                return False
            self._last_notice[camera] = now
            return True


class LoopHooks:
    """Per-result metrics, review selection and drift for the image processor.

    Args:
        metrics: Where the loop's metrics go (served on ``/metrics`` with the processor's own).
        selector / review_store: The review policy and the queue in S3 (both or neither).
        drift: The drift comparison (None: off).
        workers: Background workers for the review queue's S3 writes.
    """

    def __init__(
        self,
        metrics: InspectionMetrics,
        *,
        selector: ReviewSelector | None = None,
        review_store: ReviewStore | None = None,
        drift: DriftWatch | None = None,
        workers: BoundedWorkers | None = None,
    ):
        self.metrics = metrics
        self.selector, self.review_store, self.drift = selector, review_store, drift
        self.workers = workers or BoundedWorkers(1, 16, "review")

    # ------------------------------------------------------------------ per result

    def on_result(self, data: Mapping[str, Any], image: bytes, bgr: np.ndarray | None) -> None:
        """One inspected image: ``data`` the result payload, ``image`` the camera's bytes, ``bgr`` decoded."""
        try:
            self.metrics.record_result(data)
        except Exception as exc:  # noqa: BLE001 - metrics must never cost a result
            log.warning("metrics: %r", exc)
        if self.selector is not None and self.review_store is not None:
            self._review(data, image)
        if self.drift is not None:
            self._drift(data, bgr)

    def _review(self, data: Mapping[str, Any], image: bytes) -> None:
        try:
            selection = self.selector.select(data, image)
        except Exception as exc:  # noqa: BLE001 - e.g. a malformed result: count, go on
            self.metrics.record_error("review")
            log.warning("review: %s", exc)
            return
        if selection is None:
            return
        record = dict(data)
        if self.workers.submit(self._queue, selection, record, image) is None:
            self.selector.release(selection)
            self.metrics.record_error("review_backlog")

    def _queue(self, selection: Any, data: Mapping[str, Any], image: bytes) -> None:
        # The selection is made; only the writes are left (queue_frame's S3 part).
        try:
            key = self.review_store.put(selection, data, image)
        except Exception as exc:  # noqa: BLE001 - S3 down: release, count, go on
            self.selector.release(selection)
            self.metrics.record_error("review")
            log.warning(
                "review: could not queue image %s of camera %s: %s", selection.sha256[:12], selection.camera, exc
            )
            return
        if key is None:
            return
        try:
            size = self.review_store.size()
        except Exception:  # noqa: BLE001 - the gauge waits for the next selection
            size = None
        self.metrics.record_review(selection.camera, selection.reasons, size)

    def _drift(self, data: Mapping[str, Any], bgr: np.ndarray | None) -> None:
        try:
            model = data.get("model") or {}
            self.drift.use(model.get("name"), model.get("version"))
            if bgr is None or self.drift.monitor is None:
                return
            camera = str(data.get("camera") or "unknown")
            scores = self.drift.observe(camera, data.get("detections") or [], frame_stats(bgr))
            if scores is None:
                return
            self.metrics.record_drift(camera, scores)
            drifting = {
                k: {"psi": round(v["psi"], 4), "ks": round(v["ks"], 4)}
                for k, v in scores.items()
                if v["psi"] > self.drift.threshold
            }
            if drifting and self.drift.notifier is not None and self.drift.should_notify(camera):
                name, version = (self.drift.model or ("", ""))[0], self.drift.version
                # The notifier does an HTTP POST: off the inspection path.
                send = functools.partial(
                    self.drift.notifier.drift_detected, name, version, camera, drifting, threshold=self.drift.threshold
                )
                if self.workers.submit(send) is None:
                    self.metrics.record_error("notify_backlog")
        except Exception as exc:  # noqa: BLE001 - drift must never cost a result
            self.metrics.record_error("drift")
            log.warning("drift: %r", exc)

    # ------------------------------------------------------------------ errors

    def on_error(self, kind: str) -> None:
        """Count an error (``model_unavailable``, ``model_refused``, ``poison``, ...)."""
        self.metrics.record_error(kind)

    def on_dead_letter(self, reason: str) -> None:
        """Count a dead letter under a bounded reason label."""
        self.metrics.record_dead_letter(dead_letter_reason(reason))

    def flag(self, data: Mapping[str, Any], image: bytes) -> Any:
        """An operator's flag (the frame goes to review whatever the policy says); inline, not pooled."""
        if self.selector is None or self.review_store is None:
            return None
        selection = queue_frame(self.selector, self.review_store, data, image, flagged=True)
        if selection is not None:
            self.metrics.record_review(selection.camera, selection.reasons)
        return selection

    def close(self) -> None:
        """Finish pending review writes."""
        self.workers.close()


def from_settings(
    metrics: InspectionMetrics, *, review: bool = True, drift: bool = True, workers: int = 2, max_pending: int = 32
) -> LoopHooks:
    """The hooks from the environment: S3 (data and models buckets) and notification settings.

    Without S3 settings (no endpoint and no access key) review and drift are off: the processor
    never guesses at AWS.
    """
    from serving.notify import Notifier
    from vinspect.settings import RuntimeSettings, S3Settings

    s3s = S3Settings.from_env()
    pool = BoundedWorkers(workers, max_pending, "loop")
    if not (s3s.endpoint_url or s3s.access_key_id):
        log.info("no S3 settings: review queue and drift are off")
        return LoopHooks(metrics, workers=pool)
    s3 = s3s.client(timeouts=(2.0, 10.0), attempts=2)
    selector = ReviewSelector() if review else None
    store = ReviewStore(s3, s3s.data_bucket) if review else None
    source = RuntimeSettings.from_env().drift_reference
    watch = DriftWatch(s3, s3s.bucket, pool, notifier=Notifier.from_settings(), source=source) if drift else None
    return LoopHooks(metrics, selector=selector, review_store=store, drift=watch, workers=pool)
