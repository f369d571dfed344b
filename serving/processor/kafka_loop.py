"""The Kafka loop: consume image records, inspect, produce results, dead-letter poison, commit after.

For local and edge use (on the cluster, Knative's KafkaSource feeds :mod:`serving.processor.knative`
instead). It inspects up to ``concurrency`` records in parallel, writes results (or dead letters)
and commits a record's offset only once its output, and that of every earlier record of the
partition, is acknowledged by the broker: a crash at any point re-delivers, never loses. While the
model server fails, records are retried with capped exponential backoff instead of being
dead-lettered; only records that can never succeed go to the DLQ. Every produce failure is
handled: a result or dead letter the broker refuses for good becomes a dead-letter *reference*
(topic, partition, offset, size, reason; no payload), so no record can stop the loop and the
offset always moves on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Callable

from serving.events import PoisonEvent, dlq_reference, from_kafka, record_size, to_kafka
from serving.model_client import ModelClientError
from serving.processor.inspector import RESULT_MAX_BYTES, Inspection, Inspector
from serving.processor.metrics import ProcessorMetrics
from vinspect.errors import VinspectError

log = logging.getLogger(__name__)

# Dead letters up to this size carry the original record; larger ones a reference to it.
DEFAULT_DLQ_COPY_MAX_BYTES = 1024 * 1024


class _Stopped(VinspectError):
    """The loop was asked to stop (or to give up its partitions) while retrying a record."""


@dataclass
class _Outcome:
    message: Any
    inspection: Inspection | None = None  # -> result event once its image is stored
    error: str | None = None  # poison reason -> DLQ


class _Pending:
    """One consumed record on its way to being committed."""

    __slots__ = ("message", "future", "outcome", "state")

    def __init__(self, message: Any):
        self.message = message
        self.future: Any = None
        self.outcome: _Outcome | None = None
        self.state = "inspecting"  # -> storing -> producing -> done, or aborted


_PERMANENT_ERRORS = (
    "MSG_SIZE_TOO_LARGE",
    "RECORD_LIST_TOO_LARGE",
    "INVALID_RECORD",
    "INVALID_MSG",
    "TOPIC_AUTHORIZATION_FAILED",
    "CLUSTER_AUTHORIZATION_FAILED",
    "POLICY_VIOLATION",
    "INVALID_REQUEST",
    "_INVALID_ARG",
    "TOPIC_EXCEPTION",
    "UNSUPPORTED_FOR_MESSAGE_FORMAT",
)


def _permanent(err: Any) -> bool:
    """A produce error that retrying cannot fix (the record itself, or no right to write)."""
    from confluent_kafka import KafkaError

    # Looked up by name: librdkafka versions differ in which of these codes they define.
    codes = {getattr(KafkaError, name) for name in _PERMANENT_ERRORS if hasattr(KafkaError, name)}
    code = err.code() if hasattr(err, "code") else None
    return code in codes


class KafkaLoop:
    """Consume images, inspect, produce results, dead-letter poison, commit after.

    Up to `concurrency` records are inspected at once (a sliding window, so the model
    server never idles while results are written). A record's offset is committed only
    when it and every earlier record of its partition have their result (or dead letter)
    acknowledged by the broker: a crash anywhere re-delivers, never loses.

    Args:
        inspector: The core.
        consumer: A `confluent_kafka.Consumer` with `enable.auto.commit=False` and the
            default (eager) partition assignment.
        producer: A `confluent_kafka.Producer`.
        images_topic / results_topic / dlq_topic: Topics.
        concurrency: Records inspected in parallel.
        backoff: First retry delay while the model server fails.
        max_backoff: Cap of the retry delay.
        commit_interval: Seconds between offset commits.
        metrics: Metrics to record into.
        dlq_copy_max_bytes: Dead letters up to this size copy the record; larger ones are
            a reference (topic, partition, offset, size, reason) without the payload.
        max_record_bytes: Records larger than this are dead-lettered without being parsed
            (default: twice the image limit, room for the legacy record's base64).
        max_storing: Results waiting for their image's S3 put before consumption pauses.
    """

    def __init__(
        self,
        inspector: Inspector,
        consumer: Any,
        producer: Any,
        *,
        images_topic: str,
        results_topic: str,
        dlq_topic: str,
        concurrency: int = 4,
        backoff: float = 0.25,
        max_backoff: float = 5.0,
        commit_interval: float = 0.2,
        metrics: ProcessorMetrics | None = None,
        dlq_copy_max_bytes: int = DEFAULT_DLQ_COPY_MAX_BYTES,
        max_record_bytes: int | None = None,
        max_storing: int = 32,
    ):
        self.inspector = inspector
        self.consumer = consumer
        self.producer = producer
        self.images_topic = images_topic
        self.results_topic = results_topic
        self.dlq_topic = dlq_topic
        self.concurrency = max(1, concurrency)
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.commit_interval = commit_interval
        self.metrics = metrics or inspector.metrics or ProcessorMetrics()
        self.dlq_copy_max_bytes = dlq_copy_max_bytes
        self.max_record_bytes = max_record_bytes or 2 * inspector.config.max_image_bytes
        self.max_storing = max(1, max_storing)
        self.stop_event = threading.Event()
        self._abort = threading.Event()
        self.heartbeat = time.monotonic()
        self.assigned = False
        self.model_ok = False
        self.processed = 0  # records whose output the broker acknowledged
        self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="inspect")
        self._inflight: list[_Pending] = []
        self._partitions: dict[tuple[str, int], OrderedDict[int, _Pending]] = {}
        self._last_commit = 0.0

    # -- per record ----------------------------------------------------------------

    def _inspect_with_retry(self, message: Any) -> _Outcome:
        size = record_size(message.key(), message.value(), message.headers())
        if size > self.max_record_bytes:
            return _Outcome(
                message, error=f"record is {size:,} bytes, over the limit of {self.max_record_bytes:,}; not parsed"
            )
        try:
            event = from_kafka(
                message.value(),
                message.headers(),
                message.key(),
                topic=message.topic(),
                partition=message.partition(),
                offset=message.offset(),
            )
        except PoisonEvent as exc:
            return _Outcome(message, error=str(exc))
        attempt = 0
        while True:
            try:
                inspection = self.inspector.analyse(event)
                self.model_ok = True
                self.inspector.start_store(inspection)  # the S3 put runs on its own workers
                return _Outcome(message, inspection=inspection)
            except PoisonEvent as exc:
                self.inspector.count_error("poison")
                return _Outcome(message, error=str(exc))
            except ModelClientError as exc:  # unavailable, or answering nonsense: retry
                self.model_ok = False
                self.metrics.retries.inc()
                self.inspector.count_error("model_unavailable")
                delay = min(self.max_backoff, self.backoff * 2 ** min(attempt, 16))
                if attempt % 10 == 0:
                    log.warning(
                        "model unavailable (%s); retrying %s[%d]@%d in %.2fs",
                        exc,
                        message.topic(),
                        message.partition(),
                        message.offset(),
                        delay,
                    )
                attempt += 1
                if self._abort.wait(delay):
                    raise _Stopped() from None
            except Exception as exc:  # a bug on this record must not stop the stream
                self.inspector.count_error("internal")
                log.exception("unexpected error on %s[%d]@%d", message.topic(), message.partition(), message.offset())
                return _Outcome(message, error=f"internal error: {exc!r}")

    def _submit(self, message: Any) -> None:
        pending = _Pending(message)
        key = (message.topic(), message.partition())
        self._partitions.setdefault(key, OrderedDict())[message.offset()] = pending
        pending.future = self._pool.submit(self._inspect_with_retry, message)
        self._inflight.append(pending)
        self.metrics.in_flight.inc()

    # -- writing: every failure ends in a written record or, at worst, a logged drop --------

    def _produce(self, pending: _Pending, outcome: _Outcome) -> None:
        if outcome.error is not None:
            self._dead_letter(pending, outcome.error)
            return
        try:
            result = self.inspector.finish_stored(outcome.inspection)  # type: ignore[arg-type]
            key, value, headers = to_kafka(result)
        except Exception as exc:  # noqa: BLE001 - a bug building one result must not stop the loop
            log.exception("cannot build the result of %s", self._where(pending.message))
            self._dead_letter(pending, f"internal error building the result: {exc!r}")
            return
        size = record_size(key, value, headers)
        if size > RESULT_MAX_BYTES:  # cannot happen by construction; never let it stop the line
            self._dead_letter(pending, f"result event is {size:,} bytes, over {RESULT_MAX_BYTES:,}", copy=False)
            return
        self._write(
            pending,
            self.results_topic,
            key,
            value,
            headers,
            lambda err: self._dead_letter(
                pending, f"result could not be written to {self.results_topic}: {err}", copy=False, refused=True
            ),
        )

    def _dead_letter(self, pending: _Pending, reason: str, copy: bool = True, refused: bool = False) -> None:
        """Dead-letter a record: a full copy when small enough, else (or when refused) a reference."""
        m = pending.message
        self.metrics.events.labels("dlq").inc()
        if self.inspector.hooks is not None:
            self.inspector.hooks.on_dead_letter(reason)
        log.warning("dead-lettering %s: %s", self._where(m), reason[:500])
        size = record_size(m.key(), m.value(), m.headers())
        key = m.key() if m.key() is None or len(m.key()) <= 256 else None
        if copy and size <= self.dlq_copy_max_bytes:
            headers = list(m.headers() or []) + [
                ("dlq_reason", reason[:1000].encode("utf-8")),
                ("dlq_source_topic", m.topic().encode()),
                ("dlq_source_partition", str(m.partition()).encode()),
                ("dlq_source_offset", str(m.offset()).encode()),
            ]
            self._write(
                pending,
                self.dlq_topic,
                key,
                m.value(),
                headers,
                lambda err: self._reference(
                    pending, f"{reason}; the full copy was refused: {err}", size, key, refused=True
                ),
            )
            return
        self._reference(pending, reason, size, key, refused)

    def _reference(self, pending: _Pending, reason: str, size: int, key: Any, refused: bool = False) -> None:
        m = pending.message
        if refused:  # a write the broker refused for good, replaced by this reference
            self.metrics.produce_failures.labels("reference").inc()
        value, headers = dlq_reference(m.topic(), m.partition(), m.offset(), size, reason, m.headers())
        self._write(pending, self.dlq_topic, key, value, headers, lambda err: self._drop(pending, reason, err))

    def _drop(self, pending: _Pending, reason: str, err: Any) -> None:
        # Even a small reference was refused for good (no right to write the DLQ, say): log it
        # where operators look and move on, rather than stopping every camera behind it.
        self.metrics.produce_failures.labels("dropped").inc()
        log.error(
            "DROPPED %s: %s; the dead-letter reference was refused too: %s",
            self._where(pending.message),
            reason[:500],
            err,
        )
        pending.state = "done"
        self.processed += 1

    @staticmethod
    def _where(m: Any) -> str:
        return f"{m.topic()}[{m.partition()}]@{m.offset()}"

    def _write(
        self, pending: _Pending, topic: str, key: Any, value: Any, headers: Any, on_permanent: Callable[[Any], None]
    ) -> None:
        """Produce; a transient failure writes again, a permanent one calls `on_permanent`."""

        def delivered(err: Any, _msg: Any) -> None:
            if err is None:
                pending.state = "done"
                self.processed += 1
            elif _permanent(err):
                log.error("%s refused a record for %s: %s", topic, self._where(pending.message), err)
                on_permanent(err)
            else:  # librdkafka gave up after its own retries (broker away): write it again
                log.error("delivery to %s failed (%s); producing again", topic, err)
                error = self._send(topic, key, value, headers, delivered)
                if error is not None:
                    on_permanent(error)

        pending.state = "producing"
        error = self._send(topic, key, value, headers, delivered)
        if error is not None:
            log.error("%s refused a record for %s: %s", topic, self._where(pending.message), error)
            on_permanent(error)

    def _send(self, topic: str, key: Any, value: Any, headers: Any, callback: Any) -> Any:
        """Hand a record to the producer; returns the error when it refuses it up front."""
        from confluent_kafka import KafkaException

        while True:
            try:
                self.producer.produce(topic, value=value, key=key, headers=headers, on_delivery=callback)
                return None
            except BufferError:  # local queue full: serve delivery reports first
                self.producer.poll(0.1)
            except KafkaException as exc:  # e.g. MSG_SIZE_TOO_LARGE: over message.max.bytes
                return exc.args[0] if exc.args else exc

    # -- the window ------------------------------------------------------------------

    def _inspecting(self) -> int:
        return sum(1 for p in self._inflight if p.outcome is None)

    def _window_full(self) -> bool:
        storing = len(self._inflight) - self._inspecting()
        return self._inspecting() >= self.concurrency or storing >= self.max_storing

    def _reap(self, block: bool) -> None:
        """Publish the outcome of every finished inspection whose image is stored."""
        if block and self._inflight:
            futures = [
                p.future if p.outcome is None else (p.outcome.inspection.store if p.outcome.inspection else None)
                for p in self._inflight
            ]
            if not any(f is None or f.done() for f in futures):
                wait([f for f in futures if f is not None], timeout=0.1, return_when=FIRST_COMPLETED)
        still = []
        for pending in self._inflight:
            if pending.outcome is None:
                if not pending.future.done():
                    still.append(pending)
                    continue
                self.metrics.in_flight.dec()
                try:
                    pending.outcome = pending.future.result()
                except _Stopped:
                    pending.state = "aborted"  # never committed: re-delivered after restart
                    continue
            inspection = pending.outcome.inspection
            if inspection is not None and inspection.store is not None and not inspection.store.done():
                pending.state = "storing"
                still.append(pending)
                continue
            self._produce(pending, pending.outcome)
        self._inflight = still

    def _commit_ready(self, force: bool = False) -> None:
        """Commit, per partition, past the longest prefix of acknowledged records."""
        from confluent_kafka import KafkaException, TopicPartition

        now = time.monotonic()
        if not force and now - self._last_commit < self.commit_interval:
            return
        self._last_commit = now
        offsets = []
        for (topic, partition), pending in self._partitions.items():
            last = None
            while pending:
                offset, item = next(iter(pending.items()))
                if item.state != "done":
                    break
                pending.popitem(last=False)
                last = offset
            if last is not None:
                offsets.append(TopicPartition(topic, partition, last + 1))
        if offsets:
            try:
                self.consumer.commit(offsets=offsets, asynchronous=False)
                self.metrics.commits.inc()
            except KafkaException as exc:  # e.g. a rebalance in progress: next round re-tries
                log.warning("commit failed: %s", exc)

    def _drain(self) -> None:
        """Finish or abort everything in flight, flush, commit what is complete, forget the rest."""
        self._abort.set()
        try:
            while self._inflight:
                self._reap(block=True)
            self.producer.flush(30)
            self._commit_ready(force=True)
        finally:
            self._partitions.clear()
            if not self.stop_event.is_set():
                self._abort.clear()

    # -- the loop ------------------------------------------------------------------

    def run(self, max_messages: int | None = None) -> None:
        """Run until `stop()` (or `max_messages` acknowledged); closes the consumer at the end."""

        def on_assign(_consumer: Any, partitions: list[Any]) -> None:
            self.assigned = bool(partitions)
            log.info("assigned %s", [f"{p.topic}[{p.partition}]" for p in partitions])

        def on_revoke(_consumer: Any, _partitions: list[Any]) -> None:
            # Eager rebalancing takes every partition away: settle all work first, so the
            # next owner starts exactly after what we acknowledged.
            self.assigned = False
            self._drain()

        self.consumer.subscribe([self.images_topic], on_assign=on_assign, on_revoke=on_revoke)
        try:
            while not self.stop_event.is_set():
                self.heartbeat = time.monotonic()
                if max_messages is not None and self.processed >= max_messages:
                    break
                self._reap(block=self._window_full())
                self.producer.poll(0)
                self._commit_ready()
                if self._window_full():
                    continue
                busy = self._inflight or any(self._partitions.values())
                message = self.consumer.poll(0.02 if busy else 0.5)
                if message is None:
                    continue
                if message.error():
                    log.warning("consumer error: %s", message.error())
                    continue
                self._submit(message)
            self._drain()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self.producer.flush(10)
            self.consumer.close()

    def stop(self) -> None:
        """Ask the loop to finish; records still being retried are re-delivered later."""
        self.stop_event.set()
        self._abort.set()

    def live(self, stale_after: float = 60.0) -> bool:
        """The loop is turning (its heartbeat is recent)."""
        return time.monotonic() - self.heartbeat < stale_after

    def ready(self) -> bool:
        """Partitions assigned and the model reachable."""
        return self.assigned and (self.model_ok or self.inspector.ready())


def kafka_clients(kafka_settings: Any, group_id: str | None = None) -> tuple[Any, Any]:
    """Consumer and producer configured for the loop from `KafkaSettings`."""
    from confluent_kafka import Consumer, Producer

    base = kafka_settings.client_config()
    consumer = Consumer(
        {
            **base,
            "group.id": group_id or kafka_settings.group_id,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 1000,
            # An image record is large; one fetch need not hold more than a few.
            "max.partition.fetch.bytes": 8 * 1024 * 1024,
            # Images are a live stream: do not let the broker hold a fetch for the default 500 ms.
            "fetch.wait.max.ms": 50,
        }
    )
    producer = Producer({**base, "linger.ms": 5, "acks": "all", "message.max.bytes": 8 * 1024 * 1024})
    return consumer, producer
