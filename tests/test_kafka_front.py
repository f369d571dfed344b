"""The Kafka front's relay: frames pass through in any read sizes, picked frames are rewritten in order."""

from __future__ import annotations

import asyncio
import random
import struct

import pytest

from vinspect import kafka_front as kf


class _Sink:
    """The writer side of a relay: collects what is written."""

    def __init__(self):
        self.data = bytearray()

    def write(self, data) -> None:
        self.data += data

    async def drain(self) -> None:
        await asyncio.sleep(0)


def _frame(api_key: int, corr: int, body: bytes) -> bytes:
    payload = struct.pack(">hhi", api_key, 0, corr) + body
    return struct.pack(">i", len(payload)) + payload


def _relay(stream: bytes, chunks: list[int], head_len: int, wanted, visit) -> bytes:
    async def run() -> bytes:
        reader = asyncio.StreamReader(limit=1 << 20)
        sink = _Sink()
        task = asyncio.create_task(kf.relay_frames(reader, sink, head_len, wanted, visit))
        pos = 0
        for n in chunks:  # data arrives in these sizes, then the peer closes
            reader.feed_data(stream[pos : pos + n])
            pos += n
            await asyncio.sleep(0)
        reader.feed_data(stream[pos:])
        reader.feed_eof()
        await task
        return bytes(sink.data)

    return asyncio.run(run())


@pytest.mark.parametrize("seed", range(6))
def test_relay_passes_every_byte_and_rewrites_only_picked_frames(seed):
    rng = random.Random(seed)
    image = rng.randbytes(300_000)  # a produce larger than one read
    frames = [
        _frame(0, 1, image),  # Produce
        _frame(kf.LIST_OFFSETS, 2, b"query-2"),
        _frame(1, 3, b""),  # Fetch, header only
        _frame(kf.LIST_OFFSETS, 4, b"query-4" * 5000),  # a picked frame split over reads
        _frame(0, 5, rng.randbytes(50_000)),
    ]
    stream = b"".join(frames)
    cuts = sorted(rng.sample(range(1, len(stream)), 40))
    chunks = [b - a for a, b in zip([0, *cuts], cuts)]
    seen = []

    async def visit(frame: bytes) -> bytes:
        seen.append(frame)
        return frame.upper()  # same length, other bytes: shows the rewritten frame is what goes on

    out = _relay(stream, chunks, 8, lambda head: struct.unpack_from(">h", head)[0] == kf.LIST_OFFSETS, visit)
    expected = b"".join(
        f if struct.unpack_from(">h", f, 4)[0] != kf.LIST_OFFSETS else f[:4] + f[4:].upper() for f in frames
    )
    assert out == expected
    assert seen == [frames[1][4:], frames[3][4:]]


def test_relay_passes_a_frame_shorter_than_the_header_and_stops_on_a_negative_length():
    tiny = struct.pack(">i", 2) + b"ab"
    assert _relay(tiny + tiny, [3], 8, lambda head: True, None) == tiny + tiny
    with pytest.raises(kf.ProtocolError, match="negative frame length"):
        _relay(struct.pack(">i", -5) + b"x" * 8, [], 8, lambda head: False, None)
