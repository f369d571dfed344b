"""The claim check: annotated JPEGs go to S3 and the result event carries their key."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _key_part(text: str, limit: int = 64) -> str:
    return _KEY_UNSAFE.sub("_", text)[:limit].strip("._") or "_"


class AnnotatedImageStore:
    """Claim check: annotated JPEGs go to S3 on a bounded pool of background workers.

    The Kafka loop hands an image over and goes on inspecting; the result event is written
    once the put has finished (or failed), so an event never names an object that is not
    there. When S3 is slow, at most `max_pending` puts wait; beyond that an image is skipped
    (the result says so) instead of holding the line.

    Args:
        s3: A boto3 S3 client (short timeouts: a put must not hold a result for long).
        bucket: The bucket (the stack's data bucket).
        prefix: Key prefix; keys are `<prefix>/<YYYY-MM-DD>/<camera>/<event id>-<hash>.jpg`.
        workers: Puts running at once.
        max_pending: Puts queued or running before images are skipped.
    """

    def __init__(self, s3: Any, bucket: str, prefix: str = "annotated", *, workers: int = 2, max_pending: int = 16):
        self.s3 = s3
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.max_pending = max(1, max_pending)
        self._pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="s3-put")
        self._pending = 0
        self._lock = threading.Lock()

    def key_for(self, camera: str, event_id: str) -> str:
        """One key per event; ids from the network are made key-safe, a hash keeps them unique."""
        digest = hashlib.sha256(f"{camera}\0{event_id}".encode()).hexdigest()[:12]
        day = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
        return f"{self.prefix}/{day}/{_key_part(camera)}/{_key_part(event_id, 96)}-{digest}.jpg"

    @staticmethod
    def original_key(key: str) -> str:
        """Key of the camera's own frame stored beside an annotated image (`<key>.orig.jpg`)."""
        return key[: -len(".jpg")] + ".orig.jpg" if key.endswith(".jpg") else key + ".orig.jpg"

    def put(self, key: str, jpeg: bytes, original: bytes | None = None) -> dict[str, Any]:
        """Store one image now; returns the reference the event carries.

        Args:
            key: The annotated image's key.
            jpeg: The annotated image.
            original: The camera's frame when `jpeg` has boxes drawn on it: stored first under
                `original_key(key)`, so an operator's flag on the dashboard can send the clean
                frame to review (a drawn-on copy would teach the boxes to the next model).
        """
        ref: dict[str, Any] = {"bucket": self.bucket, "key": key, "content_type": "image/jpeg", "bytes": len(jpeg)}
        if original is not None:
            self.s3.put_object(Bucket=self.bucket, Key=self.original_key(key), Body=original, ContentType="image/jpeg")
            ref["original_key"] = self.original_key(key)
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=jpeg, ContentType="image/jpeg")
        return ref

    def submit(self, key: str, jpeg: bytes, original: bytes | None = None) -> Future | None:
        """Queue a put; None when `max_pending` puts are already waiting (the image is skipped)."""
        with self._lock:
            if self._pending >= self.max_pending:
                return None
            self._pending += 1

        def run() -> dict[str, Any]:
            try:
                return self.put(key, jpeg, original)
            finally:
                with self._lock:
                    self._pending -= 1

        return self._pool.submit(run)

    def close(self) -> None:
        """Finish queued puts and stop the workers."""
        self._pool.shutdown(wait=True)
