"""The whole pipeline through kfp.local against the real local stack, in both gate branches.

Tiny settings (16 synthetic 128 px images, imgsz 64, one epoch) keep it to a couple of minutes
on two CPU cores. The runs share one pipeline root, so later runs also exercise the cache: the
second run changes only the gate floors, and must re-use the trained weights.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

# A one-epoch 64 px model detects nothing: its smoke test checks only that the server answers.
TINY = {
    "epochs": 1,
    "imgsz": 64,
    "batch": 8,
    "workers": 0,
    "parity_images": 2,
    "smoke_images": 1,
    "smoke_min_classes": 0,
}


@pytest.fixture(scope="module")
def run_env(local_stack, model_server, tmp_path_factory):
    """Environment of the local runs: the stack, a model name of our own, a shared pipeline root."""
    mp = pytest.MonkeyPatch()
    state = tmp_path_factory.mktemp("pipeline-state")
    for key, value in local_stack.env.items():
        mp.setenv(key, value)
    mp.setenv("VINSPECT_HOME", str(state))
    mp.setenv("VINSPECT_MODEL_URL", model_server)
    # Other suites register models on the same stack: keep ours apart.
    model = f"pipeline-test-{uuid.uuid4().hex[:6]}"
    yield {
        "env": dict(local_stack.env),
        "state": state,
        "root": state / "pipeline-root",
        "model": model,
        "url": model_server,
    }
    mp.undo()


def _auth() -> dict[str, str]:
    """The model server's bearer token (the model_server fixture sets VINSPECT_MODEL_TOKEN)."""
    return {"Authorization": f"Bearer {os.environ['VINSPECT_MODEL_TOKEN']}"}


def _mlflow(run_env):
    from mlflow.tracking import MlflowClient

    uri = run_env["env"]["MLFLOW_TRACKING_URI"]
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _versions(run_env) -> list:
    return list(_mlflow(run_env).search_model_versions(f"name = '{run_env['model']}'"))


def _run_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("vinspect-training-*") if p.is_dir())


@pytest.fixture(scope="module")
def rejected_run(run_env):
    """The first run on the shared root: trained, then rejected by an unreachable floor.

    Later tests depend on this fixture rather than on running after this module's first test, so
    every test passes alone and in any order: it warms the cache (later runs re-use the trained
    weights) and records what was true right after the rejection.
    """
    from vinspect.cli import app

    args = [
        "pipeline",
        "run",
        "--local",
        "--synth-images",
        "16",
        "--pipeline-root",
        str(run_env["root"]),
        "--min-map50",
        "1.01",
        "-p",
        f"model_name={run_env['model']}",
    ]
    for key, value in TINY.items():
        args += ["-p", f"{key}={value}"]
    result = CliRunner().invoke(app, args)
    with httpx.Client(base_url=run_env["url"], headers=_auth()) as http:
        served = http.get(f"/v2/models/{run_env['model']}").status_code
    return {
        "exit_code": result.exit_code,
        "output": result.output,
        "versions": _versions(run_env),
        "served": served,
        "run_dirs": _run_dirs(run_env["root"]),
    }


def test_rejected_model_is_not_registered_and_the_output_says_why(rejected_run):
    result = rejected_run
    assert result["exit_code"] == 0, result["output"][-4000:]
    # The run ends green, says it deployed nothing, and names the failed check.
    assert "not deployed: the quality gate rejected the model" in result["output"]
    assert "< floor 1.0100" in result["output"]
    assert "[vinspect] outcome: rejected" in result["output"]
    assert result["versions"] == []
    assert result["served"] == 404
    (run_dir,) = result["run_dirs"]
    assert (run_dir / "train").is_dir() and not (run_dir / "register").exists()


def test_passing_model_is_registered_rolled_out_and_made_champion(run_env, rejected_run, local_stack):
    from pipelines.local import run_local

    before = _run_dirs(run_env["root"])
    result = run_local(
        None,
        arguments={**TINY, "model_name": run_env["model"], "min_map50": 0.0, "min_class_map50": 0.0},
        pipeline_root=run_env["root"],
        synth_images=16,
    )
    assert result.outcome == "deployed", result.to_dict()
    version = result.records[-1]["version"]

    client = _mlflow(run_env)
    (mv,) = _versions(run_env)
    assert mv.version == version
    assert client.get_registered_model(run_env["model"]).aliases["champion"] == version
    dataset_id = mv.tags["vinspect.dataset_id"]
    run = client.get_run(mv.run_id)
    assert run.data.params["epochs"] == "1" and "map50" in run.data.metrics
    bucket = run_env["env"]["AWS_S3_BUCKET"]
    head = local_stack.s3.head_object(Bucket=bucket, Key=f"{run_env['model']}/{version}/1/model.onnx")
    assert head["ContentLength"] > 100_000
    # The training data is archived under its content id and is the run's MLflow dataset input.
    data_bucket = run_env["env"]["VINSPECT_DATA_BUCKET"]
    keys = [
        o["Key"]
        for o in local_stack.s3.list_objects_v2(Bucket=data_bucket, Prefix=f"datasets/{dataset_id}/").get(
            "Contents", []
        )
    ]
    assert {f"datasets/{dataset_id}/{n}" for n in ("manifest.json", "dataset.tar")} <= set(keys), keys
    sources = [json.loads(d.dataset.source).get("uri", d.dataset.source) for d in run.inputs.dataset_inputs]
    assert f"s3://{data_bucket}/datasets/{dataset_id}/" in sources, sources

    with httpx.Client(base_url=run_env["url"], headers=_auth()) as http:
        meta = http.get(f"/v2/models/{run_env['model']}").json()
    assert meta["versions"] == [version], meta
    assert meta["inputs"][0]["name"] == "images" and meta["inputs"][0]["shape"][-2:] == [64, 64], meta
    # Every precision variant was measured and logged; the version and the server carry the
    # gate's choice (an OpenVINO IR folder under the same version, served by OpenVINO).
    variant = mv.tags["vinspect.variant"]
    assert variant in ("fp32", "auto", "int8"), mv.tags
    assert {f"variant_{v}_{k}" for v in ("onnx", "fp32", "auto", "int8") for k in ("map50_95", "latency_ms")} <= set(
        run.data.metrics
    )
    assert mv.tags["vinspect.storage_uri"] == f"s3://{bucket}/{run_env['model']}/{version}/{variant}/"
    local_stack.s3.head_object(Bucket=bucket, Key=f"{run_env['model']}/{version}/int8/1/model.bin")
    assert meta["platform"] == "OpenVINO", meta

    # Only the gate floors changed: the trained weights came from the cache, not a new training.
    (new_dir,) = sorted(set(_run_dirs(run_env["root"])) - set(before))
    assert not (new_dir / "train").exists(), "train ran again although its inputs did not change"
    assert (new_dir / "evaluate").is_dir() and (new_dir / "register").is_dir()

    # The identical run again: everything up to the gate comes from the cache, and the model is
    # byte-identical to the champion, so no second version is registered.
    again = run_local(
        None,
        arguments={**TINY, "model_name": run_env["model"], "min_map50": 0.0, "min_class_map50": 0.0},
        pipeline_root=run_env["root"],
        synth_images=16,
    )
    assert again.outcome == "unchanged", again.to_dict()
    steps = {s["task"]: s for s in again.steps}
    assert all(steps[t]["cached"] for t in ("pull-annotations", "validate-and-split", "train", "export-onnx"))
    assert not steps["check-dataset"]["cached"] and "register" not in steps
    assert len(_versions(run_env)) == 1

    # A data-aware run on the same data now skips training and says why.
    skipped = run_local(
        None,
        arguments={**TINY, "model_name": run_env["model"], "skip_if_unchanged": True},
        pipeline_root=run_env["root"],
        synth_images=16,
    )
    assert skipped.outcome == "skipped", skipped.to_dict()
    assert dataset_id in skipped.detail and f"v{version}" in skipped.detail
    assert len(_versions(run_env)) == 1


class _RefusingServer:
    """A v2 server that is live but refuses every model load (a broken rollout target)."""

    def __init__(self) -> None:
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        loads = self.loads = []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_a):
                pass

            def _send(self, status, body):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):  # noqa: N802
                if self.path == "/v2/health/live":
                    return self._send(200, {"live": True})
                return self._send(404, {"error": "model is not served here"})

            def do_POST(self):  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                loads.append(self.path)
                return self._send(400, {"error": "simulated failure: cannot load the model"})

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def test_failed_rollout_fails_the_run_and_keeps_the_champion(run_env, rejected_run):
    from pipelines.local import LocalRunError, run_local

    # A model of its own, so that the other tests' version counts do not depend on the order.
    model = f"{run_env['model']}-rollback"
    first = run_local(
        None,
        arguments={**TINY, "model_name": model, "min_map50": 0.0, "min_class_map50": 0.0},
        pipeline_root=run_env["root"],
        synth_images=16,
    )
    assert first.outcome == "deployed", first.to_dict()
    client = _mlflow(run_env)
    champion = client.get_registered_model(model).aliases["champion"]
    server = _RefusingServer()
    try:
        with pytest.raises(LocalRunError, match="rolled back.*simulated failure"):
            run_local(
                None,
                # Another seed trains a different model; the gate lets it through.
                arguments={
                    **TINY,
                    "seed": 1,
                    "model_name": model,
                    "min_map50": 0.0,
                    "min_class_map50": 0.0,
                    "max_regression": 1.0,
                },
                model_url=server.url,
                pipeline_root=run_env["root"],
                synth_images=16,
            )
    finally:
        server.stop()
    assert server.loads == [f"/v2/repository/models/{model}/load"]
    # Registered as the challenger, but the champion did not move.
    aliases = client.get_registered_model(model).aliases
    assert aliases["champion"] == champion and aliases["challenger"] != champion
