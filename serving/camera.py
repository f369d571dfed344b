"""Camera: real frames from an S3 prefix, a mounted folder or an archive (or synthetic ones), to Kafka.

On the cluster the camera streams real images: `s3://bucket/prefix/` (listed page by page,
each object read when it is sent, so a prefix of any size costs no memory) or a folder
mounted into the pod (a PVC or ConfigMap). Each image's header is checked against the pixel
limit before it is decoded (`serving.imagelimits`); a frame over it is skipped with a warning.

Each frame becomes an RGB JPEG in a CloudEvent in Kafka binary mode (`ce_*` headers,
`content-type: image/jpeg`, key = camera id) on `visual-inspection-images`; with
`legacy=True` it becomes the original demo's JSON record instead. Several cameras share
one producer; each sends `fps` frames per second.
"""

from __future__ import annotations

import io
import itertools
import logging
import random
import tarfile
import time
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from PIL import Image

from serving.events import image_event, legacy_record, to_kafka
from serving.imagelimits import ImageTooLarge, check_image_header
from serving.synthetic import render_nut
from vinspect.errors import VinspectError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
_KNOWN_LABELS = ("good", "bent", "scratch", "color", "flip")


class CameraSourceError(VinspectError, ValueError):
    """A camera source that gives no usable frame (missing, empty, unreadable; the message names it)."""


class CameraDeliveryError(VinspectError, RuntimeError):
    """Frames the Kafka broker did not acknowledge."""


class Frame:
    """One source image: its name, a label guess and the encoded bytes as stored.

    `data` is read when it is asked for (from disk or S3) unless the bytes were given.
    """

    __slots__ = ("name", "label", "_data", "_load")

    def __init__(self, name: str, label: str, data: bytes | None = None, load: Callable[[], bytes] | None = None):
        if data is None and load is None:
            raise CameraSourceError(f"frame {name}: give data or a loader")
        self.name, self.label, self._data, self._load = name, label, data, load

    @property
    def data(self) -> bytes:
        """The encoded image bytes."""
        return self._data if self._data is not None else self._load()  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"Frame({self.name!r}, {self.label!r})"


def _label_for(name: str) -> str:
    """Label from `bent_012.png` (our YOLO export) or `bent/012.png` (the demo's folders)."""
    path = Path(name)
    prefix = path.stem.split("_")[0].lower()
    if prefix in _KNOWN_LABELS:
        return prefix
    parent = path.parent.name.replace(" ", "-").lower()
    return parent or "unknown"


def _folder_frames(root: Path) -> list[Frame]:
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    # Read at send time: a mounted folder of thousands of frames costs no memory up front.
    return [Frame(str(p.relative_to(root)), _label_for(str(p.relative_to(root))), load=p.read_bytes) for p in files]


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/prefix/` -> (bucket, prefix).

    Raises:
        CameraSourceError: When the URI has no bucket.
    """
    rest = uri[len("s3://") :]
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise CameraSourceError(f"camera source {uri}: expected s3://bucket/prefix/")
    return bucket, prefix


def s3_frames(s3: Any, uri: str) -> list[Frame]:
    """Frames of every image object under an S3 prefix (listed now, read when sent).

    Args:
        s3: A boto3 S3 client.
        uri: `s3://bucket/prefix/`.

    Raises:
        CameraSourceError: When the prefix holds no image.
    """
    bucket, prefix = parse_s3_uri(uri)
    frames = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            key = obj["Key"]
            if Path(key).suffix.lower() in IMAGE_SUFFIXES and not key.endswith("/"):
                name = key[len(prefix) :].lstrip("/") or Path(key).name
                frames.append(Frame(name, _label_for(name), load=_s3_loader(s3, bucket, key)))
    if not frames:
        raise CameraSourceError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {uri}")
    return sorted(frames, key=lambda f: f.name)


def _s3_loader(s3: Any, bucket: str, key: str) -> Callable[[], bytes]:
    return lambda: s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def _archive_frames(path: Path) -> list[Frame]:
    frames = []
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            for info in sorted(zf.infolist(), key=lambda i: i.filename):
                if not info.is_dir() and Path(info.filename).suffix.lower() in IMAGE_SUFFIXES:
                    frames.append(Frame(info.filename, _label_for(info.filename), zf.read(info)))
        return frames
    if tarfile.is_tarfile(path):
        with tarfile.open(path) as tf:
            for member in sorted(tf.getmembers(), key=lambda m: m.name):
                if member.isfile() and Path(member.name).suffix.lower() in IMAGE_SUFFIXES:
                    fh = tf.extractfile(member)
                    if fh is not None:
                        frames.append(Frame(member.name, _label_for(member.name), fh.read()))
        return frames
    raise CameraSourceError(f"{path} is neither a zip nor a tar archive")


def synthetic_frame(rng: np.random.Generator, size: int = 320) -> tuple[np.ndarray, str]:
    """A synthetic metal nut, the same renderer the training data comes from.

    Returns:
        (RGB uint8 image, label) with label `good`, `scratch` or `bent` (40/30/30 %).
    """
    label = str(rng.choice(["good", "scratch", "bent"], p=[0.4, 0.3, 0.3]))
    img, _boxes = render_nut(rng, size, label)
    return np.asarray(img, dtype=np.uint8), label


def load_frames(source: str | Path, *, synthetic_count: int = 16, seed: int = 0, s3: Any = None) -> list[Frame]:
    """List the frames of a source.

    Args:
        source: `s3://bucket/prefix/`, a folder (searched recursively; a mounted volume on
            the cluster), a zip/tar archive, or `synthetic` (`synthetic:N` for N frames).
        synthetic_count: Frames to generate for `synthetic` without a count.
        seed: Seed of the synthetic generator.
        s3: A boto3 S3 client, needed for an `s3://` source.

    Raises:
        CameraSourceError: When the source holds no image, or an `s3://` source has no client.
    """
    text = str(source)
    if text.startswith("s3://"):
        if s3 is None:
            raise CameraSourceError(f"camera source {text}: an S3 client is needed (AWS_* settings)")
        return s3_frames(s3, text)
    if text.startswith("synthetic"):
        count = int(text.split(":", 1)[1]) if ":" in text else synthetic_count
        rng = np.random.default_rng(seed)
        frames = []
        for i in range(count):
            img, label = synthetic_frame(rng)
            frames.append(Frame(f"synthetic_{i:04d}.jpg", label, encode_jpeg(img)))
        return frames
    path = Path(source)
    if path.is_dir():
        frames = _folder_frames(path)
    elif path.is_file():
        frames = _archive_frames(path)
    else:
        raise CameraSourceError(f"camera source {path} does not exist (folder, archive or 'synthetic')")
    if not frames:
        raise CameraSourceError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {path}")
    return frames


def encode_jpeg(
    img: np.ndarray | bytes, quality: int = 90, scale: float = 1.0, max_pixels: int | None = None, what: str = "image"
) -> bytes:
    """Encode to RGB JPEG (decoding first when given encoded bytes; alpha is dropped).

    Raises:
        ImageTooLarge: Encoded bytes whose header is unreadable or over `max_pixels`
            (default `serving.imagelimits.DEFAULT_MAX_PIXELS`); checked before decoding.
    """
    if isinstance(img, (bytes, bytearray)):
        check_image_header(bytes(img), max_pixels, what)
    pil = Image.open(io.BytesIO(img)) if isinstance(img, (bytes, bytearray)) else Image.fromarray(img)
    pil = pil.convert("RGB")  # explicit RGB: the JPEG carries RGB, never BGR
    if scale != 1.0:
        pil = pil.resize(
            (max(1, round(pil.width * scale)), max(1, round(pil.height * scale))), Image.Resampling.BILINEAR
        )
    buf = io.BytesIO()
    pil.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def frame_stream(frames: list[Frame], *, loop: bool, shuffle: bool, seed: int = 0) -> Iterator[Frame]:
    """Frames in order (or shuffled each pass), once or forever."""
    rng = random.Random(seed)
    passes = itertools.count() if loop else range(1)
    for _ in passes:
        order = list(frames)
        if shuffle:
            rng.shuffle(order)
        yield from order


def produce_frames(
    producer: Any,
    topic: str,
    frames: Iterator[Frame],
    *,
    cameras: int = 1,
    fps: float = 1.0,
    count: int | None = None,
    legacy: bool = False,
    quality: int = 90,
    scale: float = 1.0,
    source: str = "/vinspect/camera",
    camera_prefix: str = "camera-",
    on_sent: Callable[[str, str], None] | None = None,
    stop: Callable[[], bool] | None = None,
    max_pixels: int | None = None,
    max_record_bytes: int | None = None,
) -> int:
    """Send frames to Kafka, `cameras` of them in round robin, each at `fps`.

    Args:
        producer: A `confluent_kafka.Producer`.
        topic: Target topic.
        frames: Frame iterator (see `frame_stream`).
        cameras: Number of simulated cameras.
        fps: Frames per second per camera (0 = as fast as possible).
        count: Stop after this many frames in total.
        legacy: Produce the original demo's JSON record instead of a CloudEvent.
        quality / scale: JPEG quality and resize factor.
        source: CloudEvents `source`.
        camera_prefix: Camera ids are `<prefix><n>`.
        on_sent: Called with (event id, camera id) after each produce call.
        stop: Polled between frames; True ends the stream.
        max_pixels: Pixel limit checked on each frame's header before decoding; a frame
            over it (or unreadable) is skipped with a warning, the stream goes on.
        max_record_bytes: Largest Kafka record (key, value and headers) to produce, normally
            `VINSPECT_MAX_IMAGE_BYTES` (the topic's `max.message.bytes` on the cluster); a frame
            over it is skipped with a warning, since the broker would refuse it and the refusal
            would only surface at the final flush.

    Returns:
        Number of frames produced (all delivered: the producer is flushed).
    """
    errors: list[str] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(str(err))

    sent = 0
    interval = 1.0 / fps if fps > 0 else 0.0
    next_tick = time.monotonic()
    skipped = 0
    for frame in frames:
        if (count is not None and sent >= count) or (stop and stop()):
            break
        i = sent
        camera_id = f"{camera_prefix}{i % cameras}"
        try:
            jpeg = encode_jpeg(frame.data, quality, scale, max_pixels, frame.name)
        except ImageTooLarge as exc:
            skipped += 1
            log.warning("skipping frame: %s", exc)
            if skipped > 1000 and sent == 0:
                raise CameraSourceError(f"no usable frame in the first {skipped} ({exc})") from None
            continue
        if legacy:
            import json

            record = legacy_record(jpeg, camera_id, frame.label)
            key, value, headers, event_id = camera_id.encode(), json.dumps(record).encode(), [], ""
        else:
            event = image_event(jpeg, camera_id, source=source, label=frame.label)
            key, value, headers = to_kafka(event)
            event_id = event["id"]
        size = len(key or b"") + len(value) + sum(len(k) + len(v or b"") for k, v in headers)
        if max_record_bytes is not None and size > max_record_bytes:
            skipped += 1
            log.warning(
                "skipping frame %s: record of %d bytes is over the limit of %d (VINSPECT_MAX_IMAGE_BYTES)",
                frame.name,
                size,
                max_record_bytes,
            )
            if skipped > 1000 and sent == 0:
                raise CameraSourceError(
                    f"no usable frame in the first {skipped} (records over {max_record_bytes} bytes)"
                )
            continue
        while True:
            try:
                producer.produce(topic, value=value, key=key, headers=headers, on_delivery=on_delivery)
                break
            except BufferError:  # local queue full: let deliveries drain
                producer.poll(0.1)
        producer.poll(0)
        sent += 1
        if on_sent:
            on_sent(event_id, camera_id)
        if interval and (i + 1) % cameras == 0:
            next_tick += interval
            delay = next_tick - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    remaining = producer.flush(30)
    if remaining or errors:
        raise CameraDeliveryError(f"{remaining} frames undelivered, errors: {errors[:3]}")
    return sent
