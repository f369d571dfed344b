"""The foundation: the embedded stack comes up, serves real S3/MLflow/Kafka traffic, and goes away."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import free_port
from vinspect.local import SERVICES, StackConfig, StackError, down, stack_pids, start_service, status, up

REPO = Path(__file__).resolve().parents[1]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _descendants(pid: int) -> set[int]:
    """All processes in the process group led by ``pid`` (our services run in their own group)."""
    out = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == pid:
                    out.add(int(entry.name))
            except (ProcessLookupError, PermissionError):
                pass
    return out


@pytest.fixture()
def cfg(tmp_path) -> StackConfig:
    return StackConfig(state=tmp_path / "state", s3_port=free_port(), mlflow_port=free_port(), kafka_port=free_port())


def test_stack_round_trip_and_clean_shutdown(cfg):
    env = up(cfg, log=lambda _m: None)
    try:
        pids = stack_pids(cfg)
        assert set(pids) == set(SERVICES)
        group = set().union(*(_descendants(p) for p in pids.values()))
        assert len(group) >= 3

        # Credentials were generated, not defaulted, and the file is private.
        assert len(env["AWS_SECRET_ACCESS_KEY"]) >= 30
        # The model server's token too (its repository API is off without one), kept by a later up.
        assert len(env["VINSPECT_MODEL_TOKEN"]) >= 32
        assert up(cfg, log=lambda _m: None)["VINSPECT_MODEL_TOKEN"] == env["VINSPECT_MODEL_TOKEN"]
        assert (cfg.env_file.stat().st_mode & 0o077) == 0
        # The secret is in no command line (what `ps` shows), pid file or log.
        secret = env["AWS_SECRET_ACCESS_KEY"].encode()
        for pid in group:
            assert secret not in Path(f"/proc/{pid}/cmdline").read_bytes(), pid
        for path in [*cfg.pid_dir.iterdir(), *cfg.log_dir.iterdir()]:
            assert secret not in path.read_bytes(), path

        # S3: put and get an object in a bucket the project uses.
        from vinspect.local import _s3_client

        s3 = _s3_client(env)
        s3.put_object(Bucket="models", Key="probe/hello.txt", Body=b"metal nut")
        assert s3.get_object(Bucket="models", Key="probe/hello.txt")["Body"].read() == b"metal nut"

        # MLflow: log a run with an artifact (stored through the server in S3) and read it back.
        import mlflow
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
        exp = client.create_experiment(f"probe-{uuid.uuid4().hex[:6]}")
        run = client.create_run(exp)
        client.log_metric(run.info.run_id, "map50", 0.5, step=1)
        client.log_text(run.info.run_id, "hello", "notes/hello.txt")
        client.set_terminated(run.info.run_id)
        got = client.get_run(run.info.run_id)
        assert got.data.metrics["map50"] == 0.5
        assert [a.path for a in client.list_artifacts(run.info.run_id, "notes")] == ["notes/hello.txt"]
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="mlflow").get("Contents", [])]
        assert any(k.endswith("notes/hello.txt") for k in keys), keys
        del mlflow

        # Kafka: produce and consume one record on the images topic.
        from confluent_kafka import Consumer, Producer

        producer = Producer({"bootstrap.servers": env["KAFKA_BOOTSTRAP_SERVERS"]})
        payload = uuid.uuid4().bytes
        producer.produce("visual-inspection-images", key=b"cam-1", value=payload)
        assert producer.flush(10) == 0
        consumer = Consumer(
            {
                "bootstrap.servers": env["KAFKA_BOOTSTRAP_SERVERS"],
                "group.id": f"probe-{uuid.uuid4().hex[:6]}",
                "auto.offset.reset": "earliest",
                "session.timeout.ms": 6000,
            }
        )
        consumer.subscribe(["visual-inspection-images"])
        seen = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and seen is None:
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error() and msg.value() == payload:
                seen = msg
        consumer.close()
        del producer  # closed now, while the broker is up, not by the GC after `down`
        assert seen is not None and seen.key() == b"cam-1"

        # Status asks each service for real.
        assert all(row["ok"] for row in status(cfg).values())

        # Idempotent: a second `up` starts nothing new.
        up(cfg, log=lambda _m: None)
        assert stack_pids(cfg) == pids

        # A demo service started through the stack is tracked and stopped by `down` too.
        import requests

        port = free_port()
        web = start_service(
            cfg,
            "web",
            [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
            ready=lambda: requests.get(f"http://127.0.0.1:{port}/", timeout=1).raise_for_status(),
        )
        assert start_service(cfg, "web", ["false"], ready=lambda: None) == web  # already running
        group.add(web)

        # One service down is enough for `status` to fail, and it says which.
        from vinspect.local import _stop

        _stop(cfg, "kafka")
        rows = status(cfg)
        assert not rows["kafka"]["ok"] and rows["s3"]["ok"] and rows["mlflow"]["ok"]
        env_cli = {
            **os.environ,
            "VINSPECT_LOCAL_S3_PORT": str(cfg.s3_port),
            "VINSPECT_LOCAL_MLFLOW_PORT": str(cfg.mlflow_port),
            "VINSPECT_LOCAL_KAFKA_PORT": str(cfg.kafka_port),
        }
        proc = subprocess.run(
            [sys.executable, "-m", "vinspect", "local", "status", "--state", str(cfg.state)],
            capture_output=True,
            text=True,
            env=env_cli,
            timeout=120,
        )
        assert proc.returncode == 1 and "kafka" in proc.stdout
        # `up` again brings back only what is missing.
        up(cfg, log=lambda _m: None)
        assert stack_pids(cfg)["s3"] == pids["s3"] and stack_pids(cfg)["mlflow"] == pids["mlflow"]
        group |= _descendants(stack_pids(cfg)["kafka"])
    finally:
        stopped = down(cfg, log=lambda _m: None)
    assert set(stopped) == set(SERVICES) | {"web"}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(p) for p in group):
        time.sleep(0.2)
    assert not [p for p in group if _alive(p)], "processes left behind after down"
    assert not any(row["ok"] for row in status(cfg).values())


def test_up_refuses_a_port_held_by_someone_else(cfg):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", cfg.mlflow_port))
        squatter.listen(1)
        with pytest.raises(StackError, match=f"port {cfg.mlflow_port} for mlflow is held"):
            up(cfg, log=lambda _m: None)
    assert stack_pids(cfg) == {}


def test_down_leaves_foreign_processes_alone(cfg):
    """A pid file pointing at a process we did not start (pid reused) is never signalled."""
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        cfg.pid_dir.mkdir(parents=True)
        (cfg.pid_dir / "s3.json").write_text(f'{{"pid": {other.pid}, "start_time": "0"}}')
        assert down(cfg, log=lambda _m: None) == []
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_status_cli_exits_non_zero_when_down(cfg):
    env = {**os.environ, "VINSPECT_HOME": str(cfg.state)}
    proc = subprocess.run(
        [sys.executable, "-m", "vinspect.cli", "local", "status", "--state", str(cfg.state)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "down" in proc.stdout


def test_status_reports_the_state_size(cfg):
    (cfg.state / "s3" / "models" / "m" / "1" / "1").mkdir(parents=True)
    (cfg.state / "s3" / "models" / "m" / "1" / "1" / "model.onnx").write_bytes(b"x" * 3 * 1024 * 1024)
    (cfg.state / "stack.env").write_text("AWS_ACCESS_KEY_ID=x\n")
    proc = subprocess.run(
        [sys.executable, "-m", "vinspect.cli", "local", "status", "--state", str(cfg.state)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
    )
    assert proc.returncode == 1  # nothing runs
    assert "3.0 MiB" in proc.stdout and "reset" in proc.stdout


def test_cli_lists_every_verb():
    proc = subprocess.run([sys.executable, "-m", "vinspect.cli", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    for verb in ("local", "data", "model", "pipeline", "runs", "serve", "infra", "demo"):
        assert verb in proc.stdout, verb
    # --help must not drag in the heavy stack.
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, vinspect.cli; print(any(m in sys.modules for m in ('torch','ultralytics','mlflow','kfp')))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.stdout.strip() == "False", probe.stderr


def test_settings_read_env_files_and_never_print_secrets(tmp_path, monkeypatch):
    from vinspect.settings import S3Settings

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VINSPECT_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("VINSPECT_DOTENV")  # the suite turns ./.env off; this test is about it
    for var in ("AWS_S3_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_S3_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "stack.env").write_text(
        "AWS_S3_ENDPOINT=http://127.0.0.1:1\nAWS_SECRET_ACCESS_KEY=from-stack\n"
    )
    (tmp_path / ".env").write_text("AWS_SECRET_ACCESS_KEY=from-dotenv\nAWS_ACCESS_KEY_ID=kid\n")
    s = S3Settings.from_env()
    assert s.endpoint_url == "http://127.0.0.1:1"
    assert s.secret_access_key.get_secret_value() == "from-dotenv"  # .env overrides the stack file
    (tmp_path / "other.env").write_text("AWS_SECRET_ACCESS_KEY=from-other\n")
    monkeypatch.setenv("VINSPECT_DOTENV", str(tmp_path / "other.env"))
    assert S3Settings.from_env().secret_access_key.get_secret_value() == "from-other"
    monkeypatch.setenv("VINSPECT_DOTENV", "")  # off: only the stack file
    assert S3Settings.from_env().secret_access_key.get_secret_value() == "from-stack"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "from-env")
    s = S3Settings.from_env()
    assert s.secret_access_key.get_secret_value() == "from-env"  # the environment wins
    assert "from-env" not in repr(s) and "from-env" not in str(s.redacted())


# --------------------------------------------------------------------------- the stack keeps what it stores


def test_s3_refuses_a_wrong_secret_and_keeps_objects_as_files(local_stack):
    from botocore.exceptions import ClientError

    from vinspect.local import _s3_client

    key = f"probe/{uuid.uuid4().hex}.txt"
    local_stack.s3.put_object(Bucket="models", Key=key, Body=b"kept on disk")
    assert (local_stack.config.s3_root / "models" / key).read_bytes() == b"kept on disk"
    wrong = _s3_client(local_stack.env, secret=local_stack.env["AWS_SECRET_ACCESS_KEY"][:-1] + "x")
    with pytest.raises(ClientError) as refused:
        wrong.get_object(Bucket="models", Key=key)
    assert refused.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    stranger = _s3_client({**local_stack.env, "AWS_ACCESS_KEY_ID": "AKIDSOMEONEELSE"})
    with pytest.raises(ClientError):
        stranger.list_buckets()
    import requests  # no signature at all

    assert requests.get(f"{local_stack.env['AWS_S3_ENDPOINT']}/models/{key}", timeout=5).status_code in (400, 403)


def test_watermarks_and_committed_offsets_match_the_log(local_stack):
    """A 5-record batch is a high watermark of 5, not 1; 300 more make 305, not 6."""
    from confluent_kafka import Consumer, Producer, TopicPartition
    from confluent_kafka.admin import NewTopic

    from vinspect.local import _admin

    topic = f"offsets-{uuid.uuid4().hex[:8]}"
    admin = _admin(local_stack.env)  # kept referenced until the topic exists
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(15)
    producer = Producer({"bootstrap.servers": local_stack.kafka_bootstrap, "linger.ms": 200})

    def batch(n: int, tag: str) -> None:
        for i in range(n):
            producer.produce(topic, value=f"{tag}{i}".encode(), partition=0)
        assert producer.flush(15) == 0

    def consumer(group: str, **extra) -> Consumer:
        return Consumer(
            {
                "bootstrap.servers": local_stack.kafka_bootstrap,
                "group.id": group,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                **extra,
            }
        )

    tp = TopicPartition(topic, 0)
    probe = consumer(f"probe-{uuid.uuid4().hex[:6]}")
    batch(5, "a")
    assert probe.get_watermark_offsets(tp, timeout=10) == (0, 5)
    batch(300, "b")
    assert probe.get_watermark_offsets(tp, timeout=10) == (0, 305)
    uncommitted = consumer(f"probe-{uuid.uuid4().hex[:6]}", **{"isolation.level": "read_uncommitted"})
    assert uncommitted.get_watermark_offsets(tp, timeout=10) == (0, 305)
    uncommitted.close()

    group = f"g-{uuid.uuid4().hex[:6]}"
    reader = consumer(group)
    reader.assign([TopicPartition(topic, 0, 0)])
    seen = []
    deadline = time.monotonic() + 30
    while len(seen) < 120 and time.monotonic() < deadline:
        msg = reader.poll(0.5)
        if msg is not None and not msg.error():
            seen.append((msg.offset(), msg.value()))
    assert [o for o, _ in seen[:120]] == list(range(120))
    assert seen[5] == (5, b"b0")  # offsets count records, not batches
    reader.commit(offsets=[TopicPartition(topic, 0, 120)], asynchronous=False)
    reader.close()
    again = consumer(group)
    assert again.committed([TopicPartition(topic, 0)], timeout=10)[0].offset == 120
    low, high = again.get_watermark_offsets(tp, timeout=10)
    assert high - 120 == 185  # the lag a dashboard would show
    again.close()

    # A consumer starting at "latest" starts at the end of the log, not at the last batch's start.
    late = consumer(f"late-{uuid.uuid4().hex[:6]}", **{"auto.offset.reset": "latest"})
    late.assign([TopicPartition(topic, 0, -1)])  # OFFSET_END: resolved with ListOffsets
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and late.position([TopicPartition(topic, 0)])[0].offset < 0:
        late.poll(0.2)
    batch(1, "c")
    first = None
    deadline = time.monotonic() + 20
    while first is None and time.monotonic() < deadline:
        msg = late.poll(0.5)
        if msg is not None and not msg.error():
            first = msg
    late.close()
    probe.close()
    assert first is not None and (first.offset(), first.value()) == (305, b"c0")


def test_reset_asks_first_and_refuses_what_is_not_a_stack(tmp_path):
    from vinspect.local import looks_like_state, reset

    not_state = tmp_path / "home"
    not_state.mkdir()
    (not_state / "thesis.tex").write_text("precious")
    with pytest.raises(StackError, match="does not look like"):
        reset(StackConfig(state=not_state), log=lambda _m: None)
    assert (not_state / "thesis.tex").is_file()

    state = tmp_path / "state"
    (state / "s3" / "models").mkdir(parents=True)
    (state / "stack.env").write_text("AWS_ACCESS_KEY_ID=x\n")
    assert looks_like_state(state)
    cli = [sys.executable, "-m", "vinspect", "local", "reset", "--state", str(state)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    no = subprocess.run(cli, input="n\n", capture_output=True, text=True, env=env, timeout=120)
    assert no.returncode != 0 and state.is_dir() and "Delete" in no.stdout
    yes = subprocess.run([*cli, "--yes"], capture_output=True, text=True, env=env, timeout=120)
    assert yes.returncode == 0, yes.stderr
    assert not state.exists()


def test_up_says_what_to_do_over_a_running_stack_of_the_previous_layout(cfg):
    """A moto S3 of the previous stack still running: `up` refuses and names the way out."""
    old = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        cfg.pid_dir.mkdir(parents=True)
        start = Path(f"/proc/{old.pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
        (cfg.pid_dir / "s3.json").write_text(
            json.dumps({"pid": old.pid, "start_time": start, "argv": ["/venv/bin/moto_server", "-p", str(cfg.s3_port)]})
        )
        with pytest.raises(StackError, match=r"previous local stack.*vinspect local down"):
            up(cfg, log=lambda _m: None)
        assert old.poll() is None  # nothing of it was touched
        assert not (cfg.state / "s3").exists()
    finally:
        old.kill()
        old.wait()


def _jpeg(i: int) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), ((37 * i) % 256, 90, 160)).save(buf, format="JPEG")
    return buf.getvalue()


class _Acknowledged:
    """Everything the stack acknowledged so far, and a check that it is all still there."""

    def __init__(self, env: dict, tmp: Path):
        from mlflow import MlflowClient

        self.env = env
        self.tmp = tmp
        self.model = f"keep-{uuid.uuid4().hex[:6]}"
        self.group = f"inspect-{uuid.uuid4().hex[:6]}"
        self.client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"], registry_uri=env["MLFLOW_TRACKING_URI"])
        self.versions: dict[str, dict] = {}
        self.objects: dict[tuple[str, str], str] = {}
        self.messages: list[bytes] = []
        self.committed = 0

    def s3(self):
        from vinspect.local import _s3_client

        return _s3_client(self.env)

    def register_two_versions_and_promote(self) -> None:
        import hashlib

        from components.registry import promote, register_model
        from tests.registry.tiny_model import BENT_IN_THE_MIDDLE, build_tiny_onnx

        for run in ("run-a", "run-b"):
            onnx = build_tiny_onnx(self.tmp / f"{run}.onnx", BENT_IN_THE_MIDDLE, tag=run)
            info = register_model(
                self.client,
                self.s3(),
                onnx_path=onnx,
                model_name=self.model,
                bucket="models",
                params={"model": "tiny"},
                metrics={"mAP50": 0.5},
                epoch_metrics_csv=None,
                plots=[],
                dataset_id="d" * 64,
                dataset_uri=None,
                git_revision=None,
                pipeline_run_id=run,
                experiment=f"keep-{self.model}",
            )
            self.versions[info.version] = {
                "run_id": info.run_id,
                "sha": hashlib.sha256(onnx.read_bytes()).hexdigest(),
            }
            self.client.log_text(info.run_id, f"kept {run}", "notes/keep.txt")  # a run artifact, in S3
            self.objects[("models", f"{self.model}/{info.version}/1/model.onnx")] = self.versions[info.version]["sha"]
        promote(self.client, self.model, "1")  # champion 1, challenger 2 (set by the second register)

    def put_object(self, key: str) -> None:
        import hashlib

        body = uuid.uuid4().bytes * 1000
        self.s3().put_object(Bucket="vinspect-data", Key=key, Body=body)
        self.objects[("vinspect-data", key)] = hashlib.sha256(body).hexdigest()

    def produce(self, n: int) -> None:
        from confluent_kafka import Producer

        from vinspect.settings import IMAGES_TOPIC

        producer = Producer({"bootstrap.servers": self.env["KAFKA_BOOTSTRAP_SERVERS"], "acks": "all"})
        fresh = [_jpeg(len(self.messages) + i) + uuid.uuid4().bytes for i in range(n)]
        for value in fresh:
            producer.produce(IMAGES_TOPIC, key=b"cam-1", value=value, partition=0)
        assert producer.flush(30) == 0
        self.messages += fresh

    def _consumer(self):
        from confluent_kafka import Consumer

        return Consumer(
            {
                "bootstrap.servers": self.env["KAFKA_BOOTSTRAP_SERVERS"],
                "group.id": self.group,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": 6000,
            }
        )

    def consume_and_commit(self, n: int) -> None:
        from confluent_kafka import TopicPartition

        from vinspect.settings import IMAGES_TOPIC

        consumer = self._consumer()
        try:
            consumer.assign([TopicPartition(IMAGES_TOPIC, 0, self.committed)])
            got = self._read(consumer, n)
            assert got == self.messages[self.committed : self.committed + n]
            consumer.commit(offsets=[TopicPartition(IMAGES_TOPIC, 0, self.committed + n)], asynchronous=False)
            self.committed += n
        finally:
            consumer.close()

    def _download_model(self, version: str) -> Path:
        """The MLflow model artifacts of ``version`` (served by MLflow from the stack's S3)."""
        import mlflow

        old = os.environ.get("MLFLOW_TRACKING_URI")
        os.environ["MLFLOW_TRACKING_URI"] = self.env["MLFLOW_TRACKING_URI"]
        try:
            dst = self.tmp / f"model-{version}-{uuid.uuid4().hex[:6]}"
            return Path(
                mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{self.model}/{version}", dst_path=str(dst))
            )
        finally:
            if old is None:
                os.environ.pop("MLFLOW_TRACKING_URI")
            else:
                os.environ["MLFLOW_TRACKING_URI"] = old

    @staticmethod
    def _read(consumer, n: int) -> list[bytes]:
        got = []
        deadline = time.monotonic() + 60
        while len(got) < n and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error():
                got.append(msg.value())
        return got

    def check(self, when: str) -> None:
        """Runs, versions, aliases, model files, artifacts, objects, messages, offsets: all there."""
        import hashlib

        from confluent_kafka import TopicPartition

        from vinspect.settings import IMAGES_TOPIC

        versions = {mv.version: mv.run_id for mv in self.client.search_model_versions(f"name='{self.model}'")}
        assert versions == {v: d["run_id"] for v, d in self.versions.items()}, when
        aliases = self.client.get_registered_model(self.model).aliases
        assert aliases == {"champion": "1", "challenger": "2"}, when
        for version, data in self.versions.items():
            run = self.client.get_run(data["run_id"])
            assert run.info.status == "FINISHED" and run.data.metrics["mAP50"] == 0.5, when
            notes = self.tmp / f"notes-{uuid.uuid4().hex[:6]}"
            notes.mkdir()
            got = Path(self.client.download_artifacts(data["run_id"], "notes/keep.txt", str(notes)))
            assert got.read_text().startswith("kept run-"), f"{when}: run artifact"
            assert self.client.get_model_version(self.model, version).tags, when
            model_dir = self._download_model(version)
            onnx = [p for p in model_dir.rglob("*.onnx")]
            assert onnx and hashlib.sha256(onnx[0].read_bytes()).hexdigest() == data["sha"], (
                f"{when}: MLflow model {version}"
            )
        s3 = self.s3()
        for (bucket, key), sha in self.objects.items():
            body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            assert hashlib.sha256(body).hexdigest() == sha, f"{when}: s3://{bucket}/{key}"
        consumer = self._consumer()
        try:
            tp = TopicPartition(IMAGES_TOPIC, 0)
            assert consumer.committed([tp], timeout=15)[0].offset == self.committed, when
            assert consumer.get_watermark_offsets(tp, timeout=15) == (0, len(self.messages)), when
            consumer.assign([TopicPartition(IMAGES_TOPIC, 0, self.committed)])
            remaining = self.messages[self.committed :]
            assert self._read(consumer, len(remaining)) == remaining, f"{when}: unconsumed images"
        finally:
            consumer.close()


def _kill(pid: int) -> None:
    """SIGKILL a service and everything in its process group: a crash, not a shutdown."""
    import signal

    os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _descendants(pid) - {p for p in _descendants(pid) if not _alive(p)}:
        time.sleep(0.1)


def test_everything_survives_down_up_and_a_crash_of_each_service(cfg, tmp_path):
    """The issue's scenario: what was acknowledged is there after `down`/`up` and after SIGKILL."""
    import requests

    from vinspect.local import _read_env

    # Start from a state directory the previous stack left behind (its credentials, an empty
    # MLflow database): `up` keeps both.
    (cfg.state / "mlflow").mkdir(parents=True)
    (cfg.state / "mlflow" / "mlflow.db").touch()
    (cfg.state / "stack.env").write_text(
        f"AWS_ACCESS_KEY_ID=vi{uuid.uuid4().hex[:18]}\nAWS_SECRET_ACCESS_KEY={uuid.uuid4().hex}{uuid.uuid4().hex}\n"
    )
    before = _read_env(cfg.state / "stack.env")
    notes: list[str] = []
    env = up(cfg, log=notes.append)
    server = None
    try:
        assert {k: env[k] for k in before} == before
        assert any("previous local stack" in n for n in notes)
        acked = _Acknowledged(env, tmp_path)
        acked.register_two_versions_and_promote()
        acked.put_object("datasets/keep/manifest.json")
        acked.produce(10)
        acked.consume_and_commit(4)
        acked.check("before down")

        assert set(down(cfg, log=lambda _m: None)) == set(SERVICES)
        assert stack_pids(cfg) == {}
        assert up(cfg, log=lambda _m: None) == env
        # A produce first: a broker that had not read its stored log would start the partition
        # again at offset 0 and overwrite what it kept.
        acked.produce(1)
        acked.check("after down and up")

        # The champion is served again, from the files the stack kept.
        port = free_port()
        serve_env = {
            **os.environ,
            **env,
            "VINSPECT_HOME": str(cfg.state),
            "PYTHONPATH": str(REPO),
            "VINSPECT_MODEL_NAME": acked.model,
        }
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "vinspect",
                "serve",
                "model",
                "--champion",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            env=serve_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        meta = None
        deadline = time.monotonic() + 120
        while meta is None and time.monotonic() < deadline and server.poll() is None:
            try:
                # The stack's model token (stack.env) guards every model endpoint of the server.
                resp = requests.get(
                    f"http://127.0.0.1:{port}/v2/models/{acked.model}",
                    timeout=2,
                    headers={"Authorization": f"Bearer {env['VINSPECT_MODEL_TOKEN']}"},
                )
                if resp.status_code == 200:
                    meta = resp.json()
                else:
                    time.sleep(0.5)
            except requests.ConnectionError:
                time.sleep(0.5)
        assert meta is not None, server.stdout.read() if server.poll() is not None else "model server not ready"
        assert meta["versions"] == ["1"]
        server.terminate()
        server.wait(timeout=30)
        server = None

        for service in SERVICES:
            _kill(stack_pids(cfg)[service])
            assert service not in stack_pids(cfg)
            up(cfg, log=lambda _m: None)
            acked.produce(2)
            acked.put_object(f"datasets/keep/after-{service}.bin")
            acked.check(f"after SIGKILL of {service}")
            acked.consume_and_commit(1)
        acked.check("at the end")
    finally:
        if server is not None:
            server.kill()
            server.wait()
        down(cfg, log=lambda _m: None)


# --------------------------------------------------------------------------- the Kafka front's codec


def _uvarint(n: int) -> bytes:
    out = b""
    while True:
        byte, n = n & 0x7F, n >> 7
        out += bytes([byte | (0x80 if n else 0)])
        if not n:
            return out


def _list_offsets_frames(version: int, partitions: list[tuple[int, int, int, int]]):
    """(request, response) frames for topic ``t``; partitions are (index, timestamp, error, offset)."""
    import struct

    flexible = version >= 6
    arr = (lambda n: _uvarint(n + 1)) if flexible else (lambda n: struct.pack(">i", n))
    text = (
        (lambda s: _uvarint(len(s) + 1) + s.encode())
        if flexible
        else (lambda s: struct.pack(">h", len(s)) + s.encode())
    )
    tags = b"\x00" if flexible else b""
    req = struct.pack(">hhi", 2, version, 42) + struct.pack(">h", 1) + b"c" + tags + struct.pack(">i", -1)
    if version >= 2:
        req += struct.pack(">b", 0)
    req += arr(1) + text("t") + arr(len(partitions))
    for index, ts, _err, _off in partitions:
        req += struct.pack(">i", index) + (struct.pack(">i", -1) if version >= 4 else b"") + struct.pack(">q", ts)
        req += (struct.pack(">i", 1) if version == 0 else b"") + tags
    req += tags + tags
    resp = struct.pack(">i", 42) + tags + (struct.pack(">i", 0) if version >= 2 else b"")
    resp += arr(1) + text("t") + arr(len(partitions))
    for index, _ts, err, off in partitions:
        resp += struct.pack(">ih", index, err)
        if version == 0:
            resp += struct.pack(">iq", 1, off)
        else:
            resp += struct.pack(">qq", 1234, off) + (struct.pack(">i", 0) if version >= 4 else b"")
        resp += tags
    resp += tags + tags
    return req, resp


@pytest.mark.parametrize("version", [0, 1, 5, 6, 7, 9])
def test_front_rewrites_latest_and_earliest_only(version):
    import asyncio

    from vinspect import kafka_front as kf

    parts = [(0, -1, 0, 6), (1, -2, 0, 5), (2, 1700000000000, 0, 77), (3, -1, 3, -1)]
    req, resp = _list_offsets_frames(version, parts)
    query = kf.parse_list_offsets_request(req)
    assert query.asked == {("t", 0): -1, ("t", 1): -2, ("t", 2): 1700000000000, ("t", 3): -1}
    positions = kf.offset_positions(resp, version)
    assert set(positions) == {("t", 0), ("t", 1), ("t", 2)}  # partition 3 answered with an error

    front = kf.Front("127.0.0.1", 1)
    asked_for = []

    async def truth(partitions, isolation_level):
        asked_for.append(set(partitions))
        return {
            tp: kf.PartitionOffsets(high_watermark=305, last_stable_offset=300, log_start_offset=0) for tp in partitions
        }

    front.true_offsets = truth
    fixed = asyncio.run(front.fix_list_offsets(resp, query))
    assert len(fixed) == len(resp)
    after = kf.offset_positions(fixed, version)
    import struct

    got = {tp: struct.unpack_from(">q", fixed, pos)[0] for tp, pos in after.items()}
    assert got == {("t", 0): 305, ("t", 1): 0, ("t", 2): 77}
    assert asked_for == [{("t", 0), ("t", 1)}]


def test_front_parses_a_fetch_answer_with_records_and_aborted_transactions():
    import struct

    from vinspect import kafka_front as kf

    frame = struct.pack(">ii", 9, 0) + struct.pack(">i", 1) + struct.pack(">h", 1) + b"t" + struct.pack(">i", 2)
    frame += struct.pack(">ihqqq", 0, 0, 305, 300, 2) + struct.pack(">i", 1) + struct.pack(">qq", 7, 290)
    frame += struct.pack(">i", 3) + b"abc"
    frame += struct.pack(">ihqqq", 1, 6, -1, -1, -1) + struct.pack(">i", -1) + struct.pack(">i", -1)
    corr, offsets = kf.parse_fetch_offsets_response(frame)
    assert corr == 9
    assert offsets == {("t", 0): kf.PartitionOffsets(305, 300, 2)}
    with pytest.raises(kf.ProtocolError):
        kf.parse_fetch_offsets_response(frame[:-5])
