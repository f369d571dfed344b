"""Shared fixtures: markers, the shared data folder, and the real local stack.

The default run needs no cluster, GPU or internet; it does use real local services (an S3
server, an MLflow server, a Kafka-protocol broker) started here on free loopback ports and
stopped at the end of the session.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

import pytest

# Small CVAT exports and the fake CVAT server, for tests/data and tests/cli alike.
from tests.cvat_exports import cvat, cvat_frames, export_copy, small_export  # noqa: F401 - fixtures, as below

# Registered tiny models on the local stack, for tests/registry and tests/rollout alike.
from tests.registered_models import (  # noqa: F401 - fixtures, registered by being imported here
    bucket,
    cheap_versions,
    http_model_server,
    logged_model,
    mlflow_client,
    model_name,
    register,
    s3,
)

# The tiny trained model and its synthetic dataset (trained once per session), for tests/model and tests/cli.
from tests.trained_model import dataset, onnx_model, trained, val_images, yolo_config  # noqa: F401 - fixtures

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("VINSPECT_SHARED_DIR") or (REPO.parent / "shared")).resolve()

_OPT_IN = {"slow": "--run-slow", "gpu": "--run-gpu", "cluster": "--run-cluster"}


def _interrupt(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config):
    # A SIGTERM (CI timeout, `kill`) becomes an interrupt, so fixture teardown still stops the
    # servers this session started instead of leaving them running.
    import signal
    import tempfile

    signal.signal(signal.SIGTERM, _interrupt)
    # Nothing from the working tree's own state leaks in: a `make demo` leaves ./.vinspect/stack.env
    # (endpoints, credentials) and a developer may keep a ./.env; tests that need a stack set
    # VINSPECT_HOME to theirs. Child processes inherit both.
    os.environ["VINSPECT_HOME"] = tempfile.mkdtemp(prefix="vinspect-test-home-")
    os.environ["VINSPECT_DOTENV"] = ""
    config._vinspect_home = os.environ["VINSPECT_HOME"]


def pytest_unconfigure(config):
    import shutil

    home = getattr(config, "_vinspect_home", None)
    if home:
        shutil.rmtree(home, ignore_errors=True)


def pytest_terminal_summary(terminalreporter, config):
    """Name the random order's seed at the end, where a failure is read (``-q`` hides the header)."""
    seed = getattr(config.option, "randomly_seed", None)
    if isinstance(seed, int) and config.pluginmanager.hasplugin("randomly"):
        terminalreporter.write_line(f"test order: pytest-randomly seed {seed} (replay it with --randomly-seed={seed})")


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="run tests marked slow")
    parser.addoption("--run-gpu", action="store_true", help="run tests that need an NVIDIA GPU")
    parser.addoption("--run-cluster", action="store_true", help="run tests that need a real cluster")


def pytest_collection_modifyitems(config, items):
    for item in items:
        for marker, flag in _OPT_IN.items():
            if item.get_closest_marker(marker) is not None and not config.getoption(flag):
                item.add_marker(pytest.mark.skip(reason=f"{marker} test: run with {flag}"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` beside the repository (or ``$VINSPECT_SHARED_DIR``); skip when absent."""
    if not SHARED.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED} (set VINSPECT_SHARED_DIR)")
    return SHARED


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LocalStack:
    """Handle on a running local stack: its config, client environment and S3 client."""

    config: "object"
    env: dict

    @property
    def mlflow_uri(self) -> str:
        return self.env["MLFLOW_TRACKING_URI"]

    @property
    def kafka_bootstrap(self) -> str:
        return self.env["KAFKA_BOOTSTRAP_SERVERS"]

    @property
    def s3(self):
        from vinspect.local import _s3_client

        return _s3_client(self.env)

    def apply_env(self, monkeypatch) -> None:
        """Point settings (and child processes) at this stack for one test."""
        for key, value in self.env.items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("VINSPECT_HOME", str(self.config.state))


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory) -> LocalStack:
    """The real embedded stack (rclone S3 on disk, MLflow, tansu behind its front) on free ports,
    for the whole session."""
    from vinspect.local import StackConfig, down, up

    cfg = StackConfig(
        state=tmp_path_factory.mktemp("stack"),
        s3_port=free_port(),
        mlflow_port=free_port(),
        kafka_port=free_port(),
    )
    try:
        env = up(cfg, log=lambda _m: None)
    except Exception:
        down(cfg, log=lambda _m: None)
        raise
    try:
        yield LocalStack(config=cfg, env=env)
    finally:
        # Kafka clients that tests left for the garbage collector are closed while the broker is
        # still up; otherwise librdkafka reports failed reconnects after the run's summary.
        import gc

        gc.collect()
        down(cfg, log=lambda _m: None)
