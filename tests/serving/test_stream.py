"""The whole runtime loop on real local services.

camera -> tansu (Kafka protocol) -> processor (`vinspect serve processor`) -> model server
(`vinspect serve model`) -> results topic -> dashboard (`vinspect serve dashboard`) ->
headless Chromium. Every service is a real child process started and stopped here.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import httpx
import pytest

from serving.camera import frame_stream, load_frames, produce_frames

from .conftest import PYTHON, free_port, wait_http

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _topics(bootstrap: str, prefix: str) -> dict[str, str]:
    from confluent_kafka.admin import AdminClient, NewTopic

    names = {
        "VINSPECT_IMAGES_TOPIC": f"{prefix}-images",
        "VINSPECT_RESULTS_TOPIC": f"{prefix}-results",
        "VINSPECT_DLQ_TOPIC": f"{prefix}-dlq",
    }
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [
            NewTopic(name, num_partitions=2 if key == "VINSPECT_IMAGES_TOPIC" else 1, replication_factor=1)
            for key, name in names.items()
        ]
    )
    for fut in futures.values():
        fut.result(timeout=15)
    return names


def _producer(bootstrap: str):
    from confluent_kafka import Producer

    return Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})


def _collect(bootstrap: str, topic: str, want: int, timeout: float, key=None, until=None) -> list:
    """Read `topic` from the start until `want` distinct items (by `key`), `until(keys)` or timeout."""
    from confluent_kafka import Consumer

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
        }
    )
    consumer.subscribe([topic])
    seen: dict = {}
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and len(seen) < want:
            if until is not None and until(set(seen)):
                break
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            item = (msg.key(), msg.value(), dict(msg.headers() or []))
            seen.setdefault(key(item) if key else (msg.partition(), msg.offset()), item)
    finally:
        consumer.close()
    return list(seen.values())


def _result_image_id(item) -> str:
    import json

    return json.loads(item[1])["image_id"]


def _send(bootstrap: str, topic: str, frames, count: int, cameras: int, fps: float = 0) -> list[str]:
    ids: list[str] = []
    produce_frames(
        _producer(bootstrap),
        topic,
        frame_stream(frames, loop=True, shuffle=False),
        cameras=cameras,
        fps=fps,
        count=count,
        on_sent=lambda eid, _cam: ids.append(eid),
    )
    return ids


@pytest.fixture(scope="module")
def frames(request):
    """Real metal-nut images when ../shared is there, else synthetic ones."""
    from tests.conftest import SHARED

    folder = SHARED / "data" / "metal_nut" / "yolo_1.1" / "obj_train_data"
    source = folder if folder.is_dir() else "synthetic:12"
    return load_frames(source)[:12]


class Runtime:
    """Model server + processor (+ dashboard) as child processes on one set of topics."""

    def __init__(self, start_proc, local_stack, onnx_model: Path, prefix: str):
        self.start_proc = start_proc
        self.onnx_model = onnx_model
        self.bootstrap = local_stack.kafka_bootstrap
        self.topics = _topics(self.bootstrap, prefix)
        self.model_port = free_port()
        self.health_port = free_port()
        self.metrics_port = free_port()
        self.env = {
            **local_stack.env,
            **self.topics,
            "VINSPECT_HOME": str(local_stack.config.state),
            "VINSPECT_MODEL_URL": f"http://127.0.0.1:{self.model_port}",
            "VINSPECT_MODEL_NAME": "metal-nut",
            "VINSPECT_MODEL_TIMEOUT_S": "5",
            "VINSPECT_KAFKA_GROUP": f"{prefix}-processor",
            "OMP_NUM_THREADS": "1",
        }
        self.model = None
        self.processor = None

    def start_model(self):
        self.model = self.start_proc(
            [
                PYTHON,
                "-m",
                "vinspect",
                "serve",
                "model",
                "--uri",
                str(self.onnx_model),
                "--name",
                "metal-nut",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.model_port),
                "--threads",
                "1",
                "--log-level",
                "warning",
            ],
            "model",
            self.env,
        )
        wait_http(
            f"http://127.0.0.1:{self.model_port}/v2/models/metal-nut/ready",
            60,
            proc=self.model,
            token=self.env.get("VINSPECT_MODEL_TOKEN"),
        )
        return self.model

    def start_processor(self):
        self.processor = self.start_proc(
            [
                PYTHON,
                "-m",
                "vinspect",
                "serve",
                "processor",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.health_port),
                "--metrics-port",
                str(self.metrics_port),
                "--concurrency",
                "4",
                "--log-level",
                "warning",
            ],
            "processor",
            self.env,
        )
        wait_http(f"http://127.0.0.1:{self.health_port}/healthz", 60, proc=self.processor)
        return self.processor

    def start_dashboard(self) -> str:
        port = free_port()
        proc = self.start_proc(
            [
                PYTHON,
                "-m",
                "vinspect",
                "serve",
                "dashboard",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--from-beginning",
                "--log-level",
                "warning",
            ],
            "dashboard",
            self.env,
        )
        wait_http(f"http://127.0.0.1:{port}/healthz", 60, proc=proc)
        return f"http://127.0.0.1:{port}"

    def metric(self, name: str) -> float:
        text = httpx.get(f"http://127.0.0.1:{self.health_port}/metrics").text
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and not line.startswith("#"):
                total += float(line.rsplit(" ", 1)[1])
        return total


@pytest.fixture
def runtime(tmp_path_factory, local_stack, onnx_model):
    """A model server + processor + dashboard on fresh topics, for one test.

    Not shared between tests: the loop test counts every result on its topics and the dashboard's
    totals, so a poison test that ran first on the same topics (random order) made it fail.
    """
    from .conftest import Proc

    procs: list[Proc] = []
    logs = tmp_path_factory.mktemp("runtime-logs")

    def start(args, name, env=None):
        proc = Proc(args, logs / f"{name}.log", env)
        procs.append(proc)
        return proc

    rt = Runtime(start, local_stack, onnx_model, f"loop-{uuid.uuid4().hex[:6]}")
    rt.start_model()
    rt.start_processor()
    rt.dashboard_url = rt.start_dashboard()
    yield rt
    for proc in reversed(procs):
        proc.stop()


def test_whole_loop_n_in_n_out_and_the_page_shows_them(runtime, frames):
    n, cameras = 12, 3
    ids = _send(runtime.bootstrap, runtime.topics["VINSPECT_IMAGES_TOPIC"], frames, n, cameras)
    results = _collect(runtime.bootstrap, runtime.topics["VINSPECT_RESULTS_TOPIC"], n, 90, key=_result_image_id)
    got = {_result_image_id(r) for r in results}
    assert got == set(ids), f"missing {set(ids) - got}; processor log:\n{runtime.processor.output()}"
    for key, value, headers in results:
        assert headers["ce_type"] == b"io.vinspect.inspection.result"
        assert headers["content-type"] == b"application/json"
        assert key in {f"camera-{i}".encode() for i in range(cameras)}
    # The feedback loop's metrics, per camera, on the separate metrics port (the PodMonitor's).
    scraped = httpx.get(f"http://127.0.0.1:{runtime.metrics_port}/metrics").text
    per_camera = {
        line.split('"')[1]: float(line.rsplit(" ", 1)[1])
        for line in scraped.splitlines()
        if line.startswith("vinspect_images_total{")
    }
    assert set(per_camera) >= {f"camera-{i}" for i in range(cameras)}
    assert sum(per_camera[f"camera-{i}"] for i in range(cameras)) >= n
    assert "vinspect_processor_events_total" in scraped  # the adapter's metrics come along

    if not CHROMIUM.exists():
        pytest.skip("Debian chromium not installed at /usr/bin/chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(runtime.dashboard_url + "/")
            page.wait_for_selector(f'#totals[data-total="{n}"]', timeout=30000)
            assert page.locator("section.camera").count() == cameras
            for i in range(cameras):
                card = page.locator(f'section.camera[data-camera="camera-{i}"]')
                assert card.locator(".verdict").inner_text() in ("PASS", "FAIL")
                assert card.locator(".model").inner_text() == "metal-nut v1"
                assert card.locator(".latency").inner_text().endswith(" ms")
                assert card.locator(".counts").inner_text().startswith(f"{n // cameras} seen")
                assert card.evaluate(
                    "c => c.querySelector('img.picture').complete && c.querySelector('img.picture').naturalWidth > 0"
                )
                assert card.get_attribute("data-image-id") in set(ids)
            assert page.locator("#status").get_attribute("data-state") == "live"
            assert not errors
        finally:
            browser.close()


def test_poison_goes_to_dlq_and_the_loop_goes_on(runtime, frames):
    topic = runtime.topics["VINSPECT_IMAGES_TOPIC"]
    producer = _producer(runtime.bootstrap)
    # A CloudEvent whose JPEG is garbage, and a legacy-style JSON record without an image.
    producer.produce(
        topic,
        key=b"camera-x",
        value=b"\xff\xd8 not really a jpeg",
        headers=[
            ("ce_specversion", b"1.0"),
            ("ce_id", b"poison-1"),
            ("ce_source", b"/test"),
            ("ce_type", b"io.vinspect.image.captured"),
            ("ce_time", b"2026-01-01T00:00:00Z"),
            ("content-type", b"image/jpeg"),
        ],
    )
    producer.produce(topic, key=b"camera-y", value=b'{"id": "camera-y", "type": "image"}')
    producer.flush(10)
    del producer
    ids = _send(runtime.bootstrap, topic, frames, 4, 1)

    dlq = _collect(runtime.bootstrap, runtime.topics["VINSPECT_DLQ_TOPIC"], 2, 60)
    assert len(dlq) == 2
    reasons = sorted(h["dlq_reason"].decode() for _, _, h in dlq)
    assert any("cannot read image header" in r for r in reasons), reasons
    assert any("no 'image' field" in r for r in reasons), reasons
    poisoned = next(item for item in dlq if item[0] == b"camera-x")
    assert poisoned[1] == b"\xff\xd8 not really a jpeg"  # the original record, untouched
    assert poisoned[2]["ce_id"] == b"poison-1" and poisoned[2]["dlq_source_topic"] == topic.encode()

    results = _collect(
        runtime.bootstrap,
        runtime.topics["VINSPECT_RESULTS_TOPIC"],
        10_000,
        60,
        key=_result_image_id,
        until=lambda seen: set(ids) <= seen,
    )
    assert set(ids) <= {_result_image_id(r) for r in results}
    assert runtime.metric('vinspect_processor_events_total{outcome="dlq"}') == 2
    assert httpx.get(f"http://127.0.0.1:{runtime.health_port}/readyz").status_code == 200


def test_runtime_processes_stay_lean(runtime):
    """Issue target: under 500 MB peak each (no torch, no Ultralytics in the process)."""
    for proc in (runtime.processor, runtime.model):
        status = Path(f"/proc/{proc.pid}/status").read_text()
        peak_kb = int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1])
        assert peak_kb < 500 * 1024, f"{proc.args[3:5]} peaked at {peak_kb // 1024} MB"
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
        assert "libtorch" not in maps and "/torch/" not in maps


def test_model_server_killed_mid_stream_nothing_lost(start_proc, local_stack, onnx_model, frames):
    rt = Runtime(start_proc, local_stack, onnx_model, f"kill-{uuid.uuid4().hex[:6]}")
    model = rt.start_model()
    rt.start_processor()
    n = 24
    results_topic = rt.topics["VINSPECT_RESULTS_TOPIC"]

    import threading

    ids: list[str] = []
    sender = threading.Thread(
        target=lambda: ids.extend(_send(rt.bootstrap, rt.topics["VINSPECT_IMAGES_TOPIC"], frames, n, 2, fps=2))
    )
    sender.start()
    # Let part of the stream through, then crash the model server.
    first = _collect(rt.bootstrap, results_topic, 4, 30)
    assert len(first) >= 4, rt.processor.output()
    model.kill()
    time.sleep(3)
    assert rt.metric("vinspect_processor_model_retries_total") > 0, rt.processor.output()
    assert httpx.get(f"http://127.0.0.1:{rt.health_port}/readyz").status_code == 503
    rt.start_model()  # same port, as a restarted pod behind its Service would be
    sender.join(timeout=60)
    assert len(ids) == n
    results = _collect(rt.bootstrap, results_topic, n, 90, key=_result_image_id)
    got = {_result_image_id(r) for r in results}
    assert got == set(ids), f"lost {set(ids) - got}; processor log:\n{rt.processor.output()}"
    assert rt.metric('vinspect_processor_events_total{outcome="dlq"}') == 0


def test_processor_killed_mid_stream_redelivers(start_proc, local_stack, onnx_model, frames):
    """Commit after processing: a crashed processor's uncommitted records are re-processed."""
    rt = Runtime(start_proc, local_stack, onnx_model, f"crash-{uuid.uuid4().hex[:6]}")
    rt.start_model()
    processor = rt.start_processor()
    n = 16
    results_topic = rt.topics["VINSPECT_RESULTS_TOPIC"]

    import threading

    ids: list[str] = []
    sender = threading.Thread(
        target=lambda: ids.extend(_send(rt.bootstrap, rt.topics["VINSPECT_IMAGES_TOPIC"], frames, n, 2, fps=2))
    )
    sender.start()
    assert len(_collect(rt.bootstrap, results_topic, 3, 30)) >= 3, processor.output()
    processor.kill()
    sender.join(timeout=60)
    rt.start_processor()  # same consumer group: resumes from the last commit
    results = _collect(rt.bootstrap, results_topic, n, 90, key=_result_image_id)
    got = {_result_image_id(r) for r in results}
    assert got == set(ids), f"lost {set(ids) - got}"
