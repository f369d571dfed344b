"""`vinspect demo` end to end, small: stack, dataset, pipeline, model server, processor, camera, dashboard."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import requests

from tests.conftest import free_port


def _pids(state: Path) -> list[int]:
    import json

    return [json.loads(p.read_text())["pid"] for p in (state / "pids").glob("*.json")]


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _stack_env(state) -> dict[str, str]:
    path = state / "stack.env"
    if not path.is_file():
        return {}
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line and not line.startswith("#"))
    return {k.strip(): v.strip() for k, v in pairs}


def test_demo_runs_the_whole_loop_and_down_stops_it(tmp_path):
    state = tmp_path / "state"
    ports = {name: free_port() for name in ("S3", "MLFLOW", "KAFKA", "MODEL_SERVER", "PROCESSOR", "DASHBOARD")}
    # The model server needs a bearer token; the demo uses the stack's (stack.env) when the stack
    # generated one, else this one.
    env = {**os.environ, "VINSPECT_HOME": str(state), "VINSPECT_MODEL_TOKEN": "demo-test-model-token"}
    env.update({f"VINSPECT_LOCAL_{k}_PORT": str(v) for k, v in ports.items()})
    for var in ("MLFLOW_TRACKING_URI", "AWS_S3_ENDPOINT", "KAFKA_BOOTSTRAP_SERVERS", "VINSPECT_MODEL_URL"):
        env.pop(var, None)
    cmd = [
        sys.executable,
        "-m",
        "vinspect",
        "demo",
        "--state",
        str(state),
        "-n",
        "24",
        "--epochs",
        "1",
        "--imgsz",
        "64",
        "--min-map50",
        "0",
        "--min-class-map50",
        "0",
        "--smoke-min-classes",
        "0",
    ]
    try:
        proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "pipeline outcome: deployed" in proc.stderr, proc.stderr[-3000:]
        dashboard = f"http://127.0.0.1:{ports['DASHBOARD']}"
        assert dashboard in proc.stdout

        # The model server serves the champion the pipeline rolled out.
        token = _stack_env(state).get("VINSPECT_MODEL_TOKEN") or env["VINSPECT_MODEL_TOKEN"]
        meta = requests.get(
            f"http://127.0.0.1:{ports['MODEL_SERVER']}/v2/models/metal-nut",
            timeout=5,
            headers={"Authorization": f"Bearer {token}"},
        ).json()
        assert meta["versions"] == ["1"]

        # The camera streams, the processor inspects, the dashboard shows results per camera.
        deadline = time.monotonic() + 90
        cameras = []
        while time.monotonic() < deadline:
            cameras = requests.get(f"{dashboard}/api/cameras", timeout=5).json()
            if len(cameras) >= 2:
                break
            time.sleep(1)
        assert len(cameras) >= 2, cameras
        status = subprocess.run(
            [sys.executable, "-m", "vinspect", "local", "status", "--state", str(state)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert status.returncode == 0, status.stdout
    finally:
        pids = _pids(state) if (state / "pids").is_dir() else []
        subprocess.run(
            [sys.executable, "-m", "vinspect", "local", "down", "--state", str(state)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.3)
    from vinspect.local import SERVICES

    # The stack's own services plus the demo's model server, processor, camera and dashboard.
    assert len(pids) == len(SERVICES) + 4 and not [p for p in pids if _alive(p)]
