"""The processor's assembly (serving.processor.app): settings -> clients -> core -> adapter."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
from cloudevents.v1.conversion import to_binary
from PIL import Image

from serving.events import RESULT_EVENT_TYPE, image_event
from serving.processor.app import ProcessorOptions, assemble
from serving.processor.inspector import ProcessorConfigError

from .conftest import PYTHON, free_port, wait_http

NO_S3 = {"AWS_S3_ENDPOINT": "", "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""}


def _options(**changes) -> ProcessorOptions:
    fields = dict(
        mode="http",
        host="127.0.0.1",
        port=0,
        concurrency=2,
        conf=0.2,
        iou=0.4,
        annotate=True,
        result_format=None,
        group=None,
        loop=False,
        metrics_port=None,
        log_level="warning",
    )
    fields.update(changes)
    return ProcessorOptions(**fields)


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((120, 160, 3), 90, np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def test_assembly_reads_the_environment_and_says_what_it_built(monkeypatch, model_server):
    for name, value in NO_S3.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("VINSPECT_MODEL_URL", model_server.url)
    monkeypatch.setenv("VINSPECT_RESULT_FORMAT", "manuela")
    monkeypatch.setenv("VINSPECT_MAX_IMAGE_PIXELS", "12345")
    lines: list[str] = []
    processor = assemble(_options(conf=0.3), echo=lines.append)
    try:
        config = processor.inspector.config
        assert (config.conf, config.iou, config.result_format, config.max_pixels) == (0.3, 0.4, "manuela", 12345)
        assert processor.store is None and processor.hooks is None  # no S3, --no-loop
        assert processor.inspector.metrics is processor.metrics
        assert processor.inspector.ready()
        assert lines == []  # manuela replies carry their image inline: no S3 to mention
    finally:
        processor.close()
    monkeypatch.setenv("VINSPECT_RESULT_FORMAT", "vinspect")
    processor = assemble(_options(), echo=lines.append)
    processor.close()
    assert lines == ["no S3 settings (AWS_S3_ENDPOINT / AWS_ACCESS_KEY_ID): results carry no annotated image"]


@pytest.mark.parametrize(
    ("changes", "env", "message"),
    [
        ({"mode": "grpc"}, {}, "--mode must be `kafka` or `http`"),
        ({}, {"VINSPECT_RESULT_FORMAT": "other"}, "--result-format / VINSPECT_RESULT_FORMAT: result_format 'other'"),
    ],
)
def test_bad_options_are_refused_before_anything_starts(monkeypatch, changes, env, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ProcessorConfigError, match=message):
        assemble(_options(**changes), echo=lambda _line: None)


def test_http_mode_from_the_command_line_answers_an_event(start_proc, model_server):
    """`vinspect serve processor --mode http`: the Knative adapter, assembled from the environment."""
    port = free_port()
    token = "processor-app-test-token"
    env = {**NO_S3, "VINSPECT_MODEL_URL": model_server.url, "VINSPECT_PROCESSOR_TOKEN": token}
    args = ["serve", "processor", "--mode", "http", "--host", "127.0.0.1", "--port", str(port), "--no-loop"]
    proc = start_proc([PYTHON, "-m", "vinspect", *args, "--log-level", "warning"], "processor-http", env)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/readyz", 60, proc=proc)
    headers, body = to_binary(image_event(_jpeg(), "camera-7", event_id="app-1"))
    assert httpx.post(url + "/", content=body, headers=headers, timeout=30).status_code == 401
    reply = httpx.post(url + "/", content=body, headers={**headers, "Authorization": f"Bearer {token}"}, timeout=30)
    assert reply.status_code == 200, reply.text
    assert reply.headers["ce-type"] == RESULT_EVENT_TYPE and reply.headers["ce-id"] == "result-app-1"
    data = reply.json()
    assert data["camera"] == "camera-7" and data["annotated_image_status"] == "disabled: no image store configured"
    assert "vinspect_processor_events_total" in httpx.get(url + "/metrics", timeout=10).text
    proc.stop()
    assert "processor (http) -> " in proc.output()
