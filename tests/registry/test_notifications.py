"""``vinspect model promote|rollback`` emit ``io.vinspect.model.*`` notifications (issue 15).

A loopback webhook receives them (structured CloudEvents); the registry and the model server are
the local stack's real ones.
"""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from serving.notify import PROMOTED, ROLLED_BACK
from tests.loop.test_notify import Receiver
from vinspect.cli import app

runner = CliRunner()


@pytest.fixture
def webhook(local_stack, monkeypatch):
    local_stack.apply_env(monkeypatch)
    receiver = Receiver()
    monkeypatch.setenv("VINSPECT_NOTIFY_URL", receiver.url)
    monkeypatch.setenv("VINSPECT_NOTIFY_MODE", "structured")
    try:
        yield receiver
    finally:
        receiver.stop()


def _run(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def _seen(webhook, name: str) -> list[tuple[str, dict]]:
    return [(e["type"], e.get_data()) for e in webhook.events() if e.get_data().get("model") == name]


def test_alias_promote_and_rollback_notify(webhook, cheap_versions, model_name):
    cheap_versions(model_name, 2)
    _run("model", "promote", "1", "--model", model_name)
    _run("model", "promote", "2", "--model", model_name)
    _run("model", "promote", "2", "--model", model_name)  # already the champion: nothing happened, no event
    _run("model", "rollback", "--model", model_name)
    seen = _seen(webhook, model_name)
    assert [(t, d["version"], d.get("previous_version", d.get("from_version"))) for t, d in seen] == [
        (PROMOTED, "1", None),
        (PROMOTED, "2", "1"),
        (ROLLED_BACK, "1", "2"),
    ]
    assert seen[-1][1]["reason"] == "vinspect model rollback"


def test_a_rolled_back_rollout_notifies_with_the_reason(webhook, register, http_model_server, tmp_path):
    name = f"tiny-notify-{uuid.uuid4().hex[:8]}"
    register(name, "run-1")
    register(name, "run-2")
    Image.fromarray(np.full((64, 64, 3), 120, dtype=np.uint8)).save(tmp_path / "bent.png")
    golden = tmp_path / "golden.json"
    golden.write_text(json.dumps({"bent.png": ["bent"]}))
    common = ["--model", name, "--deploy", "local", "--model-url", http_model_server, "--golden", str(golden)]
    _run("model", "promote", "1", *common)
    golden.write_text(json.dumps({"bent.png": ["scratch"]}))  # a smoke test v2 cannot pass
    result = runner.invoke(app, ["model", "promote", "2", *common])
    assert result.exit_code == 1 and "rolled back" in result.output
    seen = _seen(webhook, name)
    assert [t for t, _ in seen] == [PROMOTED, ROLLED_BACK]
    back = seen[-1][1]
    assert back["version"] == "1" and back["from_version"] == "2" and back["target"] == "local"
    assert "expected ['scratch']" in back["reason"]
