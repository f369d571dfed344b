"""Helpers shared by the runtime benchmarks: a YOLO ONNX file, child processes, peak RSS."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable

_EXPORT = r"""
import shutil, sys, yaml
from pathlib import Path
from vinspect.yolo_env import prepare_ultralytics
out = Path(sys.argv[1]); imgsz = int(sys.argv[2])
prepare_ultralytics(out / "ultralytics")
from ultralytics import YOLO
from ultralytics.nn.tasks import yaml_model_load
cfg = yaml_model_load("yolo11n.yaml"); cfg["nc"] = 2
(out / "yolo11n-metal.yaml").write_text(yaml.safe_dump(cfg))
model = YOLO(str(out / "yolo11n-metal.yaml"))
model.model.names = {0: "scratch", 1: "bent"}
shutil.move(model.export(format="onnx", imgsz=imgsz, opset=17, simplify=False), out / "model.onnx")
"""


def yolo_onnx(workdir: Path, imgsz: int) -> Path:
    """Export an untrained YOLO11n (nc=2) at `imgsz` (same graph and cost as a trained one)."""
    out = workdir / f"yolo-{imgsz}"
    if (out / "model.onnx").is_file():
        return out / "model.onnx"
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [PYTHON, "-c", _EXPORT, str(out), str(imgsz)],
        cwd=out,
        check=True,
        capture_output=True,
        env={**os.environ, "YOLO_OFFLINE": "1"},
    )
    return out / "model.onnx"


def free_port() -> int:
    """A free loopback TCP port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start a child process logging to `log`."""
    return subprocess.Popen(
        args, cwd=REPO, env={**os.environ, **(env or {})}, stdout=open(log, "ab"), stderr=subprocess.STDOUT
    )


def stop(proc: subprocess.Popen) -> None:
    """Terminate one child we started (by its own pid)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def wait_http(url: str, timeout: float = 60) -> None:
    """Poll until `url` answers 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError(url)


def peak_rss_mb(pid: int) -> float:
    """Peak resident set size (VmHWM) of a live process, MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"no VmHWM for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a live process has used so far, seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
