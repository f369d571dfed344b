"""Retraining on drift: the receiver over real HTTP, its decisions, and the shipped Trigger (off by default)."""

from __future__ import annotations

import httpx
import pytest

from serving.notify import Notifier
from vinspect.retrain import DRIFT_EVENT, RetrainOnDrift, serve


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


@pytest.fixture
def receiver():
    submitted: list[dict] = []
    clock = Clock()
    decider = RetrainOnDrift(
        lambda a: submitted.append(a) or f"run-{len(submitted)}", {"cvat_project_id": 3}, cooldown_s=3600, clock=clock
    )
    server = serve(decider, 0, "127.0.0.1")
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        yield url, decider, submitted, clock
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_a_drift_event_submits_one_data_aware_run_per_cooldown(receiver, mode):
    url, decider, submitted, clock = receiver
    n = Notifier(url, mode=mode)
    assert n.drift_detected("metal-nut", 4, "cam-1", {"brightness": {"psi": 0.35, "ks": 0.4}}, threshold=0.2)
    assert submitted == [{"skip_if_unchanged": True, "cvat_project_id": 3}]
    assert n.drift_detected("metal-nut", 4, "cam-2", {"brightness": {"psi": 0.5}}, threshold=0.2)
    assert len(submitted) == 1  # inside the cooldown: acknowledged, no second run
    clock.t += 3601
    assert n.drift_detected("metal-nut", 4, "cam-2", {"brightness": {"psi": 0.5}}, threshold=0.2)
    assert len(submitted) == 2 and decider.runs == ["run-1", "run-2"]


def test_other_events_and_small_drift_are_acknowledged_without_a_run(receiver):
    url, _, submitted, _ = receiver
    assert Notifier(url).promoted("metal-nut", 5)
    assert Notifier(url).drift_detected("metal-nut", 5, "c", {"contrast": {"psi": 0.05}}, threshold=0.2)
    assert submitted == []


def test_not_a_cloudevent_is_400_and_a_failed_submit_is_503():
    def refuse(_args):
        raise RuntimeError("pipelines server down")

    server = serve(RetrainOnDrift(refuse), 0, "127.0.0.1")
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        assert httpx.post(url, content=b"hello", headers={"content-type": "text/plain"}).status_code == 400
        event = Notifier(url).event(DRIFT_EVENT, {"signals": {"brightness": {"psi": 0.9}}})
        from cloudevents.v1.conversion import to_binary

        headers, body = to_binary(event)
        assert httpx.post(url, headers=headers, content=body).status_code == 503
        assert httpx.get(url + "healthz").status_code == 200
    finally:
        server.shutdown()
        server.server_close()


def test_cli_refuses_unknown_pipeline_arguments():
    from typer.testing import CliRunner

    from vinspect.cli import app

    def text(result) -> str:  # the error panel wraps lines and draws borders
        return " ".join(result.output.replace("│", " ").split())

    r = CliRunner().invoke(app, ["retrain", "serve", "--args", '{"epoch": 3}'])
    assert r.exit_code == 2 and "unknown pipeline parameter(s) ['epoch']" in text(r)
    r = CliRunner().invoke(app, ["retrain", "serve", "--args", "[1]"])
    assert r.exit_code == 2 and "not a JSON object" in text(r)
