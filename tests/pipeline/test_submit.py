"""submit and schedule against a local server speaking the KFP v2beta1 REST API."""

from __future__ import annotations

import json
import re
import secrets

import pytest
import yaml
from typer.testing import CliRunner

from pipelines.schedule import CronError, schedule, validate_cron
from pipelines.submit import SubmitError, submit


@pytest.fixture(autouse=True)
def _no_data_services(monkeypatch):
    """Keep the developer's S3 and CVAT settings out: each test points at its own servers."""
    for name in (
        "AWS_S3_ENDPOINT",
        "MLFLOW_S3_ENDPOINT_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_CA_BUNDLE",
        "AWS_PROFILE",
        "CVAT_URL",
        "CVAT_TOKEN",
        "CVAT_USERNAME",
        "CVAT_PASSWORD",
        "CVAT_CA_BUNDLE",
    ):
        monkeypatch.delenv(name, raising=False)


def _uploaded_spec(req) -> dict:
    return next(yaml.safe_load_all(req.body["file"]))


def _caching(spec: dict) -> dict[str, bool]:
    # An inline spec with a platform part is sent as {"pipeline_spec": ..., "platform_spec": ...}.
    spec = spec.get("pipeline_spec", spec)
    out = {}
    for comp in [spec["root"], *spec["components"].values()]:
        for name, task in comp.get("dag", {}).get("tasks", {}).items():
            if not task["componentRef"]["name"].startswith("comp-condition"):
                out[name] = task.get("cachingOptions", {}).get("enableCache", False)
    return out


def test_submit_uploads_and_runs_with_the_env_token(fake_kfp, monkeypatch):
    monkeypatch.setenv("KFP_TOKEN", "test-token")
    monkeypatch.setenv("VINSPECT_IMAGE", "quay.io/example/vinspect:1.2.3")
    args = {"data_source": "s3://vinspect-data/exports/metal-nut.zip", "epochs": 7, "min_map50": 0.6}
    sub = submit(fake_kfp.url, arguments=args, experiment="nightly")

    # Every request carried the bearer token.
    assert fake_kfp.requests and all(r.headers.get("authorization") == "Bearer test-token" for r in fake_kfp.requests)
    upload = fake_kfp.calls("POST", "/pipelines/upload")
    assert len(upload) == 1 and upload[0].query["name"] == ["vinspect-training"]
    spec = _uploaded_spec(upload[0])
    assert spec["pipelineInfo"]["name"] == "vinspect-training"
    images = {ex["container"]["image"] for ex in spec["deploymentSpec"]["executors"].values()}
    assert images == {"quay.io/example/vinspect:1.2.3"}
    assert "test-token" not in upload[0].body["file"].decode()

    exp = fake_kfp.calls("POST", "/experiments")
    assert [e.body["display_name"] for e in exp] == ["nightly"]
    (run,) = fake_kfp.calls("POST", "/runs")
    assert run.body["experiment_id"] == sub.experiment_id
    ref = run.body["pipeline_version_reference"]
    assert ref == {"pipeline_id": sub.pipeline_id, "pipeline_version_id": sub.version_id}
    assert sub.version_id in fake_kfp.versions
    assert run.body["runtime_config"]["parameters"] == args
    assert sub.run_id in fake_kfp.runs

    # A second submit of the same compiled pipeline re-uses the pipeline and experiment.
    sub2 = submit(fake_kfp.url, arguments=args, experiment="nightly")
    assert sub2.pipeline_id == sub.pipeline_id and sub2.experiment_id == sub.experiment_id
    assert len(fake_kfp.calls("POST", "/pipelines/upload")) == 1
    assert len(fake_kfp.calls("POST", "/experiments")) == 1
    assert len(fake_kfp.runs) == 2


def _version_spec(fake_kfp, body) -> dict:
    version = fake_kfp.versions[body["pipeline_version_reference"]["pipeline_version_id"]]
    return next(yaml.safe_load_all(version["spec"]))


def test_submit_without_cache_runs_a_version_with_every_step_uncached(fake_kfp, monkeypatch):
    monkeypatch.setenv("KFP_TOKEN", "test-token")
    cached = submit(fake_kfp.url, arguments={"data_source": "s3://b/x.zip", "source_version": "v1"})
    fresh = submit(fake_kfp.url, arguments={"data_source": "s3://b/x.zip"}, enable_caching=False)
    assert cached.caching is True and fresh.caching is False and not cached.notes and not fresh.notes
    assert fresh.version_id != cached.version_id
    runs = fake_kfp.calls("POST", "/runs")
    assert any(_caching(_version_spec(fake_kfp, runs[0].body)).values())
    # Steps inside the branches too (KFP's run-level override would miss those).
    caching = _caching(_version_spec(fake_kfp, runs[1].body))
    assert {"pull-annotations", "train", "evaluate"} <= set(caching) and not any(caching.values()), caching
    assert fake_kfp.versions[fresh.version_id]["display_name"].endswith("-nocache")


@pytest.fixture
def cvat_task(monkeypatch):
    """A fake CVAT with task 1 (jobs 11 and 12) and project 5 (task 3), and its URL/token in env."""
    from tests.data.cvat_server import FakeCVAT, Job, Project, Task

    server = FakeCVAT().start()
    server.tasks[1] = Task(
        1,
        "line-1",
        ["scratch", "bent"],
        [],
        [Job(11, 1, range(0, 6)), Job(12, 1, range(6, 12), "in progress", "annotation")],
    )
    server.projects[5] = Project(5, "metal-nuts", ["scratch", "bent"])
    server.tasks[3] = Task(3, "line-3", ["scratch", "bent"], [], [Job(31, 3, range(0, 4))], project_id=5)
    monkeypatch.setenv("CVAT_URL", server.url)
    monkeypatch.setenv("CVAT_TOKEN", server.pat)
    try:
        yield server
    finally:
        server.stop()


def _pull_cached(fake_kfp, run_body) -> bool:
    return _caching(_version_spec(fake_kfp, run_body))["pull-annotations"]


def test_submit_keys_a_cvat_pull_on_the_annotations_version_read_from_cvat(fake_kfp, cvat_task, monkeypatch):
    monkeypatch.setenv("KFP_TOKEN", "test-token")
    first = submit(fake_kfp.url, arguments={"cvat_task_id": 1, "epochs": 3})
    again = submit(fake_kfp.url, arguments={"cvat_task_id": 1, "epochs": 3})
    version = first.arguments["source_version"]
    assert re.fullmatch(r"[0-9a-f]{16}", version) and again.arguments["source_version"] == version
    assert first.caching and not first.notes and again.caching and not again.notes
    runs = fake_kfp.calls("POST", "/runs")
    assert [r.body["runtime_config"]["parameters"]["source_version"] for r in runs] == [version, version]
    assert _pull_cached(fake_kfp, runs[0].body)
    assert ("GET", "/api/tasks/1") in cvat_task.calls

    # Saving annotations in job 12 bumps its updated_date: the pull's cache key changes.
    cvat_task.tasks[1].jobs[1].updated_date = "2026-01-02T09:30:00.000000Z"
    edited = submit(fake_kfp.url, arguments={"cvat_task_id": 1, "epochs": 3})
    assert edited.caching and edited.arguments["source_version"] not in ("", version)
    # So does finishing a job (only completed jobs are pulled by default) ...
    cvat_task.tasks[1].jobs[1].state = "completed"
    finished = submit(fake_kfp.url, arguments={"cvat_task_id": 1, "epochs": 3})
    assert finished.arguments["source_version"] not in (version, edited.arguments["source_version"])
    # ... while an explicit version is passed through untouched.
    pinned = submit(fake_kfp.url, arguments={"cvat_task_id": 1, "source_version": "release-7"})
    assert pinned.arguments["source_version"] == "release-7" and pinned.caching
    # A project is versioned by its tasks' jobs.
    project = submit(fake_kfp.url, arguments={"cvat_project_id": 5})
    cvat_task.tasks[3].updated_date = cvat_task.tasks[3].jobs[0].updated_date = "2026-01-03T00:00:00.000000Z"
    project2 = submit(fake_kfp.url, arguments={"cvat_project_id": 5})
    assert project.caching and project.arguments["source_version"] != project2.arguments["source_version"]


def test_submit_runs_uncached_when_cvat_is_not_reachable_and_says_why(fake_kfp, monkeypatch):
    from tests.conftest import free_port

    monkeypatch.setenv("KFP_TOKEN", "test-token")
    monkeypatch.setenv("CVAT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("CVAT_TOKEN", "pat_whatever")
    sub = submit(fake_kfp.url, arguments={"cvat_task_id": 1})
    assert sub.caching is False and "source_version" not in sub.arguments
    (note,) = sub.notes
    assert "CVAT task 1" in note and "cannot log in to CVAT" in note and "uncached pipeline version" in note
    (run,) = fake_kfp.calls("POST", "/runs")
    assert run.body["runtime_config"]["parameters"] == {"cvat_task_id": 1}
    caching = _caching(_version_spec(fake_kfp, run.body))
    assert "pull-annotations" in caching and not any(caching.values()), caching

    # No CVAT settings at all: the same fallback, naming what to set.
    monkeypatch.delenv("CVAT_URL")
    unset = submit(fake_kfp.url, arguments={"cvat_task_id": 1})
    assert unset.caching is False and "CVAT_URL is not set" in unset.notes[0]
    # With --no-cache nothing is read and nothing needs explaining.
    plain = submit(fake_kfp.url, arguments={"cvat_task_id": 1}, enable_caching=False)
    assert plain.caching is False and not plain.notes


def test_submit_keys_an_s3_archive_on_its_etag(fake_kfp, monkeypatch):
    import boto3
    from moto.server import ThreadedMotoServer

    from pipelines.source import source_fingerprint
    from tests.conftest import free_port

    monkeypatch.setenv("KFP_TOKEN", "test-token")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        # moto takes any key pair; made up per run.
        env = {
            "AWS_S3_ENDPOINT": f"http://127.0.0.1:{port}",
            "AWS_ACCESS_KEY_ID": secrets.token_hex(8),
            "AWS_SECRET_ACCESS_KEY": secrets.token_hex(16),
        }
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        s3 = boto3.client(
            "s3",
            endpoint_url=env["AWS_S3_ENDPOINT"],
            region_name="us-east-1",
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        )
        s3.create_bucket(Bucket="data")
        s3.put_object(Bucket="data", Key="exports/nuts.zip", Body=b"first export")
        args = {"data_source": "s3://data/exports/nuts.zip"}
        first, again = submit(fake_kfp.url, arguments=args), submit(fake_kfp.url, arguments=args)
        version = first.arguments["source_version"]
        assert version and again.arguments["source_version"] == version and first.caching and not first.notes
        # The same digest the local runner computes: one fingerprint for both.
        assert version == source_fingerprint(args["data_source"], s3_client=s3)
        s3.put_object(Bucket="data", Key="exports/nuts.zip", Body=b"second export, more labels")
        changed = submit(fake_kfp.url, arguments=args)
        assert changed.caching and changed.arguments["source_version"] != version

        missing = submit(fake_kfp.url, arguments={"data_source": "s3://data/exports/other.zip"})
        assert missing.caching is False and "no object in S3 matches" in missing.notes[0]
    finally:
        server.stop()


def test_submit_takes_the_token_from_kubeconfig(fake_kfp, tmp_path, monkeypatch):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "dev",
                "clusters": [{"name": "c", "cluster": {"server": "https://api.example.com:6443"}}],
                "users": [{"name": "u", "user": {"token": "test-token"}}],
                "contexts": [{"name": "dev", "context": {"cluster": "c", "user": "u"}}],
            }
        )
    )
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    sub = submit(fake_kfp.url, arguments={"data_source": "s3://b/x.zip"})
    assert sub.run_id in fake_kfp.runs
    assert {r.headers.get("authorization") for r in fake_kfp.requests} == {"Bearer test-token"}


def test_submit_with_a_wrong_token_says_so(fake_kfp, monkeypatch):
    monkeypatch.setenv("KFP_TOKEN", "expired")
    with pytest.raises(SubmitError, match="401"):
        submit(fake_kfp.url, arguments={"data_source": "s3://b/x.zip"})
    assert not fake_kfp.runs


def _self_signed(tmp_path):
    """A CA and a server certificate for 127.0.0.1 signed by it (files)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vinspect test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = {name: tmp_path / f"{name}.pem" for name in ("ca", "cert", "key")}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


def test_submit_over_tls_verifies_against_the_given_ca(fake_kfp, tmp_path, monkeypatch):
    from tests.pipeline.fake_kfp import FakeKFP

    pem = _self_signed(tmp_path)
    tls = FakeKFP(token="test-token").start(tls=(str(pem["cert"]), str(pem["key"])))
    monkeypatch.setenv("KFP_TOKEN", "test-token")
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    try:
        assert tls.url.startswith("https://")
        with pytest.raises(SubmitError, match="TLS verification"):
            submit(tls.url, arguments={"data_source": "s3://b/x.zip"})
        assert not tls.runs
        monkeypatch.setenv("KFP_CA_BUNDLE", str(pem["ca"]))
        sub = submit(tls.url, arguments={"data_source": "s3://b/x.zip"})
        assert sub.run_id in tls.runs
    finally:
        tls.stop()


def test_submit_needs_a_host(fake_kfp):
    with pytest.raises(SubmitError, match="KFP_HOST"):
        submit(None)
    assert not fake_kfp.requests


def test_schedule_creates_a_data_aware_recurring_run(fake_kfp, monkeypatch):
    monkeypatch.setenv("KFP_TOKEN", "test-token")
    sub = schedule("0 0 3 * * *", fake_kfp.url, arguments={"data_source": "s3://b/export.zip", "epochs": 30})
    (req,) = fake_kfp.calls("POST", "/recurringruns")
    body = req.body
    assert body["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * *"
    assert body["max_concurrency"] in (1, "1") and body["no_catchup"] is True
    assert body["mode"] == "ENABLE"
    params = body["runtime_config"]["parameters"]
    assert params == {"data_source": "s3://b/export.zip", "epochs": 30, "skip_if_unchanged": True}
    # Every run pulls its source afresh: the check step, not the cache, decides to skip training.
    caching = _caching(_version_spec(fake_kfp, body))
    assert {"pull-annotations", "train", "evaluate"} <= set(caching) and not any(caching.values()), caching
    assert body["experiment_id"] == sub.experiment_id and sub.recurring_run_id in fake_kfp.recurring_runs


def test_schedule_refuses_a_five_field_cron_before_sending_anything(fake_kfp, monkeypatch):
    monkeypatch.setenv("KFP_TOKEN", "test-token")
    with pytest.raises(CronError, match=r'6 with seconds first.*"0 0 3 \* \* \*"'):
        schedule("0 3 * * *", fake_kfp.url)
    assert fake_kfp.requests == []


@pytest.mark.parametrize(
    "expr",
    [
        "0 0 3 * * *",
        "0 */15 * * * *",
        "0 0 9 ? * 2-6",
        "0 30 2 1,15 * MON-FRI",
        "@daily",
        "@every 6h",
        "  0 0   3 * * * ",
    ],
)
def test_valid_cron(expr):
    assert validate_cron(expr) == " ".join(expr.split())


@pytest.mark.parametrize(
    "expr,message",
    [
        ("0 3 * * *", "5 fields"),
        ("* * *", "3 fields"),
        ("0 0 25 * * *", "hour 25 is out of range 0-23"),
        ("0 61 3 * * *", "minute 61"),
        ("0 0 3 * 13 *", "month 13"),
        ("0 0 3 * * 7", "day of week 7"),
        ("0 0 3 * * x", "expected a number"),
        ("0 */0 3 * * *", "step"),
        ("? 0 3 * * *", "'?' is only allowed"),
        ("@fortnightly", "unknown descriptor"),
    ],
)
def test_invalid_cron(expr, message):
    with pytest.raises(CronError, match=re.escape(message)):
        validate_cron(expr)


def test_cli_submit_and_schedule(fake_kfp, monkeypatch):
    from vinspect.cli import app

    monkeypatch.setenv("KFP_TOKEN", "test-token")
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "pipeline",
            "submit",
            "--host",
            fake_kfp.url,
            "--data",
            "s3://b/x.zip",
            "-p",
            "epochs=3",
            "-p",
            'gpu_node_selector={"nvidia.com/gpu.product": "A100"}',
        ],
    )
    assert result.exit_code == 0, result.output
    (run,) = fake_kfp.calls("POST", "/runs")
    assert run.body["runtime_config"]["parameters"] == {
        "data_source": "s3://b/x.zip",
        "epochs": 3,
        "gpu_node_selector": {"nvidia.com/gpu.product": "A100"},
    }
    out = json.loads(result.output[result.output.index("{") :])
    assert out["run_id"] == run.body.get("run_id") or out["run_id"] in fake_kfp.runs
    # No S3 settings here: the run is the uncached version, and the output says why.
    assert "note: caching off for this run" in result.output and "S3 is not configured here" in result.output
    assert out["caching"] is False

    bad = runner.invoke(app, ["pipeline", "schedule", "--cron", "0 3 * * *", "--host", fake_kfp.url])
    assert bad.exit_code == 1 and "KFP cron has 6" in bad.output
    assert not fake_kfp.calls("POST", "/recurringruns")
    good = runner.invoke(
        app, ["pipeline", "schedule", "--cron", "0 0 3 * * *", "--host", fake_kfp.url, "--data", "s3://b/x.zip"]
    )
    assert good.exit_code == 0, good.output
    assert len(fake_kfp.calls("POST", "/recurringruns")) == 1

    local_data = runner.invoke(app, ["pipeline", "submit", "--host", fake_kfp.url, "--data", "/tmp/export"])
    assert local_data.exit_code == 1 and "s3://" in local_data.output
    typo = runner.invoke(app, ["pipeline", "submit", "--host", fake_kfp.url, "-p", "epoch=3"])
    assert typo.exit_code == 1 and "did you mean 'epochs'" in typo.output
