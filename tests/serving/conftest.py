"""Fixtures for the runtime tests: a tiny real YOLO ONNX model and helpers to run our servers.

The ONNX model is exported once per session by Ultralytics in a child process (an untrained
YOLO11n at 96 px, opset 17), so the test process itself never imports torch or Ultralytics,
exactly like the runtime images.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
IMGSZ = 96
OPSET = 17

_EXPORT = r"""
import shutil, sys
from pathlib import Path
from vinspect.yolo_env import prepare_ultralytics
out = Path(sys.argv[1]); imgsz = int(sys.argv[2]); opset = int(sys.argv[3])
prepare_ultralytics(out / "ultralytics")
import yaml
from ultralytics import YOLO
from ultralytics.nn.tasks import yaml_model_load
# nc=2 so the output is [1, 6, N] like the real metal-nut model (scratch, bent).
cfg = yaml_model_load("yolo11n.yaml")
cfg["nc"] = 2
(out / "yolo11n-metal.yaml").write_text(yaml.safe_dump(cfg))
model = YOLO(str(out / "yolo11n-metal.yaml"))
model.model.names = {0: "scratch", 1: "bent"}
path = model.export(format="onnx", imgsz=imgsz, opset=opset, simplify=False, dynamic=False)
shutil.move(path, out / "model.onnx")
"""


def _export(out: Path, imgsz: int) -> Path:
    env = {**os.environ, "YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "false"}
    proc = subprocess.run(
        [PYTHON, "-c", _EXPORT, str(out), str(imgsz), str(OPSET)],
        cwd=out,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"ONNX export failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return out / "model.onnx"


@pytest.fixture(scope="session")
def onnx_model(tmp_path_factory) -> Path:
    """A tiny untrained YOLO11n (nc=2) exported to ONNX at 96 px: `images` -> `output0`."""
    return _export(tmp_path_factory.mktemp("onnx"), IMGSZ)


@pytest.fixture(scope="session")
def onnx_model_64(tmp_path_factory) -> Path:
    """The same architecture exported at 64 px (a rollout that changes the input size)."""
    return _export(tmp_path_factory.mktemp("onnx64"), 64)


def wait_http(url: str, timeout: float = 30.0, status: int = 200, proc=None, token: str | None = None) -> None:
    """Poll `url` until it answers `status` (fails early when `proc` exits); `token`: a bearer token."""
    deadline = time.monotonic() + timeout
    last = None
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {proc.returncode}")
        try:
            last = httpx.get(url, timeout=2.0, headers=headers).status_code
            if last == status:
                return
        except httpx.TransportError as exc:
            last = repr(exc)
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer {status} within {timeout}s (last: {last})")


class Proc:
    """A child process we started, stopped by its own pid only."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None):
        self.args = args
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.popen = subprocess.Popen(
            args,
            cwd=REPO,
            env={**os.environ, **(env or {})},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def poll(self):
        return self.popen.poll()

    def kill(self) -> None:
        """SIGKILL: the crash case."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(timeout=10)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `timeout`."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)
        self._log.close()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


@pytest.fixture
def start_proc(tmp_path):
    """Start child processes that are stopped (only they) at the end of the test."""
    procs: list[Proc] = []

    def start(args: list[str], name: str, env: dict[str, str] | None = None) -> Proc:
        proc = Proc(args, tmp_path / f"{name}.log", env)
        procs.append(proc)
        return proc

    yield start
    for proc in reversed(procs):
        proc.stop()


def free_port() -> int:
    """A free TCP port on loopback."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ThreadServer:
    """Run an ASGI app with uvicorn on a background thread (real HTTP on loopback)."""

    def __init__(self, app, port: int | None = None, **config):
        import threading

        import uvicorn

        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False, **config)
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "ThreadServer":
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"server on {self.url} did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="session")
def model_server(onnx_model):
    """Our model server, in-process, serving the tiny model as `metal-nut` (shared)."""
    from serving.modelserver import ModelRepository, create_app

    repo = ModelRepository(threads=1)
    repo.load("metal-nut", str(onnx_model))
    with ThreadServer(create_app(repo, max_body_bytes=1024 * 1024)) as server:
        server.repository = repo
        yield server
