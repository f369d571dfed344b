"""Champion lookup over MLflow's REST API (no ``mlflow`` package), against the stack's real server."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from serving.registry_client import AliasLookupError, AliasNotFound, RegistryAuth, alias_version, champion_uri

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def registered(local_stack):
    """A registered model with three versions, ``champion`` on v2 (set with the real MlflowClient)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=local_stack.mlflow_uri, registry_uri=local_stack.mlflow_uri)
    name = f"rest-lookup-{uuid.uuid4().hex[:8]}"
    client.create_registered_model(name)
    for _ in range(3):
        client.create_model_version(name, "s3://nowhere/model", run_id=None)
    client.set_registered_model_alias(name, "champion", "2")
    return client, name


def test_alias_resolves_to_the_version_and_the_s3_layout(local_stack, registered):
    client, name = registered
    assert alias_version(local_stack.mlflow_uri, name) == "2"
    assert champion_uri(local_stack.mlflow_uri, name, "models") == (f"s3://models/{name}/2/", "2")
    # The alias moves: the next lookup follows it (nothing cached).
    client.set_registered_model_alias(name, "champion", "3")
    try:
        assert alias_version(local_stack.mlflow_uri + "/", name) == "3"
    finally:
        client.set_registered_model_alias(name, "champion", "2")


def test_missing_alias_and_model_are_not_found(local_stack, registered):
    _, name = registered
    with pytest.raises(AliasNotFound, match=f"{name}@challenger"):
        alias_version(local_stack.mlflow_uri, name, "challenger")
    with pytest.raises(AliasNotFound, match="no-such-model"):
        alias_version(local_stack.mlflow_uri, f"no-such-model-{uuid.uuid4().hex[:6]}")


def test_unreachable_or_unset_registry_is_a_clear_error():
    with pytest.raises(AliasLookupError, match="failed: ConnectionError"):
        alias_version("http://127.0.0.1:9", "m", timeout_s=2)
    with pytest.raises(AliasLookupError, match="not an http"):
        alias_version("file:///tmp/mlruns", "m")


def test_auth_is_sent_and_never_printed():
    from secrets import token_hex

    import requests

    token, password = token_hex(8), token_hex(8)  # made up per run
    session = requests.Session()
    RegistryAuth(token=token).apply(session)
    assert session.headers["Authorization"] == f"Bearer {token}"
    basic = requests.Session()
    RegistryAuth(username="u", password=password).apply(basic)
    assert basic.auth == ("u", password) and "Authorization" not in basic.headers
    assert token not in repr(RegistryAuth(token=token)) and password not in repr(RegistryAuth("", "u", password))


def test_auth_from_settings_prefers_the_token(monkeypatch):
    from vinspect.settings import MLflowSettings

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "u")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "p")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "tok")
    auth = RegistryAuth.from_settings(MLflowSettings.from_env())
    assert (auth.token, auth.username, auth.password) == ("tok", "u", "p")


def test_auth_kubernetes_sends_the_service_account_token(monkeypatch, tmp_path):
    """The cluster's MLflow is behind an OAuth proxy: in a pod, the service-account token is the bearer."""
    from secrets import token_hex

    from vinspect.settings import MLflowSettings

    for name in ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_AUTH", "kubernetes")
    token_file = tmp_path / "token"
    token = token_hex(16)
    token_file.write_text(token + "\n")
    assert RegistryAuth.from_settings(MLflowSettings.from_env(), token_file=token_file).token == token
    with pytest.raises(AliasLookupError, match="service-account token .* cannot be read"):
        RegistryAuth.from_settings(MLflowSettings.from_env(), token_file=tmp_path / "absent")
    monkeypatch.delenv("MLFLOW_TRACKING_AUTH")
    assert RegistryAuth.from_settings(MLflowSettings.from_env(), token_file=token_file).token is None


def test_importing_the_client_and_the_serve_cli_does_not_import_mlflow():
    code = (
        "import sys, serving.registry_client, vinspect.cli.serve\n"
        "bad = sorted(m for m in sys.modules if m == 'mlflow' or m.startswith('mlflow.'))\n"
        "assert not bad, bad\n"
        "print('clean')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "clean" in out.stdout, out.stderr


def test_serve_model_champion_resolves_over_rest_without_mlflow(local_stack, registered, monkeypatch):
    """``serve model --champion`` with ``mlflow`` made unimportable still finds the champion."""
    import typer

    from vinspect.cli import serve

    _, name = registered
    for key, value in local_stack.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setitem(sys.modules, "mlflow", None)  # any `import mlflow` now raises ImportError
    served = []
    monkeypatch.setattr("serving.modelserver.serve", lambda models, *a, **k: served.append(models))
    app = typer.Typer()
    serve.register(app)
    result = CliRunner().invoke(app, ["model", "--champion", "--name", name])
    assert result.exit_code == 0, result.output
    bucket = local_stack.env.get("AWS_S3_BUCKET", "models")
    assert served == [[(name, f"s3://{bucket}/{name}/2/", "2")]]
    assert f"champion of {name} is version 2" in result.output

    missing = CliRunner().invoke(app, ["model", "--champion", "--name", f"{name}-absent"])
    assert missing.exit_code != 0 and "registry has no" in missing.output


def test_champion_uri_follows_the_chosen_variant(local_stack, registered):
    """A version registered with a precision variant is served from that variant's folder."""
    client, name = registered
    client.set_model_version_tag(name, "3", "vinspect.storage_uri", f"s3://models/{name}/3/int8/")
    client.set_registered_model_alias(name, "champion", "3")
    try:
        assert champion_uri(local_stack.mlflow_uri, name, "models") == (f"s3://models/{name}/3/int8/", "3")
    finally:
        client.set_registered_model_alias(name, "champion", "2")


def test_alias_lookup_errors_derive_from_the_vinspect_root():
    from vinspect.errors import VinspectError

    assert issubclass(AliasLookupError, VinspectError) and issubclass(AliasLookupError, RuntimeError)
    assert issubclass(AliasNotFound, AliasLookupError)
