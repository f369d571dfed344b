"""Camera simulator sources and records (folder, archive, synthetic; CloudEvent and legacy JSON)."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import tarfile
import time
import uuid
import zipfile

import pytest
from PIL import Image

from serving.camera import encode_jpeg, frame_stream, load_frames, produce_frames
from serving.imagelimits import ImageTooLarge
from serving.images import decode_image

from .conftest import PYTHON, REPO


def _png(color=(200, 30, 30), size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def test_folder_archive_and_synthetic_sources(tmp_path):
    folder = tmp_path / "imgs"
    (folder / "bent").mkdir(parents=True)
    (folder / "bent" / "005.png").write_bytes(_png())
    (folder / "scratch_001.png").write_bytes(_png())
    (folder / "notes.txt").write_text("not an image")
    frames = load_frames(folder)
    assert [(f.name, f.label) for f in frames] == [("bent/005.png", "bent"), ("scratch_001.png", "scratch")]

    with zipfile.ZipFile(tmp_path / "a.zip", "w") as zf:
        zf.writestr("good/1.png", _png())
    assert [(f.name, f.label) for f in load_frames(tmp_path / "a.zip")] == [("good/1.png", "good")]
    with tarfile.open(tmp_path / "a.tar.gz", "w:gz") as tf:
        info = tarfile.TarInfo("x/bent_002.png")
        data = _png()
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    assert [f.label for f in load_frames(tmp_path / "a.tar.gz")] == ["bent"]

    synth = load_frames("synthetic:5", seed=3)
    assert len(synth) == 5 and {f.label for f in synth} <= {"good", "scratch", "bent"}
    assert decode_image(synth[0].data).shape == (320, 320, 3)
    assert [f.data for f in load_frames("synthetic:5", seed=3)] == [f.data for f in synth]

    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        load_frames(tmp_path / "empty")
    with pytest.raises(ValueError, match="does not exist"):
        load_frames(tmp_path / "missing")


def test_jpeg_is_rgb_and_scaled():
    rgba = Image.new("RGBA", (40, 30), (220, 20, 20, 128))
    buf = io.BytesIO()
    rgba.save(buf, format="PNG")
    jpeg = encode_jpeg(buf.getvalue(), quality=95, scale=0.5)
    img = decode_image(jpeg)
    assert img.shape == (15, 20, 3)
    r, g, b = img[7, 10].tolist()
    assert r > 180 and g < 60 and b < 60  # red stays red: no BGR swap anywhere


def test_frame_stream_loops_and_shuffles():
    frames = load_frames("synthetic:3")
    assert len(list(frame_stream(frames, loop=False, shuffle=False))) == 3
    looped = frame_stream(frames, loop=True, shuffle=True, seed=1)
    assert len([next(looped) for _ in range(7)]) == 7


def _consume(bootstrap: str, topic: str, n: int, timeout: float = 30) -> list:
    from confluent_kafka import Consumer

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"t-{uuid.uuid4().hex[:6]}",
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
        }
    )
    consumer.subscribe([topic])
    out, deadline = [], time.monotonic() + timeout
    try:
        while len(out) < n and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error():
                out.append(msg)
    finally:
        consumer.close()
    return out


def test_legacy_records_to_kafka(local_stack):
    from confluent_kafka import Producer

    topic = f"legacy-{uuid.uuid4().hex[:6]}"
    sent = produce_frames(
        Producer({"bootstrap.servers": local_stack.kafka_bootstrap}),
        topic,
        iter(load_frames("synthetic:4")),
        cameras=2,
        fps=0,
        legacy=True,
    )
    assert sent == 4
    messages = _consume(local_stack.kafka_bootstrap, topic, 4)
    assert len(messages) == 4
    for msg in messages:
        assert not msg.headers()  # the original demo's records carry no CloudEvents headers
        record = json.loads(msg.value())
        assert set(record) == {"image", "id", "type", "time", "text", "label"}
        assert record["type"] == "image" and msg.key().decode() == record["id"]
        assert record["image"].startswith("data:image/jpeg;base64,")
        jpeg = base64.b64decode(record["image"].split(",", 1)[1])
        assert decode_image(jpeg).shape == (320, 320, 3)
    assert sorted({m.key() for m in messages}) == [b"camera-0", b"camera-1"]


def test_cli_camera_produces_cloudevents(local_stack):
    topic = f"cli-{uuid.uuid4().hex[:6]}"
    env = {**local_stack.env, "VINSPECT_IMAGES_TOPIC": topic, "VINSPECT_HOME": str(local_stack.config.state)}
    proc = subprocess.run(
        [PYTHON, "-m", "vinspect", "serve", "camera", "synthetic:3", "--cameras", "3", "--fps", "20"],
        cwd=REPO,
        env={**__import__("os").environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "sent 3 frames from 3 camera(s)" in proc.stdout
    messages = _consume(local_stack.kafka_bootstrap, topic, 3)
    assert sorted(m.key() for m in messages) == [b"camera-0", b"camera-1", b"camera-2"]
    for msg in messages:
        headers = dict(msg.headers())
        assert headers["content-type"] == b"image/jpeg"
        assert headers["ce_type"] == b"io.vinspect.image.captured"
        assert headers["ce_subject"] == msg.key()
        assert {"ce_specversion", "ce_id", "ce_source", "ce_time"} <= set(headers)
        assert decode_image(msg.value()).shape == (320, 320, 3)


def _png_of(w: int, h: int, value: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (value, value, value)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def test_frames_from_an_s3_prefix_are_read_lazily(local_stack):
    """Issue 13: the cluster camera streams real frames from S3, listed now, read when sent."""
    s3 = local_stack.s3
    bucket, prefix = "vinspect-data", f"camera-{uuid.uuid4().hex[:6]}/frames"
    for name in ("bent_001.png", "good_002.png", "scratch/003.png", "notes.txt"):
        body = b"not an image" if name.endswith(".txt") else _png_of(40, 30)
        s3.put_object(Bucket=bucket, Key=f"{prefix}/{name}", Body=body)
    calls = []
    real_get = s3.get_object

    class Counting:
        def __getattr__(self, name):
            return getattr(s3, name)

        def get_object(self, **kw):
            calls.append(kw["Key"])
            return real_get(**kw)

    frames = load_frames(f"s3://{bucket}/{prefix}/", s3=Counting())
    assert [(f.name, f.label) for f in frames] == [
        ("bent_001.png", "bent"),
        ("good_002.png", "good"),
        ("scratch/003.png", "scratch"),
    ]
    assert calls == []  # nothing read yet
    assert decode_image(encode_jpeg(frames[0].data)).shape == (30, 40, 3)
    assert calls == [f"{prefix}/bent_001.png"]
    with pytest.raises(ValueError, match="no images"):
        load_frames(f"s3://{bucket}/{prefix}-empty/", s3=s3)
    with pytest.raises(ValueError, match="S3 client"):
        load_frames(f"s3://{bucket}/{prefix}/")


def test_camera_skips_a_decompression_bomb_and_goes_on(local_stack, tmp_path):
    from confluent_kafka import Producer

    (tmp_path / "a_bomb.png").write_bytes(_png_of(12000, 12000, 0))
    (tmp_path / "b_good.png").write_bytes(_png_of(40, 30))
    frames = load_frames(tmp_path)
    topic = f"bomb-{uuid.uuid4().hex[:6]}"
    sent = produce_frames(Producer({"bootstrap.servers": local_stack.kafka_bootstrap}), topic, iter(frames), fps=0)
    assert sent == 1
    (msg,) = _consume(local_stack.kafka_bootstrap, topic, 1)
    assert decode_image(msg.value()).shape == (30, 40, 3)
    with pytest.raises(ImageTooLarge, match="a_bomb.png: 12000x12000"):
        encode_jpeg(frames[0].data, what="a_bomb.png")


def test_cli_camera_streams_from_s3(local_stack):
    s3 = local_stack.s3
    prefix = f"cli-frames-{uuid.uuid4().hex[:6]}"
    for i in range(2):
        s3.put_object(Bucket="vinspect-data", Key=f"{prefix}/good_{i}.png", Body=_png_of(40, 30))
    topic = f"cli-s3-{uuid.uuid4().hex[:6]}"
    env = {**local_stack.env, "VINSPECT_IMAGES_TOPIC": topic, "VINSPECT_HOME": str(local_stack.config.state)}
    proc = subprocess.run(
        [PYTHON, "-m", "vinspect", "serve", "camera", "--source", f"s3://vinspect-data/{prefix}/", "--fps", "0"],
        cwd=REPO,
        env={**__import__("os").environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "sent 2 frames from 1 camera(s)" in proc.stdout
    messages = _consume(local_stack.kafka_bootstrap, topic, 2)
    assert sorted(dict(m.headers())["ce_label"] for m in messages) == [b"good", b"good"]
